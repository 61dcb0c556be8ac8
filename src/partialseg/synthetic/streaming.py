"""The image of a large phantom, made plane by plane along axis 0 (:func:`partialseg.synthetic.grid.is_large`).

The same steps as :func:`partialseg.synthetic.render.render` (HU and texture per tissue, Gaussian point-spread
blur, correlated noise, rounding), arranged so that no full-volume temporary is made: each plane of axis 0 is
looked up and blurred in-plane while it is in the CPU cache, then the volume is filtered along axis 0 in place
with a ring of the few original planes still needed. On 512x512x160 voxels this takes a fraction of the time
of whole-volume filters, which spend most of theirs on memory traffic and on allocating 168 MB temporaries.
Results match the whole-volume formulas up to float32 rounding, except the noise, which is drawn from another
stream (16-bit integers through a table of normal quantiles instead of float64 normal draws) and smoothed with
the three central taps of its kernel per axis (the +-2 taps hold 0.3 % of its weight).
"""

from __future__ import annotations

import numpy as np

from partialseg.synthetic.grid import SmoothField, normal_draws


def half_kernel(sigma: float, truncate: float) -> np.ndarray:
    """Weights 0..r of scipy's normalised 1-d Gaussian kernel (radius ``int(truncate * sigma + 0.5)``)."""
    r = int(truncate * sigma + 0.5) if sigma > 0 else 0
    w = np.exp(-0.5 * (np.arange(r + 1) / sigma) ** 2) if r > 0 else np.ones(1)
    return w / (w[0] + 2.0 * w[1:].sum())


def filter_axis0_inplace(a: np.ndarray, w: np.ndarray, mode: str) -> None:
    """Symmetric 1-d filter (half kernel ``w``) of ``a`` along axis 0, in place, one plane at a time.

    ``mode`` ``"nearest"`` or ``"wrap"`` as in scipy.ndimage. Plane i is overwritten once its result is
    known; the originals it still needs (up to ``len(w) - 1`` planes back, and the first ones for wrapping)
    are kept in a ring.
    """
    n, r = a.shape[0], len(w) - 1
    w32 = w.astype(np.float32)
    head = [a[k].copy() for k in range(min(r, n))] if mode == "wrap" else []
    ring: list[np.ndarray] = []
    acc = np.empty(a.shape[1:], np.float32)
    pair = np.empty(a.shape[1:], np.float32)
    for i in range(n):
        own = a[i].copy()

        def original(j: int) -> np.ndarray:
            j = min(max(j, 0), n - 1) if mode == "nearest" else j % n
            if j > i:
                return a[j]
            if j == i:
                return own
            back = i - j
            return ring[-back] if back <= len(ring) else head[j]

        np.multiply(own, w32[0], out=acc)
        for k in range(1, r + 1):
            np.add(original(i - k), original(i + k), out=pair)
            pair *= w32[k]
            acc += pair
        a[i] = acc
        if r:
            ring.append(own)
            if len(ring) > r:
                ring.pop(0)


