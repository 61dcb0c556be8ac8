"""How images and labels are brought onto the training grid: :class:`PreprocessConfig`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from partialseg.errors import PartialsegError

NORMALIZATIONS: tuple[str, ...] = ("tct", "nnunet", "zscore")
LABEL_RESAMPLINGS: tuple[str, ...] = ("nearest", "onehot")
MAX_SPLINE_ORDER = 5  # scipy's spline filter supports orders 2..5

Spacing = tuple[float, float, float]
Shape = tuple[int, int, int]


@dataclass(frozen=True)
class PreprocessConfig:
    """How images and labels are brought onto the training grid.

    ``spacing``: target voxel size (mm) along the RAS axes; ``None`` means the dataset's median
    spacing after reorientation (resolved by ``prepare_dataset`` and stored concretely).
    ``normalization``: ``"tct"`` (clip HU to ``clip`` and scale to [0, 1]) or ``"nnunet"``
    (clip to the 0.5/99.5 foreground percentiles, z-score with the foreground mean/std), both for
    CT; ``"zscore"``: per image, z-score over the body (voxels above the image's minimum), 0
    outside it (nnU-Net's rule for MR and every non-CT channel). ``prepare_dataset`` uses
    ``"zscore"`` for a dataset whose ``channel_names`` is not CT, whatever was asked.
    ``image_order``: spline order (1..5) for images. ``label_resampling``: ``"nearest"`` or
    ``"onehot"`` (each class resampled linearly as a soft mask, then argmax, like nnU-Net).
    """

    spacing: Spacing | None = None
    normalization: str = "tct"
    clip: tuple[float, float] = (-1024.0, 1024.0)
    image_order: int = 3
    label_resampling: str = "nearest"

    def __post_init__(self) -> None:
        if self.spacing is not None:
            try:
                sp = tuple(float(s) for s in self.spacing)
            except (TypeError, ValueError):
                raise PartialsegError(f"spacing must be three numbers in mm, got {self.spacing!r}") from None
            if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
                raise PartialsegError(f"spacing must be three positive numbers in mm, got {self.spacing!r}")
            object.__setattr__(self, "spacing", sp)
        if self.normalization not in NORMALIZATIONS:
            raise PartialsegError(f"unknown normalization {self.normalization!r}; choose from {list(NORMALIZATIONS)}")
        try:
            lo, hi = (float(c) for c in self.clip)
        except (TypeError, ValueError):
            raise PartialsegError(f"clip must be two numbers (HU), got {self.clip!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise PartialsegError(f"clip must be (low, high) with low < high, got {self.clip!r}")
        object.__setattr__(self, "clip", (lo, hi))
        if isinstance(self.image_order, bool) or not isinstance(self.image_order, int | np.integer) or not (
            1 <= int(self.image_order) <= MAX_SPLINE_ORDER
        ):
            raise PartialsegError(f"image_order must be an integer in 1..{MAX_SPLINE_ORDER}, got {self.image_order!r}")
        object.__setattr__(self, "image_order", int(self.image_order))
        if self.label_resampling not in LABEL_RESAMPLINGS:
            raise PartialsegError(
                f"unknown label_resampling {self.label_resampling!r}; choose from {list(LABEL_RESAMPLINGS)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "spacing": None if self.spacing is None else list(self.spacing),
            "normalization": self.normalization,
            "clip": list(self.clip),
            "image_order": self.image_order,
            "label_resampling": self.label_resampling,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreprocessConfig:
        known = {"spacing", "normalization", "clip", "image_order", "label_resampling"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise PartialsegError(f"unknown preprocessing options {unknown}; known: {sorted(known)}")
        kw = dict(d)
        if kw.get("spacing") is not None:
            kw["spacing"] = tuple(kw["spacing"])
        if "clip" in kw:
            kw["clip"] = tuple(kw["clip"])
        return cls(**kw)

