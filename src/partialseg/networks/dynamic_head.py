"""Task-conditioned dynamic heads: DoDNet (Zhang et al., CVPR 2021) and CLIP-Driven (Liu et al., ICCV 2023).

A shared backbone gives decoder features ``f`` ``(B, F, X, Y, Z)`` and a bottleneck map. For each
class (task) k a controller maps ``[GAP(bottleneck), code_k]`` to the parameters of a small head of
three 1x1x1 convs (``h -> h -> h -> 1`` channels, ReLU between; h = 8 in both papers) applied to
``f`` after DoDNet's pre-classification block (norm, ReLU, 1x1x1 conv ``F -> h``). The task code is

- DoDNet: the one-hot vector of k (``task_code="onehot"``, N entries);
- CLIP-Driven: the class embedding ``e_k`` (CLIP text of "A computerized tomography of a {organ}"
  in the paper; learnable here unless given) through a linear projection to ``projection_dim``.

Every class's head runs on every sample at once as batched matrix products (one backbone pass,
``(B, N*h, h)`` weights against ``(B, h, X*Y*Z)`` features, in voxel chunks on the CPU), so the output is one logit map per
class ``(B, N, X, Y, Z)`` with a sigmoid each, as the per-organ ``sigmoid`` baseline has.

Parameters of one class's head: ``(h*h + h) + (h*h + h) + (h + 1)`` = 153 at h = 8; the controller is
``Linear(bottleneck_channels + code_dim, 153)``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from partialseg.errors import InputError
from partialseg.networks.base import SegmentationNetwork

TaskCode = Literal["onehot", "embedding"]
ControllerInit = Literal["he", "default"]


def dynamic_head_parameter_count(head_channels: int) -> int:
    """Weights + biases of one class's dynamic head (three 1x1x1 convs h -> h -> h -> 1)."""
    h = head_channels
    return (h * h + h) + (h * h + h) + (h + 1)


#: voxels per chunk of :func:`apply_dynamic_heads` on the CPU: the (B, N*h, chunk) intermediates stay in
#: cache (measured: 10x faster than one pass over a 64x64x48 patch, 15 organs, one thread)
CPU_VOXEL_CHUNK = 4096


def apply_dynamic_heads(features: Tensor, params: Tensor, head_channels: int, *, chunk: int | None = None) -> Tensor:
    """Run per-(sample, class) 1x1x1 heads given as flat parameter vectors.

    Args:
        features: ``(B, h, *spatial)``, shared by all classes.
        params: ``(B, N, P)`` with ``P = dynamic_head_parameter_count(h)``, laid out as
            ``w1 (h, h), b1 (h), w2 (h, h), b2 (h), w3 (1, h), b3 (1)`` (``w[out, in]``).
        chunk: voxels per batched matrix product; None: :data:`CPU_VOXEL_CHUNK` on the CPU, all
            voxels at once elsewhere.

    Returns:
        ``(B, N, *spatial)`` logits.
    """
    b, n, p = params.shape
    h = head_channels
    if p != dynamic_head_parameter_count(h) or features.shape[:2] != (b, h):
        raise ValueError(f"params {tuple(params.shape)} / features {tuple(features.shape)} do not fit heads of width {h}")
    w1, b1, w2, b2, w3, b3 = torch.split(params, [h * h, h, h * h, h, h, 1], dim=2)
    # layer 1: every class's (h x h) weights stacked into one (N*h x h) matrix against the shared features
    w1, b1 = w1.reshape(b, n * h, h), b1.reshape(b, n * h, 1)
    w2, b2 = w2.reshape(b * n, h, h), b2.reshape(b * n, h, 1)
    w3, b3 = w3.reshape(b * n, 1, h), b3.reshape(b * n, 1, 1)
    x = features.reshape(b, h, -1)
    v = x.shape[2]
    step = v if (chunk is None and features.device.type != "cpu") else (chunk or CPU_VOXEL_CHUNK)
    outs = []
    for s in range(0, v, step):
        y = torch.relu(torch.baddbmm(b1, w1, x[:, :, s : s + step])).reshape(b * n, h, -1)
        y = torch.relu(torch.baddbmm(b2, w2, y))
        outs.append(torch.baddbmm(b3, w3, y))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.reshape(b, n, *features.shape[2:])


def he_head_parameters(head_channels: int, generator: torch.Generator | None = None) -> Tensor:
    """A flat head (layout of :func:`apply_dynamic_heads`) with He-normal weights (fan-in h, ReLU gain)
    and zero biases; the last layer, followed by no ReLU, gets std sqrt(1/h)."""
    h = head_channels
    w1, w2 = (torch.randn(h, h, generator=generator) * (2.0 / h) ** 0.5 for _ in range(2))
    w3 = torch.randn(1, h, generator=generator) * (1.0 / h) ** 0.5
    z = torch.zeros
    return torch.cat([w1.flatten(), z(h), w2.flatten(), z(h), w3.flatten(), z(1)])


