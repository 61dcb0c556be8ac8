"""Forward (file → training grid) and inverse (training grid → file) transforms of images, labels
and probability maps, and the foreground locations patch sampling draws from."""

from __future__ import annotations

import numpy as np

from partialseg.errors import InputError, PartialsegError
from partialseg.io import AFFINE_ATOL, Volume
from partialseg.preprocessing.config import LABEL_RESAMPLINGS, PreprocessConfig, Spacing
from partialseg.preprocessing.geometry import GridMeta, check_resampled_size, from_ras, grid_for, to_ras
from partialseg.preprocessing.normalisation import NormalizationStats, normalize_intensities
from partialseg.preprocessing.resampling import resample, resample_labels

LOCATIONS_PER_CLASS = 2000  # like nnU-Net's class_locations, enough to sample foreground patches


def preprocess_image(
    image: Volume,
    config: PreprocessConfig,
    stats: NormalizationStats | None = None,
    target_spacing: Spacing | None = None,
) -> tuple[np.ndarray, GridMeta]:
    """Reorient to RAS, normalise, resample. Returns ``(1, X, Y, Z)`` float32 and its ``GridMeta``.

    ``target_spacing`` (mm, RAS axis order) defaults to ``config.spacing``, then to the image's
    own spacing. Normalisation comes before resampling (clipping first keeps air/metal outliers
    from ringing into the body), and the spline output is clipped back into the normalised range.
    """
    arr = np.asarray(image.array)
    if arr.ndim != 3:
        raise InputError(image.path, f"expected a 3D image, got shape {arr.shape}")
    spacing = target_spacing if target_spacing is not None else config.spacing
    meta = grid_for(image.affine, arr.shape, spacing)  # type: ignore[arg-type]
    check_resampled_size(meta, image.path)
    norm, (lo, hi) = normalize_intensities(arr, config, stats)
    out = resample(to_ras(norm, meta.ornt), meta.shape, config.image_order)
    if out.shape != meta.shape:  # never expected; guards the shape contract of the cache
        raise PartialsegError(f"internal error: resampled shape {out.shape} != planned {meta.shape}")
    if config.image_order >= 2 and out.shape != meta.ras_shape:
        np.clip(out, lo, hi, out=out)
    return np.ascontiguousarray(out, dtype=np.float32)[None], meta


def preprocess_label(label: Volume, meta: GridMeta, config: PreprocessConfig) -> np.ndarray:
    """The label map on the preprocessed grid of its image: ``(X, Y, Z)`` int16."""
    arr = np.asarray(label.array)
    if tuple(arr.shape) != meta.original_shape:
        raise InputError(label.path, f"shape {arr.shape} does not match its image's shape {meta.original_shape}")
    if not np.allclose(label.affine, meta.original_affine, atol=AFFINE_ATOL):
        raise InputError(label.path, "affine does not match its image's affine")
    if arr.dtype != np.int16:
        arr = arr.astype(np.int16)
    out = resample_labels(to_ras(arr, meta.ornt), meta.shape, config.label_resampling)
    return np.ascontiguousarray(out, dtype=np.int16)


def restore_to_original(
    array: np.ndarray, meta: GridMeta, *, is_label: bool, label_resampling: str = "onehot"
) -> np.ndarray:
    """Map an array on the preprocessed grid back onto the original file's grid and axis order.

    ``is_label=True``: ``(X, Y, Z)`` integer labels, dtype kept, resampled by ``label_resampling``:
    ``"onehot"`` (default: each class's indicator linearly, then argmax; on the real CT, 5 mm back
    to 3 mm, it gains about +0.035 mean Dice over ``"nearest"``, +0.08 on the adrenals). Axes whose
    size did not change are copied, so at unchanged spacing the result is exact in either mode.

    ``is_label=False``: ``(C, X, Y, Z)`` (or ``(X, Y, Z)``) float maps such as probabilities,
    linear per channel (weights sum to one, so probabilities still sum to 1), float32.

    Saving the result with ``meta.original_affine`` reproduces the input geometry.
    """
    arr = np.asarray(array)
    if is_label:
        if tuple(arr.shape) != meta.shape:
            raise PartialsegError(f"label array has shape {arr.shape}, the preprocessed grid is {meta.shape}")
        if label_resampling not in LABEL_RESAMPLINGS:
            raise PartialsegError(
                f"unknown label_resampling {label_resampling!r}; choose from {list(LABEL_RESAMPLINGS)}"
            )
        ras = resample_labels(arr, meta.ras_shape, label_resampling)
        return np.ascontiguousarray(from_ras(ras, meta.ornt))
    squeeze = arr.ndim == 3
    if squeeze:
        arr = arr[None]
    if arr.ndim != 4 or tuple(arr.shape[1:]) != meta.shape:
        raise PartialsegError(f"expected (C, *{meta.shape}) maps, got shape {array.shape}")
    out = np.empty((arr.shape[0], *meta.original_shape), dtype=np.float32)
    for c in range(arr.shape[0]):  # one channel at a time: full-resolution temporaries stay single-volume
        ras = resample(arr[c].astype(np.float32, copy=False), meta.ras_shape, 1)
        out[c] = from_ras(ras, meta.ornt)
    return out[0] if squeeze else out


def restore_labels_from_probabilities(probabilities: np.ndarray, meta: GridMeta) -> np.ndarray:
    """``argmax`` of the per-channel linear restoration of ``(C, X, Y, Z)`` probabilities → uint8/int16.

    nnU-Net's export: smoother boundaries than restoring the argmax with nearest neighbour, with
    two full-resolution float volumes of memory instead of ``C``.
    """
    probs = np.asarray(probabilities)
    if probs.ndim != 4 or tuple(probs.shape[1:]) != meta.shape:
        raise PartialsegError(f"expected (C, *{meta.shape}) probabilities, got shape {probs.shape}")
    dtype = np.uint8 if probs.shape[0] <= 256 else np.int16
    best = np.full(meta.ras_shape, -np.inf, dtype=np.float32)
    out = np.zeros(meta.ras_shape, dtype=dtype)
    for c in range(probs.shape[0]):
        p = resample(probs[c].astype(np.float32, copy=False), meta.ras_shape, 1)
        better = p > best
        out[better] = c
        np.maximum(best, p, out=best)
    return np.ascontiguousarray(from_ras(out, meta.ornt))


# ---- foreground locations -----------------------------------------------------------------


def class_locations(
    labels: np.ndarray, classes: frozenset[int] | set[int], k: int = LOCATIONS_PER_CLASS, seed: int = 0
) -> dict[int, np.ndarray]:
    """Up to ``k`` random voxel indices ``(K, 3)`` int32 of each class in ``classes`` (sorted).

    A class with no voxels gets an empty ``(0, 3)`` array: annotated-and-absent is information.
    One sort of the foreground voxels instead of one full scan per class.
    """
    rng = np.random.default_rng(seed)
    flat = labels.ravel()
    fg = np.flatnonzero(flat)
    vals = flat[fg]
    order = np.argsort(vals, kind="stable")
    fg, vals = fg[order], vals[order]
    out: dict[int, np.ndarray] = {}
    for c in sorted(int(c) for c in classes):
        lo, hi = np.searchsorted(vals, [c, c + 1])
        idx = fg[lo:hi]
        if idx.size > k:
            idx = np.sort(rng.choice(idx, k, replace=False))
        out[c] = np.stack(np.unravel_index(idx, labels.shape), axis=1).astype(np.int32).reshape(-1, 3)
    return out

