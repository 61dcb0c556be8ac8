"""Softmax losses on partial labels (methods.md "Baselines"): ``full``, TAL's marginal loss (Fang & Yan
2020) and its Dice alone (TCT's ``L_main``), and the marginal + exclusion loss (Shi et al. 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from partialseg.losses.base import (
    DEFAULT_SMOOTH,
    _channel_mean,
    _check_annotated,
    _check_target,
    _float_mask,
    _lookup,
    _masked_voxel_mean,
    _spatial_dims,
    merge_target,
)
from partialseg.losses.dice import _per_label_sum

__all__ = ["EXCLUSION_FORMS", "aal_loss", "ambiguity_entropy", "exclusion_loss", "full_loss", "marginal_dice_loss", "marginal_exclusion_loss", "marginal_log_probs", "marginal_loss"]

EXCLUSION_FORMS = ("dice", "ce", "dice+ce")


def _merged_channels(annotated: Tensor) -> Tensor:
    """Channels TAL merges into the background, ``{0} ∪ Phi^c``, ``(B, C)`` bool."""
    into_bg = ~annotated
    into_bg[:, 0] = True
    return into_bg


def _marginal_ce(log_p: Tensor, merged: Tensor, annotated: Tensor | None) -> Tensor:
    """Per-voxel CE of TAL's merged distribution at the merged target, ``(B, *spatial)``.

    ``-log p^y`` on a voxel labelled with an annotated organ, ``-log q^0`` on a background voxel,
    ``log q^0 = logsumexp`` of ``log p`` over ``{0} ∪ Phi^c`` (finite even where every merged
    probability underflows). ``annotated=None``: nothing is merged (``full``), ``q = p``.
    """
    log_py = torch.gather(log_p, 1, merged.unsqueeze(1)).squeeze(1)
    if annotated is None:
        return -log_py
    view = _merged_channels(annotated).reshape(*annotated.shape, *([1] * (log_p.ndim - 2)))
    log_q0 = torch.logsumexp(log_p.masked_fill(~view, float("-inf")), dim=1)
    return -torch.where(merged == 0, log_q0, log_py)


def _marginal_dice(
    probs: Tensor, merged: Tensor, annotated: Tensor | None, voxel_mask: Tensor | None, smooth: float
) -> Tensor:
    """nnU-Net soft Dice per sample and channel of TAL's merged probabilities, ``(B, C)``.

    ``q^0 = p^0 + sum_{n in Phi^c} p^n``, ``q^c = p^c`` for ``c in Phi``, against the merged
    target ``merged`` (``(B, *spatial)`` in ``{0} ∪ Phi``), as :func:`_dice_per_channel` on
    ``(q, one-hot)`` would give, but from the plain softmax ``probs`` ``(B, C, *spatial)`` and
    per-label sums: ``S[b, n, l] = sum of m p^n over the voxels labelled l``, so that
    ``TP_c = S[c, c]``, ``TP_0 = sum_{n merged} S[n, 0]``, ``sum q^c = sum_v m p^c`` and
    ``sum q^0 = sum_{n merged} sum_v m p^n``. No ``q``, no one-hot: this runs on every step.
    Entries of channels outside ``{0} ∪ Phi`` are meaningless (callers average over
    ``{0} ∪ Phi``). ``annotated=None``: every channel annotated.
    """
    b, c = probs.shape[:2]
    p = probs.reshape(b, c, -1)
    t = merged.reshape(b, -1)
    m = None if voxel_mask is None else voxel_mask.reshape(b, -1)
    pm = p if m is None else p * m.unsqueeze(1)
    per_label = _per_label_sum(pm, t, c)
    sum_p = pm.sum(dim=2)
    tp = torch.diagonal(per_label, dim1=1, dim2=2)
    if annotated is not None:
        into_bg = _merged_channels(annotated).to(p.dtype)
        bg_tp = (per_label[:, :, 0] * into_bg).sum(dim=1, keepdim=True)
        bg_sum = (sum_p * into_bg).sum(dim=1, keepdim=True)
        tp = torch.cat([bg_tp, tp[:, 1:]], dim=1)
        sum_p = torch.cat([bg_sum, sum_p[:, 1:]], dim=1)
    sum_y = _per_label_sum(torch.ones_like(t, dtype=p.dtype) if m is None else m, t, c)
    return (2.0 * tp + smooth) / (sum_p + sum_y + smooth).clamp_min(1e-8)


def _ce_plus_dice(
    log_p: Tensor,
    merged: Tensor,
    annotated: Tensor | None,
    voxel_mask: Tensor | None,
    ce_weight: float,
    dice_weight: float,
    smooth: float,
    ce: Tensor | None = None,
) -> Tensor:
    """TAL's CE + Dice from the log-softmax ``log_p``: CE of the merged distribution at the merged
    target (:func:`_marginal_ce`) plus Dice of the merged probabilities over ``{0} ∪ Phi``
    (:func:`_marginal_dice`). ``annotated=None``: nothing merged, every channel counts (``full``).
    ``ce``: per-voxel CE ``(B, *spatial)`` to use instead.
    """
    terms = []
    if ce_weight != 0.0:
        ce = _marginal_ce(log_p, merged, annotated) if ce is None else ce
        terms.append(ce_weight * _masked_voxel_mean(ce, voxel_mask))
    if dice_weight != 0.0:
        dice = _marginal_dice(log_p.exp(), merged, annotated, voxel_mask, smooth)
        counted = torch.ones_like(dice, dtype=torch.bool) if annotated is None else annotated
        terms.append(dice_weight * (1.0 - _channel_mean(dice, counted)))
    return sum(terms[1:], terms[0]) if terms else log_p.sum() * 0.0



def full_loss(
    logits: Tensor,
    target: Tensor,
    *,
    voxel_mask: Tensor | None = None,
    ce_weight: float = 1.0,
    dice_weight: float = 1.0,
    smooth: float = DEFAULT_SMOOTH,
) -> Tensor:
    """Baseline ``full``: CE + soft Dice treating the label map as complete (methods.md table).

    Unannotated organs (label 0) are learnt as background. Dice runs over all ``C`` channels,
    background included (see module docstring), so that :func:`marginal_loss` with every
    class annotated is this loss exactly.

    Args:
        logits: ``(B, C, *spatial)``.
        target: ``(B, *spatial)`` int in ``0..C-1``.
    """
    target = _check_target(logits, target)
    log_p = torch.log_softmax(logits.float(), dim=1)
    return _ce_plus_dice(log_p, target, None, _float_mask(voxel_mask, target), ce_weight, dice_weight, smooth)


def marginal_log_probs(logits: Tensor, annotated: Tensor) -> Tensor:
    """Log of TAL's merged probabilities (Fang & Yan 2020; TCT Eq. 2), ``(B, C, *spatial)``.

    ``log q^0 = log(p^0 + sum_{n in Phi^c} p^n)`` (log-sum-exp over the log-softmax of the
    background and unannotated channels), ``log q^c = log p^c`` for ``c in Phi``. Unannotated
    channels hold ``-inf``: ``q`` is then a proper distribution over all ``C`` channels with
    ``q^c = 0`` off ``{0} ∪ Phi``, ``exp`` of it is the merged probability map, and a Dice
    over ``{0} ∪ Phi`` or a CE gathered at a merged target never touches those entries (do
    not multiply them by a zero one-hot: ``0 * -inf`` is NaN).

    Args:
        logits: ``(B, C, *spatial)``, any float dtype (computed in float32).
        annotated: ``(B, C)`` bool, column 0 True.
    """
    annotated = _check_annotated(annotated, logits.shape[0], logits.shape[1]).to(logits.device)
    log_p = torch.log_softmax(logits.float(), dim=1)
    view = annotated.reshape(*annotated.shape, *([1] * (log_p.ndim - 2)))
    merged_into_bg = _merged_channels(view)
    # with Phi^c empty this is logsumexp of the single entry log p^0, which returns it exactly
    log_q0 = torch.logsumexp(log_p.masked_fill(~merged_into_bg, float("-inf")), dim=1, keepdim=True)
    log_q = log_p.masked_fill(~view, float("-inf"))
    return torch.cat([log_q0, log_q[:, 1:]], dim=1)


def marginal_loss(
    logits: Tensor,
    target: Tensor,
    annotated: Tensor,
    *,
    voxel_mask: Tensor | None = None,
    ce_weight: float = 1.0,
    dice_weight: float = 1.0,
    smooth: float = DEFAULT_SMOOTH,
) -> Tensor:
    """Baseline ``marginal`` (TAL, Fang & Yan 2020): CE on ``log q`` + Dice on ``q`` over ``{0} ∪ Phi``.

    ``q`` is :func:`marginal_log_probs`; classes outside Phi are merged into background in
    both the prediction and the target (:func:`merge_target`). With every class annotated it
    equals :func:`full_loss`. Also the IPnP retraining loss, with ``voxel_mask`` = VLS mask
    and the pseudo-labelled classes added to ``annotated``.

    Args:
        logits: ``(B, C, *spatial)``.
        target: ``(B, *spatial)`` int.
        annotated: ``(B, C)`` bool.
        voxel_mask: ``(B, *spatial)``, multiplies the voxel terms of CE and Dice.
    """
    target = _check_target(logits, target)
    annotated = _check_annotated(annotated, logits.shape[0], logits.shape[1]).to(logits.device)
    log_p = torch.log_softmax(logits.float(), dim=1)
    vm = _float_mask(voxel_mask, target)
    return _ce_plus_dice(log_p, merge_target(target, annotated), annotated, vm, ce_weight, dice_weight, smooth)



def marginal_dice_loss(
    logits: Tensor,
    target: Tensor,
    annotated: Tensor,
    *,
    voxel_mask: Tensor | None = None,
    smooth: float = DEFAULT_SMOOTH,
    probs: Tensor | None = None,
) -> Tensor:
    """TCT's ``L_main`` (Eq. 1–2): ``1 - 1/(M+1) sum_{c in {0} ∪ Phi} Dice(q^c, y^c)``.

    The background channel merges ``{0} ∪ Phi^c`` (Eq. 2 prints ``{0} ∪ Phi``, a typo: the text
    merges the unannotated organs into background, methods.md "TCT"). Eq. 1 has no smoothing;
    nnU-Net's ``smooth`` is added to numerator and denominator to avoid 0/0, and the mean over
    ``{0} ∪ Phi`` is per sample, then over the batch. Equals :func:`marginal_loss` with
    ``ce_weight=0``. ``probs``: ``softmax(logits.float(), 1)`` when the caller has it already
    (TCT shares it with ``L_con``).
    """
    target = _check_target(logits, target)
    annotated = _check_annotated(annotated, logits.shape[0], logits.shape[1]).to(logits.device)
    p = torch.softmax(logits.float(), dim=1) if probs is None else probs
    dice = _marginal_dice(p, merge_target(target, annotated), annotated, _float_mask(voxel_mask, target), smooth)
    return 1.0 - _channel_mean(dice, annotated)


def _log_one_minus_p(log_p: Tensor, channel: int) -> Tensor:
    """``log(1 - p^c) = logsumexp_{n != c} log p^n``, exact even where ``p^c`` rounds to 1."""
    others = torch.ones(log_p.shape[1], dtype=torch.bool, device=log_p.device)
    others[channel] = False
    return torch.logsumexp(log_p[:, others], dim=1)


def exclusion_loss(
    logits: Tensor,
    target: Tensor,
    annotated: Tensor,
    *,
    voxel_mask: Tensor | None = None,
    form: str = "dice",
    smooth: float = DEFAULT_SMOOTH,
) -> Tensor:
    """ME exclusion term (Shi et al. 2021, MedIA 70:101979): organs do not overlap.

    For every unannotated class ``c in Phi^c`` of a sample, its exclusion set is
    ``E = {v : y_v in Phi, y_v != 0}`` (voxels labelled with an annotated organ cannot be
    ``c``; the set is the same for every ``c`` of the sample). Forms:

    - ``"dice"`` (default): exclusion Dice ``2 sum(m p^c e) / (sum(m p^c) + sum(m e) + smooth)``,
      *added* (plus sign), so minimising it drives ``p^c -> 0`` on ``E``. Smoothing sits in the
      denominator only: with it in the numerator an empty ``E`` and ``p^c = 0`` would score 1,
      and the term must be exactly 0 whenever ``p^c`` vanishes on ``E``.
    - ``"ce"``: ``-log(1 - p^c)`` averaged over the voxels of ``E`` (0 when ``E`` is empty),
      with ``log(1 - p^c)`` as a log-sum-exp over the other channels so it stays finite.
    - ``"dice+ce"``: their sum.

    Per sample the terms are averaged over ``c in Phi^c``, then over the samples with a
    non-empty ``Phi^c`` (0 when every sample is fully annotated). The default is the Dice
    form because Shi et al. pair the marginal CE + Dice with the exclusion Dice in their
    best reported combination (recalled from the paper; the stored library holds only its
    abstract, so this could not be re-checked line by line).

    Args:
        logits: ``(B, C, *spatial)``.
        target: ``(B, *spatial)`` int.
        annotated: ``(B, C)`` bool.
    """
    if form not in EXCLUSION_FORMS:
        raise ValueError(f"form must be one of {EXCLUSION_FORMS}, got {form!r}")
    target = _check_target(logits, target)
    annotated = _check_annotated(annotated, logits.shape[0], logits.shape[1]).to(logits.device)
    vm = _float_mask(voxel_mask, target)
    unannotated = ~annotated
    unannotated[:, 0] = False
    log_p = torch.log_softmax(logits.float(), dim=1)
    excl = (_lookup(annotated, target) & (target != 0)).to(torch.float32)  # (B, *spatial)
    excl_m = excl * vm if vm is not None else excl
    dims = _spatial_dims(excl, first=1)
    loss = log_p.sum() * 0.0
    if form in ("dice", "dice+ce"):
        p = log_p.exp()
        p_m = p * vm.unsqueeze(1) if vm is not None else p
        inter = (p_m * excl.unsqueeze(1)).sum(_spatial_dims(p))  # (B, C)
        denom = p_m.sum(_spatial_dims(p)) + excl_m.sum(dims).unsqueeze(1) + smooth
        loss = loss + _channel_mean(2.0 * inter / denom, unannotated)
    if form in ("ce", "dice+ce"):
        n_excl = excl_m.sum(dims).clamp_min(1e-8)  # (B,)
        zero = torch.zeros(logits.shape[0], dtype=torch.float32, device=logits.device)
        cols = [zero]
        for c in range(1, logits.shape[1]):
            # one log-sum-exp per class unannotated somewhere in the batch, not a (C, C) tensor
            if bool(unannotated[:, c].any()):
                nll = -_log_one_minus_p(log_p, c)
                cols.append((nll * excl_m).sum(dims) / n_excl)
            else:
                cols.append(zero)
        loss = loss + _channel_mean(torch.stack(cols, dim=1), unannotated)
    return loss


def marginal_exclusion_loss(
    logits: Tensor,
    target: Tensor,
    annotated: Tensor,
    *,
    voxel_mask: Tensor | None = None,
    ce_weight: float = 1.0,
    dice_weight: float = 1.0,
    exclusion_weight: float = 1.0,
    form: str = "dice",
    smooth: float = DEFAULT_SMOOTH,
) -> Tensor:
    """Baseline ``exclusion`` (ME, Shi et al. 2021): ``marginal + exclusion_weight * exclusion``."""
    marg = marginal_loss(
        logits, target, annotated, voxel_mask=voxel_mask, ce_weight=ce_weight, dice_weight=dice_weight, smooth=smooth
    )
    excl = exclusion_loss(logits, target, annotated, voxel_mask=voxel_mask, form=form, smooth=smooth)
    return marg + exclusion_weight * excl


# ---- AAL (Chen et al., CVPR 2024, "versatile segmentation ... via model self-disambiguation") ---------
def ambiguity_entropy(logits: Tensor, target: Tensor, annotated: Tensor, *, no_foreground_weight: float = 2.0) -> Tensor:
    """AAL's entropy term: how undecided the model is among the classes a voxel may be, ``{0} ∪ Phi^c``.

    On a voxel whose merged target is background, the marginal loss fixes only ``q^0 = p^0 + sum of the
    unannotated p``; how ``q^0`` splits among ``{0} ∪ Phi^c`` is free. The term is the entropy of that
    split, ``H_v = -sum_{n in {0} ∪ Phi^c} r^n log r^n`` with ``r^n = p^n / q^0`` (0 where Phi^c is
    empty), averaged over the sample's background voxels, then over the samples with sample weight
    ``no_foreground_weight`` where the patch has no labelled foreground voxel (the paper weights such
    patches up; they carry no other signal about the unannotated organs) and 1 elsewhere:
    ``sum_b w_b H_b / B``.

    Args:
        logits: ``(B, C, *spatial)``; target ``(B, *spatial)``; annotated ``(B, C)`` bool.
    """
    target = _check_target(logits, target)
    annotated = _check_annotated(annotated, logits.shape[0], logits.shape[1]).to(logits.device)
    log_p = torch.log_softmax(logits.float(), dim=1)
    return _ambiguity_entropy(log_p, merge_target(target, annotated), annotated, no_foreground_weight)


def _ambiguity_entropy(log_p: Tensor, merged: Tensor, annotated: Tensor, no_foreground_weight: float) -> Tensor:
    """:func:`ambiguity_entropy` from the log-softmax and the merged target (shared with :func:`aal_loss`)."""
    b, c = log_p.shape[:2]
    view = _merged_channels(annotated).reshape(b, c, *([1] * (log_p.ndim - 2)))
    log_pm = log_p.masked_fill(~view, float("-inf"))
    # -inf off the merged set becomes 0 *before* any product: exp(-inf) * -inf would be NaN in the backward
    log_r = torch.where(view, log_pm - torch.logsumexp(log_pm, dim=1, keepdim=True), torch.zeros_like(log_pm))
    h = -(log_r.exp() * log_r * view).sum(dim=1)  # (B, *spatial)
    bg = (merged == 0).reshape(b, -1).to(h.dtype)
    per_sample = (h.reshape(b, -1) * bg).sum(dim=1) / bg.sum(dim=1).clamp_min(1.0)
    has_fg = (merged.reshape(b, -1) > 0).any(dim=1)
    weight = torch.where(has_fg, torch.ones_like(per_sample), torch.full_like(per_sample, no_foreground_weight))
    return (weight * per_sample).mean()


def aal_loss(
    logits: Tensor,
    target: Tensor,
    annotated: Tensor,
    *,
    gamma: float = 2.0,
    ce_weight: float = 1.0,
    dice_weight: float = 1.0,
    entropy_weight: float = 0.1,
    no_foreground_weight: float = 2.0,
    smooth: float = DEFAULT_SMOOTH,
) -> Tensor:
    """AAL (methods.md "Baselines"): focal CE and Dice on TAL's merged distribution, plus the entropy term.

    ``L = ce_weight * mean_v [-(1 - q^y)^gamma log q^y] + dice_weight * (1 - mean Dice(q) over {0} ∪ Phi)
    + entropy_weight * ambiguity_entropy``, with ``q`` TAL's merged probabilities
    (:func:`marginal_log_probs`) and ``y`` the merged target. ``gamma = 0`` and ``entropy_weight = 0``
    give :func:`marginal_loss`.
    """
    target = _check_target(logits, target)
    annotated = _check_annotated(annotated, logits.shape[0], logits.shape[1]).to(logits.device)
    merged = merge_target(target, annotated)
    log_p = torch.log_softmax(logits.float(), dim=1)
    log_qy = -_marginal_ce(log_p, merged, annotated)
    focal = -((1.0 - log_qy.exp()).clamp_min(0.0) ** gamma) * log_qy
    loss = _ce_plus_dice(log_p, merged, annotated, None, ce_weight, dice_weight, smooth, ce=focal)
    if entropy_weight != 0.0:
        loss = loss + entropy_weight * _ambiguity_entropy(log_p, merged, annotated, no_foreground_weight)
    return loss
