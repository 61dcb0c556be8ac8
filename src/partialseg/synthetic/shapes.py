"""Geometric primitives: superellipsoid blobs with surface waves and tubes swept along Catmull-Rom centrelines."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from partialseg.synthetic.grid import Grid, is_large


def frame(long_axis: Sequence[float], side: Sequence[float]) -> np.ndarray:
    """Rotation whose columns are local x (``side``, orthogonalised), y, z (``long_axis``)."""
    z = np.asarray(long_axis, np.float64)
    z = z / np.linalg.norm(z)
    x = np.asarray(side, np.float64)
    x = x - z * (x @ z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


@dataclass
class Blob:
    """A superellipsoid with low-frequency surface waves; inside where ``field < 1``."""

    center: np.ndarray
    semi: np.ndarray
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    exponent: float = 2.0
    bend: float = 0.0  # crescent: local x is shifted by bend * (local y)^2
    waves: np.ndarray | None = None  # (K, 5): 3 frequencies, phase, amplitude


def surface_waves(rng: np.random.Generator, strength: float, k: int = 4) -> np.ndarray:
    """Random low-frequency sinusoids on the unit-normalised local frame of a shape."""
    w = rng.normal(0.0, 1.0, (k, 3))
    w *= rng.uniform(1.2, 3.0, (k, 1)) / np.linalg.norm(w, axis=1, keepdims=True)
    return np.concatenate(
        [w, rng.uniform(0, 2 * np.pi, (k, 1)), rng.normal(0.0, strength / math.sqrt(k / 2), (k, 1))], axis=1
    )


def eval_blob(grid: Grid, b: Blob) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Normalised superellipsoid field (float32, <1 inside) on the grid box around the blob."""
    amp = 0.0 if b.waves is None else float(np.abs(b.waves[:, 4]).sum())
    half = (np.abs(b.rot) @ (b.semi * (1.0 + abs(b.bend)))) * (1.0 + amp) + grid.spacing
    got = grid.box(b.center - half, b.center + half)
    if got is None:
        return None
    sl, (X, Y, Z) = got
    dx, dy, dz = X - np.float32(b.center[0]), Y - np.float32(b.center[1]), Z - np.float32(b.center[2])
    r = b.rot.astype(np.float32)
    s = b.semi.astype(np.float32)
    ux = (r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz) / s[0]
    uy = (r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz) / s[1]
    uz = (r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz) / s[2]
    if b.bend:
        ux = ux - np.float32(b.bend) * uy * uy
    if b.exponent == 2.0:
        f = np.sqrt(ux * ux + uy * uy + uz * uz)
    else:
        e = np.float32(b.exponent)
        f = (np.abs(ux) ** e + np.abs(uy) ** e + np.abs(uz) ** e) ** (1.0 / e)
    if b.waves is not None:
        g = np.zeros(f.shape, np.float32)
        for wx, wy, wz, ph, a in b.waves:
            g += np.float32(a) * np.sin(np.float32(wx) * ux + np.float32(wy) * uy + np.float32(wz) * uz + np.float32(ph))
        f = f / np.maximum(1.0 + g, 0.3)
    return sl, f.astype(np.float32, copy=False)


