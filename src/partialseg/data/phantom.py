"""Synthetic abdominal CT phantom: the 15 AMOS organs inside unlabelled anatomical context.

Every case is drawn from one random generator seeded by the case seed, so the same seed
gives bit-identical arrays. The anatomy is written in a *template frame* (mm; x toward the
patient's right, y anterior, z superior; y = 0 at the centre of the first lumbar vertebral
body, z = 0 near the renal hila), then mapped to world RAS+ mm by a per-case scale and shift.

How a case is made:

1. Per-case parameters: body habitus (subcutaneous and visceral fat), global scale, organ
   scales and positions (grouped, so that e.g. an adrenal follows its kidney), sex (prostate
   or uterus), contrast phase (non-contrast or portal-venous), HU of every tissue.
2. Painting on an internal grid ``oversample`` times finer than the output, in order of
   priority: body outline, fat, muscle wall, lungs and heart above the diaphragm, spine,
   ribs, pelvis, muscles, bowel, unlabelled vessels, then the labelled organs (later paints
   win, so neighbours indent each other). Each voxel carries one tissue (for its HU) and
   one label.
3. A smooth random displacement field warps tissue and labels together.
4. HU from tissue + per-tissue texture, a Gaussian point-spread blur, block averaging to the
   output grid (partial volume), correlated Gaussian noise. Labels are the majority over the
   sub-voxels of each output voxel.

Organs are superellipsoids with low-frequency surface waves, or tubes swept along
Catmull-Rom centrelines (rasterised with one Euclidean distance transform per tube set).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from partialseg.errors import PartialsegError
from partialseg.registry import AMOS15

# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhantomConfig:
    """Geometry and difficulty of the synthetic CT.

    ``shape`` is (x, y, z) voxels on RAS axes (axis 0 toward patient right, 1 anterior,
    2 superior), ``spacing`` in mm. The field of view is centred on world 0 and must hold
    the abdomen from the prostate to the liver dome (about 384 x 330 x 360 mm at scale 1).
    """

    shape: tuple[int, int, int] = (64, 60, 52)
    spacing: tuple[float, float, float] = (6.0, 5.5, 7.0)
    #: sub-voxels per axis of the internal painting grid; >1 gives true partial-volume edges
    oversample: int = 2
    #: standard deviation of the image noise, HU (per case scaled by 0.75..1.3)
    noise_std: float = 15.0
    #: Gaussian point-spread function sigma, mm, applied before the block average
    blur_mm: float = 1.5
    #: amplitude (sd, mm) of the smooth whole-body random displacement field
    deformation_mm: float = 4.0
    #: relative amplitude of the low-frequency surface waves on every organ
    organ_deformation: float = 0.10
    #: sd of the log of per-organ size factors
    organ_size_variation: float = 0.10
    #: sd (mm) of per-organ-group position offsets
    position_jitter_mm: float = 5.0
    #: sd (HU) of the per-case offset of each tissue's mean HU
    contrast_jitter_hu: float = 8.0
    #: probability that a case is portal-venous contrast-enhanced rather than non-contrast (the default
    #: matches the shared real example; raising it adds a second appearance mode and makes learning harder)
    contrast_fraction: float = 0.0
    #: probability that a case is female (uterus instead of prostate in label 15)
    female_fraction: float = 0.5
    #: factor on the cross-section of the thin organs (adrenal plates, esophagus). Real ones are 1-2
    #: voxels thick at the cpu preset's 6 mm, too few for any model to learn in minutes; thickening them
    #: there keeps them in the benchmark instead of scoring 0 for every method
    thin_organ_scale: float = 1.0

    def __post_init__(self) -> None:
        shape = tuple(int(v) for v in self.shape)
        spacing = tuple(float(v) for v in self.spacing)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", spacing)
        if len(shape) != 3 or min(shape) < 8:
            raise PartialsegError(f"phantom shape must be three sizes >= 8 voxels, got {shape}")
        if len(spacing) != 3 or min(spacing) <= 0:
            raise PartialsegError(f"phantom spacing must be three positive mm values, got {spacing}")
        if not 1 <= self.oversample <= 4:
            raise PartialsegError(f"oversample must be 1..4, got {self.oversample}")
        if not 0.5 <= self.thin_organ_scale <= 3.0:
            raise PartialsegError(f"phantom thin_organ_scale must be in [0.5, 3], got {self.thin_organ_scale}")
        for name in ("noise_std", "blur_mm", "deformation_mm", "organ_deformation", "organ_size_variation",
                     "position_jitter_mm", "contrast_jitter_hu"):
            if getattr(self, name) < 0:
                raise PartialsegError(f"phantom {name} must be >= 0, got {getattr(self, name)}")
        for name in ("contrast_fraction", "female_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise PartialsegError(f"phantom {name} must be in [0, 1], got {getattr(self, name)}")


PRESETS: dict[str, PhantomConfig] = {
    # ~200 k voxels, 231 mm^3 each: adrenals are tens of voxels, training runs on a CPU
    "cpu": PhantomConfig(thin_organ_scale=1.6),
    # the papers' 1 x 1 x 3 mm regime, at 1.5 mm in-plane to keep generation in seconds
    "gpu": PhantomConfig(shape=(256, 224, 120), spacing=(1.5, 1.5, 3.0), oversample=1, blur_mm=1.0),
}


@dataclass
class Phantom:
    """One synthetic case.

    ``image``: float32 HU, shape ``config.shape``. ``labels``: uint8 AMOS15 values 0..15.
    ``affine``: 4x4 voxel-to-world RAS+ mm. ``info``: the per-case draws (phase, sex, scale, HU).
    """

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` of a dataset made with ``seed`` (independent of the case count)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint32)[0])


# ---------------------------------------------------------------------------------------------
# tissues and their HU
# ---------------------------------------------------------------------------------------------

#: name: (non-contrast HU, portal-venous HU, low-frequency texture sd HU, fine texture sd HU)
_TISSUE_TABLE: dict[str, tuple[float, float, float, float]] = {
    "air": (-1000.0, -1000.0, 0.0, 0.0),
    "lung": (-860.0, -850.0, 25.0, 35.0),
    "fat": (-105.0, -105.0, 5.0, 8.0),
    "visceral_fat": (-95.0, -92.0, 8.0, 14.0),
    "muscle": (46.0, 60.0, 4.0, 5.0),
    "bone_cancellous": (230.0, 240.0, 40.0, 45.0),
    "bone_cortical": (800.0, 800.0, 60.0, 60.0),
    "disc": (85.0, 90.0, 5.0, 5.0),
    "csf": (15.0, 18.0, 3.0, 3.0),
    "cartilage": (130.0, 135.0, 10.0, 10.0),
    "artery": (42.0, 165.0, 2.0, 2.0),
    "vein": (40.0, 135.0, 3.0, 3.0),
    "portal_vein": (42.0, 160.0, 2.0, 2.0),
    "liver": (58.0, 108.0, 4.0, 3.0),
    "spleen": (47.0, 118.0, 3.0, 3.0),
    "kidney_cortex": (34.0, 185.0, 3.0, 3.0),
    "kidney_medulla": (30.0, 145.0, 3.0, 3.0),
    "renal_sinus": (-55.0, -40.0, 15.0, 25.0),
    "bile": (8.0, 10.0, 3.0, 2.0),
    "pancreas": (42.0, 100.0, 5.0, 6.0),
    "adrenal": (28.0, 55.0, 3.0, 3.0),
    "gi_wall": (42.0, 95.0, 4.0, 4.0),
    "gi_fluid": (15.0, 18.0, 5.0, 4.0),
    "chyme": (28.0, 30.0, 6.0, 14.0),
    "gas": (-960.0, -960.0, 20.0, 15.0),
    "stool": (-30.0, -25.0, 15.0, 70.0),
    "urine": (7.0, 8.0, 2.0, 2.0),
    "bladder_wall": (40.0, 70.0, 3.0, 3.0),
    "prostate": (40.0, 75.0, 4.0, 5.0),
    "uterus": (48.0, 105.0, 5.0, 5.0),
    "heart": (40.0, 140.0, 4.0, 3.0),
    "esophagus": (42.0, 65.0, 4.0, 4.0),
    "soft_tissue": (35.0, 70.0, 4.0, 4.0),
    "calcification": (450.0, 450.0, 50.0, 50.0),
    "table": (80.0, 80.0, 10.0, 20.0),
}
TISSUES: tuple[str, ...] = tuple(_TISSUE_TABLE)
_T = {n: i for i, n in enumerate(TISSUES)}
_L = {n: i + 1 for i, n in enumerate(AMOS15)}
_BONE_TISSUES = (_T["bone_cancellous"], _T["bone_cortical"], _T["disc"], _T["cartilage"])


def _tissue_hu(rng: np.random.Generator, cfg: PhantomConfig, contrast: bool) -> np.ndarray:
    """Per-case mean HU of every tissue (indexed by tissue id)."""
    enh = rng.uniform(0.75, 1.15)  # how far along the portal-venous curve this scan was taken
    hu = np.empty(len(TISSUES), np.float64)
    jitter = rng.normal(0.0, 1.0, len(TISSUES)) * cfg.contrast_jitter_hu
    for i, (name, (nc, pv, _, _)) in enumerate(_TISSUE_TABLE.items()):
        v = nc + (enh * (pv - nc) if contrast else 0.0)
        if name in ("air", "gas", "lung"):
            v += 0.5 * jitter[i]
        elif name in ("fat", "visceral_fat", "urine", "bile", "csf", "gi_fluid"):
            v += 0.6 * jitter[i]  # fat and water-like fluids vary less between scans
        elif name.startswith("bone") or name == "calcification":
            v += 4.0 * jitter[i]
        else:
            v += jitter[i]
        hu[i] = v
    if rng.random() < 0.15:  # hepatic steatosis: the liver drops to or below the spleen
        hu[_T["liver"]] -= rng.uniform(15.0, 45.0)
    return hu


# ---------------------------------------------------------------------------------------------
# grid and geometric primitives
# ---------------------------------------------------------------------------------------------


class _Grid:
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


def _frame(long_axis: Sequence[float], side: Sequence[float]) -> np.ndarray:
    """Rotation whose columns are local x (``side``, orthogonalised), y, z (``long_axis``)."""
    z = np.asarray(long_axis, np.float64)
    z = z / np.linalg.norm(z)
    x = np.asarray(side, np.float64)
    x = x - z * (x @ z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


@dataclass
class _Blob:
    """A superellipsoid with low-frequency surface waves; inside where ``field < 1``."""

    center: np.ndarray
    semi: np.ndarray
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    exponent: float = 2.0
    bend: float = 0.0  # crescent: local x is shifted by bend * (local y)^2
    waves: np.ndarray | None = None  # (K, 5): 3 frequencies, phase, amplitude


def _waves(rng: np.random.Generator, strength: float, k: int = 4) -> np.ndarray:
    """Random low-frequency sinusoids on the unit-normalised local frame of a shape."""
    w = rng.normal(0.0, 1.0, (k, 3))
    w *= rng.uniform(1.2, 3.0, (k, 1)) / np.linalg.norm(w, axis=1, keepdims=True)
    return np.concatenate(
        [w, rng.uniform(0, 2 * np.pi, (k, 1)), rng.normal(0.0, strength / math.sqrt(k / 2), (k, 1))], axis=1
    )


def _eval_blob(grid: _Grid, b: _Blob) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
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


def _spline(ctrl: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
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
class _Tube:
    """A tube: dense centreline (N, 3) world mm, radius (N,) mm, arc parameter s (N,) in [0, 1]."""

    points: np.ndarray
    radius: np.ndarray
    s: np.ndarray


def _make_tube(
    ctrl: Sequence[Sequence[float]] | np.ndarray,
    radii: Sequence[float] | np.ndarray,
    step: float,
    rng: np.random.Generator | None = None,
    wobble: float = 0.0,
) -> _Tube:
    """Tube through control points; ``wobble`` modulates the radius along the length (relative sd)."""
    ctrl = np.asarray(ctrl, np.float64)
    pts, t = _spline(ctrl, step)
    r = np.interp(t, np.arange(len(ctrl)), np.asarray(radii, np.float64))
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    s = arc / max(arc[-1], 1e-6)
    if rng is not None and wobble > 0:
        mod = np.zeros_like(s)
        for _ in range(3):
            mod += rng.normal(0, wobble / math.sqrt(1.5)) * np.sin(2 * np.pi * (rng.uniform(0.5, 3.0) * s + rng.uniform()))
        r = r * np.clip(1.0 + mod, 0.5, 1.6)
    return _Tube(pts, r, s)


@dataclass
class _TubeField:
    """Rasterised tube set on a grid box: per voxel the normalised distance ``rho`` (<1 inside),
    the nearest centreline point's tube id, arc parameter, and the voxel's normalised y offset
    from that point (for air-fluid levels: gas rises anteriorly in a supine patient)."""

    sl: tuple[slice, slice, slice]
    rho: np.ndarray
    tube: np.ndarray
    s: np.ndarray
    dy: np.ndarray
    radius: np.ndarray


def _raster_tubes(grid: _Grid, tubes: Sequence[_Tube], squash_y: float = 1.0) -> _TubeField | None:
    """Distance from every voxel of the tubes' box to the nearest centreline point.

    One exact Euclidean distance transform over the box finds the nearest marked centreline
    voxel; the distance is then recomputed to that voxel's true centreline point, so the
    surface is not quantised to the grid. Tubes of one set partition space between them
    (nearest centreline wins), which is how touching bowel loops look.
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
    seeds = np.ones(bshape, bool)
    seeds[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = False
    lookup = np.full(bshape, -1, np.int32)
    lookup[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = keep
    crop = tuple(slice(int(a - o), int(b - o)) for a, b, o in zip(c0, c1, b0))
    dist, ind = ndimage.distance_transform_edt(seeds, sampling=grid.spacing, return_indices=True)
    dist = dist[crop]
    ind = ind[(slice(None), *crop)]
    near = dist < rmax
    nid = lookup[ind[0][near], ind[1][near], ind[2][near]]
    sl = tuple(slice(int(a), int(b)) for a, b in zip(c0, c1))
    ii, jj, kk = np.nonzero(near)
    p = np.stack([grid.axes[0][sl[0]][ii], grid.axes[1][sl[1]][jj], grid.axes[2][sl[2]][kk]], axis=1).astype(np.float64)
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
    return _TubeField(sl, rho, tube, s, dy, radius)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# the canvas: tissue and label per fine voxel
# ---------------------------------------------------------------------------------------------


class _Canvas:
    def __init__(self, grid: _Grid) -> None:
        self.grid = grid
        self.tissue = np.full(grid.shape, _T["air"], np.uint8)
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


# ---------------------------------------------------------------------------------------------
# the case builder
# ---------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, grid: _Grid, sigma_mm: float) -> np.ndarray:
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


def _smoothstep(x: np.ndarray | float, a: float, b: float) -> np.ndarray:
    t = np.clip((np.asarray(x, np.float64) - a) / (b - a), 0.0, 1.0)
    return t * t * (3 - 2 * t)


class _Builder:
    """Draws one case's anatomy and paints it. All randomness comes from ``rng`` in a fixed order."""

    def __init__(self, rng: np.random.Generator, cfg: PhantomConfig) -> None:
        self.rng = rng
        self.cfg = cfg
        self.grid = _Grid(cfg)
        self.c = _Canvas(self.grid)
        self.step = 0.5 * float(self.grid.spacing.min())
        g = self.grid
        # --- per-case global draws ---
        self.scale = float(np.exp(rng.normal(0.0, 0.04 + 0.2 * cfg.organ_size_variation)))
        self.scale = float(np.clip(self.scale, 0.9, 1.07))
        build = float(rng.beta(2.0, 2.5))  # 0 slim .. 1 obese
        self.build = build
        self.t_sub = 8.0 + 24.0 * build + rng.normal(0, 2.0)  # subcutaneous fat, mm
        self.visceral = 18.0 * build * rng.uniform(0.5, 1.0)  # extra visceral room, mm
        self.female = bool(rng.random() < cfg.female_fraction)
        self.contrast = bool(rng.random() < cfg.contrast_fraction)
        jit = cfg.position_jitter_mm
        self.x0 = rng.normal(0.0, 4.0)
        # diaphragm domes (template z); the scan is planned from just above the right dome downward
        self.zR = 148.0 + rng.normal(0, 4.0)
        self.zL = self.zR - rng.uniform(3.0, 15.0)
        self.dome_k = 90.0 * rng.uniform(0.85, 1.15)
        # lumbar vertebral period and the height of L5 (template mm)
        self.spine_period = rng.uniform(31.0, 36.0)
        self.l5_z = -55.0 + rng.uniform(-5.0, 5.0)
        fov_top = float(g.out_origin[2] + (g.out_shape[2] - 1) * g.out_spacing[2])
        fov_bottom = float(g.out_origin[2])
        self.z0 = fov_top - self.scale * self.zR - rng.uniform(8.0, 25.0)
        # a tall patient is scanned lower so that the prostate stays in the field of view
        prostate_low = self.l5_z - 112.0 - 12.0
        self.z0 = max(self.z0, fov_bottom - self.scale * prostate_low)
        # the spine centre is placed so that the body's AP centre lands near world 0
        back = 80.0 * self.scale + self.t_sub * 1.1
        front = (120.0 + self.visceral + 10.0) * self.scale + self.t_sub * 1.25
        self.yv = -(front - back) / 2.0 + rng.normal(0.0, 4.0)
        self.jit = jit
        # tube control-point jitter and radius wobble follow the organ deformation knob
        self.deform_gain = cfg.organ_deformation / 0.12
        # smooth texture fields (unit sd): coarse organ inhomogeneity, fine mottling
        self.fine = self._noise_field(2.0)
        self.low = self._noise_field(12.0)
        # z of every fine slice in the template frame
        self.zt = (g.axes[2].astype(np.float64) - self.z0) / self.scale

    # ---- helpers ----
    def _noise_field(self, sigma_mm: float) -> np.ndarray:
        """Gaussian-smoothed white noise with unit sd on the fine grid (float32)."""
        return _smooth_noise(self.rng, self.grid, sigma_mm)

    def W(self, x: float, y: float, z: float, off: np.ndarray | None = None) -> np.ndarray:
        """Template point (mm) to world (mm)."""
        p = np.array([self.x0 + self.scale * x, self.yv + self.scale * y, self.z0 + self.scale * z])
        return p if off is None else p + off

    def Wn(self, pts: Sequence[Sequence[float]], off: np.ndarray | None = None, jitter: float = 0.0) -> np.ndarray:
        out = np.array([self.W(*p) for p in pts])
        if off is not None:
            out = out + off
        if jitter > 0 and self.deform_gain > 0:
            out = out + self.rng.normal(0.0, jitter * self.deform_gain, out.shape)
        return out

    def offset(self, sd_scale: float = 1.0) -> np.ndarray:
        return self.rng.normal(0.0, self.jit * sd_scale, 3) * np.array([1.0, 0.8, 1.3])

    def size(self, sd_scale: float = 1.0) -> float:
        return float(np.exp(self.rng.normal(0.0, self.cfg.organ_size_variation * sd_scale)))

    def blob(self, c: np.ndarray, semi: Sequence[float], rot: np.ndarray | None = None, exponent: float = 2.0,
             bend: float = 0.0, deform: float = 1.0) -> _Blob:
        waves = _waves(self.rng, self.cfg.organ_deformation * deform) if deform > 0 and self.cfg.organ_deformation > 0 else None
        return _Blob(np.asarray(c, np.float64), np.asarray(semi, np.float64) * self.scale,
                     np.eye(3) if rot is None else rot, exponent, bend, waves)

    def tube(self, ctrl: np.ndarray, radii: Sequence[float], wobble: float = 0.0) -> _Tube:
        return _make_tube(ctrl, np.asarray(radii, np.float64) * self.scale, self.step, self.rng, wobble * self.deform_gain)

    # ---- body ----
    def body(self) -> None:
        g, c, rng, s = self.grid, self.c, self.rng, self.scale
        zt = self.zt
        hip = np.exp(-(((zt + 150.0) / 45.0) ** 2))
        pelvis = _smoothstep(-zt, 40.0, 130.0)  # 0 in the abdomen, 1 deep in the pelvis
        belly = np.exp(-(((zt + 20.0) / 70.0) ** 2))
        chest = _smoothstep(zt, 60.0, 150.0)
        t = self.t_sub
        t_lat = t * rng.uniform(0.6, 1.0)
        t_ant = t * rng.uniform(1.0, 1.5) * (1.0 + 0.3 * belly)
        t_post = t * rng.uniform(0.9, 1.3) * (1.0 + 0.4 * hip)
        # cavity: half-width, front and back (template y, relative to the spine centre)
        a_cav = 132.0 + 0.6 * self.visceral - 70.0 * pelvis + 5.0 * chest
        y_cf = 120.0 + self.visceral * (0.6 + 0.4 * belly) - 25.0 * pelvis - 10.0 * chest
        y_cb = -45.0 + 10.0 * pelvis - 10.0 * _smoothstep(-zt, 80.0, 120.0) * (1 - _smoothstep(-zt, 150.0, 185.0))
        # muscle wall outer surface (fat inner surface)
        a_mus = np.maximum(a_cav + 14.0, 150.0 + 22.0 * hip + 8.0 * pelvis)
        y_mf = y_cf + 10.0
        y_mb = -80.0 - 30.0 * hip - 10.0 * pelvis
        self.cav_profile = (a_cav, y_cf, y_cb)
        X = g.axes[0][:, None, None] - np.float32(self.x0)
        Y = g.axes[1][None, :, None] - np.float32(self.yv)

        def inside(a: np.ndarray, yf: np.ndarray, yb: np.ndarray, ex: float, ef: float, eb: float) -> np.ndarray:
            yc = yb + 0.5 * (yf - yb)
            a, yf_, yb_, yc_ = (np.asarray(v, np.float32)[None, None, :] for v in (a, yf, yb, yc))
            u = np.abs(X / a) ** ex  # (nx, 1, nz)
            front = Y >= yc_
            v = np.where(front, np.abs((Y - yc_) / (yf_ - yc_)) ** ef, np.abs((Y - yc_) / (yc_ - yb_)) ** eb)  # (1, ny, nz)
            return (u + v) < 1.0

        skin = inside(a_mus * s + t_lat, y_mf * s + t_ant, y_mb * s - t_post, 2.2, 2.0, 3.2)
        fat_in = inside(a_mus * s, y_mf * s, y_mb * s, 2.3, 2.0, 3.2)
        cav = inside(a_cav * s, y_cf * s, y_cb * s, 2.4, 2.2, 3.0)
        c.tissue[skin] = _T["fat"]
        c.tissue[fat_in] = _T["muscle"]
        c.tissue[cav] = _T["visceral_fat"]
        # intermuscular fat planes
        c.tissue[fat_in & ~cav & (self.fine > 1.9)] = _T["fat"]
        self.cav = cav
        self.skin = skin
        # patient table: a curved carbon plate under the back
        yb_min = float(np.min(y_mb * s - t_post)) + self.yv - 8.0
        Yw = g.axes[1][None, :, None]
        Xw = g.axes[0][:, None, None]
        ytab = yb_min - 0.0009 * (Xw - self.x0) ** 2
        table = (Yw < ytab) & (Yw > ytab - 4.0) & (np.abs(Xw - self.x0) < 220)
        c.tissue[np.broadcast_to(table, g.shape)] = _T["table"]

        # diaphragm: two domes, the right one higher; lung above, abdomen below
        zR, zL, k = self.zR, self.zL, self.dome_k
        xs = (g.axes[0].astype(np.float64) - self.x0)[:, None] / s
        ys = (g.axes[1].astype(np.float64) - self.yv)[None, :] / s

        def dome(xc: float, yc: float, top: float) -> np.ndarray:
            # flat-topped: the organs fill the dome, the periphery drops steeply into the recesses
            dyy = ys - yc
            byy = np.where(dyy >= 0, 160.0, 100.0)
            r2 = ((xs - xc) / 105.0) ** 2 + (dyy / byy) ** 2
            return top - k * (0.3 * r2 + 0.7 * r2**3)

        zd_t = np.maximum(dome(55.0, 40.0, zR), dome(-55.0, 35.0, zL))  # template mm, (nx, ny)
        zd = (self.z0 + s * zd_t).astype(np.float32)[:, :, None]
        Z = g.axes[2][None, None, :]
        above = Z > zd
        thick = 5.0 * s
        # the muscle sheet is thicker in z where the dome slopes
        gx, gy = np.gradient(zd[:, :, 0], g.spacing[0], g.spacing[1])
        slope = np.sqrt(1.0 + gx**2 + gy**2).astype(np.float32)[:, :, None]
        diaphragm = cav & ~above & (Z > zd - thick * slope)
        thorax = cav & above
        # the heart rests on the central tendon, between the domes
        z_tendon = float(zd_t[np.argmin(np.abs(xs[:, 0])), np.argmin(np.abs(ys[0] - 40.0))])
        heart_b = self.blob(self.W(-15.0, 80.0, z_tendon + 45.0), (80, 60, 65), deform=0.5)
        got = _eval_blob(g, heart_b)
        heart = np.zeros(g.shape, bool)
        if got is not None:
            sl, f = got
            heart[sl] = f < 1.0
        mediastinum = (np.abs(Xw - self.x0) < 30 * s) & (Yw > self.yv + 10 * s)
        c.tissue[thorax & ~heart & ~np.broadcast_to(mediastinum, g.shape)] = _T["lung"]
        c.tissue[thorax & heart] = _T["heart"]
        c.tissue[diaphragm] = _T["muscle"]
        self.abdomen = cav & ~above & ~diaphragm
        self.organ_ok = self.abdomen.copy()

    # ---- skeleton ----
    def spine_y(self, z: float) -> float:
        """Template y of the vertebral body centre at template height z (lordosis, kyphosis)."""
        return 6.0 * math.exp(-(((z + 15.0) / 60.0) ** 2)) - 0.0008 * max(z - 60.0, 0.0) ** 2

    def _paint_bone(self, b: _Blob, cortex: float = 0.8) -> None:
        got = _eval_blob(self.grid, b)
        if got is None:
            return
        sl, f = got
        m = f < 1.0
        t = np.where(f > cortex, _T["bone_cortical"], _T["bone_cancellous"]).astype(np.uint8)
        self.c.paint(sl, m, t, 0)
        self.c.bone[sl] |= m

    def spine(self) -> None:
        s = self.scale
        period = self.spine_period
        canal_ctrl, canal_r = [], []
        # vertebral levels from L5 (its body centre at about -55) upward
        z = self.l5_z
        level = 0
        self.vertebrae: list[float] = []  # template z of each body centre, L5 first
        while z < 380.0:
            lumbar = level < 5
            y = self.spine_y(z)
            h = period * (0.72 if lumbar else 0.74)
            rx, ry = (24.0, 18.0) if lumbar else (19.0, 16.0)
            rx, ry = rx * (1 + 0.03 * level if lumbar else 0.95), ry
            body = _Blob(self.W(0, y, z), np.array([rx, ry, h / 2]) * s, np.eye(3), 3.0)
            self._paint_bone(body, 0.86)
            # intervertebral disc above this body
            disc = _Blob(self.W(0, y, z + period / 2), np.array([rx * 0.95, ry * 0.95, (period - h) / 2 + 1.0]) * s, np.eye(3), 3.0)
            got = _eval_blob(self.grid, disc)
            if got is not None:
                sl, f = got
                m = (f < 1.0) & ~self.c.bone[sl]
                self.c.paint(sl, m, _T["disc"], 0)
                self.c.bone[sl] |= m
            # posterior arch: lamina ring around the canal, spinous and transverse processes
            yc = y - ry - 12.0
            ring = _Blob(self.W(0, yc, z + 2), np.array([17.0, 14.0, h * 0.42]) * s, np.eye(3), 2.5)
            gr = _eval_blob(self.grid, ring)
            if gr is not None:
                sl, f = gr
                m = f < 1.0
                # the canal is cut out of the ring: evaluate it on the ring's box
                cc = self.W(0, yc + 1.5, z + 2)
                X, Y, Z = (self.grid.axes[a][sl[a]] for a in range(3))
                inner = ((X[:, None, None] - cc[0]) / (10.5 * s)) ** 2 + ((Y[None, :, None] - cc[1]) / (8.5 * s)) ** 2 < 1.0
                m &= ~inner
                t = np.where(f > 0.75, _T["bone_cortical"], _T["bone_cancellous"]).astype(np.uint8)
                self.c.paint(sl, m, t, 0)
                self.c.bone[sl] |= m
            sp = _Blob(self.W(0, yc - 25.0, z - 4.0), np.array([5.0, 20.0, 9.0]) * s,
                       _frame((0, 0.35, 1.0), (1, 0, 0)), 2.2)
            self._paint_bone(sp, 0.7)
            if lumbar:
                for side in (1, -1):
                    tp = _Blob(self.W(side * 34.0, yc + 8.0, z + 1.0), np.array([20.0, 5.5, 6.0]) * s, np.eye(3), 2.2)
                    self._paint_bone(tp, 0.7)
            canal_ctrl.append((0.0, yc + 1.5, z))
            canal_r.append(9.0)
            self.vertebrae.append(z)
            z += period if level < 4 else 0.87 * period  # thoracic levels are shorter
            level += 1
        self.vertebra_z = (self.l5_z, period)
        canal = self.tube(self.Wn(canal_ctrl), canal_r)
        tf = _raster_tubes(self.grid, [canal])
        if tf is not None:
            m = (tf.rho < 1.0) & ~self.c.bone[tf.sl]
            self.c.paint(tf.sl, m, _T["csf"], 0)

    def ribs(self) -> None:
        rng, s, g = self.rng, self.scale, self.grid
        a_cav, y_cf, _ = self.cav_profile
        tubes, cart = [], []
        for side in (1, -1):
            for k in range(7):  # ribs 12 (k=0) up to 6
                zr = self.vertebrae[5 + k] + rng.normal(0, 3.0)  # rib head at its thoracic vertebra
                zi = int(np.clip(np.searchsorted(self.zt, zr), 0, len(self.zt) - 1))
                a = float(a_cav[zi]) + 6.0
                yf, yb = float(y_cf[zi]) + 4.0, -40.0
                yc = 0.5 * (yf + yb)
                # floating ribs are short; higher ribs reach round to the costal margin
                reach = [0.30, 0.50, 0.72, 0.80, 0.85, 0.88, 0.90][k]
                drop = [30.0, 65.0, 120.0, 135.0, 140.0, 135.0, 125.0][k] * rng.uniform(0.9, 1.1)
                th = np.linspace(-0.5 * np.pi - 0.28, -0.5 * np.pi + reach * np.pi, 9)
                pts = []
                for i, ang in enumerate(th):
                    frac = i / (len(th) - 1)
                    x = side * a * math.cos(ang) * (0.45 if i == 0 else 1.0)
                    yy = yc + (yf - yc if math.sin(ang) > 0 else yc - yb) * math.sin(ang)
                    x = side * max(abs(x), 28.0 + 10.0 * frac)
                    pts.append((x, yy, zr - drop * frac**1.6))
                pts = self.Wn(pts, jitter=1.5)
                tubes.append(_make_tube(pts, [4.5 * s] * len(pts), self.step))
                if k >= 3:  # costal cartilage climbs from the rib end to the xiphoid: the costal margin
                    end = pts[-1]
                    mid = self.W(side * 30.0, yf - 2.0, zr - drop + 15.0)
                    tip = self.W(side * 8.0, yf - 2.0, zr - drop + 35.0)
                    cart.append(_make_tube(np.array([end, 0.5 * (end + mid), mid, tip]), [4.0 * s] * 4, self.step))
        tf = _raster_tubes(g, tubes)
        if tf is not None:
            m = (tf.rho < 1.0) & (self.c.tissue[tf.sl] != _T["lung"])
            t = np.where(tf.rho > 0.6, _T["bone_cortical"], _T["bone_cancellous"]).astype(np.uint8)
            self.c.paint(tf.sl, m, t, 0)
            self.c.bone[tf.sl] |= m
        tf = _raster_tubes(g, cart)
        if tf is not None:
            m = (tf.rho < 1.0) & ~self.abdomen[tf.sl]
            self.c.paint(tf.sl, m, _T["cartilage"], 0)
            self.c.bone[tf.sl] |= m

    def pelvis_bones(self) -> None:
        s = self.scale
        rng = self.rng
        z0, _ = self.vertebra_z
        # sacrum: a curved plate, wide at the top, down to the coccyx
        sac = [((0, -8, z0 - 25), (48, 18, 16)), ((0, -22, z0 - 55), (42, 15, 16)), ((0, -38, z0 - 85), (30, 12, 15)),
               ((0, -45, z0 - 110), (18, 9, 14)), ((0, -38, z0 - 132), (9, 7, 12))]
        for i, (p, semi) in enumerate(sac):
            tilt = _frame((0, 0.35 + 0.15 * i, 1.0), (1, 0, 0))
            self._paint_bone(_Blob(self.W(*p), np.array(semi) * s, tilt, 2.6), 0.8)
        wide = rng.uniform(0.93, 1.07)
        for side in (1, -1):
            # iliac wing: a thin fan whose horizontal extent runs from the sacroiliac joint forward and out
            h = np.array([side * 0.55, 0.84, 0.0])
            v = np.array([side * 0.35, 0.0, 1.0])
            rot = _frame(v, np.cross(h, v))
            self._paint_bone(_Blob(self.W(side * 85.0 * wide, 0.0, z0 - 22.0), np.array([6.0, 50.0, 44.0]) * s, rot, 2.2), 0.6)
            # body of the ilium, acetabulum, femoral head, neck and greater trochanter, ischium
            self._paint_bone(_Blob(self.W(side * 76.0 * wide, 20.0, z0 - 62.0), np.array([13.0, 24.0, 24.0]) * s,
                                   _frame((side * 0.3, 0.3, 1.0), (1, 0, 0)), 2.2), 0.7)
            self._paint_bone(_Blob(self.W(side * 88.0 * wide, 38.0, z0 - 82.0), np.array([20.0, 26.0, 16.0]) * s, np.eye(3), 2.4), 0.75)
            self._paint_bone(_Blob(self.W(side * 92.0 * wide, 42.0, z0 - 97.0), np.array([23.0, 23.0, 23.0]) * s, np.eye(3), 2.0), 0.85)
            neck = _frame((side * 1.0, -0.15, -0.55), (0, 1, 0))
            self._paint_bone(_Blob(self.W(side * 118.0 * wide, 36.0, z0 - 112.0), np.array([15.0, 17.0, 30.0]) * s, neck, 2.2), 0.8)
            self._paint_bone(_Blob(self.W(side * 72.0 * wide, 18.0, z0 - 118.0), np.array([12.0, 18.0, 24.0]) * s, np.eye(3), 2.2), 0.75)
            # superior pubic ramus to the symphysis
            ramus = self.Wn([(side * 80.0 * wide, 62.0, z0 - 92.0), (side * 45.0, 85.0, z0 - 100.0), (side * 8.0, 98.0, z0 - 106.0)])
            tf = _raster_tubes(self.grid, [_make_tube(ramus, [9.0 * s, 8.5 * s, 9.0 * s], self.step)])
            if tf is not None:
                m = tf.rho < 1.0
                t = np.where(tf.rho > 0.7, _T["bone_cortical"], _T["bone_cancellous"]).astype(np.uint8)
                self.c.paint(tf.sl, m, t, 0)
                self.c.bone[tf.sl] |= m

    # ---- soft-tissue context ----
    def muscles(self) -> None:
        s = self.scale
        z0, _ = self.vertebra_z
        tubes = []
        for side in (1, -1):
            ps = self.size(0.5)
            psoas = [(side * 24, 4, 95), (side * 34, 4, 40), (side * 44, 8, -10), (side * 56, 18, z0 - 10), (side * 72, 40, z0 - 50),
                     (side * 80, 62, z0 - 80), (side * 84, 72, z0 - 125)]
            tubes.append(self.tube(self.Wn(psoas, jitter=2.0), np.array([5, 11, 17, 21, 22, 19, 17]) * ps, wobble=0.05))
            crus = [(side * 14 - 4, 26, 175), (side * 14 - 3, 24, 120), (side * 15 - 2, 20, 70), (side * 10, 14, 30)]
            tubes.append(self.tube(self.Wn(crus, jitter=1.5), [5.5 + 1.5 * (side > 0), 6, 5.5, 3.5]))
            ql = [(side * 55, -35, 100), (side * 62, -36, 40), (side * 70, -38, -20), (side * 80, -30, z0 - 30)]
            tubes.append(self.tube(self.Wn(ql, jitter=2.0), [6, 11, 14, 8]))
            # obturator internus lines the lateral wall of the true pelvis
            obt = [(side * 62, 55, z0 - 90), (side * 64, 45, z0 - 115), (side * 60, 40, z0 - 145)]
            tubes.append(self.tube(self.Wn(obt, jitter=1.5), [7, 10, 8]))
        for tube in tubes:  # one box per muscle: far smaller than their union
            tf = _raster_tubes(self.grid, [tube])
            if tf is not None:
                m = (tf.rho < 1.0) & ~self.c.bone[tf.sl] & (self.c.tissue[tf.sl] != _T["lung"])
                self.c.paint(tf.sl, m, _T["muscle"], 0)
                self.organ_ok[tf.sl] &= ~m  # solid organs push against muscles, not into them

    def bowel(self) -> None:
        rng = self.rng
        z0, _ = self.vertebra_z
        # colon: caecum, ascending, hepatic flexure, transverse (sags), splenic flexure, descending, sigmoid, rectum
        sag = rng.uniform(0.0, 45.0)
        colon = [(68, 55, -70), (85, 35, -35), (90, 30, 0), (82, 55, 30), (40, 105, 18 - sag * 0.6), (0, 112, 12 - sag),
                 (-40, 105, 20 - sag * 0.6), (-82, 58, 62), (-95, 28, 25), (-92, 30, -35), (-65, 45, z0 - 30),
                 (-25, 70, z0 - 45), (10, 45, z0 - 50), (0, 10, z0 - 70), (0, 5, z0 - 105), (0, 12, z0 - 140)]
        rcol = [26, 22, 21, 20, 19, 19, 19, 19, 17, 16, 15, 15, 15, 17, 17, 12]
        ctube = self.tube(self.Wn(colon, jitter=5.0), np.array(rcol) * rng.uniform(0.8, 1.15), wobble=0.12)
        # small bowel: a space-filling walk from the duodenojejunal flexure to the caecum; jejunum in the
        # left upper and mid abdomen, ileum right and low, the last loops in the pelvis
        n = 32
        pts: list[np.ndarray] = []
        regions = [((-55, 65, 20), (40, 40, 35)), ((0, 70, -30), (75, 40, 50)), ((0, 75, z0 - 40), (55, 30, 30))]
        for i in range(n):
            (cx, cy, cz), (ax, ay, az) = regions[0 if i < 10 else 1 if i < 26 else 2]
            for _ in range(40):  # keep loops apart so that mesenteric fat shows between them
                u = rng.uniform(-1, 1, 3)
                if (u**2).sum() > 1:
                    continue
                p = np.array([cx + ax * u[0], cy + ay * u[1], cz + az * u[2]])
                if all(np.linalg.norm(p - q) > 30.0 for q in pts):
                    break
            pts.append(p)
        start = np.array([-30.0, 62.0, 25.0])
        order, left, cur = [], list(range(n)), start
        while left:
            j = left.pop(int(np.argmin([np.linalg.norm(pts[j] - cur) for j in left])))
            order.append(pts[j])
            cur = pts[j]
        sb_ctrl = np.array([start, *order, (60.0, 50.0, -75.0)])
        sb = self.tube(self.Wn(sb_ctrl), np.full(len(sb_ctrl), 10.5) * rng.uniform(0.85, 1.15), wobble=0.15)
        tf = _raster_tubes(self.grid, [ctube, sb])
        if tf is None:
            return
        sl = tf.sl
        m = (tf.rho < 1.0) & (self.c.tissue[sl] == _T["visceral_fat"]) & self.cav[sl]
        # contents change segment by segment: fluid, chyme, collapsed, gas (anterior: the patient is supine)
        nseg = 16
        seg = np.minimum((tf.s * nseg).astype(np.int64), nseg - 1)
        kinds_sb = rng.choice(4, nseg, p=[0.4, 0.25, 0.2, 0.15])
        level_sb = np.where(kinds_sb == 3, rng.uniform(-0.6, 0.3, nseg), rng.uniform(0.5, 1.5, nseg))
        level_co = rng.uniform(-0.4, 1.2, nseg)
        is_colon = tf.tube == 0
        level = np.where(is_colon, level_co[seg], level_sb[seg])
        kind = kinds_sb[seg]
        t = np.full(m.shape, _T["gi_fluid"], np.uint8)
        t[~is_colon & (kind == 1)] = _T["chyme"]
        t[~is_colon & (kind == 2)] = _T["gi_wall"]
        t[is_colon] = _T["stool"]
        t[is_colon & (self.fine[sl] > 1.1)] = _T["gas"]
        t[tf.dy > level] = _T["gas"]
        t[tf.rho > 1.0 - 2.5 / np.maximum(tf.radius, 1.0)] = _T["gi_wall"]
        self.c.paint(sl, m, t, 0)

    def vessels_context(self) -> None:
        """Iliac arteries and veins, renal veins: unlabelled, painted before the organs."""
        s = self.scale
        z0, _ = self.vertebra_z
        art, ven = [], []
        for side in (1, -1):
            art.append(self.tube(self.Wn([(-3, 30, -30), (side * 22, 28, z0 - 15), (side * 45, 30, z0 - 50),
                                          (side * 62, 45, z0 - 85), (side * 75, 70, z0 - 125)]), [7.5, 7, 6.5, 6, 6]))
            ven.append(self.tube(self.Wn([(10, 26, -42), (side * 20 + 5, 20, z0 - 20), (side * 42, 20, z0 - 55),
                                          (side * 58, 32, z0 - 92), (side * 70, 58, z0 - 130)]), [9, 8.5, 8, 7.5, 7]))
        for tubes, tissue in ((art, _T["artery"]), (ven, _T["vein"])):
            tf = _raster_tubes(self.grid, tubes)
            if tf is not None:
                m = (tf.rho < 1.0) & self.cav[tf.sl] & ~self.c.bone[tf.sl]
                self.c.paint(tf.sl, m, tissue, 0)

    # ---- labelled organs ----
    def organs(self) -> None:
        rng, s, g, c = self.rng, self.scale, self.grid, self.c
        z0, _ = self.vertebra_z
        ok = self.organ_ok  # abdomen below the diaphragm, outside muscles
        notbone = ~c.bone

        def put(got: Any, label: int, tissue: int | np.ndarray, allowed: np.ndarray | None = None, thr: float = 1.0) -> None:
            if got is None:
                return
            sl, f = got
            al = ok if allowed is None else allowed
            c.paint(sl, (f < thr) & notbone[sl], tissue, label, al)

        off_liver = self.offset()
        off_kr, off_kl = self.offset(), self.offset()
        off_pd = self.offset(0.7)
        off_st = self.offset()
        off_sp = self.offset()
        off_pel = self.offset(0.8)

        # liver: right lobe, left lobe, caudate, inferior right tip; the dome is cut by the diaphragm
        ls = self.size()
        lobes = [
            ((64, 32, 92), (71, 77, 62), 2.3),
            ((-5, 88, 110), (52 * self.size(0.7), 25, 29), 2.2),
            ((14, 44, 100), (20, 18, 30), 2.0),
            ((86, 38, 45), (27, 38, 29 * self.size()), 2.2),
        ]
        liver = np.zeros(g.shape, bool)
        for (p, semi, e) in lobes:
            rot = _frame((0, 0.15 if p[0] > 0 else -0.2, 1.0), (1, 0, 0.1 if p[0] < 20 else 0))
            got = _eval_blob(g, self.blob(self.W(*p, off_liver), np.array(semi) * ls, rot, e))
            if got is not None:
                sl, f = got
                liver[sl] |= f < 1.0
        liver &= ok & notbone
        c.paint((slice(None),) * 3, liver, _T["liver"], _L["liver"])

        # spleen: crescent along the left posterolateral ribs
        ss = self.size(1.3)
        put(_eval_blob(g, self.blob(self.W(-90, 2, 98, off_sp), np.array([26, 58, 46]) * ss, _frame((0.25, -0.5, 0.85), (-0.9, -0.4, 0)),
                                    2.2, bend=0.35)), _L["spleen"], _T["spleen"])

        # stomach: fundus under the left dome, body, antrum across to the pylorus; air-fluid level anteriorly
        st = self.size(1.5)
        stom = [(-62, 45, 128), (-55, 66, 106), (-55, 90, 76), (-40, 104, 52), (-5, 104, 42), (20, 90, 46), (32, 76, 52)]
        srad = np.array([28, 27, 25, 21, 16, 12, 9]) * st
        stube = self.tube(self.Wn(stom, off_st, jitter=3.0), srad, wobble=0.08)
        self.pylorus = stube.points[-1]
        tf = _raster_tubes(g, [stube])
        if tf is not None:
            m = tf.rho < 1.0
            level = rng.uniform(-0.1, 1.1)
            food = rng.random() < 0.35
            t = np.full(m.shape, _T["gi_fluid"], np.uint8)
            if food:
                t[self.fine[tf.sl] > 0.3] = _T["gi_wall"]
            t[tf.dy > level] = _T["gas"]
            t[tf.rho > 1.0 - 5.0 / np.maximum(tf.radius, 1.0)] = _T["gi_wall"]
            c.paint(tf.sl, m & notbone[tf.sl], t, _L["stomach"], ok)

        # duodenum: C-loop from the pylorus around the pancreatic head to the duodenojejunal flexure
        du = [(32, 76, 52), (50, 62, 58), (62, 46, 52), (66, 42, 32), (63, 42, 8), (50, 50, -8), (20, 56, -13),
              (-10, 56, -10), (-28, 58, 3), (-32, 62, 22)]
        dtube = self.tube(self.Wn(du, off_pd, jitter=2.5), np.full(len(du), 11.5) * self.size(0.8), wobble=0.15)
        dtube.points[0] = self.pylorus
        tf = _raster_tubes(g, [dtube])
        if tf is not None:
            m = tf.rho < 1.0
            level = rng.uniform(0.2, 1.3)
            t = np.full(m.shape, _T["gi_fluid"], np.uint8)
            t[np.sin(2 * np.pi * rng.uniform(2, 5) * tf.s + rng.uniform(0, 6.3)) > 0.4] = _T["gi_wall"]  # collapsed stretches
            t[tf.dy > level] = _T["gas"]
            t[tf.rho > 1.0 - 2.5 / np.maximum(tf.radius, 1.0)] = _T["gi_wall"]
            c.paint(tf.sl, m & notbone[tf.sl], t, _L["duodenum"], ok)

        # pancreas: uncinate, head in the C-loop, neck, body over the aorta, tail to the splenic hilum
        pz = self.size()
        pan = [(18, 44, 12), (38, 54, 28), (30, 68, 42), (10, 76, 48), (-15, 72, 53), (-40, 60, 59), (-62, 46, 66), (-80, 32, 73)]
        prad = np.array([8, 15, 12, 9, 10.5, 10, 9, 8]) * pz
        ptube = self.tube(self.Wn(pan, off_pd, jitter=2.0), prad, wobble=0.15)
        tf = _raster_tubes(g, [ptube], squash_y=1.25)
        if tf is not None:
            m = tf.rho < 1.0
            fatty = rng.uniform(-0.2, 1.2)  # fatty lobulation: interdigitated fat stays labelled pancreas
            t = np.where(self.fine[tf.sl] > 2.2 - fatty, _T["visceral_fat"], _T["pancreas"]).astype(np.uint8)
            c.paint(tf.sl, m & notbone[tf.sl], t, _L["pancreas"], ok)

        # kidneys: bean shaped, upper pole medial and posterior, hilum anteromedial; right lower than left
        self.kidney_top = {}
        kz_both = self.size(0.8)
        for side, lab, off in ((1, _L["kidney_right"], off_kr), (-1, _L["kidney_left"], off_kl)):
            kz = kz_both * self.size(0.5)
            zc = 38.0 if side > 0 else 50.0
            ctr = self.W(side * 64.0, -4.0, zc, off)
            axis = np.array([-side * 0.2, -0.25, 1.0])
            rot = _frame(axis, (-side * 0.8, 0.6, 0.0))
            semi = np.array([27.0, 23.0, 55.0]) * kz
            got = _eval_blob(g, self.blob(ctr, semi, rot, 2.1))
            if got is not None:
                sl, f = got
                X, Y, Z = (g.axes[a][sl[a]] for a in range(3))
                d = np.stack(np.broadcast_arrays(X[:, None, None] - ctr[0], Y[None, :, None] - ctr[1], Z[None, None, :] - ctr[2]))
                ux = np.tensordot(rot[:, 0], d, axes=1) / (semi[0] * s)
                uy = np.tensordot(rot[:, 1], d, axes=1) / (semi[1] * s)
                uz = np.tensordot(rot[:, 2], d, axes=1) / (semi[2] * s)
                sinus = ((ux - 0.55) / 0.6) ** 2 + (uy / 0.45) ** 2 + (uz / 0.55) ** 2 < 1.0
                pelvis_ = ((ux - 0.6) / 0.35) ** 2 + (uy / 0.25) ** 2 + (uz / 0.35) ** 2 < 1.0
                m = (f < 1.0) & ~(sinus & (ux > 0.78))
                t = np.where(f > 0.72, _T["kidney_cortex"], _T["kidney_medulla"]).astype(np.uint8)
                t[sinus] = _T["renal_sinus"]
                t[pelvis_] = _T["urine"]
                c.paint(sl, m & notbone[sl], t, lab, ok)
            self.kidney_top[side] = ctr + rot[:, 2] * semi[2] * s * 0.9

        # gallbladder: pear in the liver's fossa, fundus toward the anterior wall
        gs = self.size(1.5)
        neck, fundus = self.W(36, 70, 70, off_liver), self.W(55, 105, 38, off_liver)
        ax = fundus - neck
        put(_eval_blob(g, self.blob(0.5 * (neck + fundus), np.array([14, 14, 0.5 * np.linalg.norm(ax) / s + 4]) * gs,
                                    _frame(ax, (1, 0, 0)), 2.0)), _L["gallbladder"], _T["bile"])

        # pelvis: bladder, prostate (male) or uterus (female) posterior to it
        fill = float(np.clip(np.exp(rng.normal(0.0, 0.3)), 0.45, 1.8))
        bsemi = np.array([46, 36, 34]) * np.cbrt(fill) * np.array([1.0, 1.0, 1.0 + 0.2 * (fill - 1)])
        bctr = self.W(0, 62, z0 - 72 + 8 * (fill - 1), off_pel)
        pel_ok = self.cav & notbone
        got = _eval_blob(g, self.blob(bctr, bsemi, np.eye(3), 2.2))
        if got is not None:
            sl, f = got
            t = np.where(f > 1.0 - 3.0 / (bsemi.min() * s), _T["bladder_wall"], _T["urine"]).astype(np.uint8)
            c.paint(sl, (f < 1.0), t, _L["urinary_bladder"], pel_ok)
        if self.female:
            usz = self.size()
            uaxis = (rng.normal(0, 0.2), 0.55 + rng.normal(0, 0.2), 0.85)
            got = _eval_blob(g, self.blob(self.W(rng.normal(0, 6), 28, z0 - 60, off_pel), np.array([28, 20, 42]) * usz,
                                          _frame(uaxis, (1, 0, 0)), 2.2))
            put(got, _L["prostate_uterus"], _T["uterus"], pel_ok)
            # ovaries: unlabelled soft-tissue confounders beside the uterus
            for side in (1, -1):
                put(_eval_blob(g, self.blob(self.W(side * 42, 25, z0 - 55, off_pel), (14, 10, 12))), 0, _T["soft_tissue"], pel_ok)
        else:
            psz = self.size()
            put(_eval_blob(g, self.blob(self.W(0, 36, z0 - 112, off_pel), np.array([20, 16, 18]) * psz, np.eye(3), 2.0)),
                _L["prostate_uterus"], _T["prostate"], pel_ok)
            # seminal vesicles: unlabelled, between bladder base and rectum
            for side in (1, -1):
                sv = _frame((side * 1.0, -0.3, 0.5), (0, 1, 0))
                put(_eval_blob(g, self.blob(self.W(side * 16, 28, z0 - 100, off_pel), (7, 6, 18), sv)), 0, _T["soft_tissue"], pel_ok)

        # splenic vein, SMV, SMA, left and right renal veins: unlabelled, carve the pancreas
        ca = self.cav & notbone
        venous = [
            self.tube(self.Wn([(-82, 24, 74), (-45, 50, 58), (-12, 60, 50), (12, 62, 43)], off_pd), [5, 5, 5, 6]),
            self.tube(self.Wn([(12, 62, 43), (14, 70, 20), (15, 82, -12), (15, 88, -60)], off_pd), [6.5, 6, 5.5, 5]),
            self.tube(self.Wn([(-48, 8, 46), (-26, 36, 46), (-8, 48, 46), (18, 42, 45), (24, 35, 45)]), [5, 5, 4.5, 5, 6]),
            self.tube(self.Wn([(45, 8, 37), (32, 24, 39), (24, 32, 41)]), [5, 5, 6]),
        ]
        tf = _raster_tubes(g, venous)
        if tf is not None:
            c.paint(tf.sl, tf.rho < 1.0, np.where(tf.tube <= 1, _T["portal_vein"], _T["vein"]).astype(np.uint8), 0, ca)
        sma = self.tube(self.Wn([(-8, 40, 56), (-4, 55, 42), (0, 68, 20), (3, 80, -12), (5, 86, -60)], off_pd * 0.5), [4.5, 4, 4, 3.5, 3.5])
        tf = _raster_tubes(g, [sma])
        if tf is not None:
            c.paint(tf.sl, tf.rho < 1.0, _T["artery"], 0, ca)

        # portal vein into the liver, hepatic veins to the IVC: blood tissue, liver keeps its label inside
        liv = [
            self.tube(self.Wn([(12, 62, 43), (28, 62, 60), (42, 58, 76), (75, 45, 86), (105, 35, 92)], off_liver), [7, 7, 6.5, 5, 3.5]),
            self.tube(self.Wn([(42, 58, 74), (15, 75, 90), (-20, 90, 96), (-50, 92, 98)], off_liver), [5.5, 5, 4, 3]),
            self.tube(self.Wn([(22, 48, 132), (60, 30, 118), (100, 15, 105)], off_liver), [6, 5, 3.5]),
            self.tube(self.Wn([(22, 48, 132), (45, 80, 112), (60, 100, 90)], off_liver), [5.5, 4.5, 3]),
            self.tube(self.Wn([(22, 48, 132), (-10, 80, 124), (-40, 95, 112)], off_liver), [5.5, 4.5, 3]),
        ]
        tf = _raster_tubes(g, liv)
        if tf is not None:
            t = np.where(tf.tube <= 1, _T["portal_vein"], _T["vein"]).astype(np.uint8)
            lab = c.label[tf.sl]
            m = (tf.rho < 1.0) & ((lab == _L["liver"]) | ((lab == 0) & self.abdomen[tf.sl] & (tf.tube <= 1)))
            c.paint(tf.sl, m, t, 0, ca, keep_labels=(_L["liver"],))

        # esophagus: down the posterior mediastinum, through the hiatus, into the cardia
        etube = self.tube(self.Wn([(3, 30, 200), (-2, 36, 165), (-12, 48, 135), (-28, 60, 115), (-45, 66, 106)], off_st * 0.5, jitter=2.0),
                          np.array([8, 8, 7.5, 8, 9]) * self.size(0.6) * self.cfg.thin_organ_scale, wobble=0.1)
        tf = _raster_tubes(g, [etube], squash_y=1.35)
        if tf is not None:
            t = np.full(tf.rho.shape, _T["esophagus"], np.uint8)
            if rng.random() < 0.5:
                t[tf.rho < 0.3] = _T["gas"]
            c.paint(tf.sl, (tf.rho < 1.0) & notbone[tf.sl], t, _L["esophagus"], self.cav)

        # IVC (right) and aorta (left-anterior of the spine); both leave the field of view at the top
        ivc = self.tube(self.Wn([(10, 26, -42), (20, 30, 0), (24, 35, 50), (28, 42, 95), (22, 50, 140), (15, 58, 175)], jitter=2.0),
                        np.array([10, 10.5, 11, 12, 12, 13]) * self.size(0.7), wobble=0.08)
        tf = _raster_tubes(g, [ivc], squash_y=1.3)
        if tf is not None:
            c.paint(tf.sl, (tf.rho < 1.0) & notbone[tf.sl], _T["vein"], _L["inferior_vena_cava"], self.cav)
        ao_r = 11.0 * self.size(0.6)
        aorta = self.tube(self.Wn([(-22, 12, 210), (-18, 20, 150), (-12, 29, 95), (-10, 33, 45), (-6, 34, 5), (-3, 30, -30)], jitter=1.5),
                          np.array([12.5, 12, 11.5, 10.5, 9.5, 8.5]) * ao_r / 11.0)
        tf = _raster_tubes(g, [aorta])
        if tf is not None:
            t = np.full(tf.rho.shape, _T["artery"], np.uint8)
            if rng.random() < 0.4:  # atherosclerotic wall calcification
                t[(tf.rho > 0.82) & (self.fine[tf.sl] > 1.6)] = _T["calcification"]
            c.paint(tf.sl, (tf.rho < 1.0) & notbone[tf.sl], t, _L["aorta"], self.cav)

        # adrenals: thin inverted-V plates just superior-medial of each kidney's upper pole
        ts = self.cfg.thin_organ_scale
        for side, lab in ((1, _L["adrenal_gland_right"]), (-1, _L["adrenal_gland_left"])):
            top = self.kidney_top[side]
            apex = top + np.array([-side * 10.0, 14.0 if side > 0 else 18.0, 16.0]) * s + rng.normal(0, 2.0, 3)
            az = float(np.clip(self.size(0.8), 0.85, 1.25))
            limbs = [((-side * 0.25, -0.45, -0.85), (side * 0.9, 0.0, -0.3)), ((side * 0.45, -0.35, -0.8), (0.0, 0.95, -0.3))]
            for direction, plate in limbs:
                L = rng.uniform(24.0, 30.0) * az
                rot = _frame(direction, plate)
                ctr = apex + rot[:, 2] * L * 0.5 * s
                put(_eval_blob(g, self.blob(ctr, (11.0 * az * ts, 4.5 * az * ts, L / 2), rot, 2.0, deform=0.6)), lab, _T["adrenal"], self.cav & notbone)


def make_phantom(seed: int, config: PhantomConfig | None = None) -> Phantom:
    """Draw one synthetic abdominal CT (HU image, AMOS15 labels, RAS+ affine) from ``seed``."""
    cfg = config if config is not None else PRESETS["cpu"]
    rng = np.random.default_rng(int(seed))
    b = _Builder(rng, cfg)
    b.body()
    b.spine()
    b.ribs()
    b.pelvis_bones()
    b.muscles()
    b.bowel()
    b.vessels_context()
    b.organs()
    hu = _tissue_hu(rng, cfg, b.contrast)
    tissue, label = _warp(b, rng)
    image, labels = _render(b, tissue, label, hu, rng)
    _check_organs(labels, cfg)
    info = {
        "seed": int(seed),
        "phase": "portal-venous" if b.contrast else "non-contrast",
        "sex": "female" if b.female else "male",
        "scale": b.scale,
        "subcutaneous_fat_mm": float(b.t_sub),
        "tissue_hu": {n: float(hu[i]) for i, n in enumerate(TISSUES)},
    }
    return Phantom(image=image, labels=labels, affine=b.grid.affine, info=info)


def _warp(b: _Builder, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pull tissue and labels through one smooth random displacement field (nearest neighbour)."""
    g, cfg = b.grid, b.cfg
    if cfg.deformation_mm <= 0:
        return b.c.tissue, b.c.label
    flat = np.zeros(g.shape, np.int64)
    for a in range(3):
        # correlation length ~40 mm: bends organs and outline without tearing thin structures
        d = _smooth_noise(rng, g, 40.0) * np.float32(cfg.deformation_mm / g.spacing[a])
        shp = [1, 1, 1]
        shp[a] = g.shape[a]
        idx = np.clip(np.rint(np.arange(g.shape[a], dtype=np.float32).reshape(shp) + d), 0, g.shape[a] - 1).astype(np.int64)
        flat = flat * g.shape[a] + idx
    return b.c.tissue.ravel()[flat], b.c.label.ravel()[flat]


def _render(b: _Builder, tissue: np.ndarray, label: np.ndarray, hu: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Fine tissue map to output HU (blur, partial volume, noise) and fine labels to output labels (majority)."""
    g, cfg = b.grid, b.cfg
    low_amp = np.array([v[2] for v in _TISSUE_TABLE.values()], np.float32)
    fine_amp = np.array([v[3] for v in _TISSUE_TABLE.values()], np.float32)
    img = hu.astype(np.float32)[tissue] + low_amp[tissue] * b.low + fine_amp[tissue] * b.fine
    if cfg.blur_mm > 0:
        img = ndimage.gaussian_filter(img, sigma=[cfg.blur_mm / sp for sp in g.spacing], mode="nearest", truncate=3.0)
    os_ = g.os
    X, Y, Z = (int(v) for v in g.out_shape)
    if os_ > 1:
        img = img.reshape(X, os_, Y, os_, Z, os_).mean(axis=(1, 3, 5))
        # majority label per output voxel; organs win ties against background
        n_cls = len(AMOS15) + 1
        vox = np.arange(X * Y * Z, dtype=np.int64).reshape(X, 1, Y, 1, Z, 1)
        keys = (vox * n_cls + label.reshape(X, os_, Y, os_, Z, os_).astype(np.int64)).ravel()
        counts = np.bincount(keys, minlength=X * Y * Z * n_cls).reshape(X * Y * Z, n_cls).astype(np.float32)
        score = counts.copy()
        score[:, 0] -= 0.5
        labels = score.argmax(1).astype(np.uint8)
        # an organ that no output voxel wins still gets the voxels where it has most volume
        present = np.bincount(labels, minlength=n_cls)
        for k in range(1, n_cls):
            if present[k] == 0 and counts[:, k].max() > 0:
                labels[counts[:, k] >= counts[:, k].max()] = k
        labels = labels.reshape(X, Y, Z)
    else:
        labels = label
    if cfg.noise_std > 0:
        noise = rng.standard_normal(img.shape).astype(np.float32)
        noise = ndimage.gaussian_filter(noise, sigma=0.6, mode="wrap")
        noise /= max(float(noise.std()), 1e-6)
        img = img + noise * np.float32(cfg.noise_std * rng.uniform(0.75, 1.3))
    img = np.clip(np.round(img), -1024, 3071).astype(np.float32)
    return img, labels


def _check_organs(labels: np.ndarray, cfg: PhantomConfig) -> None:
    present = np.bincount(labels.ravel(), minlength=len(AMOS15) + 1)
    missing = [AMOS15[k - 1] for k in range(1, len(AMOS15) + 1) if present[k] == 0]
    if missing:
        fov = tuple(round(n * sp) for n, sp in zip(cfg.shape, cfg.spacing))
        raise PartialsegError(
            f"phantom organs {missing} fell outside the field of view {fov} mm (shape {cfg.shape} x spacing {cfg.spacing}); "
            "the abdomen needs about 380 x 330 x 360 mm"
        )


# ---------------------------------------------------------------------------------------------
# dataset writer
# ---------------------------------------------------------------------------------------------


MODALITIES = ("CT", "MR")


def synthesize_dataset(out: Path, *, cases: int, seed: int, config: PhantomConfig, modality: str = "CT") -> Path:
    """Write ``cases`` phantoms as a new nnU-Net v2 raw dataset at ``out`` (refused if it exists).

    Case ``i`` is ``make_phantom(case_seed(seed, i), config)`` and is named ``synth_{i:04d}``;
    ``modality="MR"`` writes MR-like images (:func:`mr_intensities`) with ``channel_names`` {"0": "MR"}.
    """
    from partialseg.data.dataset import dataset_json, write_dataset_json
    from partialseg.data.mr_phantom import mr_intensities
    from partialseg.io import atomic_output_dir, save_volume
    from partialseg.labels import LabelSpace
    from partialseg.progress import progress as progress_bar

    if modality not in MODALITIES:
        raise PartialsegError(f"modality must be one of {list(MODALITIES)}, got {modality!r}")

    if cases < 1:
        raise PartialsegError(f"need at least one case, got {cases}")
    space = LabelSpace.named("amos15")
    with atomic_output_dir(Path(out)) as tmp:
        for i in progress_bar(range(cases), desc="phantom", unit="case"):
            cid = f"synth_{i:04d}"
            ph = make_phantom(case_seed(seed, i), config)
            image = ph.image if modality == "CT" else mr_intensities(ph.image, case_seed(seed, i))
            save_volume(image, ph.affine, tmp / "imagesTr" / f"{cid}_0000.nii.gz")
            save_volume(ph.labels, ph.affine, tmp / "labelsTr" / f"{cid}.nii.gz")
        meta = dataset_json(
            space, cases, name="partialseg_phantom", modality=modality,
            extra={"partialseg": {"generator": "phantom", "seed": int(seed), "config": asdict(config), "modality": modality}},
        )
        write_dataset_json(tmp, meta)
    return Path(out)
