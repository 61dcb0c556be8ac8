"""Atomic checkpoints and the saved inference model."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoints/last.pt"


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary sibling, then ``os.replace``: a kill leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    from partialseg.errors import InputError

    path = Path(path)
    if not path.exists():
        raise InputError(path, "checkpoint does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt files
        raise InputError(path, f"cannot read checkpoint ({type(e).__name__}: {e})") from None
