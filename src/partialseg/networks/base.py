"""The one interface every segmentation network in partialseg implements.

The method layer (TCT's auxiliary task heads, DoDNet's dynamic head, IPnP's specialist)
never reaches into a network's internals: it asks for ``features(x)``, the last decoder
feature map at input resolution, and puts its own heads on it. ``forward`` is always
``head(features(x))``, so a method that needs the main logits *and* extra heads computes
the backbone once::

    f = net.features(x)              # (B, F, X, Y, Z), F = net.feature_channels
    logits = net.head(f)             # (B, C, X, Y, Z), C = net.out_channels
    aux = aux_head(f)                # aux_head = net.make_head(2 * N), training only

Tensor layout everywhere: ``(B, C, X, Y, Z)``, channels first, three spatial axes in the
order the data layer delivers them (the networks are agnostic to which is which, except
DynUNet, whose plan takes the spacing in that same order).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from partialseg.errors import InputError


@dataclass(frozen=True)
class Stage:
    """One stage of a backbone: ``kind`` is "encoder", "bottleneck" or "decoder"; ``channels`` its output's."""

    kind: str
    module: nn.Module
    channels: int


class SegmentationNetwork(nn.Module, ABC):
    """Base class: a backbone producing full-resolution features plus a segmentation head.

    Attributes:
        in_channels: image channels the network takes (1 for CT).
        out_channels: logits channels of the main head (N organs + background).
        feature_channels: channels F of ``features(x)``; extra heads take F inputs.
        head: the main segmentation head, ``(B, F, X, Y, Z) -> (B, out_channels, X, Y, Z)``.
        head_kernel_size: kernel of the main head; ``make_head`` reuses it so that auxiliary
            heads look like the main one (TCT Sec. 3 / App. B: every head is one conv).
        size_divisor: per spatial axis, the number every input size must be divisible by.
        bottleneck_channels: channels of the deepest encoder map that
            :meth:`features_and_bottleneck` returns (0 where a network does not expose it).
    """

    #: Registry name, used in error messages.
    name: str = "network"
    in_channels: int
    out_channels: int
    feature_channels: int
    head: nn.Module
    head_kernel_size: int
    size_divisor: tuple[int, int, int]
    bottleneck_channels: int = 0

    @abstractmethod
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone on an already validated input; returns ``(B, F, X, Y, Z)``."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last decoder feature map at input resolution.

        Args:
            x: ``(B, in_channels, X, Y, Z)`` with every spatial size divisible by
                ``size_divisor`` on its axis.

        Returns:
            ``(B, feature_channels, X, Y, Z)``.
        """
        self.check_input(x)
        return self._features(x)

    def features_and_bottleneck(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``features(x)`` and the deepest encoder map of the same pass, ``(B, bottleneck_channels, x, y, z)``.

        Task-conditioned heads (DoDNet, CLIP-Driven) pool the bottleneck into their controller's input.
        """
        self.check_input(x)
        return self._features_and_bottleneck(x)

    def _features_and_bottleneck(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise InputError(None, f"network {self.name!r} does not expose its bottleneck; use unet_tct or dynunet")

    def adopt_backbone(self, backbone: SegmentationNetwork, out_channels: int) -> None:
        """For a network of heads around ``backbone`` (dynamic heads, task queries, tokens): keep it as
        ``self.backbone`` without its own head, and take over its interface attributes."""
        self.backbone = backbone
        backbone.head = nn.Identity()
        self.in_channels = backbone.in_channels
        self.out_channels = out_channels
        self.feature_channels = backbone.feature_channels
        self.bottleneck_channels = backbone.bottleneck_channels
        self.head_kernel_size = 1
        self.size_divisor = backbone.size_divisor

    def stages(self) -> list[Stage]:
        """The backbone's stages in the order a forward pass runs them: encoder stages (finest first),
        the bottleneck, decoder stages (coarsest first; the last one's output is ``features``).

        Task-query and task-token heads (TransDoDNet, Hermes) read, or replace, these stages'
        outputs with forward hooks, so they need no copy of the backbone's forward.
        """
        raise InputError(None, f"network {self.name!r} does not list its stages; use unet_tct or dynunet")

    def class_parameters(self) -> tuple[str, ...]:
        """State-dict entries whose first axis indexes the output classes (background first where the
        output has it): what fine-tuning on another label space remaps by class name. Default: the main head's."""
        prefix = next(name for name, m in self.named_modules() if m is self.head)
        return tuple(f"{prefix}.{k}" if prefix else k for k in self.head.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, X, Y, Z)`` = ``head(features(x))``."""
        return self.head(self.features(x))

    def make_head(self, out_channels: int) -> nn.Conv3d:
        """A new head shaped like the main one: ``Conv3d(feature_channels, out_channels, k)``.

        TCT builds its auxiliary task heads with this (one conv producing 2N channels,
        applied to the features the main head already used, so they cost one conv).
        """
        k = self.head_kernel_size
        return nn.Conv3d(self.feature_channels, out_channels, kernel_size=k, padding=k // 2)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``InputError`` (a ``ValueError``) naming the problem and a valid size."""
        name = self.name
        if x.ndim != 5:
            raise InputError(None, f"{name} expects a 5-D tensor (B, C, X, Y, Z); got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise InputError(
                None, f"{name} was built for {self.in_channels} input channel(s); got {x.shape[1]} (shape {tuple(x.shape)})"
            )
        check_patch_size(name, x.shape[2:], self.size_divisor)

    def num_parameters(self) -> int:
        """Trainable parameter count (what the TCT paper's '#Params' column counts)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def check_patch_size(name: str, size: Sequence[int], divisor: Sequence[int]) -> None:
    """Raise ``InputError`` unless ``size[i] % divisor[i] == 0`` for every spatial axis."""
    size = tuple(int(s) for s in size)
    divisor = tuple(int(d) for d in divisor)
    if len(size) != 3:
        raise InputError(None, f"{name} needs 3 spatial sizes; got {size}")
    if any(s <= 0 or s % d for s, d in zip(size, divisor, strict=True)):
        up = tuple(max(d, math.ceil(s / d) * d) for s, d in zip(size, divisor, strict=True))
        raise InputError(
            None,
            f"{name} needs every spatial size divisible by {divisor} (one factor 2 per down-sampling "
            f"on that axis); got {size}. Pad or crop to a valid size, e.g. {up}.",
        )


def kaiming_init(module: nn.Module, negative_slope: float = 0.0) -> None:
    """He-normal conv weights, zero biases (nnU-Net's init; PyTorch's default under-scales for ReLU)."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d):
            nn.init.kaiming_normal_(m.weight, a=negative_slope)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
