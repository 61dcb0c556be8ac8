"""IPnP's retraining terms (methods.md "VLS"): the voxel-level selection mask and our positive-only
pseudo-label variant of the marginal loss."""

from __future__ import annotations

import torch
from torch import Tensor

from partialseg.losses.base import (
    DEFAULT_SMOOTH,
    _check_annotated,
    _check_target,
    _float_mask,
    _lookup,
    merge_target,
)
from partialseg.losses.partial import _ce_plus_dice, _marginal_ce

__all__ = ["marginal_loss_positive_pseudo", "vls_voxel_mask"]

def marginal_loss_positive_pseudo(
    logits: Tensor,
    target: Tensor,
    annotated: Tensor,
    pseudo_classes: Tensor,
    *,
    voxel_mask: Tensor | None = None,
    ce_weight: float = 1.0,
    dice_weight: float = 1.0,
    smooth: float = DEFAULT_SMOOTH,
) -> Tensor:
    """:func:`marginal_loss` over Phi, with pseudo-labels used as positive evidence only.

    IPnP's ``pseudo_background="marginal"`` (our option, methods.md "VLS"): a voxel pseudo-labelled
    ``k in P`` has CE ``-log p^k`` instead of the marginal ``-log q^0`` (``q^0 = p^0 + sum of the
    unannotated p``, ``k`` among them); every other term is the marginal loss over ``{0} ∪ Phi``,
    so a background voxel never learns "not k" from a pseudo-label that may have missed it, and the
    Dice over ``{0} ∪ Phi`` counts the pseudo-labelled voxels as merged background (consistent:
    ``p^k`` is part of ``q^0``).

    Args:
        logits: ``(B, C, *spatial)``.
        target: ``(B, *spatial)`` int, annotations + pseudo-labels.
        annotated: ``(B, C)`` bool, Phi (without P), column 0 True.
        pseudo_classes: ``(B, C)`` bool, P; column 0 ignored.
        voxel_mask: ``(B, *spatial)``, e.g. the VLS mask.
    """
    target = _check_target(logits, target)
    b, c = logits.shape[:2]
    annotated = _check_annotated(annotated, b, c).to(logits.device)
    pseudo = _check_annotated(pseudo_classes, b, c).to(logits.device).clone()
    pseudo[:, 0] = False
    pseudo &= ~annotated
    log_p = torch.log_softmax(logits.float(), dim=1)
    merged = merge_target(target, annotated)
    ce = torch.where(
        _lookup(pseudo, target),
        -torch.gather(log_p, 1, target.unsqueeze(1)).squeeze(1),
        _marginal_ce(log_p, merged, annotated),
    )
    return _ce_plus_dice(log_p, merged, annotated, _float_mask(voxel_mask, target), ce_weight, dice_weight, smooth, ce=ce)



def vls_voxel_mask(target: Tensor, pred: Tensor, pseudo_classes: Tensor, *, background: bool = False) -> Tensor:
    """IPnP voxel-level selection mask (Eq. 4), ``(B, *spatial)`` float32.

    ``m_v = 0`` where the target is a pseudo-labelled class of the sample (``y_v in P``) and
    the specialist's current prediction disagrees (``pred_v != y_v``); 1 elsewhere, so every
    truly annotated voxel stays fully supervised. Background is never a pseudo-labelled
    class: column 0 of ``pseudo_classes`` is ignored. Pass the result as ``voxel_mask`` to
    :func:`marginal_loss` with ``annotated = Phi ∪ P`` (classes still unannotated stay
    marginalised).

    ``background=True`` (our extension, methods.md "VLS"): also ``m_v = 0`` where the target is
    background and the prediction is a class of P. Once organ k is pseudo-labelled, a background
    voxel no longer says "background or an unannotated organ" but "not k", and that claim comes
    from the pseudo-label too: a pseudo-label that misses part of the organ would otherwise teach
    the missed voxels as background at full weight.

    Args:
        target: ``(B, *spatial)`` int, annotations + pseudo-labels.
        pred: ``(B, *spatial)`` int, the specialist's argmax label map.
        pseudo_classes: ``(B, C)`` bool, P per sample.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} must equal target shape {tuple(target.shape)}")
    target = target.long()
    pred = pred.to(target.device).long()
    pseudo = pseudo_classes.bool().to(target.device).clone()
    pseudo[:, 0] = False
    unreliable = _lookup(pseudo, target) & (pred != target)
    if background:
        unreliable |= (target == 0) & _lookup(pseudo, pred)
    return (~unreliable).to(torch.float32)
