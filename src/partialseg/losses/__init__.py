"""The loss terms every method is composed of (design: ``methods.md``), one module per family:

- :mod:`~partialseg.losses.base`: the annotated-class mask Phi, the merged target, shared checks;
- :mod:`~partialseg.losses.dice`: nnU-Net's soft Dice;
- :mod:`~partialseg.losses.partial`: softmax losses on partial labels (``full``, TAL's marginal loss,
  marginal + exclusion, AAL's ambiguity-aware terms);
- :mod:`~partialseg.losses.sigmoid`: per-organ BCE + Dice on the annotated organs;
- :mod:`~partialseg.losses.ipnp`: IPnP's voxel-level selection and positive-only pseudo-labels;
- :mod:`~partialseg.losses.tct`: TCT's auxiliary-head Dice, filtered consistency, UAUWL.

The public functions of the first five are re-exported here (``from partialseg import losses as L``);
TCT's terms are imported from their module. Fused kernels stay private beside the public function
they speed up.

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
have a hand-written backward (:class:`partialseg.losses.tct._ATHSums`). Tests check every one against the formula
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

from partialseg.losses.base import DEFAULT_SMOOTH, annotated_channel_mask, merge_target
from partialseg.losses.dice import soft_dice_loss
from partialseg.losses.ipnp import marginal_loss_positive_pseudo, vls_voxel_mask
from partialseg.losses.partial import (
    EXCLUSION_FORMS,
    aal_loss,
    ambiguity_entropy,
    exclusion_loss,
    full_loss,
    marginal_dice_loss,
    marginal_exclusion_loss,
    marginal_log_probs,
    marginal_loss,
)
from partialseg.losses.sigmoid import sigmoid_loss

__all__ = [
    "DEFAULT_SMOOTH",
    "EXCLUSION_FORMS",
    "aal_loss",
    "ambiguity_entropy",
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
