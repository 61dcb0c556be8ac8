"""Loss functions of the baselines and IPnP, and the helpers TCT's losses share (design: ``methods.md``;
TCT's own terms are in :mod:`partialseg.training.tct_losses`).

Shapes and conventions shared by every function here:

- ``logits``: ``(B, C, *spatial)`` raw scores of the main head, ``C = N + 1`` (background is
  channel 0). ``*spatial`` is usually ``(X, Y, Z)``; any number of spatial dims works.
- ``target``: ``(B, *spatial)`` int64 in ``0..N``. Voxels of unannotated organs carry 0.
- ``annotated``: ``(B, C)`` bool from :func:`annotated_channel_mask`, column 0 always True.
- ``voxel_mask``: optional ``(B, *spatial)`` float/bool that multiplies every voxel term
  (IPnP's VLS mask, :func:`vls_voxel_mask`).

Numerics: all loss math runs in float32 whatever the input dtype (``.float()`` first, so
bf16 autocast is safe); a cross-entropy of merged probabilities merges them in log space
(log-sum-exp), a Dice sums the probabilities themselves, so logits of ±1e4 give finite values
and gradients. Every loss returns a float32 scalar tensor.

Speed: these run on every training step at full resolution on ``(B, C, X, Y, Z)`` tensors, beside
a network that is the only other cost, so they are written to make few passes over them: Dice
sums come from per-label sums (``scatter_add``) instead of one-hot products, and TCT's ATH terms
have a hand-written backward (:class:`partialseg.training.tct_losses._ATHSums`). Tests check every one against the formula
written out literally (float64, plain autograd).

Reductions used throughout (chosen once, so that the methods are comparable):

- CE terms: mean over all voxels of the batch, weighted by ``voxel_mask`` when given
  (``sum(m * ce) / sum(m)``, 0 when the mask is all zero), like ``torch``'s ``reduction="mean"``.
- Soft Dice: nnU-Net's soft Dice, ``(2 TP + smooth) / (sum p + sum y + smooth)`` with
  ``smooth = 1e-5`` in numerator and denominator, computed per sample and per channel over
  the spatial dims, averaged over the channels that count for that sample, then over the
  samples. Channels whose target is empty in a sample still count (as in nnU-Net): their
  Dice is ~0 unless the prediction is also ~empty, which is what teaches "absent" organs.
  The background channel counts, as in TAL and TCT's Eq. 1, so that ``full`` is exactly the
  all-annotated case of ``marginal``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DEFAULT_SMOOTH",
    "annotated_channel_mask",
    "exclusion_loss",
    "full_loss",
    "marginal_dice_loss",
    "marginal_exclusion_loss",
    "marginal_log_probs",
    "marginal_loss",
    "marginal_loss_positive_pseudo",
    "merge_target",
    "sigmoid_loss",
    "soft_dice_loss",
    "vls_voxel_mask",
]

DEFAULT_SMOOTH = 1e-5
EXCLUSION_FORMS = ("dice", "ce", "dice+ce")


# ---- helpers ----------------------------------------------------------------------------
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


def _dice_per_channel(probs: Tensor, target: Tensor, voxel_mask: Tensor | None, smooth: float) -> Tensor:
    """nnU-Net soft Dice per sample and channel: ``(2 TP + s) / (sum p + sum y + s)``; (B, C)."""
    if voxel_mask is not None:
        m = voxel_mask.unsqueeze(1)
        probs_m, target_m = probs * m, target * m
    else:
        probs_m, target_m = probs, target
    dims = _spatial_dims(probs)
    tp = (probs_m * target).sum(dims)
    denom = probs_m.sum(dims) + target_m.sum(dims) + smooth
    # clamp only matters for smooth = 0 with an empty channel (0/0 otherwise)
    return (2.0 * tp + smooth) / denom.clamp_min(1e-8)


#: voxels per partial sum in :func:`_per_label_sum`
LABEL_SUM_CHUNK = 1 << 14


def _per_label_sum(values: Tensor, labels: Tensor, num_labels: int) -> Tensor:
    """Per-sample sums of ``values`` grouped by label; ``labels`` ``(B, V)`` int in ``0..num_labels-1``.

    ``values`` ``(B, V)`` -> ``(B, num_labels)``, or ``(B, K, V)`` -> ``(B, K, num_labels)`` (K channels
    grouped by the same labels). Differentiable in ``values``; O(K V) where a one-hot product would be
    O(num_labels K V). ``scatter_add`` adds a label's voxels one after another, and in float32 that
    drifts by up to ~V eps: the background of a 2M-voxel patch came out 0.6 % too large. So float
    values are added in chunks of :data:`LABEL_SUM_CHUNK` voxels and the chunk sums in float64.
    """
    squeeze = values.ndim == 2
    vals = values.unsqueeze(1) if squeeze else values
    b, k, v = vals.shape
    chunks = -(-v // LABEL_SUM_CHUNK)
    if not vals.is_floating_point() or chunks == 1:
        out = torch.zeros(b, k, num_labels, dtype=vals.dtype, device=vals.device)
        out = out.scatter_add(2, labels.unsqueeze(1).expand(b, k, v), vals)
    else:
        chunk = torch.arange(v, device=labels.device) // LABEL_SUM_CHUNK
        index = (labels + num_labels * chunk).unsqueeze(1).expand(b, k, v)
        partial = torch.zeros(b, k, chunks * num_labels, dtype=vals.dtype, device=vals.device).scatter_add(2, index, vals)
        out = partial.reshape(b, k, chunks, num_labels).sum(dim=2, dtype=torch.float64).to(vals.dtype)
    return out.squeeze(1) if squeeze else out


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


# ---- label bookkeeping -------------------------------------------------------------------
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


# ---- Dice ----------------------------------------------------------------------------------
def soft_dice_loss(
    probs: Tensor,
    target_onehot: Tensor,
    channel_mask: Tensor | None = None,
    voxel_mask: Tensor | None = None,
    smooth: float = DEFAULT_SMOOTH,
) -> Tensor:
    """``1 - mean Dice`` over counted channels, per sample, then averaged over samples.

    Dice is nnU-Net's soft Dice ``(2 sum(p y) + smooth) / (sum p + sum y + smooth)`` over the
    spatial dims of one sample and channel (``smooth = 1e-5`` in numerator and denominator);
    channels with an empty target count. Samples with no counted channel are skipped (0 if
    none has one).

    Args:
        probs: ``(B, C, *spatial)`` probabilities.
        target_onehot: ``(B, C, *spatial)``, same shape, values in [0, 1].
        channel_mask: ``(B, C)`` bool, channels that count per sample; None: all.
        voxel_mask: ``(B, *spatial)`` weights multiplying every voxel term.
        smooth: additive smoothing.
    """
    if probs.shape != target_onehot.shape:
        raise ValueError(f"probs {tuple(probs.shape)} and target_onehot {tuple(target_onehot.shape)} differ")
    probs = probs.float()
    vm = _float_mask(voxel_mask, probs[:, 0])
    dice = _dice_per_channel(probs, target_onehot.to(probs), vm, smooth)
    if channel_mask is None:
        channel_mask = torch.ones(dice.shape, dtype=torch.bool, device=dice.device)
    return 1.0 - _channel_mean(dice, channel_mask.bool())


# ---- baselines ---------------------------------------------------------------------------
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


# ---- IPnP ----------------------------------------------------------------------------------
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
