"""The fine painting grid, the canvas (tissue and label per fine voxel) and smooth random fields on the grid."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from partialseg.synthetic.config import PhantomConfig
from partialseg.synthetic.tissues import T


class Grid:
    """The fine painting grid: voxel centres in world mm, separable per axis."""

    def __init__(self, cfg: PhantomConfig) -> None:
        self.out_shape = np.array(cfg.shape)
        self.out_spacing = np.array(cfg.spacing, np.float64)
        self.os = int(cfg.oversample)
        self.shape = tuple(int(v) for v in self.out_shape * self.os)
        self.spacing = self.out_spacing / self.os
        # output voxel centres are symmetric about world 0
        self.out_origin = -(self.out_shape - 1) / 2.0 * self.out_spacing
        self.origin = self.out_origin - self.out_spacing / 2.0 + self.spacing / 2.0
        self.axes = [(self.origin[a] + np.arange(self.shape[a]) * self.spacing[a]).astype(np.float32) for a in range(3)]

    @property
    def affine(self) -> np.ndarray:
        aff = np.diag([*self.out_spacing, 1.0])
        aff[:3, 3] = self.out_origin
        return aff

    def index_box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unclipped voxel index range [i0, i1) whose centres lie in the world box [lo, hi]."""
        i0 = np.ceil((np.asarray(lo) - self.origin) / self.spacing).astype(int)
        i1 = np.floor((np.asarray(hi) - self.origin) / self.spacing).astype(int) + 1
        return i0, i1

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[tuple[slice, slice, slice], list[np.ndarray]] | None:
        """Slices of the grid inside a world box and the open coordinate arrays (broadcastable)."""
        i0, i1 = self.index_box(lo, hi)
        i0 = np.maximum(i0, 0)
        i1 = np.minimum(i1, self.shape)
        if np.any(i1 <= i0):
            return None
        sl = tuple(slice(int(a), int(b)) for a, b in zip(i0, i1))
        coords = [
            self.axes[0][sl[0]][:, None, None],
            self.axes[1][sl[1]][None, :, None],
            self.axes[2][sl[2]][None, None, :],
        ]
        return sl, coords  # type: ignore[return-value]



class Canvas:
    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.tissue = np.full(grid.shape, T["air"], np.uint8)
        self.label = np.zeros(grid.shape, np.uint8)
        self.bone = np.zeros(grid.shape, bool)  # protected from organs

    def paint(
        self,
        sl: tuple[slice, slice, slice],
        mask: np.ndarray,
        tissue: int | np.ndarray,
        label: int | None = 0,
        allowed: np.ndarray | None = None,
        keep_labels: Sequence[int] = (),
    ) -> None:
        """Write ``tissue`` (scalar or array on the box) and ``label`` where ``mask`` (& ``allowed``).

        ``label=None`` leaves labels alone; voxels whose current label is in ``keep_labels``
        get the tissue but keep their label (vessels inside the liver stay liver).
        """
        m = mask if allowed is None else mask & allowed[sl]
        if not m.any():
            return
        t = self.tissue[sl]
        if isinstance(tissue, np.ndarray):
            t[m] = tissue[m]
        else:
            t[m] = tissue
        if label is not None:
            lab = self.label[sl]
            if keep_labels:
                m = m & ~np.isin(lab, keep_labels)
            lab[m] = label



#: grids of up to this many voxels are drawn exactly as before the large-grid shortcuts (the cpu and gpu
#: presets and everything smaller give the same arrays as ever); on larger ones smooth random fields are
#: drawn at a lower resolution and interpolated (:func:`smooth_noise`), tube centrelines are searched on a
#: coarser grid (:func:`partialseg.synthetic.shapes.raster_tubes`) and the image noise is drawn in float32
EXACT_MAX_VOXELS = 2**23

#: on large grids a smooth field is drawn on a grid coarser by the largest whole factor that keeps this many
#: samples per standard deviation of its smoothing kernel along each axis
SAMPLES_PER_SIGMA = 1.25


def is_large(shape: Sequence[int]) -> bool:
    """Whether a grid of ``shape`` takes the large-grid shortcuts (more than :data:`EXACT_MAX_VOXELS` voxels)."""
    return int(np.prod(shape, dtype=np.int64)) > EXACT_MAX_VOXELS


class SmoothField:
    """A smooth random field on the fine grid, read in slabs along axis 0: ``field[i0:i1]`` is a float32 array.

    Either the whole field (``factor`` 1) or, on large grids, planes every ``factor`` voxels along axis 0
    (already at full resolution along axes 1 and 2) between which each slab is interpolated linearly, so
    that the full float32 volume never has to exist. ``gain`` scales what is read.
    """

    def __init__(self, planes: np.ndarray, n0: int, factor: int = 1) -> None:
        self.planes = planes
        self.n0 = int(n0)
        self.factor = int(factor)
        self.gain: float | None = None
        if self.factor > 1:
            m = planes.shape[0]
            x = (np.arange(self.n0, dtype=np.float64) + 0.5) / self.factor - 0.5
            i0 = np.floor(x).astype(np.intp)
            self._lo = i0 % m
            self._w = (x - i0).astype(np.float32)
            self._delta = np.roll(planes, -1, axis=0) - planes  # plane k+1 - plane k, wrapping around

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n0, *self.planes.shape[1:])  # type: ignore[return-value]

    def scaled(self, gain: float) -> SmoothField:
        """The same field times ``gain`` (in float32 where it is read; folded into the planes when interpolated)."""
        out = SmoothField.__new__(SmoothField)
        out.__dict__.update(self.__dict__)
        if self.factor > 1:
            out.planes, out._delta = self.planes * np.float32(gain), self._delta * np.float32(gain)
        else:
            out.gain = gain
        return out

    def __getitem__(self, sl: slice) -> np.ndarray:
        if self.factor == 1:
            v = self.planes[sl]
            return v if self.gain is None else v * np.float32(self.gain)
        rows = range(*sl.indices(self.n0))
        out = np.empty((len(rows), *self.planes.shape[1:]), np.float32)
        for r, i in enumerate(rows):
            k = self._lo[i]
            np.multiply(self._delta[k], self._w[i], out=out[r])
            out[r] += self.planes[k]
        return out

    def full(self) -> np.ndarray:
        return self.planes if self.factor == 1 and self.gain is None else self[0 : self.n0]


