"""partialseg's method losses as the ``self.loss`` of an nnU-Net v2 trainer, at every deep-supervision scale.

nnU-Net v2 (Isensee et al. 2021, Nature Methods) calls ``self.loss(output, target)``: with deep supervision
``output`` is a list of logits ``(B, C, *spatial_s)``, one per decoder scale, full resolution first, and
``target`` the matching list of label maps ``(B, 1, *spatial_s)`` (nearest-neighbour downsampled), combined by
its ``DeepSupervisionWrapper`` as ``sum_s w_s * loss(output[s], target[s])``. Partial labels need a third
argument, Phi of each sample: the trainer sets :attr:`PartialsegLoss.annotated` from the batch's case keys
before each call, and the same ``(B, C)`` mask goes to every scale.

The per-scale loss is the partialseg method's own :meth:`~partialseg.methods.base.Method.loss`, not a copy:
the method is handed an identity "network" and a batch whose image is the scale's logits, so what it
computes is exactly what partialseg's trainer computes for those logits. IPnP's retraining
(:mod:`.vls`) also sets :attr:`PartialsegLoss.pseudo`, the ``(B, C)`` pseudo-labelled classes P, which reach
the method as ``Batch.pseudo`` (its VLS mask then uses the argmax of each scale's own logits).
"""

from __future__ import annotations

from collections.abc import Sequence

from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from torch import Tensor, nn

from partialseg.methods.base import Batch, Method, StepContext

__all__ = ["PartialsegLoss", "ScaleLoss"]


class ScaleLoss(nn.Module):
    """One scale: ``method.loss`` on ``(logits, target, annotated)``.

    Args (forward):
        logits: ``(B, C, *spatial)``, C = N + 1; for a per-organ sigmoid method (``background_logit``) channel
            0 is the constant 0 the trainer's network puts first and the method gets channels ``1..N``.
        target: ``(B, 1, *spatial)`` or ``(B, *spatial)`` label map, any number type, values ``0..N``.
        annotated: ``(B, C)`` bool, Phi per sample with column 0 True (with pseudo-labels: Phi ∪ P).
        pseudo: ``(B, C)`` bool, the pseudo-labelled classes P per sample, or None (no pseudo-labels).
    """

    def __init__(self, method: Method, *, background_logit: bool = False) -> None:
        super().__init__()
        self.method = method
        self.background_logit = background_logit
        # the method computes net(batch.image); with the logits as the image the identity is that network
        self.identity = nn.Identity()
        self.step = StepContext(0, 1)

    def forward(self, logits: Tensor, target: Tensor, annotated: Tensor, pseudo: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if target.ndim == logits.ndim:
            target = target[:, 0]
        if self.background_logit:
            logits = logits[:, 1:]
        loss, _ = self.method.loss(self.identity, None, Batch(logits, target.long(), annotated, pseudo), self.step)
        return loss


class PartialsegLoss(nn.Module):
    """The trainer's ``self.loss``: :class:`ScaleLoss` per scale, weighted by nnU-Net's own
    ``DeepSupervisionWrapper`` with nnU-Net's weights (``weights=None``: deep supervision off, one output).

    Set :attr:`annotated` (``(B, C)`` bool, on the loss's device) and :attr:`step` before each call, and
    :attr:`pseudo` (``(B, C)`` bool P, or None) where the dataset carries pseudo-labels.
    """

    def __init__(self, method: Method, weights: Sequence[float] | None, *, background_logit: bool = False) -> None:
        super().__init__()
        self.scale = ScaleLoss(method, background_logit=background_logit)
        self.deep_supervision = None if weights is None else DeepSupervisionWrapper(self.scale, list(weights))
        self.annotated: Tensor | None = None
        self.pseudo: Tensor | None = None

    @property
    def weights(self) -> tuple[float, ...] | None:
        return None if self.deep_supervision is None else tuple(self.deep_supervision.weight_factors)

    @property
    def step(self) -> StepContext:
        return self.scale.step

    @step.setter
    def step(self, ctx: StepContext) -> None:
        self.scale.step = ctx

    def forward(self, output: Tensor | Sequence[Tensor], target: Tensor | Sequence[Tensor]) -> Tensor:  # type: ignore[override]
        annotated = self.annotated
        if annotated is None:
            raise RuntimeError("PartialsegLoss.annotated is not set: the trainer sets the batch's (B, C) Phi mask first")
        pseudo = self.pseudo
        if self.deep_supervision is None:
            return self.scale(output, target, annotated, pseudo)
        if not isinstance(output, (list, tuple)) or not isinstance(target, (list, tuple)) or len(output) != len(target):
            raise ValueError("deep supervision needs one output and one target per scale (two lists of equal length)")
        n = len(output)
        if pseudo is None:  # nnU-Net's wrapper zips lists, one per argument of the scale loss
            return self.deep_supervision(list(output), list(target), [annotated] * n)
        return self.deep_supervision(list(output), list(target), [annotated] * n, [pseudo] * n)
