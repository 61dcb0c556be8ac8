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



def smooth_noise(rng: np.random.Generator, grid: Grid, sigma_mm: float) -> np.ndarray:
    """Unit-sd Gaussian random field with correlation ``sigma_mm`` on the fine grid (float32).

    Fields much smoother than an output voxel are made on the output grid and repeated onto the
    sub-voxels: the steps this leaves are far below the field's own variation, at 1/os^3 the cost.
    """
    out_sp = grid.out_spacing
    coarse = grid.os > 1 and sigma_mm > 1.5 * float(out_sp.max())
    shape = tuple(int(v) for v in grid.out_shape) if coarse else grid.shape
    sp = out_sp if coarse else grid.spacing
    n = rng.standard_normal(shape, dtype=np.float32)
    n = ndimage.gaussian_filter(n, sigma=[sigma_mm / v for v in sp], mode="wrap", truncate=3.0)
    n -= n.mean()
    n /= max(float(n.std()), 1e-6)
    if coarse:
        o = grid.os
        X, Y, Z = shape
        n = np.ascontiguousarray(np.broadcast_to(n[:, None, :, None, :, None], (X, o, Y, o, Z, o)).reshape(grid.shape))
    return n


def smoothstep(x: np.ndarray | float, a: float, b: float) -> np.ndarray:
    t = np.clip((np.asarray(x, np.float64) - a) / (b - a), 0.0, 1.0)
    return t * t * (3 - 2 * t)
