"""What a phantom is made with and what it returns: :class:`PhantomConfig`, the presets, :class:`Phantom`, case seeds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from partialseg.errors import PartialsegError


@dataclass(frozen=True)
class PhantomConfig:
    """Geometry and difficulty of the synthetic CT.

    ``shape`` is (x, y, z) voxels on RAS axes (axis 0 toward patient right, 1 anterior,
    2 superior), ``spacing`` in mm. The field of view is centred on world 0 and must hold
    the abdomen from the prostate to the liver dome (about 384 x 330 x 360 mm at scale 1).
    """

    shape: tuple[int, int, int] = (64, 60, 52)
    spacing: tuple[float, float, float] = (6.0, 5.5, 7.0)
    #: sub-voxels per axis of the internal painting grid; >1 gives true partial-volume edges
    oversample: int = 2
    #: standard deviation of the image noise, HU (per case scaled by 0.75..1.3)
    noise_std: float = 15.0
    #: Gaussian point-spread function sigma, mm, applied before the block average
    blur_mm: float = 1.5
    #: amplitude (sd, mm) of the smooth whole-body random displacement field
    deformation_mm: float = 4.0
    #: relative amplitude of the low-frequency surface waves on every organ
    organ_deformation: float = 0.10
    #: sd of the log of per-organ size factors
    organ_size_variation: float = 0.10
    #: sd (mm) of per-organ-group position offsets
    position_jitter_mm: float = 5.0
    #: sd (HU) of the per-case offset of each tissue's mean HU
    contrast_jitter_hu: float = 8.0
    #: probability that a case is portal-venous contrast-enhanced rather than non-contrast (the default
    #: matches the shared real example; raising it adds a second appearance mode and makes learning harder)
    contrast_fraction: float = 0.0
    #: probability that a case is female (uterus instead of prostate in label 15)
    female_fraction: float = 0.5
    #: factor on the cross-section of the thin organs (adrenal plates, esophagus). Real ones are 1-2
    #: voxels thick at the cpu preset's 6 mm, too few for any model to learn in minutes; thickening them
    #: there keeps them in the benchmark instead of scoring 0 for every method
    thin_organ_scale: float = 1.0

    def __post_init__(self) -> None:
        shape = tuple(int(v) for v in self.shape)
        spacing = tuple(float(v) for v in self.spacing)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", spacing)
        if len(shape) != 3 or min(shape) < 8:
            raise PartialsegError(f"phantom shape must be three sizes >= 8 voxels, got {shape}")
        if len(spacing) != 3 or min(spacing) <= 0:
            raise PartialsegError(f"phantom spacing must be three positive mm values, got {spacing}")
        if not 1 <= self.oversample <= 4:
            raise PartialsegError(f"oversample must be 1..4, got {self.oversample}")
        if not 0.5 <= self.thin_organ_scale <= 3.0:
            raise PartialsegError(f"phantom thin_organ_scale must be in [0.5, 3], got {self.thin_organ_scale}")
        for name in ("noise_std", "blur_mm", "deformation_mm", "organ_deformation", "organ_size_variation",
                     "position_jitter_mm", "contrast_jitter_hu"):
            if getattr(self, name) < 0:
                raise PartialsegError(f"phantom {name} must be >= 0, got {getattr(self, name)}")
        for name in ("contrast_fraction", "female_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise PartialsegError(f"phantom {name} must be in [0, 1], got {getattr(self, name)}")


PRESETS: dict[str, PhantomConfig] = {
    # ~200 k voxels, 231 mm^3 each: adrenals are tens of voxels, training runs on a CPU
    "cpu": PhantomConfig(thin_organ_scale=1.6),
    # the papers' 1 x 1 x 3 mm regime, at 1.5 mm in-plane to keep generation in seconds
    "gpu": PhantomConfig(shape=(256, 224, 120), spacing=(1.5, 1.5, 3.0), oversample=1, blur_mm=1.0),
}


@dataclass
class Phantom:
    """One synthetic case.

    ``image``: float32 HU, shape ``config.shape``. ``labels``: uint8 AMOS15 values 0..15.
    ``affine``: 4x4 voxel-to-world RAS+ mm. ``info``: the per-case draws (phase, sex, scale, HU).
    """

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` of a dataset made with ``seed`` (independent of the case count)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint32)[0])
