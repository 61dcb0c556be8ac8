"""Sliding-window probabilities for a whole preprocessed volume (MONAI's inferer, Gaussian blending)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
from torch import Tensor, nn


def autocast_context(device: torch.device, enabled: bool, cpu: bool = False):
    """bf16 autocast when ``enabled``: on CUDA; on the CPU only with ``cpu=True`` and native bf16
    instructions (AVX512-BF16/AMX), where a training step takes ~0.6× the float32 time
    (benchmarks/network_step.py) but oneDNN's bf16 kernels are not bit-reproducible run to run, so
    seeded CPU determinism needs float32. Losses cast to float32 themselves."""
    if not enabled:
        return nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and cpu:
        from partialseg.networks.precision import cpu_bf16_autocast_is_fast

        if cpu_bf16_autocast_is_fast():
            return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def sliding_window_probabilities(
    net: nn.Module,
    to_probabilities,
    image: np.ndarray | Tensor,
    patch_size: Sequence[int],
    *,
    overlap: float = 0.25,
    device: torch.device | str = "cpu",
    amp: bool = True,
    amp_cpu: bool = False,
    sw_batch_size: int = 2,
) -> Tensor:
    """``image`` (1, X, Y, Z) → class probabilities (C, X, Y, Z) float32 on the CPU.

    Logits are blended with a Gaussian window (nnU-Net/MONAI) and converted to probabilities
    once, after blending. Volumes smaller than the patch are padded by the inferer.
    """
    from monai.inferers import sliding_window_inference

    device = torch.device(device)
    # np.array copies: the input is often a read-only memory map
    x = image if isinstance(image, Tensor) else torch.from_numpy(np.array(image, dtype=np.float32))
    x = x.float()[None].to(device)
    was_training = net.training
    net.eval()
    try:
        with autocast_context(device, amp, amp_cpu):
            logits = sliding_window_inference(
                x, roi_size=tuple(int(p) for p in patch_size), sw_batch_size=sw_batch_size, predictor=net,
                overlap=overlap, mode="gaussian", padding_mode="replicate",
            )
        probs = to_probabilities(logits.float())[0].cpu()
    finally:
        net.train(was_training)
    return probs