def smooth_noise(rng: np.random.Generator, grid: Grid, sigma_mm: float) -> np.ndarray:
    """Unit-sd Gaussian random field with correlation ``sigma_mm`` on the fine grid (float32); see :func:`smooth_field`."""
    return smooth_field(rng, grid, sigma_mm).full()


def smooth_field(rng: np.random.Generator, grid: Grid, sigma_mm: float) -> SmoothField:
    """Unit-sd Gaussian random field with correlation ``sigma_mm`` on the fine grid.

    Fields much smoother than an output voxel are made on the output grid and repeated onto the
    sub-voxels: the steps this leaves are far below the field's own variation, at 1/os^3 the cost.
    On a large grid (:func:`is_large`) the field is made on a grid coarser by whole factors per axis
    (at least :data:`SAMPLES_PER_SIGMA` samples per kernel sd) and interpolated linearly: a Gaussian
    filter as wide as 150 voxels on 40 M voxels took most of a 512x512x160 case's time.
    """
    out_sp = grid.out_spacing
    coarse = grid.os > 1 and sigma_mm > 1.5 * float(out_sp.max())
    shape = tuple(int(v) for v in grid.out_shape) if coarse else grid.shape
    if is_large(shape):
        return _lowres_field(rng, grid.shape, grid.spacing, sigma_mm)
    sp = out_sp if coarse else grid.spacing
    n = rng.standard_normal(shape, dtype=np.float32)
    n = ndimage.gaussian_filter(n, sigma=[sigma_mm / v for v in sp], mode="wrap", truncate=3.0)
    n -= n.mean()
    n /= max(float(n.std()), 1e-6)
    if coarse:
        o = grid.os
        X, Y, Z = shape
        n = np.ascontiguousarray(np.broadcast_to(n[:, None, :, None, :, None], (X, o, Y, o, Z, o)).reshape(grid.shape))
    return SmoothField(n, grid.shape[0])


def _lowres_field(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float], sigma_mm: float) -> SmoothField:
    """:func:`smooth_field` on a large grid: drawn coarser by whole factors, interpolated linearly to ``shape``."""
    sig = [sigma_mm / float(v) for v in spacing]
    factors = [max(1, int(s // SAMPLES_PER_SIGMA)) for s in sig]
    low_shape = tuple(-(-int(n) // f) for n, f in zip(shape, factors))
    n = rng.standard_normal(low_shape, dtype=np.float32)
    n = ndimage.gaussian_filter(n, sigma=[s / f for s, f in zip(sig, factors)], mode="wrap", truncate=3.0)
    planes = upsample_linear(n, (low_shape[0], *shape[1:]), (1, *factors[1:]))
    field = SmoothField(planes, shape[0], factors[0])
    # unit sd after the interpolation (which lowers the variance between the coarse samples a little),
    # measured on every 7th slab; interpolation weights sum to 1, so the planes can be corrected instead
    sample = np.concatenate([field[i : i + 1] for i in range(0, shape[0], 7)])
    planes -= np.float32(sample.mean())
    planes /= np.float32(max(float(sample.std()), 1e-6))
    return field


def upsample_linear(a: np.ndarray, shape: Sequence[int], factors: Sequence[int]) -> np.ndarray:
    """Linear interpolation of a periodic field sampled every ``factors[k]`` voxels (cell-centred) onto ``shape``.

    Voxel ``i`` of axis k lies at ``(i + 0.5) / f - 0.5`` coarse samples; the field wraps around as the
    ``mode="wrap"`` filter that made it does. Separable: one axis at a time, the smallest factor first.
    """
    a = np.asarray(a, np.float32)
    for ax in sorted(range(a.ndim), key=lambda k: factors[k]):
        f, n, m = int(factors[ax]), int(shape[ax]), a.shape[ax]
        if f == 1 and n == m:
            continue
        x = (np.arange(n, dtype=np.float64) + 0.5) / f - 0.5
        i0 = np.floor(x).astype(np.intp)
        wshape = [1] * a.ndim
        wshape[ax] = n
        w = (x - i0).astype(np.float32).reshape(wshape)
        lo = np.take(a, i0 % m, axis=ax)
        hi = np.take(a, (i0 + 1) % m, axis=ax)
        hi -= lo
        hi *= w
        lo += hi
        a = lo
    return np.ascontiguousarray(a)


def smoothstep(x: np.ndarray | float, a: float, b: float) -> np.ndarray:
    t = np.clip((np.asarray(x, np.float64) - a) / (b - a), 0.0, 1.0)
    return t * t * (3 - 2 * t)
