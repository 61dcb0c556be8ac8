"""From the painted fine grid to the output image: warp, HU and texture, blur, partial volume, noise, majority labels."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from partialseg.errors import PartialsegError
from partialseg.registry import AMOS15
from partialseg.synthetic.anatomy.builder import Builder
from partialseg.synthetic.config import PhantomConfig
from partialseg.synthetic.grid import smooth_noise
from partialseg.synthetic.tissues import TISSUE_TABLE


def warp(b: Builder, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pull tissue and labels through one smooth random displacement field (nearest neighbour)."""
    g, cfg = b.grid, b.cfg
    if cfg.deformation_mm <= 0:
        return b.c.tissue, b.c.label
    flat = np.zeros(g.shape, np.int64)
    for a in range(3):
        # correlation length ~40 mm: bends organs and outline without tearing thin structures
        d = smooth_noise(rng, g, 40.0) * np.float32(cfg.deformation_mm / g.spacing[a])
        shp = [1, 1, 1]
        shp[a] = g.shape[a]
        idx = np.clip(np.rint(np.arange(g.shape[a], dtype=np.float32).reshape(shp) + d), 0, g.shape[a] - 1).astype(np.int64)
        flat = flat * g.shape[a] + idx
    return b.c.tissue.ravel()[flat], b.c.label.ravel()[flat]


def render(
    b: Builder, tissue: np.ndarray, label: np.ndarray, hu: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Fine tissue map to output HU (blur, partial volume, noise) and fine labels to output labels (majority)."""
    g, cfg = b.grid, b.cfg
    low_amp = np.array([v[2] for v in TISSUE_TABLE.values()], np.float32)
    fine_amp = np.array([v[3] for v in TISSUE_TABLE.values()], np.float32)
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


def check_organs(labels: np.ndarray, cfg: PhantomConfig) -> None:
    present = np.bincount(labels.ravel(), minlength=len(AMOS15) + 1)
    missing = [AMOS15[k - 1] for k in range(1, len(AMOS15) + 1) if present[k] == 0]
    if missing:
        fov = tuple(round(n * sp) for n, sp in zip(cfg.shape, cfg.spacing))
        raise PartialsegError(
            f"phantom organs {missing} fell outside the field of view {fov} mm (shape {cfg.shape} x spacing {cfg.spacing}); "
            "the abdomen needs about 380 x 330 x 360 mm"
        )
