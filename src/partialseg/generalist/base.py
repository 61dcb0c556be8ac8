"""The generalist interface of IPnP: image + box prompts -> 3D mask of one object.

Arrays are in the axis order of the image array given (partialseg's RAS arrays: X, Y, Z), raw
HU, float32. Backends are registered by name in ``GENERALISTS`` and built with
``build_generalist(name, **options)``; importing this module imports no backend.

Command-line box syntax (``parse_box``; used by ``segment_box_file`` and ``partialseg
segment-box --box``)::

    z=40,x=10:51,y=20:61

``x``, ``y``, ``z`` name the image array's axes 0, 1, 2 as stored in the file (for a RAS file:
x left->right, y posterior->anterior, z inferior->superior), in 0-based voxel indices. Exactly
one axis gets a single index: the slice the 2D box lies on (``z=40``: an axial box on slice 40).
The two others get half-open ranges ``start:stop`` like Python slices (``x=10:51`` is voxels
10..50). Order and spaces do not matter. Give the paper's two orthogonal boxes as two ``--box``
options, e.g. ``--box z=40,x=10:51,y=20:61 --box x=30,y=18:60,z=25:57``.
"""

from __future__ import annotations

import importlib
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.errors import InputError, PartialsegError
from partialseg.generalist.prompts import BoxPrompt, box_prompts_from_mask

__all__ = [
    "DEFAULT_GENERALIST",
    "GENERALISTS",
    "BoxSegmentation",
    "Generalist",
    "build_generalist",
    "parse_box",
    "segment_box_file",
]

#: name -> "module:Class", imported on first use (the CLI lists names without importing torch).
GENERALISTS: dict[str, str] = {
    "random_walker": "partialseg.generalist.random_walker:RandomWalkerGeneralist",
    "nninteractive": "partialseg.generalist.nninteractive:NNInteractiveGeneralist",
    "boxnet": "partialseg.generalist.boxnet:BoxNetGeneralist",
}
#: one-line descriptions for ``--help`` / listings.
GENERALIST_HELP: dict[str, str] = {
    "random_walker": "weight-free 3D random walker with box-learned intensity priors (CPU, default)",
    "nninteractive": "nnInteractive (MIC-DKFZ) promptable network; needs partialseg[nninteractive] and its weights",
    "boxnet": "box-prompted 3D U-Net trained on the dataset's own annotated organs (IPnP trains it; CPU minutes)",
}
DEFAULT_GENERALIST = "random_walker"


class Generalist(ABC):
    """A promptable segmenter: one object per call, binary mask out."""

    name: str = ""

    @abstractmethod
    def segment(self, image: np.ndarray, spacing: Sequence[float], prompts: Sequence[BoxPrompt]) -> np.ndarray:
        """Mask (bool, ``image.shape``) of the one object the prompts point at; empty prompts -> empty mask.

        ``image``: 3D float32 raw HU; ``spacing``: mm per array axis; ``prompts``: 2D boxes on
        slices of the array (usually an axial and a sagittal one).
        """

    def segment_many(
        self, image: np.ndarray, spacing: Sequence[float], prompts_per_object: Mapping[int, Sequence[BoxPrompt]]
    ) -> dict[int, np.ndarray]:
        """One image, several objects: ``{object id: mask}``, each segmented independently."""
        return {int(k): self.segment(image, spacing, p) for k, p in prompts_per_object.items()}

    @staticmethod
    def _check(image: np.ndarray, spacing: Sequence[float], prompts: Sequence[BoxPrompt]) -> np.ndarray:
        """Validate the call; returns the image as a float32 array."""
        arr = np.asarray(image)
        if arr.ndim != 3:
            raise ValueError(f"the generalist needs a 3D image, got shape {arr.shape}")
        if len(spacing) != 3 or min(float(s) for s in spacing) <= 0:
            raise ValueError(f"spacing must be three positive mm values, got {tuple(spacing)}")
        for p in prompts:
            if not isinstance(p, BoxPrompt):
                raise TypeError(f"prompts must be BoxPrompt, got {type(p).__name__}")
            if not p.fits(arr.shape):
                raise ValueError(f"box prompt {p} lies outside the image of shape {arr.shape}")
        return arr.astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _resolve(name: str) -> type[Generalist]:
    if name not in GENERALISTS:
        raise PartialsegError(f"unknown generalist {name!r}; choose from {sorted(GENERALISTS)}")
    module, cls = GENERALISTS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_generalist(name: str | None = None, **options: Any) -> Generalist:
    """The generalist registered as ``name`` (default ``DEFAULT_GENERALIST``), built with ``options``."""
    cls = _resolve(name or DEFAULT_GENERALIST)
    try:
        return cls(**options)
    except TypeError as e:
        import inspect

        accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise PartialsegError(f"generalist {name!r}: bad options {sorted(options)} ({e}); it accepts {accepted}") from None


