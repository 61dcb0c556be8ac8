"""nnU-Net-style deeper U-Net: MONAI ``DynUNet`` planned from patch size and spacing.

The plan follows nnU-Net's 3d_fullres topology rules (Isensee et al., Nat. Methods 2021),
as MONAI's DynUNet pipeline reproduces them: repeatedly, on every axis whose current
spacing is at most twice the finest current spacing and whose feature map can still be
halved without dropping below ``min_feature_size`` voxels, down-sample by a strided conv
(stride 2); the conv kernel is 3 on axes within that 2x spacing ratio and 1 on coarser
axes (so 5 mm slices are not convolved across before in-plane resolution catches up).
Width doubles per stage from ``base_channels`` and is capped (nnU-Net: 32 -> 320).
Instance norm (affine), leaky ReLU 0.01, transposed-conv up-sampling, 1x1x1 head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from monai.networks.nets import DynUNet

from partialseg.errors import InputError
from partialseg.networks.base import SegmentationNetwork, Stage

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class DynUNetPlan:
    """Topology of one DynUNet. Stage 0 works at full resolution (stride 1).

    ``kernel_sizes[i]`` and ``strides[i]`` belong to stage i (the last is the bottleneck);
    ``filters[i]`` is its width. Inputs must be divisible per axis by ``size_divisor``.
    """

    patch_size: Triple
    spacing: tuple[float, float, float]
    kernel_sizes: tuple[Triple, ...]
    strides: tuple[Triple, ...]
    filters: tuple[int, ...]

    @property
    def upsample_kernel_sizes(self) -> tuple[Triple, ...]:
        # A transposed conv with kernel == stride exactly inverts each down-sampling.
        return self.strides[1:]

    @property
    def size_divisor(self) -> Triple:
        return tuple(math.prod(s[a] for s in self.strides) for a in range(3))  # type: ignore[return-value]

    @property
    def bottleneck_size(self) -> Triple:
        return tuple(p // d for p, d in zip(self.patch_size, self.size_divisor, strict=True))  # type: ignore[return-value]


def dynunet_plan(
    patch_size: Sequence[int],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    base_channels: int = 32,
    max_channels: int = 320,
    min_feature_size: int = 4,
    max_poolings: int = 5,
) -> DynUNetPlan:
    """Plan kernels, strides and widths the way nnU-Net does for a 3D patch.

    Args:
        patch_size: training patch ``(X, Y, Z)`` in voxels.
        spacing: voxel size in mm, same axis order.
        base_channels: width of stage 0 (nnU-Net: 32).
        max_channels: width cap (nnU-Net 3D: 320).
        min_feature_size: no axis is down-sampled below this many voxels (nnU-Net: 4).
        max_poolings: at most this many down-samplings per axis.

    One deviation from nnU-Net: nnU-Net shrinks the patch until every pooled size divides;
    here an axis whose current size is odd simply stops being pooled, so any patch plans.

    Example: 64x64x48 at 5 mm isotropic -> strides 1, 2, 2, 2, (2, 2, 1); bottleneck 4x4x6.
    """
    size = [int(s) for s in patch_size]
    sp = [float(s) for s in spacing]
    if len(size) != 3 or len(sp) != 3 or min(size) < 1 or min(sp) <= 0:
        raise InputError(None, f"dynunet_plan needs 3 positive sizes and spacings; got {patch_size}, {spacing}")
    pools = [0, 0, 0]

    def kernel(cur: list[float]) -> Triple:
        return tuple(3 if s / min(cur) <= 2 else 1 for s in cur)  # type: ignore[return-value]

    kernels: list[Triple] = [kernel(sp)]
    strides: list[Triple] = [(1, 1, 1)]
    while True:
        stride = tuple(
            2 if s / min(sp) <= 2 and n >= 2 * min_feature_size and n % 2 == 0 and p < max_poolings else 1
            for s, n, p in zip(sp, size, pools, strict=True)
        )
        if all(s == 1 for s in stride):
            break
        size = [n // s for n, s in zip(size, stride, strict=True)]
        sp = [x * s for x, s in zip(sp, stride, strict=True)]
        pools = [p + (s == 2) for p, s in zip(pools, stride, strict=True)]
        strides.append(stride)  # type: ignore[arg-type]
        kernels.append(kernel(sp))
    filters = tuple(min(base_channels * 2**i, max_channels) for i in range(len(strides)))
    return DynUNetPlan(
        patch_size=tuple(int(s) for s in patch_size),  # type: ignore[arg-type]
        spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        kernel_sizes=tuple(kernels),
        strides=tuple(strides),
        filters=filters,
    )


class DynUNetSegmentation(SegmentationNetwork):
    """MONAI ``DynUNet`` behind the partialseg interface (registry name ``"dynunet"``).

    ``features`` is DynUNet's full encoder-decoder (``skip_layers``): ``(B, filters[0], X, Y, Z)``;
    ``head`` is its 1x1x1 ``output_block``. Inputs must be divisible per axis by
    ``plan.size_divisor`` (the product of the strides on that axis).

    Args:
        in_channels, out_channels: image channels; N organs + background.
        patch_size: training patch, required: the topology is planned from it.
        spacing: voxel spacing in mm (default isotropic 1 mm).
        base_channels, max_channels, max_poolings: see :func:`dynunet_plan`.
        norm: ``"instance"`` (nnU-Net, default), ``"batch"`` or ``"group"``; always affine.
        deep_supervision: also attach 1x1x1 heads to the ``deep_supervision_levels`` decoder
            stages below full resolution (off by default). ``forward`` still returns only the
            main logits; read the extra ones with :meth:`deep_supervision_logits`.
        res_block: residual conv blocks instead of plain ones.
    """

    name = "dynunet"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        patch_size: Sequence[int] | None = None,
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        base_channels: int = 32,
        max_channels: int = 320,
        max_poolings: int = 5,
        norm: Literal["instance", "batch", "group"] = "instance",
        deep_supervision: bool = False,
        deep_supervision_levels: int = 2,
        res_block: bool = False,
    ) -> None:
        super().__init__()
        if patch_size is None:
            raise InputError(None, "dynunet needs patch_size (and spacing) to plan its kernels and strides")
        self.plan = dynunet_plan(patch_size, spacing, base_channels, max_channels, max_poolings=max_poolings)
        if len(self.plan.strides) < 3:
            raise InputError(
                None, f"dynunet: patch {tuple(patch_size)} is too small to down-sample twice; use at least 16 voxels per axis"
            )
        norms = {
            "instance": ("INSTANCE", {"affine": True}),
            "batch": ("BATCH", {"affine": True}),
            "group": ("GROUP", {"num_groups": math.gcd(8, *self.plan.filters), "affine": True}),
        }
        if norm not in norms:
            raise InputError(None, f"dynunet: unknown norm {norm!r}; choose one of {sorted(norms)}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.feature_channels = self.plan.filters[0]
        self.bottleneck_channels = self.plan.filters[-1]
        self.head_kernel_size = 1
        self.size_divisor = self.plan.size_divisor
        self.deep_supervision = deep_supervision
        self.net = DynUNet(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=[list(k) for k in self.plan.kernel_sizes],
            strides=[list(s) for s in self.plan.strides],
            upsample_kernel_size=[list(s) for s in self.plan.upsample_kernel_sizes],
            filters=list(self.plan.filters),
            norm_name=norms[norm],
            deep_supervision=deep_supervision,
            deep_supr_num=min(deep_supervision_levels, len(self.plan.strides) - 2),
            res_block=res_block,
        )
        self.head = self.net.output_block

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        # skip_layers is DynUNet.forward minus its output block; with deep supervision it
        # also fills self.net.heads with the lower-resolution logits as a side effect.
        return self.net.skip_layers(x)

    def _features_and_bottleneck(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # MONAI's recursive skip layers call the bottleneck deep inside; a hook for this one pass reads it
        seen: list[torch.Tensor] = []
        hook = self.net.bottleneck.register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            features = self.net.skip_layers(x)
        finally:
            hook.remove()
        return features, seen[-1]

    def stages(self) -> list[Stage]:
        f = self.plan.filters
        return [
            *(Stage("encoder", m, c) for m, c in zip([self.net.input_block, *self.net.downsamples], f[:-1], strict=True)),
            Stage("bottleneck", self.net.bottleneck, f[-1]),
            *(Stage("decoder", m, c) for m, c in zip(self.net.upsamples, f[-2::-1], strict=True)),
        ]

    def deep_supervision_logits(self, size: Sequence[int]) -> list[torch.Tensor]:
        """Logits of the deep-supervision heads of the latest ``features`` call, resized.

        Returns ``deep_supervision_levels`` tensors ``(B, out_channels, *size)``, from the
        stage just below full resolution downwards (nnU-Net weights them 1/2, 1/4, ...).
        Resized trilinearly (MONAI's own ``forward`` uses nearest; nnU-Net instead
        down-samples the targets, which callers may prefer: ``self.net.heads`` holds the raw maps).
        """
        if not self.deep_supervision:
            raise InputError(None, "dynunet was built without deep_supervision=True")
        return [F.interpolate(h, size=tuple(size), mode="trilinear", align_corners=False) for h in self.net.heads]


__all__ = ["DynUNetPlan", "DynUNetSegmentation", "dynunet_plan"]
