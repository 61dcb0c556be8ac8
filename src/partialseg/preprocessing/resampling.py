"""Separable B-spline resampling of images and label maps between edge-aligned grids.

Interpolation is separable: one axis at a time, spline prefilter only along the axis being
resampled, ``order + 1`` taps per output voxel. For a tensor-product B-spline this equals full 3D
spline interpolation (the per-axis prefilters commute with interpolation along the other axes),
but costs ``3 * (order + 1)`` instead of ``(order + 1) ** 3`` multiply-adds per voxel, and never
builds a coordinate array. Boundaries are half-sample symmetric (``'reflect'``), which matches the
edge-aligned grid: samples up to half a voxel outside the centres see the edge voxel's value.
"""

from __future__ import annotations

import math

import numpy as np

from partialseg.preprocessing.config import Shape


def _source_coords(n_out: int, n_in: int) -> np.ndarray:
    """Old continuous indices of the new voxel centres (edge-aligned grids), float64 (n_out,)."""
    return (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    """Half-sample symmetric index extension (``d c b a | a b c d | d c b a``), scipy's 'reflect'."""
    m = np.mod(idx, 2 * n)
    return np.where(m >= n, 2 * n - 1 - m, m)


def _bspline(x: np.ndarray, order: int) -> np.ndarray:
    """Centred cardinal B-spline of degree ``order`` ≥ 1 (truncated-power form), float64."""
    k = order
    out = np.zeros_like(x, dtype=np.float64)
    for i in range(k + 2):
        out += (-1) ** i * math.comb(k + 1, i) * np.maximum(x + (k + 1) / 2 - i, 0.0) ** k
    return np.maximum(out / math.factorial(k), 0.0)


def _nearest_indices(n_out: int, n_in: int) -> np.ndarray:
    # round((j + 0.5) * n_in / n_out - 0.5) with halves up == floor((j + 0.5) * n_in / n_out)
    return np.minimum(np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.intp), n_in - 1)


def _axis_taps(n_out: int, n_in: int, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Input indices (reflected into ``0..n_in-1``) and weights of each output sample: ``(n_out, order+1)``."""
    x = _source_coords(n_out, n_in)
    j = np.floor(x - (order - 1) / 2).astype(np.intp)[:, None] + np.arange(order + 1)
    return _reflect(j, n_in), _bspline(x[:, None] - j, order).astype(np.float32)


def _resample_axis(
    array: np.ndarray, axis: int, n_out: int, order: int, *, crop: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """Resample one axis to ``n_out`` samples (order 0: nearest, keeps dtype; else float32 spline).

    ``crop = (n_in, offset, out_lo, out_hi)`` (linear only): ``array`` holds input indices
    ``offset ..`` of an axis of full length ``n_in``; compute only outputs ``out_lo .. out_hi-1``
    (the caller guarantees their taps lie inside the crop). Results equal the full computation.
    """
    from scipy import ndimage

    n_in = array.shape[axis]
    if order == 0:
        return np.take(array, _nearest_indices(n_out, n_in), axis=axis)
    arr = np.asarray(array, dtype=np.float32)
    if crop is None:
        offset, out_lo, out_hi = 0, 0, n_out
        if order >= 2 and n_in > 1:
            # interpolating B-spline coefficients along this axis only; float32 output halves memory
            arr = ndimage.spline_filter1d(arr, order, axis=axis, output=np.float32, mode="reflect")
    else:
        if order != 1:
            raise ValueError("cropped resampling is exact only without a spline prefilter (order 1)")
        n_in, offset, out_lo, out_hi = crop
    idx, w = _axis_taps(n_out, n_in, order)
    idx, w = idx[out_lo:out_hi] - offset, w[out_lo:out_hi]
    bshape = [1] * arr.ndim
    bshape[axis] = out_hi - out_lo
    out: np.ndarray | None = None
    for t in range(order + 1):
        term = np.take(arr, idx[:, t], axis=axis)
        term *= w[:, t].reshape(bshape)
        if out is None:
            out = term
        else:
            out += term
    assert out is not None
    return out


def resample(array: np.ndarray, shape: Shape, order: int, *, first_axis: int = 0) -> np.ndarray:
    """Resample the spatial axes ``first_axis .. first_axis + 2`` of ``array`` onto ``shape``.

    Edge-aligned grids (:mod:`partialseg.preprocessing.geometry`). ``order`` 0 is nearest neighbour (dtype kept); 1..5 are
    B-splines (float32). Axes whose size does not change are left untouched (exact).
    """
    # shrink first: later axes then work on fewer voxels
    axes = sorted(range(3), key=lambda a: shape[a] / array.shape[first_axis + a])
    out = array
    for a in axes:
        if out.shape[first_axis + a] != shape[a]:
            out = _resample_axis(out, first_axis + a, int(shape[a]), order)
    return out


def _resample_labels_onehot(labels: np.ndarray, shape: Shape) -> np.ndarray:
    """Linear interpolation of each class's indicator, then argmax (ties go to the lower label).

    Each foreground class is resampled only inside its bounding box (plus the one-voxel reach of
    linear taps), and background is ``1 - sum(foreground)`` (linear weights sum to one), so the
    cost scales with the organs' size, not ``classes × volume``, and memory stays at three volumes.
    """
    from scipy import ndimage

    n_in = labels.shape
    out = np.zeros(shape, dtype=labels.dtype)
    best = np.zeros(shape, dtype=np.float32)
    total = np.zeros(shape, dtype=np.float32)
    if labels.size == 0 or int(labels.max()) <= 0:
        return out
    taps = [_axis_taps(shape[a], n_in[a], 1)[0] if shape[a] != n_in[a] else None for a in range(3)]
    for c, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        in_sl, out_sl, crops = [], [], []
        for a in range(3):
            lo, hi = box[a].start, box[a].stop
            if taps[a] is None:  # unchanged axis: copied, so the box maps onto itself
                in_sl.append(slice(lo, hi))
                out_sl.append(slice(lo, hi))
                crops.append(None)
                continue
            touches = np.flatnonzero(((taps[a] >= lo) & (taps[a] < hi)).any(axis=1))
            if touches.size == 0:  # downsampling > 2x can step over a thin structure entirely
                break
            o_lo, o_hi = int(touches[0]), int(touches[-1]) + 1
            # taps of those outputs lie within one voxel of the box (reflection stays inside too)
            i_lo, i_hi = max(lo - 1, 0), min(hi + 1, n_in[a])
            in_sl.append(slice(i_lo, i_hi))
            out_sl.append(slice(o_lo, o_hi))
            crops.append((n_in[a], i_lo, o_lo, o_hi))
        if len(out_sl) < 3:
            continue
        p = (labels[tuple(in_sl)] == c).astype(np.float32)
        for a in sorted(range(3), key=lambda a: shape[a] / n_in[a]):
            if crops[a] is not None:
                p = _resample_axis(p, a, shape[a], 1, crop=crops[a])  # type: ignore[arg-type]
        region = tuple(out_sl)
        b = best[region]
        better = p > b
        out[region][better] = c
        np.maximum(b, p, out=b)
        total[region] += p
    out[(1.0 - total) >= best] = 0
    return out


def resample_labels(labels: np.ndarray, shape: Shape, mode: str) -> np.ndarray:
    if tuple(labels.shape) == tuple(shape):
        return labels
    if mode == "onehot":
        return _resample_labels_onehot(labels, shape)
    return resample(labels, shape, 0)