_AXIS_KEYS = {"x": 0, "y": 1, "z": 2}
_BOX_SYNTAX = "'z=40,x=10:51,y=20:61' (one axis a single slice index, the two others half-open ranges start:stop)"


def parse_box(text: str, shape: Sequence[int] | None = None) -> BoxPrompt:
    """A ``BoxPrompt`` from the CLI syntax (module docstring), checked against ``shape`` when given."""
    items = [t for t in re.split(r"[,;\s]+", text.strip()) if t]
    got: dict[int, tuple[int, int] | int] = {}
    for item in items:
        m = re.fullmatch(r"([xyzXYZ])=(-?\d+)(?::(-?\d+))?", item)
        if not m:
            raise PartialsegError(f"box {text!r}: cannot read {item!r}; expected {_BOX_SYNTAX}")
        d = _AXIS_KEYS[m.group(1).lower()]
        if d in got:
            raise PartialsegError(f"box {text!r}: axis {m.group(1)} given twice")
        a = int(m.group(2))
        got[d] = (a, int(m.group(3))) if m.group(3) is not None else a
    if len(got) != 3:
        raise PartialsegError(f"box {text!r}: needs x, y and z; expected {_BOX_SYNTAX}")
    singles = [d for d, v in got.items() if isinstance(v, int)]
    if len(singles) != 1:
        raise PartialsegError(f"box {text!r}: exactly one axis must be a single slice index; expected {_BOX_SYNTAX}")
    axis = singles[0]
    lo, hi = [0, 0, 0], [0, 0, 0]
    for d, v in got.items():
        if isinstance(v, int):
            lo[d], hi[d] = v, v + 1
        else:
            lo[d], hi[d] = v
            if v[1] <= v[0]:
                raise PartialsegError(f"box {text!r}: empty range {'xyz'[d]}={v[0]}:{v[1]} (stop must exceed start)")
    if min(lo) < 0:
        raise PartialsegError(f"box {text!r}: negative voxel index")
    if shape is not None and any(h > s for h, s in zip(hi, shape)):
        raise PartialsegError(f"box {text!r} reaches outside the image of shape {tuple(shape)}")
    return BoxPrompt(axis, lo[axis], tuple(lo), tuple(hi))  # type: ignore[arg-type]


@dataclass
class BoxSegmentation:
    """What ``segment_box_file`` did: output path, mask size, the prompts used, seconds spent segmenting."""

    path: Path
    voxels: int
    prompts: list[BoxPrompt] = field(default_factory=list)
    seconds: float = 0.0


def segment_box_file(
    image_path: str | Path,
    boxes: Sequence[str | BoxPrompt] | None,
    out_path: str | Path,
    *,
    backend: str | None = None,
    prompt_mask: str | Path | None = None,
    label: int | None = None,
    padding: int = 5,
    overwrite: bool = False,
    **options: Any,
) -> BoxSegmentation:
    """Segment one object of a NIfTI image from box prompts and write the mask (uint8 0/1) atomically.

    ``boxes``: strings in the syntax of the module docstring (or ``BoxPrompt``), indices of the
    image array as stored in the file. Instead of boxes, ``prompt_mask`` (a label map on the
    image's grid) with ``label`` makes the paper's two prompts (median axial and sagittal slice,
    bounding box + ``padding`` voxels) from that label. The mask is written to ``out_path`` with
    the image's affine; an existing ``out_path`` is refused unless ``overwrite``. ``backend`` and
    ``options`` go to ``build_generalist``.
    """
    from partialseg.io import check_same_grid, load_volume, save_volume

    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        from partialseg.errors import OutputExistsError

        raise OutputExistsError(out_path)
    vol = load_volume(image_path, dtype=np.float32)
    prompts: list[BoxPrompt] = []
    for b in boxes or []:
        try:
            p = b if isinstance(b, BoxPrompt) else parse_box(str(b))
        except ValueError as e:
            raise PartialsegError(f"box {b!r}: {e}") from None
        if not p.fits(vol.array.shape):
            raise InputError(image_path, f"box {p} reaches outside the image of shape {vol.array.shape}")
        prompts.append(p)
    if prompt_mask is not None:
        if prompts:
            raise PartialsegError("give either boxes or a prompt mask, not both")
        if label is None:
            raise PartialsegError("a prompt mask needs the label value of the object (--label)")
        ref = load_volume(prompt_mask)
        check_same_grid(vol, ref)
        obj = ref.array == int(label)
        if not obj.any():
            raise InputError(prompt_mask, f"has no voxel with label {label}")
        prompts = box_prompts_from_mask(obj, padding=padding)
    if not prompts:
        raise PartialsegError("no prompt: give at least one box (or a prompt mask and a label)")
    gen = build_generalist(backend, **options)
    t = time.perf_counter()
    mask = gen.segment(vol.array, vol.spacing, prompts)
    seconds = time.perf_counter() - t
    save_volume(mask.astype(np.uint8), vol.affine, out_path, overwrite=overwrite)
    return BoxSegmentation(out_path, int(mask.sum()), prompts, seconds)
