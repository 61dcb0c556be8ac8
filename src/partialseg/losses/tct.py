"""TCT's loss terms (Zhu et al.; methods.md "TCT", paper Eq. 3-7): the auxiliary task heads' Dice, the
MSH/ATH consistency with its IoU filter, uncertainty weighting and the consistency ramp-up.

Shapes and numerics follow :mod:`partialseg.losses` (whose helpers these use). ATH logits are
``(B, N, 2, *spatial)`` (background, class j) or their difference ``a_j^j - a_j^0`` as
``(B, N, 1, *spatial)``; the full-resolution reductions over the ATHs have a hand-written backward
(:class:`_ATHSums`), and the tests hold every term to the formula written out literally.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from partialseg.losses.base import (
    DEFAULT_SMOOTH,
    _check_annotated,
    _check_target,
    _float_mask,
)
from partialseg.losses.dice import _per_label_sum

__all__ = [
    "ABSENT_CLASSES",
    "CONSISTENCY_CLASSES",
    "THRESHOLD_MODES",
    "ath_dice_losses",
    "aux_dice_loss",
    "consistency_keep_mask",
    "consistency_loss",
    "consistency_participants",
    "filtered_consistency",
    "consistency_terms",
    "rampup_weight",
    "supervised_ath_sum",
    "tct_head_terms",
    "uncertainty_weighted",
]

THRESHOLD_MODES = ("median", "mean", "batch-mean")
CONSISTENCY_CLASSES = ("all", "unlabelled")
#: What TCT's filter does with a class that both the MSH and its ATH predict nowhere in a sample (IoU
#: undefined): "keep" its term and leave it out of theta, "drop" both, "in_median" = IoU 1 in theta and
#: kept (the literal reading before this fix: with most organs absent, theta = 1 filtered out every
#: present organ)
ABSENT_CLASSES = ("keep", "drop", "in_median")


def _ath_logit_difference(aux_logits: Tensor) -> Tensor:
    """``a_j^j - a_j^0`` in float32, ``(B, N, *spatial)``, from ATH logits ``(B, N, 2, *spatial)``
    or the difference itself given as ``(B, N, 1, *spatial)`` (a view: no copy, and no full-size
    gradient buffer for the unused channel)."""
    if aux_logits.shape[2] == 1:
        return aux_logits.squeeze(2).float()
    return aux_logits[:, :, 1].float() - aux_logits[:, :, 0].float()


class _ATHSums(torch.autograd.Function):
    """The full-resolution sums behind ``L_aux`` and ``L_con``, with a hand-written backward.

    Inputs (float32, ``V`` = flattened voxels): ``d`` ``(B, N, V)`` ATH logit differences
    ``a_j^j - a_j^0``; ``p`` ``(B, N, V)`` the MSH's organ probabilities ``p^j`` or None;
    ``label`` ``(B, V)`` int64 in ``0..N`` or None; ``weight`` ``(B, V)`` voxel weights or None;
    ``sq_grad_to_d``: False = ``sq`` sends no gradient into ``d`` (TCT's ``stop_grad_aux``).
    With ``g = sigmoid(d)`` (= ``g_j^j``) and ``z_j = [label = j]``, returns ``(B, N)`` each::

        sg = sum_v m g        tp = sum_v m g z_j        sq = sum_v (p - g)^2

    (``m`` = ``weight`` or 1; ``tp`` is 0 without ``label``, ``sq`` 0 without ``p``). Everything
    else TCT computes from the heads is arithmetic on these ``(B, N)`` sums, so the backward is
    one expression per voxel, ``dL/dd = g (1 - g) [m (dL/dsg + z_j dL/dtp) - 2 (p - g) dL/dsq]``,
    instead of autograd's chain of sigmoid, gather, scatter, product and reduction buffers
    over ``(B, N, V)``: TCT runs this on every step at full resolution.
    """

    @staticmethod
    def forward(ctx, d: Tensor, p: Tensor | None, label: Tensor | None, weight: Tensor | None, sq_grad_to_d: bool = True):  # type: ignore[override]
        with torch.autocast(device_type=d.device.type, enabled=False):
            b, n, _ = d.shape
            g = torch.sigmoid(d)
            sg = (g if weight is None else g * weight.unsqueeze(1)).sum(dim=2)
            idx = w_organ = None
            tp = g.new_zeros(b, n)
            if label is not None:
                idx = (label - 1).clamp_min(0).unsqueeze(1)  # channel of the voxel's organ, (B, 1, V)
                organ = label > 0
                w_organ = organ.to(g.dtype) if weight is None else organ * weight
                g_at_label = torch.gather(g, 1, idx).squeeze(1) * w_organ  # m g_y^y, 0 on background
                tp = _per_label_sum(g_at_label, label, n + 1)[:, 1:].contiguous()
            e = None
            sq = g.new_zeros(b, n)
            if p is not None:
                e = p - g
                sq = torch.linalg.vecdot(e, e)
        ctx.save_for_backward(g, e, idx, w_organ, weight)
        ctx.sq_grad_to_d = sq_grad_to_d
        return sg, tp, sq

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_sg: Tensor, g_tp: Tensor, g_sq: Tensor):  # type: ignore[override]
        g, e, idx, w_organ, weight = ctx.saved_tensors
        grad = g_sg.unsqueeze(2) if weight is None else g_sg.unsqueeze(2) * weight.unsqueeze(1)
        # one pass builds the full-size buffer: addcmul broadcasts the (B, N, 1) part
        if e is not None and ctx.sq_grad_to_d:
            grad = torch.addcmul(grad, e, g_sq.unsqueeze(2), value=-2.0)
        else:
            grad = grad.expand_as(g).contiguous()
        if idx is not None:
            at_label = torch.gather(g_tp, 1, idx.squeeze(1)) * w_organ  # (B, V)
            grad.scatter_add_(1, idx, at_label.unsqueeze(1))
        grad_d = torch.ops.aten.sigmoid_backward(grad, g) if ctx.needs_input_grad[0] else None
        grad_p = (2.0 * g_sq).unsqueeze(2) * e if e is not None and ctx.needs_input_grad[1] else None
        return grad_d, grad_p, None, None, None


def _ath_dice_per_class(sg: Tensor, tp: Tensor, label: Tensor, weight: Tensor | None, smooth: float) -> Tensor:
    """``1 - 1/2 (Dice(g_j^0, z^0) + Dice(g_j^j, z^j))`` per sample and ATH, ``(B, N)``.

    From the sums of :class:`_ATHSums`; the background channel's sums follow from
    ``sum m g^0 z^0 = M - sg - sz + tp``, ``sum m g^0 = M - sg``, ``sum m z^0 = M - sz``
    (``M = sum m``), so no ``(B, N, 2, V)`` tensor is ever built. nnU-Net soft Dice, as
    :func:`_dice_per_channel`.
    """
    b, n = sg.shape
    w = (label > 0).to(torch.float32) if weight is None else (label > 0) * weight
    sz = _per_label_sum(w, label, n + 1)[:, 1:]  # sum m z^j
    count = torch.full((b, 1), float(label.shape[1]), device=sg.device) if weight is None else weight.sum(1, keepdim=True)
    dice_j = (2.0 * tp + smooth) / (sg + sz + smooth).clamp_min(1e-8)
    dice_0 = (2.0 * (count - sg - sz + tp) + smooth) / (2.0 * count - sg - sz + smooth).clamp_min(1e-8)
    return 1.0 - 0.5 * (dice_0 + dice_j)


def _check_aux(aux_logits: Tensor, b: int, n: int, spatial: tuple[int, ...]) -> None:
    if aux_logits.shape not in ((b, n, 2, *spatial), (b, n, 1, *spatial)):
        raise ValueError(f"aux_logits must be (B, N, 2, *spatial) = {(b, n, 2, *spatial)}, got {tuple(aux_logits.shape)}")


def _msh_ath_iou(logits: Tensor, d: Tensor) -> Tensor:
    """IoU of the MSH's argmax mask of each organ with its ATH's mask, ``(B, N)`` float32, no grad.

    ``logits`` ``(B, N + 1, V)``, ``d`` ``(B, N, V)``. MSH_j = ``{argmax_c = j}`` (first maximum on
    ties), ATH_j = ``{d_j > 0}`` (argmax over (background, j) picks j only when strictly larger);
    both empty gives ``nan`` (undefined: the organ is absent for both heads).
    """
    with torch.no_grad():
        b, c = logits.shape[:2]
        # max(dim).indices is argmax (first maximum on ties), several times faster on CPU
        label = logits.max(dim=1).indices  # (B, V)
        ath = d > 0
        # |MSH_j ∩ ATH_j|: the ATH of the MSH's label, at each voxel the MSH labels with an organ
        hit = torch.gather(ath, 1, (label - 1).clamp_min(0).unsqueeze(1)).squeeze(1) & (label > 0)
        inter = _per_label_sum(hit.long(), label, c)[:, 1:]
        msh_size = _per_label_sum(torch.ones_like(label), label, c)[:, 1:]
        union = msh_size + torch.count_nonzero(ath, dim=2) - inter  # sum() would copy the mask to int64
        return torch.where(union > 0, inter.double() / union.clamp_min(1).double(), float("nan")).float()


def ath_dice_losses(
    aux_logits: Tensor, target: Tensor, *, voxel_mask: Tensor | None = None, smooth: float = DEFAULT_SMOOTH
) -> Tensor:
    """Each ATH's Dice loss ``1 - 1/2 sum_{c in {0, j}} Dice(g_j^c, z^c)`` per sample, ``(B, N)`` (Eq. 3–4).

    ATH ``j`` is a 2-channel softmax ``(g_j^0, g_j^j)``; ``z^j = [y = j]``, ``z^0 = 1 - z^j``
    (Eq. 4's merge of ``{0} ∪ Phi \\ {j}``). Computed for every ``j``; which ones are supervised is
    the caller's business (:func:`aux_dice_loss`). Dice smoothing as in :func:`soft_dice_loss`.

    Args:
        aux_logits: ``(B, N, 2, *spatial)``; index ``j - 1`` is ATH ``j``. Or ``(B, N, 1, *spatial)``:
            the logit difference ``a_j^j - a_j^0`` alone (the 2-channel softmax depends on nothing
            else: ``softmax(a_0, a_j) = (1 - sigmoid(a_j - a_0), sigmoid(a_j - a_0))``).
        target: ``(B, *spatial)`` int in ``0..N``.
        voxel_mask: ``(B, *spatial)`` weights of the voxel terms.
    """
    if aux_logits.ndim < 4 or aux_logits.shape[2] not in (1, 2):
        raise ValueError(f"aux_logits must be (B, N, 2, *spatial) or (B, N, 1, *spatial), got {tuple(aux_logits.shape)}")
    b, n = aux_logits.shape[:2]
    if target.shape != aux_logits.shape[:1] + aux_logits.shape[3:]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match aux_logits {tuple(aux_logits.shape)}")
    label = target.long().reshape(b, -1)
    vm = _float_mask(voxel_mask, target)
    weight = None if vm is None else vm.reshape(b, -1)
    sg, tp, _ = _ATHSums.apply(_ath_logit_difference(aux_logits).reshape(b, n, -1), None, label, weight)
    return _ath_dice_per_class(sg, tp, label, weight, smooth)


def aux_dice_loss(
    aux_logits: Tensor,
    target: Tensor,
    annotated: Tensor,
    *,
    voxel_mask: Tensor | None = None,
    smooth: float = DEFAULT_SMOOTH,
) -> Tensor:
    """TCT's ``L_aux`` (Eq. 3–4): ``sum_{j in Phi} (1 - 1/2 sum_{c in {0, j}} Dice(g_j^c, z^c))``.

    The terms are :func:`ath_dice_losses`. Only ``j in Phi`` are supervised (methods.md: Eq. 3's
    ``sum over Omega`` cannot supervise an unannotated class). As in Eq. 3 the per-class terms
    are *summed* over ``j`` (not averaged), per sample, then averaged over the batch; UAUWL's
    learnt weight absorbs the scale.

    Args:
        aux_logits: ``(B, N, 2, *spatial)`` or ``(B, N, 1, *spatial)`` (see :func:`ath_dice_losses`).
        target: ``(B, *spatial)`` int in ``0..N``.
        annotated: ``(B, N + 1)`` bool.
    """
    per_class = ath_dice_losses(aux_logits, target, voxel_mask=voxel_mask, smooth=smooth)
    return supervised_ath_sum(per_class, annotated).mean()


def supervised_ath_sum(per_class: Tensor, annotated: Tensor) -> Tensor:
    """Per-sample sum of ATH terms ``(B, N)`` over the annotated organs ``j in Phi``, ``(B,)``."""
    b, n = per_class.shape
    annotated = _check_annotated(annotated, b, n + 1).to(per_class.device)[:, 1:]
    return torch.where(annotated, per_class, torch.zeros_like(per_class)).sum(dim=1)


def _msh_ath_sums(
    logits: Tensor, aux_logits: Tensor, label: Tensor | None, probs: Tensor | None, stop_grad_aux: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(sg, tp, terms, iou)`` of :class:`_ATHSums` for the MSH/ATH pair; ``label`` ``(B, V)`` or None."""
    b, c = logits.shape[:2]
    _check_aux(aux_logits, b, c - 1, tuple(logits.shape[2:]))
    x = logits.float()
    # softmax over dim 1 of the (B, C, *spatial) tensor: on (B, C, V) the CPU kernel is slower
    p = torch.softmax(x, dim=1) if probs is None else probs
    d = _ath_logit_difference(aux_logits).reshape(b, c - 1, -1)
    sg, tp, sq = _ATHSums.apply(d, p.reshape(b, c, -1)[:, 1:], label, None, not stop_grad_aux)
    # A 2-channel softmax is a sigmoid of the logit difference: g_j^j = sigmoid(a_j - a_0),
    # g_j^0 = 1 - g_j^j. Then (1 - p^j) - g_j^0 = g_j^j - p^j, so both squares of Eq. 5's term
    # are equal and term_j = mean_v (p^j - g_j^j)^2.
    terms = sq / d.shape[2]
    return sg, tp, terms, _msh_ath_iou(x.reshape(b, c, -1), d)


def tct_head_terms(
    logits: Tensor,
    aux_logits: Tensor,
    target: Tensor,
    *,
    probs: Tensor | None = None,
    stop_grad_aux: bool = False,
    smooth: float = DEFAULT_SMOOTH,
) -> tuple[Tensor, Tensor, Tensor]:
    """Everything TCT takes from the ATHs, in one pass over ``(B, N, *spatial)`` (Eq. 3–6).

    Returns ``(ath_dice, terms, iou)``, each ``(B, N)`` float32: :func:`ath_dice_losses` and
    :func:`consistency_terms` of the same heads, with the ATHs' sigmoid computed once for both and
    one hand-written backward (:class:`_ATHSums`).

    Args:
        logits: ``(B, N + 1, *spatial)`` MSH logits.
        aux_logits: ``(B, N, 2, *spatial)`` or ``(B, N, 1, *spatial)`` (see :func:`ath_dice_losses`).
        target: ``(B, *spatial)`` int in ``0..N``.
        probs: ``softmax(logits.float(), 1)`` when the caller has it already (TCT's ``L_main``).
        stop_grad_aux: ``terms`` sends no gradient into the ATHs (``ath_dice`` still does).
    """
    label = _check_target(logits, target).reshape(logits.shape[0], -1)
    sg, tp, terms, iou = _msh_ath_sums(logits, aux_logits, label, probs, stop_grad_aux)
    return _ath_dice_per_class(sg, tp, label, None, smooth), terms, iou


def consistency_terms(logits: Tensor, aux_logits: Tensor) -> tuple[Tensor, Tensor]:
    """Per-class consistency MSE and IoU between the MSH and the ATHs (TCT Eq. 5–6).

    For class ``j`` the MSH's binary view is ``(1 - p^j, p^j)`` (methods.md "TCT"), so
    ``term_j = mean_v 1/2 [((1 - p^j) - g_j^0)^2 + (p^j - g_j^j)^2]``. The IoU compares the
    argmax masks: MSH ``argmax_c p^c == j`` against ATH ``g_j^j > g_j^0`` (ties go to
    background, as ``argmax`` picks the first); both empty gives IoU ``nan`` (see
    :func:`consistency_keep_mask`). The IoU is a non-differentiable gate, computed without gradient.

    Args:
        logits: ``(B, N + 1, *spatial)`` MSH logits.
        aux_logits: ``(B, N, 2, *spatial)`` ATH logits, or ``(B, N, 1, *spatial)`` their
            difference ``a_j^j - a_j^0`` (see :func:`ath_dice_losses`).

    Returns:
        ``terms`` ``(B, N)`` float32 (differentiable), ``iou`` ``(B, N)`` float32.
    """
    _, _, terms, iou = _msh_ath_sums(logits, aux_logits, None, None, False)
    return terms, iou


def consistency_keep_mask(
    iou: Tensor, participating: Tensor, threshold: str | float = "median", absent: str = "drop"
) -> Tensor:
    """TCT's consistency filter (Sec. 3.4): keep ``term_j`` iff ``IoU_j >= theta``; ``(B, N)`` bool.

    ``theta``: ``"median"`` (paper's choice, "Task Median") or ``"mean"`` ("Task Mean") of the
    participating IoUs of each sample, over its ATHs; ``"batch-mean"``: per ATH, the mean of its
    participating IoUs over the samples of the batch (App. E.1: "the mean IoU of the batch for
    each ATH", the mode the paper finds sensitive to the batch size); a float: fixed. The median is
    the usual one (mean of the two middle values for an even count, ``torch.nanquantile(0.5)``).
    Non-participating classes are never kept and do not enter ``theta``; a sample with none keeps
    nothing.

    A ``nan`` IoU marks a class both heads predict nowhere in the sample. The paper is silent on
    it; ``absent`` (methods.md "TCT") decides: ``"keep"`` keeps its term but leaves it out of
    ``theta``, ``"drop"`` (default: TCT's, chosen on validation) leaves it out of both, ``"in_median"`` counts it as IoU 1 in ``theta``
    and keeps it. The last is the literal reading, under which a patch where most of 15 organs
    are absent gets ``theta = 1`` and every present organ is filtered out.

    Args:
        iou: ``(B, N)``, ``nan`` where both masks are empty.
        participating: ``(B, N)`` bool, the classes that take part (``all`` or ``Phi^c``).
        threshold: mode or fixed value.
        absent: ``"keep"``, ``"drop"`` or ``"in_median"``.
    """
    if absent not in ABSENT_CLASSES:
        raise ValueError(f"absent must be one of {ABSENT_CLASSES}, got {absent!r}")
    iou = iou.float()
    participating = participating.bool()
    is_absent = torch.isnan(iou)
    if absent == "in_median":
        iou, is_absent = torch.where(is_absent, torch.ones_like(iou), iou), torch.zeros_like(is_absent)
    masked = torch.where(participating & ~is_absent, iou, torch.full_like(iou, float("nan")))
    if isinstance(threshold, str):
        if threshold not in THRESHOLD_MODES:
            raise ValueError(f"threshold must be one of {THRESHOLD_MODES} or a number, got {threshold!r}")
        if threshold == "median":
            theta = torch.nanquantile(masked, 0.5, dim=1, keepdim=True)
        elif threshold == "mean":
            theta = torch.nanmean(masked, dim=1, keepdim=True)
        else:
            theta = torch.nanmean(masked, dim=0, keepdim=True)
    else:
        theta = torch.full((1, 1), float(threshold), device=iou.device)
    # NaN theta (no present class participates) and NaN IoU compare False
    keep = iou >= theta
    if absent == "keep":
        keep = keep | is_absent
    return participating & keep


def consistency_participants(annotated: Tensor, classes: str = "all") -> Tensor:
    """``(B, N)`` bool: the classes j that take part in ``L_con``, ``"all"`` (j in Omega, as Eq. 6
    prints) or ``"unlabelled"`` (Phi^c), from ``annotated`` ``(B, N + 1)``."""
    if classes not in CONSISTENCY_CLASSES:
        raise ValueError(f"classes must be one of {CONSISTENCY_CLASSES}, got {classes!r}")
    organs = annotated[:, 1:].bool()
    return torch.ones_like(organs) if classes == "all" else ~organs


def filtered_consistency(
    terms: Tensor, iou: Tensor, participating: Tensor, *, threshold: str | float = "median", absent: str = "drop",
    filtering: bool = True,
) -> tuple[Tensor, Tensor]:
    """Eq. 6 from the per-(sample, class) terms and IoUs (:func:`consistency_terms`): the kept terms
    summed over j per sample, then the batch mean (0, in the graph, when nothing is kept); and the
    ``(B, N)`` keep mask. ``filtering=False`` keeps every participating term (the ablation)."""
    keep = consistency_keep_mask(iou, participating, threshold, absent) if filtering else participating
    return torch.where(keep, terms, torch.zeros_like(terms)).sum(dim=1).mean(), keep


def consistency_loss(
    logits: Tensor,
    aux_logits: Tensor,
    annotated: Tensor,
    *,
    threshold: str | float = "median",
    classes: str = "all",
    stop_grad_aux: bool = False,
    absent: str = "drop",
) -> Tensor:
    """TCT's filtered ``L_con`` (Eq. 6): ``sum_j 1[IoU_j >= theta] term_j``.

    Kept terms are *summed* over ``j`` as in Eq. 6, per sample, then averaged over the batch
    (a dropped term counts as 0). When nothing is kept the loss is 0 (attached to the graph),
    never NaN.

    Args:
        logits: ``(B, N + 1, *spatial)``.
        aux_logits: ``(B, N, 2, *spatial)``, or ``(B, N, 1, *spatial)`` (see :func:`consistency_terms`).
        annotated: ``(B, N + 1)`` bool.
        threshold: see :func:`consistency_keep_mask`.
        classes: ``"all"`` (``j in Omega``, as printed, default) or ``"unlabelled"`` (``Phi^c``).
        stop_grad_aux: detach the ATH side, so only the MSH is pulled towards the ATHs.
        absent: classes both heads predict nowhere (see :func:`consistency_keep_mask`).
    """
    b, c = logits.shape[:2]
    participating = consistency_participants(_check_annotated(annotated, b, c).to(logits.device), classes)
    if stop_grad_aux:
        aux_logits = aux_logits.detach()
    terms, iou = consistency_terms(logits, aux_logits)
    return filtered_consistency(terms, iou, participating, threshold=threshold, absent=absent)[0]


def uncertainty_weighted(losses: Sequence[Tensor], log_vars: Tensor) -> Tensor:
    """Uncertainty weighting (Kendall et al. 2018; TCT Eq. 7 UAUWL): ``sum_k L_k e^{-s_k} + s_k / 2``.

    ``s_k = log sigma_k^2``, so ``L / sigma^2 + log sigma`` with ``log sigma = s / 2``;
    parametrising by ``s`` keeps ``sigma > 0`` without constraints. UAUWL passes two losses
    (``L_main``, ``L_aux`` with one ``s`` for all ATHs); UWL passes one per ATH.

    Args:
        losses: ``K`` scalar tensors.
        log_vars: ``(K,)`` learnable ``s``.
    """
    if log_vars.ndim != 1 or log_vars.shape[0] != len(losses):
        raise ValueError(f"log_vars must have shape ({len(losses)},), got {tuple(log_vars.shape)}")
    s = log_vars.float()
    total = s.sum() * 0.0
    for k, loss in enumerate(losses):
        total = total + loss.float() * torch.exp(-s[k]) + 0.5 * s[k]
    return total


def rampup_weight(step: float, total: float, lam: float, rampup_fraction: float) -> float:
    """Sigmoid ramp-up of the consistency weight (mean-teacher schedule; TCT ``w(t)``).

    ``w(t) = lam * exp(-5 (1 - t/T)^2)`` for ``t < T``, ``lam`` from ``T`` on, with
    ``T = rampup_fraction * total``; ``T <= 0`` means no ramp-up.
    """
    ramp = rampup_fraction * total
    if ramp <= 0 or step >= ramp:
        return float(lam)
    phase = 1.0 - max(float(step), 0.0) / ramp
    return float(lam) * math.exp(-5.0 * phase * phase)


