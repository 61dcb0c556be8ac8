"""What every loss shares: argument checks, per-sample lookups and reductions, the annotated-class
mask Phi and the merged target. Private helpers here are used by the sibling loss modules only."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["DEFAULT_SMOOTH", "annotated_channel_mask", "merge_target"]

DEFAULT_SMOOTH = 1e-5


def _spatial_dims(x: Tensor, first: int = 2) -> tuple[int, ...]:
    return tuple(range(first, x.ndim))


def _check_target(logits: Tensor, target: Tensor) -> Tensor:
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)} (B, C, *spatial)")
    return target.long()


def _check_annotated(annotated: Tensor, batch: int, channels: int) -> Tensor:
    if annotated.shape != (batch, channels):
        raise ValueError(f"annotated must be (B, C) = ({batch}, {channels}), got {tuple(annotated.shape)}")
    return annotated.bool()


def _float_mask(voxel_mask: Tensor | None, like: Tensor) -> Tensor | None:
    if voxel_mask is None:
        return None
    if voxel_mask.shape != like.shape:
        raise ValueError(f"voxel_mask shape {tuple(voxel_mask.shape)} must be {tuple(like.shape)} (B, *spatial)")
    return voxel_mask.to(device=like.device, dtype=torch.float32)


def _lookup(table: Tensor, target: Tensor) -> Tensor:
    """``table[b, target[b, v]]`` for a per-sample table ``(B, C)``; returns ``(B, *spatial)``."""
    flat = target.reshape(target.shape[0], -1)
    return torch.gather(table, 1, flat).reshape(target.shape)


def _masked_voxel_mean(values: Tensor, voxel_mask: Tensor | None) -> Tensor:
    """Mean of ``values`` (B, *spatial) over all voxels, weighted by ``voxel_mask``."""
    if voxel_mask is None:
        return values.mean()
    # clamp keeps an all-zero mask at 0 instead of 0/0
    return (values * voxel_mask).sum() / voxel_mask.sum().clamp_min(1e-8)


def _channel_mean(per_channel: Tensor, channel_mask: Tensor) -> Tensor:
    """Mean over counted channels per sample, then over samples with at least one counted channel.

    ``per_channel`` (B, C) float, ``channel_mask`` (B, C) bool. 0 (still attached to the graph)
    when nothing counts, never NaN.
    """
    w = channel_mask.to(per_channel.dtype)
    n = w.sum(dim=1)
    has = n > 0
    # where() rather than multiplication, so a non-finite uncounted entry cannot leak a NaN
    per_sample = torch.where(channel_mask, per_channel, torch.zeros_like(per_channel)).sum(dim=1) / n.clamp_min(1.0)
    # arithmetic, not `if has.any()` / `per_sample[has]`: no host-device synchronisation
    return (per_sample * has).sum() / has.sum().clamp_min(1)



def annotated_channel_mask(
    annotated_sets: Sequence[frozenset[int]],
    num_channels: int,
    device: torch.device | str | None = None,
) -> Tensor:
    """Per-sample annotated channels, ``(B, C)`` bool, column 0 (background) always True.

    ``annotated_sets[b]`` is Phi of sample ``b`` (class indices ``1..C-1``, methods.md
    "Notation"); it comes from the case's stored list, never from the label values.
    """
    mask = torch.zeros(len(annotated_sets), num_channels, dtype=torch.bool)
    mask[:, 0] = True
    for b, phi in enumerate(annotated_sets):
        for c in phi:
            if not 1 <= int(c) < num_channels:
                raise ValueError(f"annotated class {c} of sample {b} is outside 1..{num_channels - 1}")
            mask[b, int(c)] = True
    return mask.to(device) if device is not None else mask


def merge_target(target: Tensor, annotated: Tensor) -> Tensor:
    """Label map with every class outside ``{0} ∪ Phi`` folded into 0, ``(B, *spatial)``.

    By convention such voxels already carry 0; folding makes the merged losses correct
    even for a label map that still holds an unannotated class (Eq. 4 of TCT merges the
    supervision the same way).
    """
    return torch.where(_lookup(annotated, target), target, torch.zeros_like(target))
