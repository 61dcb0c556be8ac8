"""TransDoDNet (Xie et al., "Learning from partially labeled data for multi-organ and tumor
segmentation", TPAMI 2023): DoDNet's dynamic heads, with each class's head parameters read from a
learnt task query that has attended to multi-scale encoder features.

Per forward pass, one backbone pass:

1. the ``levels`` deepest encoder outputs (bottleneck included) are projected to ``d_model``
   channels and flattened into one memory of tokens ``(B, S, d)``, plus a learnt level embedding
   and a learnt code of each voxel's position (:class:`~partialseg.networks.tokens.VoxelTokens`);
2. N task queries ``(N, d)`` (one per class) go through ``num_layers`` transformer decoder layers
   (self-attention among queries, cross-attention to the memory, MLP; pre-norm);
3. a controller ``Linear(d, P)`` maps each query to the ``P = 153`` parameters (h = 8) of the
   class's dynamic head, which runs on the pre-classification features exactly as in DoDNet
   (:func:`~partialseg.networks.dynamic_head.apply_dynamic_heads`).

The paper's transformer uses deformable attention over the multi-scale features; standard
(dense) cross-attention stands in for it here, which is affordable because only the three
coarsest levels (1/16, 1/8, 1/4 of a 64x64x48 patch: 3,504 tokens) form the memory.

Output ``(B, N, X, Y, Z)`` logits, a sigmoid each, as the ``sigmoid`` baseline and DoDNet have.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from partialseg.errors import InputError
from partialseg.networks.base import SegmentationNetwork, Stage
from partialseg.networks.dynamic_head import (
    ControllerInit,
    apply_dynamic_heads,
    dynamic_head_parameter_count,
    he_head_parameters,
    pre_classification_block,
)
from partialseg.networks.tokens import VoxelTokens, stage_hooks


class TaskQueryNetwork(SegmentationNetwork):
    """A backbone with TransDoDNet's task-query dynamic heads.

    Args:
        backbone: a :class:`SegmentationNetwork` that lists its ``stages()``.
        num_classes: N task queries and heads.
        head_channels: h of the dynamic heads (8).
        d_model: width of the queries and the memory tokens.
        num_heads: attention heads.
        num_layers: transformer decoder layers.
        levels: how many of the deepest encoder outputs (bottleneck included) form the memory.
        controller_init: as in :class:`~partialseg.networks.dynamic_head.DynamicHeadNetwork`.
    """

    name = "task_query"

    def __init__(
        self,
        backbone: SegmentationNetwork,
        num_classes: int,
        *,
        head_channels: int = 8,
        d_model: int = 128,
        num_heads: int = 4,
        num_layers: int = 2,
        levels: int = 3,
        controller_init: ControllerInit = "he",
    ) -> None:
        super().__init__()
        encoder = [s for s in backbone.stages() if s.kind in ("encoder", "bottleneck")]
        if not 1 <= levels <= len(encoder):
            raise InputError(None, f"levels must be 1..{len(encoder)} for network {backbone.name!r}; got {levels}")
        if d_model % num_heads:
            raise InputError(None, f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        if controller_init not in ("he", "default"):
            raise InputError(None, f"controller_init must be 'he' or 'default', got {controller_init!r}")
        self.adopt_backbone(backbone, num_classes)
        self._memory_stages = encoder[-levels:]
        self.head_channels = head_channels
        self.memory_inputs = nn.ModuleList(VoxelTokens(s.channels, d_model) for s in self._memory_stages)
        self.level_embedding = nn.Parameter(torch.randn(levels, d_model) * 0.02)
        self.queries = nn.Parameter(torch.randn(num_classes, d_model))
        layer = nn.TransformerDecoderLayer(
            d_model, num_heads, dim_feedforward=4 * d_model, dropout=0.0, batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, num_layers, norm=nn.LayerNorm(d_model))
        self.head = pre_classification_block(backbone.feature_channels, head_channels)
        self.controller = nn.Linear(d_model, dynamic_head_parameter_count(head_channels))
        if controller_init == "he":
            with torch.no_grad():
                self.controller.bias.copy_(he_head_parameters(head_channels))

    def class_parameters(self) -> tuple[str, ...]:
        # one row per class (no background row); the heads' own weights are shared by all classes
        return ("queries",)

    def check_input(self, x: Tensor) -> None:
        self.backbone.check_input(x)

    def _features(self, x: Tensor) -> Tensor:
        return self.backbone._features(x)

    def stages(self) -> list[Stage]:
        return self.backbone.stages()

    def task_embeddings(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Decoder features ``(B, F, X, Y, Z)`` and the attended task queries ``(B, N, d)`` of one pass."""
        seen: list[Tensor] = []
        with stage_hooks(self._memory_stages, lambda _k, out: seen.append(out)):
            features = self.backbone._features(x)
        memory = []
        for level, (tokenise, fmap) in enumerate(zip(self.memory_inputs, seen, strict=True)):
            tokens, pos = tokenise(fmap)
            memory.append(tokens + pos + self.level_embedding[level].to(tokens.dtype))
        mem = torch.cat(memory, dim=1)
        queries = self.queries.to(mem.dtype).unsqueeze(0).expand(mem.shape[0], -1, -1)
        return features, self.decoder(queries, mem)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, N, X, Y, Z)``: every class's dynamic head on one backbone pass."""
        self.check_input(x)
        features, queries = self.task_embeddings(x)
        params = self.controller(queries.float())
        return apply_dynamic_heads(self.head(features), params.to(features.dtype), self.head_channels)


__all__ = ["TaskQueryNetwork"]
