"""Plausibility checks on an image before preprocessing: size after resampling, CT intensities.

Both catch headers and files that would otherwise run (or crash) without a word: a voxel size
×1000 in a header asks the resampler for hundreds of GiB, and an 8-bit export of a CT scan is
clipped by the HU window into a nearly constant image the network segments as garbage.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from partialseg.errors import InputError, warn

if TYPE_CHECKING:
    from partialseg.preprocessing.geometry import GridMeta

#: largest resampled volume (voxels) preprocessing will allocate: 4 GiB as float32, about 16
#: times a 512×512×1000 CT at its own spacing
MAX_RESAMPLED_VOXELS = 2**30


def check_resampled_size(meta: GridMeta, path: str | Path | None, limit: int = MAX_RESAMPLED_VOXELS) -> None:
    """Raise ``InputError`` naming ``path`` before allocating a resampled grid over ``limit`` voxels."""
    n = int(np.prod(np.array(meta.shape, dtype=np.int64)))
    if n <= limit:
        return
    spacing = ", ".join(f"{s:g}" for s in meta.ras_spacing)
    target = ", ".join(f"{t:g}" for t in meta.target_spacing)
    raise InputError(
        path,
        f"resampling {list(meta.ras_shape)} voxels of ({spacing}) mm to ({target}) mm would make "
        f"{list(meta.shape)} = {n / 1e9:.2f} G voxels ({n * 4 / 2**30:.0f} GiB as float32), over the limit of "
        f"{limit / 1e9:.2f} G: check the voxel size in the header (pixdim in µm instead of mm?) or the target spacing",
    )


def warn_if_not_ct(array: np.ndarray, path: str | Path | None) -> None:
    """Warn when the intensities cannot be CT in Hounsfield units (no value below 0: no air, no fat).

    The normalisations clip HU windows, so such an image (an 8-bit export, or one whose +1024
    offset was not removed) trains or predicts without error but wrongly.
    """
    arr = np.asarray(array)
    if arr.size == 0:
        return
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0:
        return
    what = "an 8-bit image" if arr.dtype == np.uint8 or hi <= 255 else "no negative value"
    warn(path, f"intensities span [{lo:g}, {hi:g}] ({what}), which cannot be CT in Hounsfield units (air is about "
               "-1000, fat about -100): results will be wrong; convert the image to HU (rescale slope/intercept)")
