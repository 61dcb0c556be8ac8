"""Tube rasterisation on large grids (:func:`partialseg.synthetic.grid.is_large`): the nearest centreline
point searched on a coarse grid and refined along the centreline, instead of one exact distance transform
over the whole box at full resolution (seconds per tube set on 40 M voxels).

1. The tubes' points are marked on a grid coarser by whole factors (about :data:`SEARCH_MM` per axis) and
   one Euclidean distance transform gives every coarse cell the point of its nearest marked cell.
2. Cells that may hold voxels inside a tube (distance below the largest radius within 64 points of that
   point, plus the rounding of cell and seed) move their point along the point's own tube toward the foot
   of the perpendicular from the cell centre (two Newton steps, each kept only where it brings the point
   closer, else half of it is tried), and are dropped if the refined distance rules their voxels out.
3. Each voxel of the remaining cells takes one more such step from its cell's point and is kept if it lies
   within reach of the point it ends on.

Against the true nearest centreline point (brute force) this is closer than the exact path's nearest
marked voxel, whose rounding to anisotropic voxels moves points by up to half a voxel; where tubes of one
set meet, the partition follows the coarse search to within about a cell.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from partialseg.synthetic.grid import Grid
from partialseg.synthetic.shapes import Tube, TubeField

#: the coarse search grid's spacing: each axis coarsened by the largest whole factor up to this (mm)
SEARCH_MM = 2.0


class _Points:
    """Per centreline point (float32 where it is only used to pick a point): position, unit tangent,
    1 / point spacing (index per mm), its tube's index range, radius, arc parameter, tube id, and the
    distance within which a voxel may be inside the tube near it."""

    def __init__(self, tubes: Sequence[Tube], squash_y: float, spacing_max: float) -> None:
        self.P = [np.ascontiguousarray(np.concatenate([t.points[:, a] for t in tubes]), np.float32) for a in range(3)]
        tan, inv, reach, lo, hi = [], [], [], [], []
        start = 0
        for t in tubes:
            k = len(t.points)
            g = np.gradient(t.points, axis=0)
            n = np.maximum(np.linalg.norm(g, axis=1), 1e-9)
            tan.append(g / n[:, None])
            inv.append(1.0 / n)
            reach.append(ndimage.maximum_filter1d(t.radius, 129, mode="nearest"))
            lo.append(np.full(k, start, np.int32))
            hi.append(np.full(k, start + k - 1, np.int32))
            start += k
        tan_all = np.concatenate(tan)
        self.T = [np.ascontiguousarray(tan_all[:, a], np.float32) for a in range(3)]
        self.inv = np.concatenate(inv).astype(np.float32)
        self.lo, self.hi = np.concatenate(lo), np.concatenate(hi)
        # rho < 1 needs a Euclidean distance below radius x squash (squash >= 1 only stretches y)
        self.reach = (np.concatenate(reach) * max(1.0, squash_y) + spacing_max).astype(np.float32)
        self.radius = np.concatenate([t.radius for t in tubes]).astype(np.float32)
        self.s = np.concatenate([t.s for t in tubes]).astype(np.float32)
        self.tube = np.concatenate([np.full(len(t.points), k, np.int16) for k, t in enumerate(tubes)])

    def dist2(self, v: Sequence[np.ndarray], j: np.ndarray) -> np.ndarray:
        out = np.square(v[0] - self.P[0][j])
        out += np.square(v[1] - self.P[1][j])
        out += np.square(v[2] - self.P[2][j])
        return out

    def descend(self, v: Sequence[np.ndarray], j: np.ndarray, rounds: int) -> tuple[np.ndarray, np.ndarray]:
        """Newton steps of points ``j`` along their tubes toward the feet of the perpendiculars from ``v``."""
        lo_j, hi_j = self.lo[j], self.hi[j]
        best = self.dist2(v, j)
        for _ in range(rounds):
            along = (v[0] - self.P[0][j]) * self.T[0][j]
            along += (v[1] - self.P[1][j]) * self.T[1][j]
            along += (v[2] - self.P[2][j]) * self.T[2][j]
            along *= self.inv[j]
            step = np.rint(along).astype(np.int32)
            for trial in (step, step // 2):
                cand = j + trial
                np.maximum(cand, lo_j, out=cand)
                np.minimum(cand, hi_j, out=cand)
                d = self.dist2(v, cand)
                better = d < best
                j = np.where(better, cand, j)
                best = np.where(better, d, best)
        return j, best


def raster_tubes_coarse(
    grid: Grid, tubes: Sequence[Tube], pts: np.ndarray, b0: np.ndarray, bshape: tuple[int, ...], ijk: np.ndarray,
    keep: np.ndarray, crop: tuple[slice, ...], sl: tuple[slice, ...], squash_y: float,
) -> TubeField:
    """:func:`partialseg.synthetic.shapes.raster_tubes` on a large grid, from its box (``b0``, ``bshape``),
    the marked points' box voxels ``ijk`` and indices ``keep``, and the part of the box in the grid (``crop``
    of the box, ``sl`` of the grid)."""
    sp = np.asarray(grid.spacing, np.float64)
    fac = np.array([max(1, int(SEARCH_MM // float(v))) for v in sp], np.int64)
    csp = sp * fac
    half = 0.5 * float(np.sqrt((((fac - 1) * sp) ** 2).sum()))  # a voxel to its cell's centre, at most
    slack = half + 0.5 * float(np.sqrt((csp**2).sum()))  # ... plus a point to its seed cell's centre
    pt = _Points(tubes, squash_y, float(sp.max()))
    cshape = tuple(int(v) for v in -(-np.asarray(bshape) // fac))
    cijk = ijk // fac
    seeds = np.ones(cshape, bool)
    seeds[cijk[:, 0], cijk[:, 1], cijk[:, 2]] = False
    lookup = np.full(cshape, -1, np.int32)
    lookup[cijk[:, 0], cijk[:, 1], cijk[:, 2]] = keep
    dist, ft = ndimage.distance_transform_edt(seeds, sampling=csp, return_indices=True)
    cpoint = lookup.ravel()[(ft[0].astype(np.int64) * cshape[1] + ft[1]) * cshape[2] + ft[2]].reshape(cshape)
    # only cells whose block of voxels meets the crop
    clo = [crop[a].start // fac[a] for a in range(3)]
    chi = [-(-crop[a].stop // fac[a]) for a in range(3)]
    csl = tuple(slice(int(a), int(b)) for a, b in zip(clo, chi))
    ci, cj, ck = np.nonzero(dist[csl] < pt.reach[cpoint[csl]] + np.float32(slack))
    ci, cj, ck = ci + clo[0], cj + clo[1], ck + clo[2]
    origin = grid.origin + np.asarray(b0) * sp  # world mm of box voxel (0, 0, 0)
    centre = [(origin[a] + (idx * fac[a] + 0.5 * (fac[a] - 1)) * sp[a]).astype(np.float32) for a, idx in enumerate((ci, cj, ck))]
    jc, d2c = pt.descend(centre, cpoint[ci, cj, ck], 2)
    # the distance to a point changes by at most |move|, so a cell this far away holds no voxel within reach
    ok = np.sqrt(d2c) - np.float32(half) < pt.reach[jc]
    ci, cj, ck, jc = ci[ok], cj[ok], ck[ok], jc[ok]
    # every voxel of those cells (inside the crop), in crop coordinates
    offs = np.stack(np.meshgrid(*[np.arange(f) for f in fac], indexing="ij"), -1).reshape(-1, 3)
    vox = [(idx[:, None] * fac[a] + offs[None, :, a]).ravel() - crop[a].start for a, idx in enumerate((ci, cj, ck))]
    j0 = np.repeat(jc, len(offs))
    n_crop = [crop[a].stop - crop[a].start for a in range(3)]
    inb = (vox[0] >= 0) & (vox[0] < n_crop[0]) & (vox[1] >= 0) & (vox[1] < n_crop[1]) & (vox[2] >= 0) & (vox[2] < n_crop[2])
    ii, jj, kk, j0 = vox[0][inb], vox[1][inb], vox[2][inb], j0[inb]
    v = [grid.axes[0][sl[0]][ii], grid.axes[1][sl[1]][jj], grid.axes[2][sl[2]][kk]]
    j, d2 = pt.descend(v, j0, 1)
    near = d2 < np.square(pt.reach[j])
    ii, jj, kk, j = ii[near], jj[near], kk[near], j[near]
    v = [x[near] for x in v]
    # the tube field on the crop, from each kept voxel's point
    dx, dy, dz = (v[a] - pt.P[a][j] for a in range(3))
    r = pt.radius[j]
    rho_v = np.sqrt(dx * dx + np.square(dy * np.float32(squash_y)) + dz * dz) / r
    flat = (ii.astype(np.int64) * n_crop[1] + jj) * n_crop[2] + kk
    shp = tuple(n_crop)
    rho = np.full(shp, np.inf, np.float32)
    rho.ravel()[flat] = rho_v
    tube = np.full(shp, -1, np.int16)
    tube.ravel()[flat] = pt.tube[j]
    s = np.zeros(shp, np.float32)
    s.ravel()[flat] = pt.s[j]
    dyn = np.zeros(shp, np.float32)
    dyn.ravel()[flat] = dy / r
    radius = np.zeros(shp, np.float32)
    radius.ravel()[flat] = r
    return TubeField(sl, rho, tube, s, dyn, radius)  # type: ignore[arg-type]
