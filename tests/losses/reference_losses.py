"""The marginal, Dice and TCT losses written out literally: one-hot targets, merged probability
maps, 2-channel ATH softmaxes, plain autograd.

``partialseg.losses`` computes the same numbers with per-label sums and a hand-written
backward; the tests compare values and gradients against these (in float64), and
``benchmarks/loss_step.py`` times both (in float32).
"""

from __future__ import annotations

import torch
from torch import Tensor

from partialseg.losses import DEFAULT_SMOOTH as S


def _merged(logits: Tensor, target: Tensor, ann: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """TAL's merged probabilities q, the merged target and its one-hot, ``(B, C, ...)``."""
    c = logits.shape[1]
    p = torch.softmax(logits.to(dtype), 1)
    extra = (1,) * (logits.ndim - 2)
    into_bg = ~ann
    into_bg[:, 0] = True
    q0 = (p * into_bg.view(*ann.shape, *extra)).sum(1, keepdim=True)
    q = torch.cat([q0, (p * ann.view(*ann.shape, *extra))[:, 1:]], 1)
    keep = torch.gather(ann, 1, target.reshape(target.shape[0], -1)).reshape(target.shape)
    merged = torch.where(keep, target, torch.zeros_like(target))
    y = torch.nn.functional.one_hot(merged, c).movedim(-1, 1).to(dtype)
    return q, merged, y


def reference_marginal_loss(
    logits: Tensor, target: Tensor, ann: Tensor, vm: Tensor | None = None, ce_weight: float = 1.0,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """``ce_weight * CE(q, merged) + 1 - mean Dice(q, one-hot)`` over ``{0} ∪ Phi`` (TAL; TCT Eq. 1-2)."""
    q, merged, y = _merged(logits, target, ann, dtype)
    m = torch.ones(target.shape, dtype=dtype) if vm is None else vm.to(dtype)
    dims = tuple(range(2, q.ndim))
    mm = m.unsqueeze(1)
    d = (2 * (q * y * mm).sum(dims) + S) / ((q * mm).sum(dims) + (y * mm).sum(dims) + S)
    loss = 1 - ((d * ann).sum(1) / ann.sum(1)).mean()
    if ce_weight:
        loss = loss + ce_weight * -(torch.log(torch.gather(q, 1, merged.unsqueeze(1)).squeeze(1)) * m).sum() / m.sum()
    return loss


def reference_ath_terms(
    logits: Tensor, aux: Tensor, target: Tensor, vm: Tensor | None = None, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor]:
    """Each ATH's Dice loss and consistency term, ``(B, N)`` each (TCT Eq. 3-6), from ``(B, N, 2, ...)`` logits."""
    n = aux.shape[1]
    g = torch.softmax(aux.to(dtype), 2)
    classes = torch.arange(1, n + 1).view(1, n, *([1] * (target.ndim - 1)))
    z = (target.unsqueeze(1) == classes).to(dtype)
    m = (torch.ones(target.shape, dtype=dtype) if vm is None else vm.to(dtype)).unsqueeze(1)
    dims = tuple(range(2, z.ndim))

    def dice(a: Tensor, y: Tensor) -> Tensor:
        return (2 * (a * y * m).sum(dims) + S) / ((a * m).sum(dims) + (y * m).sum(dims) + S)

    per_class = 1 - 0.5 * (dice(g[:, :, 0], 1 - z) + dice(g[:, :, 1], z))
    p = torch.softmax(logits.to(dtype), 1)[:, 1:]
    terms = (0.5 * (((1 - p) - g[:, :, 0]) ** 2 + (p - g[:, :, 1]) ** 2)).mean(dims)
    return per_class, terms