class DynamicHeadNetwork(SegmentationNetwork):
    """A backbone with one task-conditioned dynamic head per class (DoDNet / CLIP-Driven).

    ``forward(x)`` returns ``(B, num_classes, X, Y, Z)`` logits (a sigmoid each); ``features`` is the
    backbone's. The backbone's own head is dropped (it is never used).

    Args:
        backbone: a :class:`SegmentationNetwork` exposing ``features_and_bottleneck``.
        num_classes: N, one head per class.
        task_code: ``"onehot"`` (DoDNet) or ``"embedding"`` (CLIP-Driven).
        head_channels: h, width of the dynamic heads (8 in both papers).
        embedding_dim: D of the class embeddings (512 = CLIP ViT-B text features); ``embedding`` only.
        projection_dim: the embeddings' projection before the controller (256 in CLIP-Driven).
        embeddings: ``(N, D)`` fixed class embeddings (e.g. CLIP text features); None: learnt,
            initialised N(0, 1/D).
        controller_init: ``"he"``: the controller's bias holds a He-initialised head, so every
            generated head starts as an ordinary randomly initialised conv stack and the controller's
            weights (PyTorch's default init) add the task- and image-specific part; ``"default"``:
            PyTorch's default ``Linear`` init throughout, which makes each generated weight
            ~U(+-1/sqrt(Fb + code_dim)) (about 0.06, against He's 0.5 for an 8-wide layer), so the three
            layers start with logits nearly constant in space (std 0.06 on a random input) and the
            backbone's gradients small. The papers do not say; chosen on validation (docs/methods.md).
    """

    name = "dynamic_head"

    def __init__(
        self,
        backbone: SegmentationNetwork,
        num_classes: int,
        *,
        task_code: TaskCode = "onehot",
        head_channels: int = 8,
        embedding_dim: int = 512,
        projection_dim: int = 256,
        embeddings: Tensor | None = None,
        controller_init: ControllerInit = "he",
    ) -> None:
        super().__init__()
        if backbone.bottleneck_channels <= 0:
            raise InputError(None, f"network {backbone.name!r} does not expose its bottleneck; use unet_tct or dynunet")
        if task_code not in ("onehot", "embedding"):
            raise InputError(None, f"task_code must be 'onehot' or 'embedding', got {task_code!r}")
        if controller_init not in ("he", "default"):
            raise InputError(None, f"controller_init must be 'he' or 'default', got {controller_init!r}")
        if num_classes < 1 or head_channels < 1:
            raise InputError(None, "a dynamic head needs num_classes >= 1 and head_channels >= 1")
        self.adopt_backbone(backbone, num_classes)
        self.task_code = task_code
        self.head_channels = head_channels
        self.head = pre_classification_block(backbone.feature_channels, head_channels)
        if task_code == "onehot":
            self.register_buffer("codes", torch.eye(num_classes), persistent=False)
            self.projection: nn.Module = nn.Identity()
            code_dim = num_classes
        else:
            if embeddings is not None:
                if tuple(embeddings.shape) != (num_classes, embedding_dim):
                    raise InputError(None, f"class embeddings must be ({num_classes}, {embedding_dim}); got {tuple(embeddings.shape)}")
                self.register_buffer("embeddings", embeddings.detach().float().clone())
            else:
                self.embeddings = nn.Parameter(torch.randn(num_classes, embedding_dim) / embedding_dim**0.5)
            self.projection = nn.Linear(embedding_dim, projection_dim)
            code_dim = projection_dim
        self.controller = nn.Linear(self.bottleneck_channels + code_dim, dynamic_head_parameter_count(head_channels))
        if controller_init == "he":
            with torch.no_grad():
                self.controller.bias.copy_(he_head_parameters(head_channels))

    def class_parameters(self) -> tuple[str, ...]:
        # one row per class (no background row); the heads' own weights are shared by all classes
        return ("embeddings",) if self.task_code == "embedding" else ()

    def check_input(self, x: Tensor) -> None:
        self.backbone.check_input(x)

    def _features(self, x: Tensor) -> Tensor:
        return self.backbone._features(x)

    def task_codes(self) -> Tensor:
        """``(N, code_dim)``: one-hot rows (DoDNet) or projected class embeddings (CLIP-Driven)."""
        return self.codes if self.task_code == "onehot" else self.projection(self.embeddings)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, N, X, Y, Z)``: every class's dynamic head on one backbone pass."""
        self.check_input(x)
        features, bottleneck = self.backbone._features_and_bottleneck(x)
        pooled = bottleneck.float().mean(dim=tuple(range(2, bottleneck.ndim)))  # (B, Fb)
        codes = self.task_codes().to(pooled)
        b, n = pooled.shape[0], codes.shape[0]
        ctrl_in = torch.cat([pooled.unsqueeze(1).expand(b, n, -1), codes.unsqueeze(0).expand(b, -1, -1)], dim=2)
        params = self.controller(ctrl_in)
        return apply_dynamic_heads(self.head(features), params.to(features.dtype), self.head_channels)


def pre_classification_block(channels: int, head_channels: int) -> nn.Sequential:
    """DoDNet's pre-classification block: the decoder's features squeezed to the heads' width (norm, ReLU, 1x1x1 conv)."""
    # DoDNet uses GroupNorm(16); fewer groups where a slim backbone has fewer feature channels
    groups = next(g for g in (16, 8, 4, 2, 1) if channels % g == 0)
    return nn.Sequential(nn.GroupNorm(groups, channels), nn.ReLU(inplace=True), nn.Conv3d(channels, head_channels, 1))


__all__ = ["CPU_VOXEL_CHUNK", "DynamicHeadNetwork", "apply_dynamic_heads", "dynamic_head_parameter_count", "he_head_parameters",
           "pre_classification_block"]
