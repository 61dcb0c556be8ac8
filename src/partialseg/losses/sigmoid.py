"""Per-organ sigmoid losses: BCE + Dice on the annotated organs only (the ``sigmoid`` baseline; DoDNet,
CLIP-Driven and Hermes use the same loss on their per-organ outputs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from partialseg.losses.base import (
    DEFAULT_SMOOTH,
    _channel_mean,
    _check_annotated,
    _check_target,
    _float_mask,
)
from partialseg.losses.dice import _dice_per_channel

__all__ = ["sigmoid_loss"]

def sigmoid_loss(
    logits: Tensor,
    target: Tensor,
    annotated: Tensor,
    *,
    voxel_mask: Tensor | None = None,
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
    smooth: float = DEFAULT_SMOOTH,
) -> Tensor:
    """Baseline ``sigmoid`` ("partial supervision", IPnP baseline (3)): BCE + Dice on Phi only.

    One sigmoid channel per organ, no background channel: channel ``c - 1`` predicts class
    ``c`` against the target ``(y == c)``. Channels outside Phi get no term at all (zero
    gradient). BCE is averaged over the (sample, annotated channel, voxel) triples, weighted
    by ``voxel_mask``; Dice per sample over its annotated channels, then over the samples that
    have one.

    Args:
        logits: ``(B, N, *spatial)``.
        target: ``(B, *spatial)`` int in ``0..N``.
        annotated: ``(B, N + 1)`` bool from :func:`annotated_channel_mask` (column 0 ignored).
    """
    b, n = logits.shape[:2]
    target = _check_target(logits, target)
    annotated = _check_annotated(annotated, b, n + 1).to(logits.device)[:, 1:]
    x = logits.float()
    classes = torch.arange(1, n + 1, device=logits.device).reshape(1, n, *([1] * (logits.ndim - 2)))
    y = (target.unsqueeze(1) == classes).to(torch.float32)
    vm = _float_mask(voxel_mask, target)
    w = annotated.reshape(b, n, *([1] * (logits.ndim - 2))).to(torch.float32).expand_as(x)
    if vm is not None:
        w = w * vm.unsqueeze(1)
    bce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    # where() keeps unannotated channels out of the graph entirely (no 0 * inf risk)
    loss = bce_weight * torch.where(w > 0, bce * w, torch.zeros_like(bce)).sum() / w.sum().clamp_min(1e-8)
    if dice_weight != 0.0:
        dice = _dice_per_channel(torch.sigmoid(x), y, vm, smooth)
        loss = loss + dice_weight * (1.0 - _channel_mean(dice, annotated))
    return loss
