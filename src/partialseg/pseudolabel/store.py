"""Pseudo-labelled cases on disk: one compressed ``.npz`` per case (the label map, the classes whose
labels are pseudo-labels, and per-class entropies where a method keeps them), written atomically so
that a killed run resumes from the cases it finished."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def save_pseudo(path: Path, label: np.ndarray, pseudo: frozenset[int], ent: dict[int, float] | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, label=label, pseudo=np.array(sorted(pseudo), dtype=np.int16), entropies=json.dumps(ent or {}))
    tmp.replace(path)


def load_pseudo(path: Path) -> tuple[np.ndarray, frozenset[int], dict[int, float]]:
    with np.load(path, allow_pickle=False) as z:
        ent = json.loads(str(z["entropies"]))
        return z["label"], frozenset(int(c) for c in z["pseudo"]), {int(k): float(v) for k, v in ent.items()}


__all__ = ["load_pseudo", "save_pseudo"]
