"""The 3D U-Net of the TCT paper (Table 6, App. B): the backbone of TCT and of every baseline.

Table 6 with base width b (b = 16 in the paper), each ``{in, out}`` one 3x3x3 conv:

========  ===========================  ==================================
stage     encoder                      decoder (input = [skip, upsampled])
========  ===========================  ==================================
1         {1, b}   {b, b}              {2b + b = 3b, b}   {b, b}
2         {b, b}   {b, 2b}             {4b + 2b = 6b, 2b} {2b, 2b}
3         {2b, 2b} {2b, 4b}            {8b + 4b = 12b, 4b} {4b, 4b}
4         {4b, 4b} {4b, 8b}            {16b + 8b = 24b, 8b} {8b, 8b}
5         {8b, 8b} {8b, 16b}  (bottleneck)
========  ===========================  ==================================

Stages are joined by 2x2x2 max pooling (down) and x2 trilinear interpolation (up); the
decoder input of stage s concatenates the encoder output of stage s (skip) with the
upsampled decoder output of stage s+1 (48 = 16 + 32, ..., 384 = 128 + 256 at b = 16).
The main segmentation head is one 3x3x3 conv (App. B: "For the MSH and each ATH, we
utilize a 3x3x3 convolution layer").

Parameter count (App. Fig. 5 / Tab. 10: 4.12 M with 1 input and 6 outputs, the CT PLD
task of 5 organs + background). The 18 Table-6 convs hold 4,119,984 weights and have
1,232 output channels in all; the 3x3x3 head 16x6x27 = 2,592 weights + 6 biases. Defaults
here, chosen to reproduce the printed number with the printed 3x3x3 head:

- conv bias on (1,232), norm without affine parameters (PyTorch's ``InstanceNorm3d``
  default), parameter-free activation: 4,119,984 + 1,232 + 2,598 = **4,123,814 -> 4.12 M**.
- Without conv bias it is 4,122,582 (also 4.12 M); either way 4.12 M requires the norm to
  be non-affine: affine norms add 2 x 1,232 = 2,464 and give 4.13 M with a 3x3x3 head
  (4,126,278 with bias). Only a 1x1x1 head would leave room for affine norms (4,123,782).

The conv bias before a normalisation layer is mathematically redundant (the norm removes
it); it is kept by default only because it is part of the count the paper reports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from partialseg.errors import InputError
from partialseg.networks.base import SegmentationNetwork, Stage, check_patch_size, kaiming_init

NormName = Literal["batch", "instance", "group"]
ActName = Literal["relu", "leakyrelu"]

#: Number of 2x down-samplings of the Table-6 U-Net; inputs must be divisible by 2**4.
TCT_UNET_POOLINGS = 4


def make_norm(norm: NormName, channels: int, affine: bool, groups: int = 8) -> nn.Module:
    """Normalisation layer by name.

    ``group`` uses ``gcd(groups, channels)`` groups so slim widths (base 4, 8) still divide.
    BatchNorm is the fastest on CPU but its statistics are poor at batch 1-2; instance norm
    is nnU-Net's choice for that reason.
    """
    if norm == "batch":
        return nn.BatchNorm3d(channels, affine=affine)
    if norm == "instance":
        # track_running_stats=False: the same normalisation in training and inference.
        return nn.InstanceNorm3d(channels, affine=affine)
    if norm == "group":
        return nn.GroupNorm(math.gcd(groups, channels), channels, affine=affine)
    raise InputError(None, f"unknown norm {norm!r}; choose one of 'batch', 'instance', 'group'")


def make_activation(activation: ActName) -> nn.Module:
    if activation == "relu":
        return nn.ReLU(inplace=True)
    if activation == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.01, inplace=True)
    raise InputError(None, f"unknown activation {activation!r}; choose 'relu' or 'leakyrelu'")


class ConvNormAct(nn.Sequential):
    """3x3x3 conv (padding 1, shape-preserving) -> norm -> activation; ``(B, i, ...) -> (B, o, ...)``."""

    def __init__(
        self, in_ch: int, out_ch: int, norm: NormName, norm_affine: bool, bias: bool, activation: ActName
    ) -> None:
        super().__init__(
            nn.Conv3d(in_ch, out_ch, kernel_size=3, padding=1, bias=bias),
            make_norm(norm, out_ch, norm_affine),
            make_activation(activation),
        )


class TCTUNet(SegmentationNetwork):
    """The TCT paper's Table-6 3D U-Net (registry name ``"unet_tct"``).

    Input ``(B, in_channels, X, Y, Z)`` with X, Y, Z each divisible by 16 (four 2x2x2
    max-poolings: the bottleneck works at 1/16 resolution), e.g. 64x64x48 or 192x192x64;
    with instance norm not 16x16x16 (a one-voxel bottleneck).
    ``features`` returns ``(B, base_channels, X, Y, Z)``; ``forward`` returns logits
    ``(B, out_channels, X, Y, Z)``.

    Args:
        in_channels: image channels (1 for CT).
        out_channels: N organs + background.
        base_channels: b in the table above; 16 is the paper (4.12 M at 1 in / 6 out).
            Parameters and FLOPs scale as ~b**2 (b = 8: 1.03 M at 1 in / 6 out).
        norm: ``"instance"`` (default), ``"batch"`` or ``"group"``; the paper does not
            name one, and any non-affine norm matches its parameter count.
        norm_affine: learnable scale/shift in the norms (off: see the module docstring).
        conv_bias: bias in the backbone convs (on: part of the paper's 4.12 M).
        activation: ``"relu"`` (3D U-Net [7]) or ``"leakyrelu"`` (nnU-Net).
        head_kernel_size: 3 (App. B) or 1.
        patch_size: optional; validated at construction so a bad training patch fails at
            once rather than at the first batch.
        spacing: accepted for a uniform ``build_network`` signature and ignored: the Table-6
            U-Net is isotropic by design (the paper resamples to 1x1x3 mm and still uses
            3x3x3 kernels and 2x2x2 pooling on every axis).
    """

    name = "unet_tct"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        base_channels: int = 16,
        norm: NormName = "instance",
        norm_affine: bool = False,
        conv_bias: bool = True,
        activation: ActName = "relu",
        head_kernel_size: int = 3,
        patch_size: Sequence[int] | None = None,
        spacing: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if base_channels < 1 or in_channels < 1 or out_channels < 1:
            raise InputError(None, "unet_tct: in_channels, out_channels and base_channels must be >= 1")
        if head_kernel_size not in (1, 3):
            raise InputError(None, f"unet_tct: head_kernel_size must be 1 or 3; got {head_kernel_size}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.base_channels = base_channels
        self.feature_channels = base_channels
        self.bottleneck_channels = 16 * base_channels
        self.head_kernel_size = head_kernel_size
        self.norm = norm
        div = 2**TCT_UNET_POOLINGS
        self.size_divisor = (div, div, div)
        if patch_size is not None:
            check_patch_size("unet_tct", patch_size, self.size_divisor)
            self._check_bottleneck(patch_size)

        b = base_channels

        def block(i: int, mid: int, o: int) -> nn.Sequential:
            return nn.Sequential(
                ConvNormAct(i, mid, norm, norm_affine, conv_bias, activation),
                ConvNormAct(mid, o, norm, norm_affine, conv_bias, activation),
            )

        # Encoder stages 1-4 and the bottleneck (stage 5): Table 6, left column.
        self.encoder = nn.ModuleList(
            [block(in_channels, b, b), block(b, b, 2 * b), block(2 * b, 2 * b, 4 * b), block(4 * b, 4 * b, 8 * b)]
        )
        self.bottleneck = block(8 * b, 8 * b, 16 * b)
        # Decoder stages 4..1 (deepest first): input = skip (encoder output) + upsampled.
        skips = [b, 2 * b, 4 * b, 8 * b]
        below = [2 * b, 4 * b, 8 * b, 16 * b]
        self.decoder = nn.ModuleList(
            [block(s + u, s, s) for s, u in reversed(list(zip(skips, below, strict=True)))]
        )
        kaiming_init(self, negative_slope=0.01 if activation == "leakyrelu" else 0.0)
        # The head keeps PyTorch's default init: He-scaled logits start needlessly large.
        self.head = nn.Conv3d(b, out_channels, kernel_size=head_kernel_size, padding=head_kernel_size // 2)

    def check_input(self, x: torch.Tensor) -> None:
        """Base checks, plus: a 1-voxel bottleneck (a 16x16x16 input) cannot be instance-normalised."""
        super().check_input(x)
        self._check_bottleneck(x.shape[2:])

    def _check_bottleneck(self, size: Sequence[int]) -> None:
        if self.norm == "instance" and math.prod(int(s) // self.size_divisor[0] for s in size) == 1:
            raise InputError(
                None,
                f"unet_tct with instance norm needs more than 16 voxels on at least one axis (the bottleneck "
                f"at 1/16 resolution would be a single voxel, which instance norm zeroes); got {tuple(size)}",
            )

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self._features_and_bottleneck(x)[0]

    def stages(self) -> list[Stage]:
        b = self.base_channels
        return [
            *(Stage("encoder", m, c) for m, c in zip(self.encoder, (b, 2 * b, 4 * b, 8 * b), strict=True)),
            Stage("bottleneck", self.bottleneck, 16 * b),
            *(Stage("decoder", m, c) for m, c in zip(self.decoder, (8 * b, 4 * b, 2 * b, b), strict=True)),
        ]

    def _features_and_bottleneck(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skips: list[torch.Tensor] = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
            x = F.max_pool3d(x, kernel_size=2)
        x = bottleneck = self.bottleneck(x)
        for stage, skip in zip(self.decoder, reversed(skips), strict=True):
            # Upsample to the skip's exact size (equal to x2 here, since sizes are multiples of 16).
            x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
            x = stage(torch.cat([skip, x], dim=1))
        return x, bottleneck


def tct_unet_parameter_count(
    in_channels: int,
    out_channels: int,
    base_channels: int = 16,
    conv_bias: bool = True,
    norm_affine: bool = False,
    head_kernel_size: int = 3,
) -> int:
    """Closed-form parameter count of :class:`TCTUNet` from Table 6 (for docs and presets)."""
    b = base_channels
    convs = [
        (in_channels, b), (b, b), (b, b), (b, 2 * b), (2 * b, 2 * b), (2 * b, 4 * b),
        (4 * b, 4 * b), (4 * b, 8 * b), (8 * b, 8 * b), (8 * b, 16 * b),
        (3 * b, b), (b, b), (6 * b, 2 * b), (2 * b, 2 * b), (12 * b, 4 * b), (4 * b, 4 * b),
        (24 * b, 8 * b), (8 * b, 8 * b),
    ]  # fmt: skip
    n = sum(i * o * 27 + o * (int(conv_bias) + 2 * int(norm_affine)) for i, o in convs)
    return n + b * out_channels * head_kernel_size**3 + out_channels
