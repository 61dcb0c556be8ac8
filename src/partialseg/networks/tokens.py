"""Pieces shared by the heads that attend to backbone features: TransDoDNet's task queries and Hermes's
task tokens (:mod:`partialseg.networks.task_query`, :mod:`partialseg.networks.task_tokens`).

- :func:`stage_hooks` reads (or replaces) the outputs of a backbone's stages during one ordinary
  forward pass, so these heads work on any :class:`SegmentationNetwork` that lists its stages;
- :class:`VoxelTokens` turns a feature map ``(B, C, X, Y, Z)`` into tokens ``(B, X*Y*Z, d)`` with a
  learnt position code of the voxel's normalised coordinates in the patch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from partialseg.networks.base import Stage


@contextmanager
def stage_hooks(stages: Sequence[Stage], fn: Callable[[int, Tensor], Tensor | None]) -> Iterator[None]:
    """While open, ``fn(k, output)`` runs after stage ``k`` of ``stages``; a tensor it returns replaces
    that stage's output for the rest of the forward pass (PyTorch forward-hook semantics)."""
    handles = [s.module.register_forward_hook(lambda _m, _i, out, k=k: fn(k, out)) for k, s in enumerate(stages)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def normalised_coordinates(shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> Tensor:
    """``(X*Y*Z, 3)`` voxel coordinates in [-1, 1] per axis, in C order (the order of ``flatten(2)``)."""
    axes = [torch.linspace(-1.0, 1.0, int(n), device=device, dtype=dtype) if n > 1 else torch.zeros(1, device=device, dtype=dtype)
            for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


class VoxelTokens(nn.Module):
    """``(B, C, *spatial)`` -> tokens ``(B, S, d)`` (1x1x1 projection) and position codes ``(S, d)``.

    The position code is a learnt linear map of the normalised coordinates (an MLP-free stand-in for
    the sinusoidal codes of the papers; it works for any patch size, as sliding-window inference needs).
    """

    def __init__(self, channels: int, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(channels, d_model, 1)
        self.position = nn.Linear(3, d_model)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        pos = self.position(normalised_coordinates(x.shape[2:], x.device, tokens.dtype))
        return tokens, pos


__all__ = ["VoxelTokens", "normalised_coordinates", "stage_hooks"]
