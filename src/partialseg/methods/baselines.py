"""The loss-based baselines of both papers (methods.md, "Baselines")."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from partialseg import losses as L
from partialseg.errors import PartialsegError
from partialseg.methods.base import Batch, Method, StepContext, register


def _voxel_mask(logits: Tensor, batch: Batch, *, background: bool = False) -> Tensor | None:
    """IPnP's VLS mask when the batch carries pseudo-labels (methods.md, "VLS"), else None."""
    if batch.pseudo is None or not bool(batch.pseudo.any()):
        return None
    return L.vls_voxel_mask(batch.target, logits.argmax(1), batch.pseudo, background=background)


@register
class FullSupervision(Method):
    name = "full"

    def loss(self, net: nn.Module, extras: nn.Module | None, batch: Batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        logits = net(batch.image)
        loss = L.full_loss(logits, batch.target, voxel_mask=_voxel_mask(logits, batch))
        return loss, {"loss": float(loss.detach())}


PSEUDO_BACKGROUND = ("supervised", "vls", "marginal")


@dataclass
class MarginalOptions:
    ce_weight: float = 1.0
    dice_weight: float = 1.0
    vls: bool = True  # apply the VLS mask on pseudo-labelled voxels (IPnP); no effect without pseudo-labels
    #: what a background voxel of a case with pseudo-labelled classes P teaches (IPnP; methods.md "VLS"):
    #: "supervised" (the paper: "background, not k" for every k in P, at full weight), "vls" (the same,
    #: but VLS also drops those the network predicts as a class of P) or "marginal" (pseudo-labels are
    #: positive evidence only: background stays merged with P, losses.marginal_loss_positive_pseudo)
    pseudo_background: str = "supervised"

    def __post_init__(self) -> None:
        if self.pseudo_background not in PSEUDO_BACKGROUND:
            raise PartialsegError(f"pseudo_background must be one of {list(PSEUDO_BACKGROUND)}, got {self.pseudo_background!r}")


@register
class Marginal(Method):
    name = "marginal"
    options_cls = MarginalOptions

    def loss(self, net: nn.Module, extras: nn.Module | None, batch: Batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        logits = net(batch.image)
        o = self.options
        mask = _voxel_mask(logits, batch, background=o.pseudo_background == "vls") if o.vls else None
        if o.pseudo_background == "marginal" and batch.pseudo is not None:
            loss = L.marginal_loss_positive_pseudo(
                logits, batch.target, batch.annotated & ~batch.pseudo, batch.pseudo, voxel_mask=mask,
                ce_weight=o.ce_weight, dice_weight=o.dice_weight,
            )
        else:
            loss = L.marginal_loss(
                logits, batch.target, batch.annotated, voxel_mask=mask, ce_weight=o.ce_weight, dice_weight=o.dice_weight,
            )
        return loss, {"loss": float(loss.detach())}


@dataclass
class ExclusionOptions:
    exclusion_weight: float = 1.0
    form: str = "dice"


@register
class MarginalExclusion(Method):
    name = "exclusion"
    options_cls = ExclusionOptions

    def loss(self, net: nn.Module, extras: nn.Module | None, batch: Batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        logits = net(batch.image)
        marginal = L.marginal_loss(logits, batch.target, batch.annotated)
        exclusion = L.exclusion_loss(logits, batch.target, batch.annotated, form=self.options.form)
        loss = marginal + self.options.exclusion_weight * exclusion
        return loss, {"loss": float(loss.detach()), "marginal": float(marginal.detach()), "exclusion": float(exclusion.detach())}


@register
class PerOrganSigmoid(Method):
    name = "sigmoid"

    def output_channels(self) -> int:
        return self.label_space.num_classes

    def probabilities(self, logits: Tensor) -> Tensor:
        # Background is "no organ above 0.5": 1 − max_c p_c makes argmax pick an organ iff its p > 0.5.
        p = torch.sigmoid(logits.float())
        bg = 1.0 - p.max(dim=1, keepdim=True).values
        return torch.cat([bg, p], dim=1)

    def loss(self, net: nn.Module, extras: nn.Module | None, batch: Batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        logits = net(batch.image)
        loss = L.sigmoid_loss(logits, batch.target, batch.annotated)
        return loss, {"loss": float(loss.detach())}


@dataclass
class AALOptions:
    """AAL's terms (Chen et al. 2024); the weights of the entropy term are our defaults (methods.md)."""

    gamma: float = 2.0
    ce_weight: float = 1.0
    dice_weight: float = 1.0
    entropy_weight: float = 0.1
    no_foreground_weight: float = 2.0


@register
class AmbiguityAware(Method):
    name = "aal"
    options_cls = AALOptions

    def loss(self, net: nn.Module, extras: nn.Module | None, batch: Batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        logits = net(batch.image)
        o = self.options
        loss = L.aal_loss(
            logits, batch.target, batch.annotated, gamma=o.gamma, ce_weight=o.ce_weight, dice_weight=o.dice_weight,
            entropy_weight=o.entropy_weight, no_foreground_weight=o.no_foreground_weight,
        )
        return loss, {"loss": float(loss.detach())}
