"""TCT: task consistency training (Zhu et al.; design: methods.md "TCT", paper Sec. 3, Eq. 1-7).

The network is the ordinary N+1-channel softmax segmenter (the main segmentation head, MSH).
Training adds, beside it and never saved with it:

- the auxiliary task heads (ATHs): one conv ``net.make_head(2 * N)`` on the same features as
  the MSH, read as N two-channel heads ``(B, N, 2, X, Y, Z)`` (index ``j - 1`` is ATH ``j``:
  background, class j). One conv with 2N outputs computes exactly what N separate 2-channel
  convs would, in one kernel call (and :meth:`TCT.heads` runs it, fused with the MSH, as N
  difference filters: see there);
- the learnable log-variances ``s = log sigma^2`` of the uncertainty weighting (zeros).

Loss, per step (backbone once: ``f = net.features(x)``)::

    L_main = marginal Dice of the MSH over {0} ∪ Phi                       (Eq. 1-2)
    L_aux  = sum_{j in Phi} Dice loss of ATH j against (1 - [y=j], [y=j])   (Eq. 3-4)
    L_con  = sum_j 1[IoU_j >= theta] mean_v 1/2 [(1 - p^j - g_j^0)^2 + (p^j - g_j^j)^2]  (Eq. 5-6)
    L      = L_main e^{-s1} + L_aux e^{-s2} + (s1 + s2) / 2 + w(t) L_con  (Eq. 7, UAUWL)

with ``w(t) = lam * exp(-5 (1 - t/T)^2)`` for ``t < T = rampup_fraction * steps``, then ``lam``.
The ablations of the paper (Table 5, Table 7, Table 9) are options; see :class:`TCTOptions`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from partialseg import losses as L
from partialseg.errors import PartialsegError
from partialseg.losses import tct as T
from partialseg.methods.base import Batch, Method, StepContext, register

WEIGHTINGS = ("uauwl", "uwl", "none")


@dataclass
class TCTOptions:
    """TCT's options; defaults are the paper's full method (Table 5, last row).

    Attributes:
        lam: lambda, the final weight of ``L_con`` (``w(t)`` ramps up to it). The paper does not
            print it (methods.md: 0.1-1); 1.0 is the usual default of the semi-supervised
            segmentation code whose sigmoid ramp-up TCT uses (e.g. dual-task consistency, the
            paper's [26]). ``L_con`` is a per-voxel mean squared error summed over classes, so
            it stays small beside the Dice terms. A choice to revisit on the benchmark.
        rampup_fraction: T as a fraction of the training steps (0.4); 0 = no ramp-up.
        threshold: the IoU threshold theta of the consistency filter: ``"median"`` of the IoUs
            over the ATHs of each sample (the paper's "Task Median", default), ``"mean"`` ("Task
            Mean"), ``"batch-mean"`` (see :func:`partialseg.losses.tct.consistency_keep_mask`)
            or a fixed number in [0, 1] such as 0.5.
        consistency_classes: which classes j take part in ``L_con``: ``"all"`` (j in Omega, as
            Eq. 6 prints) or ``"unlabelled"`` (j in Phi^c only).
        absent_classes: a class that both the MSH and its ATH predict nowhere in a sample has no
            IoU. ``"keep"``: left out of theta, its consistency term kept; ``"drop"``: left out of
            both; ``"in_median"``: IoU 1 in theta and kept (the literal reading; with most organs
            absent from a patch theta becomes 1 and every present organ is filtered out). The
            paper is silent; "drop" was chosen on validation over three seeds of the TCT protocol
            (0.764 vs 0.763 for "keep", better on 2 of 3 seeds: a near tie; docs/results.md).
        stop_grad_aux: detach the ATH side of ``L_con`` (only the MSH is pulled to the ATHs).
        weighting: ``"uauwl"`` (Eq. 7: one log-variance for L_main, one shared by all ATHs),
            ``"uwl"`` (Table 9's UWL: one for L_main and one per ATH, N + 1 in all) or ``"none"``
            (``L_main + L_aux + w L_con``, Table 5 rows without UAUWL).
        filtering: the IoU consistency filter (False keeps every consistency term: Table 5's
            "TCT" without "Consistency Filtering", Table 7's "w/o CF").
        consistency: the consistency term at all (False: ``L_main + L_aux`` only, which isolates
            the effect of the ATHs' shared supervision from that of the consistency).
        main_ce_weight: weight of a marginal cross-entropy added to ``L_main`` (0 = the paper's
            Dice-only ``L_main``). Not in the paper: with a Dice-only loss, a class whose softmax
            saturates near 0 early gets almost no gradient and never appears; at the CPU presets'
            learning rate (3e-3, 30x the paper's) that happened to 7 of 15 organs (README, Results).
        aux_kernel_size: kernel of the ATH conv: 0 = the MSH's (the paper's heads are alike; 3 for
            the Table-6 U-Net), 3 = 3x3x3 whatever the MSH is, 1 = a pointwise conv. On the CPU the
            Table-6 U-Net's TCT step is 1.06-1.09x marginal's with 3x3x3 ATHs (their full-resolution conv
            is most of what is left of the overhead) and 1.01-1.08x with pointwise ones (README, "Other
            measurements").
    """

    lam: float = 1.0
    rampup_fraction: float = 0.4
    threshold: str | float = "median"
    consistency_classes: str = "all"
    absent_classes: str = "drop"
    stop_grad_aux: bool = False
    weighting: str = "uauwl"
    filtering: bool = True
    consistency: bool = True
    main_ce_weight: float = 0.0
    aux_kernel_size: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, value: Any, expected: str) -> PartialsegError:
            return PartialsegError(f"method 'tct': option {name}={value!r} is invalid; expected {expected}")

        for name in ("lam", "rampup_fraction", "main_ce_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise bad(name, v, "a finite number")
            setattr(self, name, float(v))
        if self.lam < 0:
            raise bad("lam", self.lam, "a number >= 0")
        if self.main_ce_weight < 0:
            raise bad("main_ce_weight", self.main_ce_weight, "a number >= 0")
        if not 0.0 <= self.rampup_fraction <= 1.0:
            raise bad("rampup_fraction", self.rampup_fraction, "a fraction of training in [0, 1]")
        th = self.threshold
        if isinstance(th, str) and th not in T.THRESHOLD_MODES:
            try:
                th = float(th)
            except ValueError:
                raise bad("threshold", th, f"one of {list(T.THRESHOLD_MODES)} or a number in [0, 1]") from None
        if not isinstance(th, str):
            if isinstance(th, bool) or not isinstance(th, int | float) or not 0.0 <= th <= 1.0:
                raise bad("threshold", th, f"one of {list(T.THRESHOLD_MODES)} or a number in [0, 1]")
            th = float(th)
        self.threshold = th
        if self.consistency_classes not in T.CONSISTENCY_CLASSES:
            raise bad("consistency_classes", self.consistency_classes, f"one of {list(T.CONSISTENCY_CLASSES)}")
        if self.absent_classes not in T.ABSENT_CLASSES:
            raise bad("absent_classes", self.absent_classes, f"one of {list(T.ABSENT_CLASSES)}")
        if self.weighting not in WEIGHTINGS:
            raise bad("weighting", self.weighting, f"one of {list(WEIGHTINGS)}")
        if isinstance(self.aux_kernel_size, bool) or self.aux_kernel_size not in (0, 1, 3):
            raise bad("aux_kernel_size", self.aux_kernel_size, "0 (as the main head), 1 or 3")
        for name in ("stop_grad_aux", "filtering", "consistency"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, getattr(self, name), "true or false")


class TCTExtras(nn.Module):
    """Training-only modules of TCT: the ATHs as one conv with 2N outputs, and the log-variances.

    ``log_vars``: ``(2,)`` = (s_main, s_aux) for UAUWL, ``(N + 1,)`` = (s_main, s_aux_1..N) for
    UWL, None for ``weighting="none"``.
    """

    def __init__(self, net: nn.Module, num_classes: int, weighting: str, kernel_size: int = 0) -> None:
        super().__init__()
        self.num_classes = num_classes
        if kernel_size:
            self.aux_head = nn.Conv3d(net.feature_channels, 2 * num_classes, kernel_size, padding=kernel_size // 2)
        else:
            self.aux_head = net.make_head(2 * num_classes)
        n_vars = {"uauwl": 2, "uwl": num_classes + 1, "none": 0}[weighting]
        # no parameter at all without weighting: an unused (even empty) one would trip DDP
        self.log_vars = nn.Parameter(torch.zeros(n_vars)) if n_vars else None

    def aux_logits(self, f: Tensor) -> Tensor:
        """ATH logits ``(B, N, 2, *spatial)`` from the features ``(B, F, *spatial)``."""
        out = self.aux_head(f)
        return out.reshape(out.shape[0], self.num_classes, 2, *out.shape[2:])


def _same_conv(a: nn.Module, b: nn.Module) -> bool:
    """Two Conv3d that can run as one (same input, kernel, stride, padding, ...)."""
    return (
        type(a) is nn.Conv3d
        and type(b) is nn.Conv3d
        and a.in_channels == b.in_channels
        and a.kernel_size == b.kernel_size
        and a.stride == b.stride
        and a.padding == b.padding
        and a.dilation == b.dilation
        and a.groups == b.groups == 1
        and a.padding_mode == b.padding_mode == "zeros"
        and (a.bias is None) == (b.bias is None)
    )


@register
class TCT(Method):
    name = "tct"
    options_cls = TCTOptions

    def build_extras(self, net: nn.Module) -> nn.Module:
        return TCTExtras(net, self.label_space.num_classes, self.options.weighting, self.options.aux_kernel_size)

    # -- heads -------------------------------------------------------------------------------
    def heads(self, net: nn.Module, extras: TCTExtras, f: Tensor) -> tuple[Tensor, Tensor]:
        """MSH logits ``(B, N+1, *spatial)`` and ATH logits from the features.

        The ATH logits are ``(B, N, 1, *spatial)``: each ATH's logit difference ``a_j^j - a_j^0``,
        the form the TCT losses take besides ``(B, N, 2, *spatial)``. Everything TCT does with an
        ATH (its 2-channel softmax in ``L_aux`` and ``L_con``, its argmax in the IoU) depends on
        that difference alone, and the difference of two conv outputs is the conv with the
        difference of the two filters. So:

        - the conv runs with N difference filters instead of 2N, and the MSH and ATH filters run
          as ONE convolution over the concatenated weights (features read once, their gradient
          one kernel call): N+1+N outputs instead of N+1 and 2N;
        - the parameters stay where they are (the differences and the concatenation are
          differentiable): ``net`` is exactly the baseline network, ``extras.aux_head`` the one
          ``make_head(2 * N)`` conv, and both of each ATH's filters get exactly the gradients
          that the plain ``(B, N, 2, ...)`` computation gives them (opposite signs).

        An ATH conv of another shape (``aux_kernel_size=1``) runs on its own, with the N difference
        filters; a network whose head is not a plain Conv3d gets the plain calls ``net.head(f)``,
        ``extras.aux_logits(f)``.
        """
        head, aux = net.head, extras.aux_head
        n = extras.num_classes
        if type(aux) is not nn.Conv3d or aux.groups != 1:
            return net.head(f), extras.aux_logits(f)
        diff_w = aux.weight[1::2] - aux.weight[0::2]
        diff_b = None if aux.bias is None else aux.bias[1::2] - aux.bias[0::2]
        if not _same_conv(head, aux):
            diff = F.conv3d(f, diff_w, diff_b, aux.stride, aux.padding, aux.dilation)
            return net.head(f), diff.unsqueeze(2)
        weight = torch.cat([head.weight, diff_w], dim=0)
        bias = None if head.bias is None else torch.cat([head.bias, diff_b], dim=0)
        out = F.conv3d(f, weight, bias, head.stride, head.padding, head.dilation)
        logits, diff = out.split([head.out_channels, n], dim=1)
        # softmax/log-softmax would each copy the strided slice; the difference is only used
        # elementwise and stays a view
        return logits.contiguous(), diff.unsqueeze(2)

    # -- loss --------------------------------------------------------------------------------
    def loss(self, net: nn.Module, extras: nn.Module | None, batch: Batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        assert isinstance(extras, TCTExtras), "TCT needs its extras (build_extras)"
        f = net.features(batch.image)
        logits, aux = self.heads(net, extras, f)
        return self.head_loss(logits, aux, batch.target, batch.annotated, extras.log_vars, ctx)

    def main_probs(self, logits: Tensor) -> Tensor | None:
        """``softmax(logits.float(), 1)`` when ``L_main`` or ``L_con`` use it (one softmax for both), else None
        (the CE variant of ``L_main`` without consistency has its own log-softmax)."""
        o = self.options
        return torch.softmax(logits.float(), dim=1) if o.consistency or o.main_ce_weight == 0 else None

    def main_loss(self, logits: Tensor, target: Tensor, annotated: Tensor, probs: Tensor | None = None) -> Tensor:
        """``L_main`` (Eq. 1-2) of MSH logits ``(B, N+1, *spatial)``: marginal Dice over {0} ∪ Phi (plus the
        marginal CE with ``main_ce_weight``); ``probs`` from :meth:`main_probs` of the same logits, or None."""
        o = self.options
        if o.main_ce_weight > 0:
            return L.marginal_loss(logits, target, annotated, ce_weight=o.main_ce_weight, dice_weight=1.0)
        return L.marginal_dice_loss(logits, target, annotated, probs=probs)

    def head_loss(self, logits: Tensor, aux: Tensor, target: Tensor, annotated: Tensor, log_vars: Tensor | None,
                  ctx: StepContext, *, l_main: Tensor | None = None,
                  probs: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """Eq. 7 from the heads' outputs, wherever they come from (this method's network, or nnU-Net's decoder
        in :mod:`partialseg.engines.nnunet.tct`).

        Args:
            logits: MSH logits ``(B, N+1, *spatial)``.
            aux: ATH logits ``(B, N, 2, *spatial)`` or their differences ``(B, N, 1, *spatial)``.
            target: ``(B, *spatial)`` int in ``0..N``; annotated: ``(B, N+1)`` bool.
            log_vars: :attr:`TCTExtras.log_vars`.
            l_main: ``L_main`` computed by the caller (nnU-Net's deep supervision: its weighted sum over the
                output scales); None: :meth:`main_loss` of ``logits``.
            probs: :meth:`main_probs` of ``logits`` when the caller has it.
        """
        o = self.options
        if probs is None:
            probs = self.main_probs(logits)
        if l_main is None:
            l_main = self.main_loss(logits, target, annotated, probs)
        if o.consistency:
            # every ATH's Dice loss and consistency term, and the IoUs, from one pass over the ATHs
            ath_dice, terms, iou = T.tct_head_terms(logits, aux, target, probs=probs, stop_grad_aux=o.stop_grad_aux)
        else:
            ath_dice = T.ath_dice_losses(aux, target)
        # Classes with supervision in this batch. An uncertainty term whose loss has no supervision
        # in the batch is left out (0 * s keeps s in the graph for DDP): its 1/2 s alone would
        # only drive s down, and so blow its weight up, between the batches that annotate it.
        # torch.where, not an if: no host-device synchronisation.
        supervised = annotated[:, 1:].any(dim=0)  # (N,)
        logs: dict[str, Tensor] = {}
        s = log_vars
        if o.weighting == "uwl":
            # one loss per ATH (the batch mean of its Dice loss where annotated); their sum is L_aux
            per_ath = torch.where(annotated[:, 1:], ath_dice, torch.zeros_like(ath_dice)).mean(dim=0)
            l_aux = per_ath.sum()
            s_aux = s[1:]
            aux_terms = torch.where(supervised, per_ath * torch.exp(-s_aux) + 0.5 * s_aux, 0.0 * s_aux)
            total = T.uncertainty_weighted([l_main], s[:1]) + aux_terms.sum()
            logs["s_main"] = s[0]
            logs["s_aux_mean"], logs["s_aux_min"], logs["s_aux_max"] = s_aux.mean(), s_aux.min(), s_aux.max()
        else:
            l_aux = T.supervised_ath_sum(ath_dice, annotated).mean()
            if o.weighting == "uauwl":
                total = torch.where(
                    supervised.any(),
                    T.uncertainty_weighted([l_main, l_aux], s),
                    T.uncertainty_weighted([l_main], s[:1]) + 0.0 * s[1],
                )
                logs["s_main"], logs["s_aux"] = s[0], s[1]
            else:
                total = l_main + l_aux
        logs["l_main"], logs["l_aux"] = l_main, l_aux

        if o.consistency:
            w = T.rampup_weight(ctx.step, ctx.total_steps, o.lam, o.rampup_fraction)
            participating = T.consistency_participants(annotated.to(terms.device), o.consistency_classes)
            l_con, keep = T.filtered_consistency(terms, iou, participating, threshold=o.threshold,
                                                 absent=o.absent_classes, filtering=o.filtering)
            total = total + w * l_con
            logs["l_con"] = l_con
            logs["w"] = torch.tensor(w)
            logs["con_kept"] = keep.sum() / participating.sum().clamp_min(1)
            # (sample, class) terms of organs at least one head predicts, and how many pass the filter;
            # "_literal": how many the literal reading (absent classes as IoU 1 in theta) would pass
            present = participating & ~torch.isnan(iou)
            logs["con_present"] = present.sum()
            logs["con_present_kept"] = (keep & present).sum()
            if o.filtering:
                literal = T.consistency_keep_mask(iou, participating, o.threshold, "in_median")
                logs["con_present_kept_literal"] = (literal & present).sum()
            logs["iou_mean"] = torch.where(present, iou, torch.zeros_like(iou)).sum() / present.sum().clamp_min(1)
        logs = {"loss": total, **logs}
        # one device-to-host transfer for all the logged numbers
        values = torch.stack([v.detach().float().reshape(()).to(total.device) for v in logs.values()]).tolist()
        return total, dict(zip(logs, values, strict=True))
