"""Hermes (Gao et al., "Training like a medical resident: context-prior learning toward universal
medical image segmentation", CVPR 2024): learnt task and modality tokens that talk with the
backbone's features at several stages, then become one prototype per class.

Tokens: N task tokens (one per class) and M modality tokens (the "context priors"; every case here
is CT, so one modality token takes part in every pass: datasets with several modalities would pick
theirs). At each chosen stage, a :class:`TwoWayBlock` on the stage's output ``X``:

1. tokens <- tokens + SelfAttn(tokens); tokens <- tokens + CrossAttn(tokens -> X); tokens <- tokens + MLP
   (each sub-layer pre-normed);
2. X <- X + W_out CrossAttn(X -> tokens), with ``W_out`` zero-initialised so that the backbone starts
   exactly as it was; the updated X goes on through the backbone (the hook replaces the output).

The chosen stages are the bottleneck and every decoder stage below full resolution (1/16 .. 1/2 of
the patch). After the pass, each task token goes through an MLP to a prototype ``p_k`` in feature
space, and the logit of class k at voxel v is ``<p_k, f_v> / sqrt(F) + b_k`` on the backbone's
full-resolution features ``f`` (after a norm and ReLU), a sigmoid each: ``(B, N, X, Y, Z)``.

Deviation: the paper's backbone and token width are larger (14.9 M parameters in the TCT paper's
count); here the tokens sit on partialseg's configured backbone, and the width is an option.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from partialseg.errors import InputError
from partialseg.networks.base import SegmentationNetwork, Stage
from partialseg.networks.tokens import VoxelTokens, stage_hooks


class TwoWayBlock(nn.Module):
    """Tokens ``(B, T, d)`` and one feature map ``(B, C, *spatial)`` attend to each other; returns both, updated."""

    def __init__(self, channels: int, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.voxels = VoxelTokens(channels, d_model)
        self.norm_self, self.norm_cross, self.norm_mlp, self.norm_voxels = (nn.LayerNorm(d_model) for _ in range(4))
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        self.token_to_voxel = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        self.voxel_to_token = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.out = nn.Conv3d(d_model, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, tokens: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        v, pos = self.voxels(x)
        v = self.norm_voxels(v)
        t = self.norm_self(tokens)
        tokens = tokens + self.self_attn(t, t, t, need_weights=False)[0]
        t = self.norm_cross(tokens)
        tokens = tokens + self.token_to_voxel(t, v + pos, v, need_weights=False)[0]
        tokens = tokens + self.mlp(self.norm_mlp(tokens))
        update = self.voxel_to_token(v + pos, tokens, tokens, need_weights=False)[0]  # (B, S, d)
        update = update.transpose(1, 2).reshape(x.shape[0], -1, *x.shape[2:])
        return tokens, x + self.out(update).to(x.dtype)


class TaskTokenNetwork(SegmentationNetwork):
    """A backbone with Hermes's task and modality tokens and prototype heads.

    Args:
        backbone: a :class:`SegmentationNetwork` that lists its ``stages()``.
        num_classes: N task tokens, prototypes and output maps.
        num_modalities: M modality tokens (1: CT only).
        d_model: token width.
        num_heads: attention heads of every block.
    """

    name = "task_tokens"

    def __init__(
        self,
        backbone: SegmentationNetwork,
        num_classes: int,
        *,
        num_modalities: int = 1,
        d_model: int = 128,
        num_heads: int = 4,
    ) -> None:
        super().__init__()
        if d_model % num_heads:
            raise InputError(None, f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        if num_classes < 1 or num_modalities < 1:
            raise InputError(None, "task tokens need num_classes >= 1 and num_modalities >= 1")
        stages = backbone.stages()
        # the bottleneck and the decoder stages below full resolution (the last decoder stage gives f)
        self._token_stages = [s for s in stages if s.kind == "bottleneck"] + [s for s in stages if s.kind == "decoder"][:-1]
        self.adopt_backbone(backbone, num_classes)
        f = backbone.feature_channels
        self.task_tokens = nn.Parameter(torch.randn(num_classes, d_model))
        self.modality_tokens = nn.Parameter(torch.randn(num_modalities, d_model))
        self.blocks = nn.ModuleList(TwoWayBlock(s.channels, d_model, num_heads) for s in self._token_stages)
        self.prototype = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, f))
        self.feature_norm = nn.Sequential(nn.GroupNorm(next(g for g in (16, 8, 4, 2, 1) if f % g == 0), f), nn.ReLU())
        self.class_bias = nn.Parameter(torch.zeros(num_classes))
        self.head = nn.Identity()

    def class_parameters(self) -> tuple[str, ...]:
        # one row per class (no background row); the heads' own weights are shared by all classes
        return ("task_tokens", "class_bias")

    def check_input(self, x: Tensor) -> None:
        self.backbone.check_input(x)

    def _features(self, x: Tensor) -> Tensor:
        return self.task_features(x)[0]

    def stages(self) -> list[Stage]:
        return self.backbone.stages()

    def task_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Full-resolution features ``(B, F, X, Y, Z)`` and the task tokens ``(B, N, d)`` after every block."""
        b = x.shape[0]
        n = self.task_tokens.shape[0]
        state = {"tokens": torch.cat([self.task_tokens, self.modality_tokens]).unsqueeze(0).expand(b, -1, -1)}

        def interact(k: int, out: Tensor) -> Tensor:
            state["tokens"], out = self.blocks[k](state["tokens"].to(out.dtype), out)
            return out

        with stage_hooks(self._token_stages, interact):
            features = self.backbone._features(x)
        return features, state["tokens"][:, :n]

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, N, X, Y, Z)``: the prototypes against the full-resolution features."""
        self.check_input(x)
        features, tokens = self.task_features(x)
        prototypes = self.prototype(tokens)  # (B, N, F)
        f = self.feature_norm(features)
        logits = torch.einsum("bnf,bf...->bn...", prototypes.to(f.dtype), f) / f.shape[1] ** 0.5
        return logits + self.class_bias.to(logits.dtype).view(1, -1, *([1] * (f.ndim - 2)))


__all__ = ["TaskTokenNetwork", "TwoWayBlock"]
