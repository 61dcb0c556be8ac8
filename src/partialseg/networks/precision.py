"""Whether bf16 autocast pays on this CPU.

Measured with ``benchmarks/network_step.py`` on the 2-core AMD EPYC (AVX512-BF16) dev box:
``torch.autocast("cpu", dtype=torch.bfloat16)`` makes a Table-6 U-Net training step
~0.6x the float32 time and inference ~0.56x. Without native bf16 instructions oneDNN
falls back to conversion-heavy kernels that can be slower than plain float32 (not measured
here: no such CPU at hand), so presets should ask before turning it on.
"""

from __future__ import annotations

import torch


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
