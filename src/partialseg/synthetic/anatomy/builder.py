"""The per-case anatomy draws and the helpers every painting step uses (template to world, sizes, blobs, tubes)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from partialseg.synthetic.config import PhantomConfig
from partialseg.synthetic.grid import Canvas, Grid, smooth_field
from partialseg.synthetic.shapes import Blob, Tube, eval_blob, make_tube, surface_waves
from partialseg.synthetic.tissues import T


class Builder:
    """One case's anatomy: the per-case draws, the canvas and what the painting steps leave for the later ones.

    The steps (``paint_body`` ... ``paint_organs``, run in that order by :func:`build_anatomy`) draw from
    ``rng`` in a fixed order, so a seed fixes the case.
    """

    # set by the painting steps, read by later ones
    cav: np.ndarray  # abdominal and thoracic cavity (fine grid, bool)
    skin: np.ndarray  # inside the body outline
    abdomen: np.ndarray  # cavity below the diaphragm
    organ_ok: np.ndarray  # where solid organs may go: abdomen outside muscles
    cav_profile: tuple[Any, Any, Any]  # cavity half-width, front and back per fine slice (template mm)
    vertebrae: list[float]  # template z of each vertebral body centre, L5 first
    vertebra_z: tuple[float, float]  # L5 height and lumbar period (template mm)
    pylorus: np.ndarray
    kidney_top: dict[int, np.ndarray]

    def __init__(self, rng: np.random.Generator, cfg: PhantomConfig) -> None:
        self.rng = rng
        self.cfg = cfg
        self.grid = Grid(cfg)
        self.c = Canvas(self.grid)
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
        self.fine = smooth_field(rng, g, 2.0)  # read by box or slab (``fine[sl]``)
        self.low = smooth_field(rng, g, 12.0)  # read by the renderer only, slab by slab
        # z of every fine slice in the template frame
        self.zt = (g.axes[2].astype(np.float64) - self.z0) / self.scale

    # ---- helpers ----
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
             bend: float = 0.0, deform: float = 1.0) -> Blob:
        waves = surface_waves(self.rng, self.cfg.organ_deformation * deform) if deform > 0 and self.cfg.organ_deformation > 0 else None
        return Blob(np.asarray(c, np.float64), np.asarray(semi, np.float64) * self.scale,
                    np.eye(3) if rot is None else rot, exponent, bend, waves)

    def tube(self, ctrl: np.ndarray, radii: Sequence[float], wobble: float = 0.0) -> Tube:
        return make_tube(ctrl, np.asarray(radii, np.float64) * self.scale, self.step, self.rng, wobble * self.deform_gain)

    def spine_y(self, z: float) -> float:
        """Template y of the vertebral body centre at template height z (lordosis, kyphosis)."""
        return 6.0 * math.exp(-(((z + 15.0) / 60.0) ** 2)) - 0.0008 * max(z - 60.0, 0.0) ** 2

    def paint_bone(self, b: Blob, cortex: float = 0.8) -> None:
        got = eval_blob(self.grid, b)
        if got is None:
            return
        sl, f = got
        m = f < 1.0
        t = np.where(f > cortex, T["bone_cortical"], T["bone_cancellous"]).astype(np.uint8)
        self.c.paint(sl, m, t, 0)
        self.c.bone[sl] |= m
