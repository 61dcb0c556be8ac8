"""The fine painting grid, the canvas (tissue and label per fine voxel) and smooth random fields on the grid."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage
from scipy.special import ndtri

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



class BoxMask:
    """A grid-sized boolean mask that is only ever read by box (``mask[sl]``), computed per box on demand."""

    def __init__(self, box: Callable[[tuple[slice, ...]], np.ndarray]) -> None:
        self._box = box

    def __getitem__(self, sl: tuple[slice, ...]) -> np.ndarray:
        return self._box(sl)


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
        allowed: np.ndarray | BoxMask | None = None,
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
#: drawn at a lower resolution and interpolated (:func:`smooth_field`), tube centrelines are searched on a
#: coarser grid (:mod:`partialseg.synthetic.tube_search`) and the image is blurred and its noise drawn plane
#: by plane (:mod:`partialseg.synthetic.streaming`). By the phantom's minimum field of view (about 380 x 330
#: x 360 mm) a grid this small has voxels of at least 5 mm^3, so the exact path's widest filters stay short
EXACT_MAX_VOXELS = 2**23

#: on large grids a smooth field is drawn on a grid coarser by the largest whole factor that keeps this many
#: samples per standard deviation of its smoothing kernel along each axis
SAMPLES_PER_SIGMA = 1.25


def is_large(shape: Sequence[int]) -> bool:
    """Whether a grid of ``shape`` takes the large-grid shortcuts (more than :data:`EXACT_MAX_VOXELS` voxels)."""
    return int(np.prod(shape, dtype=np.int64)) > EXACT_MAX_VOXELS


class SmoothField:
    """A smooth random field on the fine grid, read by slab or box: ``field[i0:i1]``, ``field[sx, sy, sz]``.

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

    def __getitem__(self, key: slice | tuple[slice, ...]) -> np.ndarray:
        """The field on a slab (a slice of axis 0) or a box (a tuple of slices), as a new float32 array
        (or, for a whole field without gain, a view of it)."""
        if self.factor == 1:
            v = self.planes[key]
            return v if self.gain is None else v * np.float32(self.gain)
        s0, rest = (key[0], tuple(key[1:])) if isinstance(key, tuple) else (key, ())
        rows = range(*s0.indices(self.n0))
        out = np.empty((len(rows), *self.planes[0][rest].shape), np.float32)
        for r, i in enumerate(rows):
            k = self._lo[i]
            np.multiply(self._delta[k][rest], self._w[i], out=out[r])
            out[r] += self.planes[k][rest]
        return out

    def full(self) -> np.ndarray:
        return self.planes if self.factor == 1 and self.gain is None else self[0 : self.n0]


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


#: standard normal quantiles at the midpoints of 2^16 equal-probability bins: a uniform 16-bit integer looked
#: up here is a normal draw (tails cut at 4.3 sd), at a third of the cost of ``standard_normal``
NORMAL_TABLE = ndtri((np.arange(65536) + 0.5) / 65536).astype(np.float32)


def normal_draws(rng: np.random.Generator, shape: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
    """float32 standard normal draws by table lookup (:data:`NORMAL_TABLE`), for the large-grid paths."""
    return np.take(NORMAL_TABLE, rng.integers(0, 65536, size=tuple(shape), dtype=np.uint16), out=out)


def _lowres_field(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float], sigma_mm: float) -> SmoothField:
    """:func:`smooth_field` on a large grid: drawn coarser by whole factors, interpolated linearly to ``shape``."""
    sig = [sigma_mm / float(v) for v in spacing]
    factors = [max(1, int(s // SAMPLES_PER_SIGMA)) for s in sig]
    low_shape = tuple(-(-int(n) // f) for n, f in zip(shape, factors))
    n = normal_draws(rng, low_shape)
    n = ndimage.gaussian_filter(n, sigma=[s / f for s, f in zip(sig, factors)], mode="wrap", truncate=3.0)
    planes = upsample_linear(n, (low_shape[0], *shape[1:]), (1, *factors[1:]))
    # zero mean and unit sd after the interpolation (which lowers the variance between the coarse samples a
    # little), measured on every 7th slab; interpolation weights sum to 1, so the planes can be corrected instead
    field = SmoothField(planes, shape[0], factors[0])
    sample = np.concatenate([field[i : i + 1] for i in range(0, shape[0], 7)])
    mean, sd = np.float32(sample.mean()), np.float32(max(float(sample.std()), 1e-6))
    planes -= mean
    planes /= sd
    if field.factor > 1:
        field._delta /= sd  # differences of planes: the mean cancels
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
        out_shape = list(a.shape)
        out_shape[ax] = n
        out = np.empty(out_shape, np.float32)
        # in chunks of axis 0 (or whole, along axis 0), so that the temporaries stay small
        step = a.shape[0] if ax == 0 else max(1, (1 << 18) // max(1, int(np.prod(out_shape[1:]))))
        for c in range(0, a.shape[0], step):
            src = a[c : c + step]
            dst = out if ax == 0 else out[c : c + step]
            np.take(src, i0 % m, axis=ax, out=dst)
            hi = np.take(src, (i0 + 1) % m, axis=ax)
            hi -= dst
            hi *= w
            dst += hi
        a = out
    return a


def smoothstep(x: np.ndarray | float, a: float, b: float) -> np.ndarray:
    t = np.clip((np.asarray(x, np.float64) - a) / (b - a), 0.0, 1.0)
    return t * t * (3 - 2 * t)
