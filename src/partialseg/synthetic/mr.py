"""MR-like images of the phantoms: the CT phantom's tissues given a T1-like contrast, so that the MR path
(per-image z-score normalisation, ``channel_names`` other than CT) is tested end to end."""

from __future__ import annotations

import numpy as np

#: MR-like (T1-weighted) signal of the phantom's tissues, by their CT value: air 0, fat bright, fluid
#: dark, soft tissue in between and rising with density, bone (cortex) dark
_MR_HU = np.array([-1000.0, -500.0, -100.0, 0.0, 40.0, 80.0, 200.0, 700.0, 2000.0])
_MR_SIGNAL = np.array([0.0, 20.0, 900.0, 150.0, 420.0, 560.0, 380.0, 120.0, 60.0])


def mr_intensities(hu: np.ndarray, seed: int) -> np.ndarray:
    """An MR-like image of a phantom from its CT (HU) image: a T1-like tissue contrast, a smooth
    multiplicative bias field and Rician-like noise; non-negative, air 0 (float32)."""
    rng = np.random.default_rng(seed)
    signal = np.interp(hu.astype(np.float32), _MR_HU, _MR_SIGNAL).astype(np.float32)
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in hu.shape]
    gx, gy, gz = np.meshgrid(*axes, indexing="ij")
    a = rng.uniform(-0.2, 0.2, 3).astype(np.float32)
    bias = np.exp(a[0] * gx + a[1] * gy + a[2] * gz)
    noisy = signal * bias + rng.normal(0, 12.0, hu.shape).astype(np.float32)
    out = np.abs(noisy)
    out[hu < -500] = 0.0  # the scanner's background outside the body
    return out.astype(np.float32)