def filter_shifted(x: np.ndarray, w: np.ndarray, axis: int, mode: str, out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """Symmetric 1-d filter (half kernel ``w``) of ``x`` along ``axis`` into ``out`` by sums of shifted slices.

    ``mode`` ``"nearest"`` or ``"wrap"`` as in scipy.ndimage; ``tmp`` is scratch of ``x``'s shape. Made for
    planes that fit the CPU cache, where a handful of whole-array operations beat scipy's line loop.
    """
    n, r = x.shape[axis], len(w) - 1
    w32 = w.astype(np.float32)

    def span(a: int, b: int) -> tuple[slice, ...]:
        sl = [slice(None)] * x.ndim
        sl[axis] = slice(a, b)
        return tuple(sl)

    def edge(j: int) -> tuple[slice, ...]:
        j = min(max(j, 0), n - 1) if mode == "nearest" else j % n
        return span(j, j + 1)

    np.multiply(x, w32[0], out=out)
    for k in range(1, r + 1):
        if n > 2 * k:
            t = tmp[span(0, n - 2 * k)]
            np.add(x[span(0, n - 2 * k)], x[span(2 * k, n)], out=t)
            t *= w32[k]
            out[span(k, n - k)] += t
        for i in list(range(min(k, n))) + list(range(max(n - k, min(k, n)), n)):  # a neighbour beyond an end
            out[span(i, i + 1)] += w32[k] * (x[edge(i - k)] + x[edge(i + k)])
    return out


def texture_blur_large(
    tissue: np.ndarray, hu: np.ndarray, low_amp: np.ndarray, fine_amp: np.ndarray, low: SmoothField, fine: SmoothField,
    blur_sigma: list[float],
) -> np.ndarray:
    """HU + texture per tissue, blurred by a Gaussian of ``blur_sigma`` voxels per axis (float32, a new array)."""
    shape = tissue.shape
    img = np.empty(shape, np.float32)
    hu32 = hu.astype(np.float32)
    plane = np.empty(shape[1:], np.float32)
    tmp = np.empty(shape[1:], np.float32)
    kernels = [half_kernel(s, 3.0) for s in blur_sigma]
    scratch = np.empty(shape[1:], np.float32)
    for i in range(shape[0]):
        t = tissue[i]
        np.take(hu32, t, out=plane)
        plane += np.take(low_amp, t) * low[i : i + 1][0]
        plane += np.take(fine_amp, t) * fine[i : i + 1][0]
        for ax in (1, 2):
            if len(kernels[ax]) > 1:
                filter_shifted(plane, kernels[ax], ax - 1, "nearest", tmp, scratch)
                plane, tmp = tmp, plane
        img[i] = plane
    if len(kernels[0]) > 1:
        filter_axis0_inplace(img, kernels[0], "nearest")
    return img


def add_noise_large(img: np.ndarray, noise_std: float, rng: np.random.Generator) -> None:
    """Add correlated Gaussian noise of sd ``noise_std`` x U(0.75, 1.3) to ``img`` in place (the renderer's noise).

    The white noise covers the volume and a margin of one voxel on every side (:func:`normal_draws`, one
    plane at a time) and is filtered without boundary rule, so every voxel's noise has the same statistics;
    planes are made, smoothed in-plane, combined along axis 0 and added as they go, three at a time.
    """
    w = half_kernel(0.6, 2.0).astype(np.float32)
    r = len(w) - 1
    rows, cols = img.shape[1], img.shape[2]
    draw = np.empty((rows + 2 * r, cols + 2 * r), np.float32)
    part = np.empty((rows, cols + 2 * r), np.float32)

    def smooth(out: np.ndarray, x: np.ndarray, axis: int, n: int) -> None:
        """``out`` = the valid part of x filtered by the kernel along ``axis`` (length n after filtering)."""
        def sl(a: int) -> tuple[slice, ...]:
            return (slice(a, a + n),) if axis == 0 else (slice(None), slice(a, a + n))
        np.multiply(x[sl(r)], w[0], out=out)
        for k in range(1, r + 1):
            out += w[k] * (x[sl(r - k)] + x[sl(r + k)])

    def plane() -> np.ndarray:
        normal_draws(rng, draw.shape, out=draw)
        smooth(part, draw, 0, rows)
        out = np.empty((rows, cols), np.float32)
        smooth(out, part, 1, cols)
        return out

    ring = [plane() for _ in range(2 * r)]  # planes -r .. r-1
    # unit white noise through the separable kernel has sd (sum of squared weights)^(3/2), exactly
    energy = float(w[0].astype(np.float64) ** 2 + 2.0 * (w[1:].astype(np.float64) ** 2).sum())
    gain = np.float32(noise_std * rng.uniform(0.75, 1.3) / energy**1.5)
    acc = np.empty((rows, cols), np.float32)
    for i in range(img.shape[0]):
        ring.append(plane())  # plane i + r
        np.multiply(ring[r], w[0], out=acc)
        for k in range(1, r + 1):
            acc += w[k] * (ring[r - k] + ring[r + k])
        acc *= gain
        img[i] += acc
        ring.pop(0)
