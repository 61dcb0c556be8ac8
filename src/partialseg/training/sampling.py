"""Patch sampling with foreground oversampling over *annotated* classes (class-balanced).

As in nnU-Net, a fixed share of patches is forced to contain foreground; unlike nnU-Net the
class is drawn uniformly among the case's annotated classes that are present, so a 40-voxel
adrenal is sampled as often as the liver, and an unannotated organ never steers sampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from partialseg.labels import LabelSpace


@dataclass
class Patch:
    image: np.ndarray  # (1, px, py, pz) float32
    label: np.ndarray  # (px, py, pz) int64
    annotated: frozenset[int]
    pseudo: frozenset[int]


def crop_with_padding(array: np.ndarray, lo: Sequence[int], size: Sequence[int], pad_value: float,
                      within: tuple[Sequence[int], Sequence[int]] | None = None) -> np.ndarray:
    """Crop the last three axes at ``lo`` (may be negative / overrun) to ``size``, padding outside.

    ``within``: a box ``[a, b)`` of the crop's own coordinates; only that part is read from ``array``,
    the rest is ``pad_value`` (the nnU-Net augmentation's larger patch, of which a rotation reads a part).
    """
    spatial = array.shape[-3:]
    out = np.full(array.shape[:-3] + tuple(size), pad_value, dtype=array.dtype)
    a, b = within if within is not None else ((0, 0, 0), size)
    src = tuple(slice(max(l + i, 0), min(l + j, n)) for l, i, j, n in zip(lo, a, b, spatial))
    dst = tuple(slice(sl.start - l, sl.stop - l) for sl, l in zip(src, lo))
    if all(sl.stop > sl.start for sl in src):
        out[(..., *dst)] = array[(..., *src)]
    return out


def choose_patch_origin(
    shape: Sequence[int], patch: Sequence[int], rng: np.random.Generator, centre: Sequence[int] | None = None
) -> list[int]:
    """Lower corner of a patch: random in the volume, or containing ``centre`` at a random offset.

    When the volume is smaller than the patch along an axis the patch is centred (padding both sides).
    """
    lo = []
    for d, (n, p) in enumerate(zip(shape, patch)):
        if n <= p:
            lo.append(-((p - n) // 2))
            continue
        if centre is None:
            lo.append(int(rng.integers(0, n - p + 1)))
        else:
            # any origin that keeps the voxel inside the patch, clipped to stay inside the volume
            a, b = max(0, centre[d] - p + 1), min(n - p, centre[d])
            lo.append(int(rng.integers(a, b + 1)) if b >= a else int(np.clip(centre[d] - p // 2, 0, n - p)))
    return lo


def sample_patch(
    image: np.ndarray,
    label: np.ndarray,
    annotated: frozenset[int],
    class_locations: dict[int, np.ndarray],
    patch_size: Sequence[int],
    rng: np.random.Generator,
    *,
    force_foreground: bool,
    pad_value: float,
    pseudo: frozenset[int] = frozenset(),
    margin: Sequence[int] = (0, 0, 0),
    within: tuple[Sequence[int], Sequence[int]] | None = None,
    label_dtype: type = np.int64,
) -> Patch:
    """One patch from a case. ``image`` (1, X, Y, Z), ``label`` (X, Y, Z).

    ``margin``: the patch is chosen as without it (so the same voxels are in its centre) and ``margin``
    voxels are added on both sides of each axis (the larger patch nnU-Net's spatial augmentation samples
    from); ``within``: only that box of the result is read (``crop_with_padding``); ``label_dtype``: of the
    label patch (int16 for those larger patches).
    """
    centre = None
    if force_foreground:
        classes = sorted(c for c in annotated | pseudo if c in class_locations and len(class_locations[c]))
        if classes:
            c = classes[int(rng.integers(len(classes)))]
            locs = class_locations[c]
            centre = [int(v) for v in locs[int(rng.integers(len(locs)))]]
    lo = choose_patch_origin(label.shape, patch_size, rng, centre)
    lo = [o - m for o, m in zip(lo, margin)]
    size = [p + 2 * m for p, m in zip(patch_size, margin)]
    img = crop_with_padding(image, lo, size, pad_value, within).astype(np.float32, copy=False)
    lab = crop_with_padding(label, lo, size, 0, within).astype(label_dtype, copy=False)
    return Patch(img, lab, annotated, pseudo)


def mirror_left_right(patch: Patch, label_space: LabelSpace) -> Patch:
    """Flip patient left-right (array axis 0 in RAS) and swap left/right labels and annotated sets."""
    lut = label_space.left_right_swap()
    swap = lambda s: frozenset(int(lut[c]) for c in s)  # noqa: E731
    return Patch(
        np.ascontiguousarray(patch.image[:, ::-1]),
        lut[np.ascontiguousarray(patch.label[::-1])],
        swap(patch.annotated),
        swap(patch.pseudo),
    )
