"""Box prompts for the IPnP generalist (methods.md, "IPnP", step 3).

A ``BoxPrompt`` is a 2D box on one slice of a 3D array, stored as half-open 3D bounds whose
extent along the slice axis is exactly one voxel (the form nnInteractive takes). Axes are the
axes of the image array given to the generalist; for partialseg's RAS arrays (X, Y, Z):
axis 2 is axial (S-I), axis 0 sagittal (L-R), axis 1 coronal (A-P).

``box_prompts_from_mask`` turns a (specialist-predicted or reference) mask into the paper's two
orthogonal prompts: on the median axial slice and the median sagittal slice among the slices
that contain the mask, the 2D bounding box expanded by ``padding`` voxels and clipped.
``roi_from_prompts`` is the 3D box those prompts span (the ROI of the refinement step, Eq. 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["AXIS_NAMES", "BoxPrompt", "box_prompts_from_mask", "roi_from_prompts", "prompts_bbox"]

#: Names of the array axes for RAS arrays: the plane orthogonal to each axis.
AXIS_NAMES: dict[int, str] = {0: "sagittal", 1: "coronal", 2: "axial"}


@dataclass(frozen=True)
class BoxPrompt:
    """A 2D box on slice ``index`` orthogonal to ``axis``: voxels ``lo[d] <= i_d < hi[d]``.

    ``hi[axis] - lo[axis] == 1`` and ``lo[axis] == index``. Every other axis has ``hi > lo``.
    """

    axis: int
    index: int
    lo: tuple[int, int, int]
    hi: tuple[int, int, int]

    def __post_init__(self) -> None:
        lo = tuple(int(v) for v in self.lo)
        hi = tuple(int(v) for v in self.hi)
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)
        object.__setattr__(self, "axis", int(self.axis))
        object.__setattr__(self, "index", int(self.index))
        if len(lo) != 3 or len(hi) != 3:
            raise ValueError(f"a box prompt needs 3D bounds, got lo={lo} hi={hi}")
        if self.axis not in (0, 1, 2):
            raise ValueError(f"box prompt axis must be 0, 1 or 2, got {self.axis}")
        if lo[self.axis] != self.index or hi[self.axis] != self.index + 1:
            raise ValueError(
                f"box prompt on slice {self.index} of axis {self.axis} must span exactly that slice "
                f"along the axis, got [{lo[self.axis]}, {hi[self.axis]})"
            )
        if min(lo) < 0 or any(h <= l for l, h in zip(lo, hi)):
            raise ValueError(f"box prompt bounds must be non-negative with hi > lo on every axis, got lo={lo} hi={hi}")

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """The box as index slices of the 3D array (one voxel thick along ``axis``)."""
        return tuple(slice(l, h) for l, h in zip(self.lo, self.hi))  # type: ignore[return-value]

    def fits(self, shape: Sequence[int]) -> bool:
        """Whether the box lies inside an array of ``shape``."""
        return all(h <= s for h, s in zip(self.hi, shape))

    def __str__(self) -> str:  # the CLI's box syntax, see ``partialseg.generalist.base.parse_box``
        parts = []
        for d, name in enumerate("xyz"):
            parts.append(f"{name}={self.index}" if d == self.axis else f"{name}={self.lo[d]}:{self.hi[d]}")
        return ",".join(parts)


def _median_index(present: np.ndarray) -> int:
    """The median of the sorted indices where ``present`` is true; lower middle for an even count."""
    idx = np.flatnonzero(present)
    return int(idx[(len(idx) - 1) // 2])


def box_prompts_from_mask(mask: np.ndarray, *, axes: Sequence[int] = (2, 0), padding: int = 5) -> list[BoxPrompt]:
    """The paper's prompts for one object: one 2D box per axis in ``axes`` (default axial, sagittal).

    For each axis: among the slices orthogonal to it that contain the mask, the slice at the
    median index (for an even count of such slices the *lower* of the two middle ones, e.g. of
    slices 3, 4, 7, 9 it is 4); on that slice the 2D bounding box of the mask, expanded by
    ``padding`` voxels on every side and clipped to the volume. An empty mask gives ``[]``.
    Slices that contain the mask need not be contiguous; the median is over the ones that do.
    """
    m = np.asarray(mask).astype(bool, copy=False)
    if m.ndim != 3:
        raise ValueError(f"mask must be 3D, got shape {m.shape}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if not m.any():
        return []
    shape = m.shape
    prompts = []
    for axis in axes:
        axis = int(axis)
        if axis not in (0, 1, 2):
            raise ValueError(f"prompt axes must be 0, 1 or 2, got {axis}")
        others = tuple(d for d in range(3) if d != axis)
        k = _median_index(m.any(axis=others))
        sl = np.take(m, k, axis=axis)  # 2D, axes = others in order
        lo = [0, 0, 0]
        hi = [0, 0, 0]
        lo[axis], hi[axis] = k, k + 1
        for j, d in enumerate(others):
            present = np.flatnonzero(sl.any(axis=1 - j))
            lo[d] = max(int(present[0]) - padding, 0)
            hi[d] = min(int(present[-1]) + 1 + padding, shape[d])
        prompts.append(BoxPrompt(axis, k, tuple(lo), tuple(hi)))  # type: ignore[arg-type]
    return prompts


def prompts_bbox(prompts: Sequence[BoxPrompt]) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Half-open 3D bounds spanned by the prompts, undilated (see ``roi_from_prompts``)."""
    if not prompts:
        raise ValueError("no prompts: the ROI of an object needs at least one box")
    lo, hi = [0, 0, 0], [0, 0, 0]
    for d in range(3):
        # an axis is spanned by the boxes that extend along it; a box orthogonal to it covers only
        # its one slice, so it counts only when every box is orthogonal to this axis
        use = [p for p in prompts if p.axis != d] or list(prompts)
        # ... and the bounds always hold every box's own slice: prompts from a mask in several pieces
        # can put the sagittal slice outside the axial box's extent
        lo[d] = min(p.lo[d] for p in prompts if p in use or p.axis == d)
        hi[d] = max(p.hi[d] for p in prompts if p in use or p.axis == d)
    return tuple(lo), tuple(hi)  # type: ignore[return-value]


def roi_from_prompts(prompts: Sequence[BoxPrompt], shape: Sequence[int], dilation: int) -> tuple[slice, slice, slice]:
    """The 3D box spanned by orthogonal 2D boxes, dilated by ``dilation`` voxels and clipped to ``shape``.

    Along each axis the extent is the union of the extents of the boxes that *lie along* that
    axis (a box orthogonal to the axis covers only its slice and is ignored there, unless every
    box is orthogonal to it). For the paper's pair: the axial box gives X and Y, the sagittal box
    gives Z and Y, and Y is the union of both.
    """
    if dilation < 0:
        raise ValueError(f"dilation must be >= 0, got {dilation}")
    lo, hi = prompts_bbox(prompts)
    return tuple(
        slice(max(lo[d] - dilation, 0), min(hi[d] + dilation, int(shape[d]))) for d in range(3)
    )  # type: ignore[return-value]
