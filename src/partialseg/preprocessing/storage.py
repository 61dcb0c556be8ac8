"""How the prepared cache stores its arrays: blosc2 (compressed, chunked; nnU-Net v2's format) or npy.

Measured (benchmarks/cache_format.py, docs/measurements.md): on 512×512×160 phantoms blosc2 with
nnU-Net v2's parameters (ZSTD level 8, blocks and chunks from the patch size) takes 0.99 bytes per
voxel for image + label against 6.0 for float32 + int16 ``.npy``, and reads a 192×192×64 patch
4.7× slower when the file is in the page cache but 3× faster when it is not. 200 CT cases at full
resolution (~50 GB as ``.npy``) outgrow the page cache of most machines, so blosc2 is the default;
``npy`` (memory maps) stays for collections that fit in RAM.

:class:`Blosc2Array` reads only the chunks a slice touches; every other use (``np.asarray``,
arithmetic, comparisons) decompresses the whole array, as reading an ``.npy`` would.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.lib.mixins

STORAGES: tuple[str, ...] = ("blosc2", "npy")
SUFFIX = {"blosc2": ".b2nd", "npy": ".npy"}

#: the patch blosc2's blocks and chunks are laid out for (nnU-Net uses its plan's; one cache serves
#: every run's patch here, so the typical planned patch at ~0.8×0.8×2.5 mm)
LAYOUT_PATCH = (192, 192, 64)
CLEVEL = 8  # nnUNetDatasetBlosc2.save_case
L1_BYTES, L3_BYTES, CACHE_SAFETY = 32768, 1441792, 0.8  # nnU-Net v2's comp_blosc2_params defaults


def blosc2_layout(image_shape: tuple[int, ...], patch: tuple[int, ...], itemsize: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """nnU-Net v2's ``nnUNetDatasetBlosc2.comp_blosc2_params`` (v2.6): (blocks, chunks) for a
    (C, X, Y, Z) array read in ``patch``-sized crops.

    Blocks: the patch rounded up to powers of two, the axis most oversized against the patch halved
    until a block fits the L1 budget. Chunks: blocks added along the axis with the fewest so far, up
    to the L3 budget, the whole image, or 1.5× the patch on average.
    """
    shape = [int(s) for s in image_shape]
    patch = [int(p) for p in patch]
    if len(patch) == 2:
        patch = [1, *patch]
    block = [shape[0]] + [2 ** max(0, math.ceil(math.log2(p))) for p in patch]
    while math.prod(block) * itemsize > L1_BYTES * CACHE_SAFETY:
        order = np.argsort(np.array(block[1:]) / np.array(patch))[::-1]
        a = int(next(a for a in order if block[a + 1] > 1))
        block[a + 1] = min(2 ** max(0, math.floor(math.log2(block[a + 1] - 1))), shape[a + 1])
    block = [min(b, s) for b, s in zip(block, shape)]
    chunk = list(block)
    while math.prod(chunk) * itemsize < L3_BYTES * CACHE_SAFETY:
        if (patch[0] == 1 and chunk[2:] == shape[2:]) or chunk == shape:
            break
        order = np.argsort(np.array(chunk[1:]) / np.array(block[1:]))
        a = int(next(a for a in order if chunk[a + 1] != shape[a + 1] and patch[a] != 1))
        chunk[a + 1] = min(chunk[a + 1] + block[a + 1], shape[a + 1])
        if np.mean([c / p for c, p in zip(chunk[1:], patch)]) > 1.5:
            chunk[a + 1] -= block[a + 1]
            break
    return tuple(block), tuple(min(c, s) for c, s in zip(chunk, shape))


def save_array(path: Path, array: np.ndarray, storage: str, threads: int = 1) -> Path:
    """Write ``array`` as ``path`` + the storage's suffix; returns the file."""
    array = np.ascontiguousarray(array)
    out = Path(str(path) + SUFFIX[storage])
    if storage == "npy":
        np.save(out, array)
        return out
    import blosc2

    as4d = array if array.ndim == 4 else array[None]
    blocks, chunks = blosc2_layout(as4d.shape, LAYOUT_PATCH, as4d.itemsize)
    if array.ndim != 4:
        blocks, chunks = blocks[1:], chunks[1:]
    cparams = {"codec": blosc2.Codec.ZSTD, "clevel": CLEVEL, "nthreads": max(1, int(threads))}
    blosc2.asarray(array, urlpath=str(out), chunks=chunks, blocks=blocks, cparams=cparams, mode="w")
    return out


class Blosc2Array(numpy.lib.mixins.NDArrayOperatorsMixin):
    """A read-only blosc2 ``.b2nd`` array that behaves like a memory-mapped ``ndarray`` for partialseg's
    uses: ``shape``, ``dtype``, ``ndim``, slicing (decompresses the touched chunks only), and
    ``np.asarray`` / ufuncs / comparisons (the whole array). Opened lazily, again in a forked or
    unpickled process (a DataLoader worker)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._nd: Any = None
        self._pid = -1
        nd = self._open()
        self.shape: tuple[int, ...] = tuple(int(s) for s in nd.shape)
        self.dtype = np.dtype(nd.dtype)
        self.ndim = len(self.shape)

    def _open(self) -> Any:
        if self._nd is None or self._pid != os.getpid():
            import blosc2

            self._nd = blosc2.open(str(self.path), mode="r", dparams={"nthreads": 1})
            self._pid = os.getpid()
        return self._nd

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_nd": None, "_pid": -1}

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        if any(i is Ellipsis for i in index):
            at = next(n for n, i in enumerate(index) if i is Ellipsis)
            fill = self.ndim - (len(index) - 1 - sum(i is None for i in index))
            index = index[:at] + (slice(None),) * fill + index[at + 1 :]
        return np.asarray(self._open()[index])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.asarray(self._open()[()])
        return out if dtype is None else out.astype(dtype, copy=False)

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        inputs = tuple(np.asarray(x) if isinstance(x, Blosc2Array) else x for x in inputs)
        return getattr(ufunc, method)(*inputs, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # ndarray methods (.max(), .astype(), .sum(), ...) on the whole array, as a memory map gives them
        if name.startswith("_") or name in ("path", "shape", "dtype", "ndim"):
            raise AttributeError(name)
        return getattr(np.asarray(self), name)

    def __repr__(self) -> str:
        return f"Blosc2Array({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"


def open_array(path: Path, storage: str) -> np.ndarray | Blosc2Array:
    """A stored array opened read-only without reading it (a memory map or a :class:`Blosc2Array`)."""
    f = Path(str(path) + SUFFIX[storage])
    return np.load(f, mmap_mode="r") if storage == "npy" else Blosc2Array(f)


__all__ = ["STORAGES", "Blosc2Array", "blosc2_layout", "open_array", "save_array"]
