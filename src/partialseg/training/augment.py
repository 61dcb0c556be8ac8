"""Batch augmentation on torch tensors (runs on the training device).

Only anatomy-preserving transforms: a small rotation about the superior-inferior axis with
scaling, and intensity changes. Left-right mirroring is done at sampling time, and only with
label swapping (``sampling.mirror_left_right``), because a mirrored abdomen without swapped
labels teaches the network that a left kidney can be a right kidney.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from partialseg.config import AugmentConfig


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def augment_batch(image: Tensor, target: Tensor, cfg: AugmentConfig, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """image (B, 1, X, Y, Z) float, target (B, X, Y, Z) int64 → augmented copies.

    Random numbers come from ``gen`` (a CPU generator) so a resumed run repeats them exactly.
    """
    if not cfg.enabled:
        return image, target
    image = image.clone()
    target = target.clone()
    b = image.shape[0]
    for i in range(b):
        if float(torch.rand((), generator=gen)) < cfg.p_rotate_scale:
            angle = math.radians(_uniform(gen, -cfg.max_rotation_deg, cfg.max_rotation_deg))
            scale = _uniform(gen, *cfg.scale_range)
            # affine_grid's (x, y, z) are the tensor's (last, middle, first) spatial axes: with
            # RAS arrays the grid x axis is S-I, so rotate in the grid (y, z) plane = array (Y, X).
            c, s = math.cos(angle) / scale, math.sin(angle) / scale
            theta = torch.tensor(
                [[1.0 / scale, 0, 0, 0], [0, c, -s, 0], [0, s, c, 0]], dtype=torch.float32, device=image.device
            )[None]
            grid = F.affine_grid(theta, list(image[i : i + 1].shape), align_corners=False)
            image[i : i + 1] = F.grid_sample(image[i : i + 1], grid, mode="bilinear", padding_mode="border", align_corners=False)
            lab = target[i : i + 1, None].float()
            target[i : i + 1] = F.grid_sample(lab, grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0].long()
        if float(torch.rand((), generator=gen)) < cfg.p_intensity:
            x = image[i]
            mean = x.mean()
            contrast = _uniform(gen, 0.75, 1.25)
            brightness = _uniform(gen, 0.9, 1.1)
            x = ((x - mean) * contrast + mean) * brightness
            lo, hi = x.min(), x.max()
            if float(hi - lo) > 1e-6:
                gamma = _uniform(gen, 0.7, 1.5)
                x = ((x - lo) / (hi - lo)).clamp_min(0) ** gamma * (hi - lo) + lo
            image[i] = x
        if float(torch.rand((), generator=gen)) < cfg.p_noise:
            noise = torch.randn(image[i].shape, generator=gen).to(image.device)
            image[i] = image[i] + noise * cfg.noise_std
    return image, target
