"""Where and how computations run: the device, and bf16 autocast (one place for training, inference
and the generalists).

Whether bf16 autocast pays on this CPU.

Measured with ``benchmarks/network_step.py`` on the 2-core AMD EPYC (AVX512-BF16) dev box:
``torch.autocast("cpu", dtype=torch.bfloat16)`` makes a Table-6 U-Net training step
~0.6x the float32 time and inference ~0.56x. Without native bf16 instructions oneDNN
falls back to conversion-heavy kernels that can be slower than plain float32 (not measured
here: no such CPU at hand), so presets should ask before turning it on.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from partialseg.errors import PartialsegError


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:<i>"``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise PartialsegError(f"unknown device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:<index>'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PartialsegError(f"device {name!r} requested but CUDA is not available")
    return dev


def cpu_bf16_autocast_is_fast() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX-BF16)."""
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is not None:
        try:
            c = caps()
            return bool(c.get("avx512_bf16") or c.get("amx_bf16"))
        except Exception:  # capability probing is best effort; float32 is always correct
            pass
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe()) if probe is not None else False


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
        if cpu_bf16_autocast_is_fast():
            return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


__all__ = ["autocast_context", "cpu_bf16_autocast_is_fast", "resolve_device"]
