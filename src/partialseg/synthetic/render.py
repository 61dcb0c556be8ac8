"""From the painted fine grid to the output image: warp, HU and texture, blur, partial volume, noise, majority labels."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from partialseg.errors import PartialsegError
from partialseg.registry import AMOS15
from partialseg.synthetic.anatomy.builder import Builder
from partialseg.synthetic.config import PhantomConfig
from partialseg.synthetic.grid import is_large, smooth_field
from partialseg.synthetic.streaming import add_noise_large, texture_blur_large
from partialseg.synthetic.tissues import TISSUE_TABLE

#: voxels per slab of the slab-wise loops (warp, HU lookup): their temporaries stay in the CPU cache
SLAB_VOXELS = 1 << 18


def _slabs(shape: tuple[int, ...]) -> list[slice]:
    """Slices along axis 0 of about :data:`SLAB_VOXELS` voxels each."""
    step = max(1, SLAB_VOXELS // max(1, int(np.prod(shape[1:]))))
    return [slice(i, min(i + step, shape[0])) for i in range(0, shape[0], step)]


def warp(b: Builder, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pull tissue and labels through one smooth random displacement field (nearest neighbour)."""
    g, cfg = b.grid, b.cfg
    if cfg.deformation_mm <= 0:
        return b.c.tissue, b.c.label
    # correlation length ~40 mm: bends organs and outline without tearing thin structures
    fields = [smooth_field(rng, g, 40.0) for _ in range(3)]
    fields = [f.scaled(float(np.float32(cfg.deformation_mm / g.spacing[a]))) for a, f in enumerate(fields)]
    ramps = []
    for a in range(3):
        shp = [1, 1, 1]
        shp[a] = g.shape[a]
        ramps.append(np.arange(g.shape[a], dtype=np.float32).reshape(shp))
    itype = np.int32 if int(np.prod(g.shape, dtype=np.int64)) < 2**31 else np.int64
    src_t, src_l = b.c.tissue.ravel(), b.c.label.ravel()
    tissue, label = np.empty(g.shape, np.uint8), np.empty(g.shape, np.uint8)
    for sl in _slabs(g.shape):
        flat = None
        for a in range(3):
            ramp = ramps[a][sl] if a == 0 else ramps[a]
            idx = np.clip(np.rint(ramp + fields[a][sl]), 0, g.shape[a] - 1).astype(itype)
            flat = idx if flat is None else flat * itype(g.shape[a]) + idx
        np.take(src_t, flat, out=tissue[sl])
        np.take(src_l, flat, out=label[sl])
    return tissue, label


def render(
    b: Builder, tissue: np.ndarray, label: np.ndarray, hu: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Fine tissue map to output HU (blur, partial volume, noise) and fine labels to output labels (majority)."""
    g, cfg = b.grid, b.cfg
    low_amp = np.array([v[2] for v in TISSUE_TABLE.values()], np.float32)
    fine_amp = np.array([v[3] for v in TISSUE_TABLE.values()], np.float32)
    sigma = [cfg.blur_mm / sp for sp in g.spacing] if cfg.blur_mm > 0 else [0.0, 0.0, 0.0]
    if is_large(tissue.shape):
        img = texture_blur_large(tissue, hu, low_amp, fine_amp, b.low, b.fine, sigma)
    else:
        hu32 = hu.astype(np.float32)
        img = np.empty(tissue.shape, np.float32)
        for sl in _slabs(tissue.shape):
            t = tissue[sl]
            img[sl] = np.take(hu32, t) + np.take(low_amp, t) * b.low[sl] + np.take(fine_amp, t) * b.fine[sl]
        if cfg.blur_mm > 0:
            img = ndimage.gaussian_filter(img, sigma=sigma, mode="nearest", truncate=3.0)
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
        if is_large(img.shape):
            add_noise_large(img, cfg.noise_std, rng)
        else:
            noise = rng.standard_normal(img.shape).astype(np.float32)
            noise = ndimage.gaussian_filter(noise, sigma=0.6, mode="wrap")
            noise /= max(float(noise.std()), 1e-6)
            noise *= np.float32(cfg.noise_std * rng.uniform(0.75, 1.3))
            img += noise
            del noise
    np.round(img, out=img)
    np.clip(img, -1024, 3071, out=img)
    return img, labels


def check_organs(labels: np.ndarray, cfg: PhantomConfig) -> None:
    present = sum(np.bincount(labels[sl].ravel(), minlength=len(AMOS15) + 1) for sl in _slabs(labels.shape))
    missing = [AMOS15[k - 1] for k in range(1, len(AMOS15) + 1) if present[k] == 0]
    if missing:
        fov = tuple(round(n * sp) for n, sp in zip(cfg.shape, cfg.spacing))
        raise PartialsegError(
            f"phantom organs {missing} fell outside the field of view {fov} mm (shape {cfg.shape} x spacing {cfg.spacing}); "
            "the abdomen needs about 380 x 330 x 360 mm"
        )