def spline(ctrl: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Dense Catmull-Rom curve through control points (n, 3): points (N, 3) and parameter t in [0, n-1]."""
    ctrl = np.asarray(ctrl, np.float64)
    p = np.vstack([2 * ctrl[0] - ctrl[1], ctrl, 2 * ctrl[-1] - ctrl[-2]])
    pts, ts = [], []
    for i in range(len(ctrl) - 1):
        p0, p1, p2, p3 = p[i : i + 4]
        n = max(2, int(math.ceil(np.linalg.norm(p2 - p1) / step)))
        t = (np.arange(n) / n)[:, None]
        pts.append(0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (3 * p1 - p0 - 3 * p2 + p3) * t**3))
        ts.append(i + t[:, 0])
    pts.append(ctrl[-1:])
    ts.append(np.array([len(ctrl) - 1.0]))
    return np.concatenate(pts), np.concatenate(ts)


@dataclass
class Tube:
    """A tube: dense centreline (N, 3) world mm, radius (N,) mm, arc parameter s (N,) in [0, 1]."""

    points: np.ndarray
    radius: np.ndarray
    s: np.ndarray


def make_tube(
    ctrl: Sequence[Sequence[float]] | np.ndarray,
    radii: Sequence[float] | np.ndarray,
    step: float,
    rng: np.random.Generator | None = None,
    wobble: float = 0.0,
) -> Tube:
    """Tube through control points; ``wobble`` modulates the radius along the length (relative sd)."""
    ctrl = np.asarray(ctrl, np.float64)
    pts, t = spline(ctrl, step)
    r = np.interp(t, np.arange(len(ctrl)), np.asarray(radii, np.float64))
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    s = arc / max(arc[-1], 1e-6)
    if rng is not None and wobble > 0:
        mod = np.zeros_like(s)
        for _ in range(3):
            mod += rng.normal(0, wobble / math.sqrt(1.5)) * np.sin(2 * np.pi * (rng.uniform(0.5, 3.0) * s + rng.uniform()))
        r = r * np.clip(1.0 + mod, 0.5, 1.6)
    return Tube(pts, r, s)


@dataclass
class TubeField:
    """Rasterised tube set on a grid box: per voxel the normalised distance ``rho`` (<1 inside),
    the nearest centreline point's tube id, arc parameter, and the voxel's normalised y offset
    from that point (for air-fluid levels: gas rises anteriorly in a supine patient)."""

    sl: tuple[slice, slice, slice]
    rho: np.ndarray
    tube: np.ndarray
    s: np.ndarray
    dy: np.ndarray
    radius: np.ndarray


def raster_tubes(grid: Grid, tubes: Sequence[Tube], squash_y: float = 1.0) -> TubeField | None:
    """Distance from every voxel of the tubes' box to the nearest centreline point.

    One exact Euclidean distance transform over the box finds the nearest marked centreline
    voxel; the distance is then recomputed to that voxel's true centreline point, so the
    surface is not quantised to the grid. Tubes of one set partition space between them
    (nearest centreline wins), which is how touching bowel loops look. On a large grid the
    transform runs on a coarser grid and each voxel's point is then moved along its centreline
    to the foot of the perpendicular (:func:`partialseg.synthetic.tube_search.raster_tubes_coarse`).
    """
    pts = np.concatenate([t.points for t in tubes])
    rad = np.concatenate([t.radius for t in tubes])
    tid = np.concatenate([np.full(len(t.points), k, np.int16) for k, t in enumerate(tubes)])
    sarr = np.concatenate([t.s for t in tubes])
    rmax = float(rad.max()) * max(1.0, squash_y) + float(grid.spacing.max())
    # the distance box may reach past the grid by rmax so that tubes leaving the field of view stay straight
    g0, g1 = grid.index_box(pts.min(0) - rmax, pts.max(0) + rmax)
    lo_pad, hi_pad = -np.ceil(rmax / grid.spacing).astype(int), np.array(grid.shape) + np.ceil(rmax / grid.spacing).astype(int)
    b0, b1 = np.maximum(g0, lo_pad), np.minimum(g1, hi_pad)
    c0, c1 = np.maximum(b0, 0), np.minimum(b1, grid.shape)
    if np.any(c1 <= c0) or np.any(b1 <= b0):
        return None
    bshape = tuple(int(v) for v in b1 - b0)
    ijk = np.round((pts - grid.origin) / grid.spacing).astype(int) - b0
    ok = np.all((ijk >= 0) & (ijk < np.array(bshape)), axis=1)
    if not ok.any():
        return None
    ijk, keep = ijk[ok], np.nonzero(ok)[0]
    crop = tuple(slice(int(a - o), int(b - o)) for a, b, o in zip(c0, c1, b0))
    sl = tuple(slice(int(a), int(b)) for a, b in zip(c0, c1))
    if is_large(grid.shape):
        from partialseg.synthetic.tube_search import raster_tubes_coarse

        return raster_tubes_coarse(grid, tubes, pts, b0, bshape, ijk, keep, crop, sl, squash_y)
    near, nid = _nearest_exact(grid.spacing, bshape, ijk, keep, crop, rmax)
    ii, jj, kk = np.nonzero(near)
    coords = [grid.axes[a][sl[a]] for a in range(3)]
    p = np.stack([coords[0][ii], coords[1][jj], coords[2][kk]], axis=1).astype(np.float64)
    d = p - pts[nid]
    d[:, 1] *= squash_y
    r = rad[nid]
    rho_v = np.sqrt((d**2).sum(1)) / r
    shp = near.shape
    rho = np.full(shp, np.inf, np.float32)
    rho[near] = rho_v
    tube = np.full(shp, -1, np.int16)
    tube[near] = tid[nid]
    s = np.zeros(shp, np.float32)
    s[near] = sarr[nid]
    dy = np.zeros(shp, np.float32)
    dy[near] = d[:, 1] / squash_y / r
    radius = np.zeros(shp, np.float32)
    radius[near] = r
    return TubeField(sl, rho, tube, s, dy, radius)  # type: ignore[arg-type]


def _nearest_exact(
    spacing: np.ndarray, bshape: tuple[int, ...], ijk: np.ndarray, keep: np.ndarray, crop: tuple[slice, ...], rmax: float
) -> tuple[np.ndarray, np.ndarray]:
    """Voxels of the crop within ``rmax`` of their nearest centreline voxel, and that voxel's point (last one marked).

    The distance is scipy's own (``distance_transform_edt``'s float64 formula), evaluated on the crop only.
    """
    seeds = np.ones(bshape, bool)
    seeds[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = False
    lookup = np.full(bshape, -1, np.int32)
    lookup[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = keep
    ft = ndimage.distance_transform_edt(seeds, sampling=spacing, return_distances=False, return_indices=True)
    f = [ft[a][crop] for a in range(3)]
    tot = None
    for a in range(3):
        shp = [1, 1, 1]
        shp[a] = crop[a].stop - crop[a].start
        e = (f[a] - np.arange(crop[a].start, crop[a].stop, dtype=np.int32).reshape(shp)).astype(np.float64)
        e *= float(spacing[a])
        e *= e
        tot = e if tot is None else tot + e
    near = np.sqrt(tot) < rmax
    flat = (f[0][near].astype(np.int64) * bshape[1] + f[1][near]) * bshape[2] + f[2][near]
    return near, lookup.ravel()[flat]
