"""Plausibility checks on an image's intensities (the size check after resampling lives with the
grid, ``preprocessing.geometry.check_resampled_size``).

An 8-bit export of a CT scan is clipped by the HU window into a nearly constant image the network
segments as garbage; this catches it before it runs without a word.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from partialseg.errors import warn


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
