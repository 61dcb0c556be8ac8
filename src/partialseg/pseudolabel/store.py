"""Pseudo-labelled cases on disk, one per case and round, so that a round holds no label map in RAM.

``<case>.npy`` is the pseudo-full label map (preprocessed grid, uncompressed so that training
memory-maps it as it does the cache's labels); ``<case>.json`` names the classes whose labels are
pseudo-labels and, where a method keeps them, their mean entropies. The JSON is written last and
atomically: it marks the case as done, so a killed run resumes from the cases it finished. Folders of
runs from before this layout (one compressed ``<case>.npz``) are still read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.errors import InputError


def _paths(folder: Path, case_id: str) -> tuple[Path, Path, Path]:
    return folder / f"{case_id}.npy", folder / f"{case_id}.json", folder / f"{case_id}.npz"


def has_pseudo(folder: Path, case_id: str) -> bool:
    _, meta, legacy = _paths(Path(folder), case_id)
    return meta.exists() or legacy.exists()


def save_pseudo(folder: Path, case_id: str, label: np.ndarray, pseudo: frozenset[int], ent: dict[int, float] | None = None,
                *, extra: dict[str, Any] | None = None) -> Path:
    """Write one case's pseudo-full label map (any integer dtype is kept) and its classes; returns the ``.npy``.

    ``extra``: JSON-able facts about how it was made (a method's decisions, quality rows), read back by
    :func:`load_pseudo_extra`."""
    npy, meta, _ = _paths(Path(folder), case_id)
    tmp = npy.with_name(f".{npy.name}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(label))
    tmp.replace(npy)
    tmp = meta.with_name(f".{meta.name}.tmp")
    tmp.write_text(json.dumps({"pseudo": sorted(int(c) for c in pseudo), "entropies": {str(k): float(v) for k, v in (ent or {}).items()},
                               **(extra or {})}))
    tmp.replace(meta)
    return npy


def load_pseudo(folder: Path, case_id: str) -> tuple[np.ndarray, frozenset[int], dict[int, float]]:
    """(label map, read-only memory map; pseudo-labelled classes; class → mean entropy)."""
    npy, meta, legacy = _paths(Path(folder), case_id)
    try:
        if meta.exists():
            d = json.loads(meta.read_text())
            return (np.load(npy, mmap_mode="r"), frozenset(int(c) for c in d["pseudo"]),
                    {int(k): float(v) for k, v in d["entropies"].items()})
        with np.load(legacy, allow_pickle=False) as z:
            ent = json.loads(str(z["entropies"]))
            return z["label"], frozenset(int(c) for c in z["pseudo"]), {int(k): float(v) for k, v in ent.items()}
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise InputError(meta if meta.exists() else legacy, f"cannot read the pseudo-label ({type(e).__name__}: {e}); "
                         "delete it to have it made again") from None


def load_pseudo_extra(folder: Path, case_id: str) -> dict[str, Any]:
    """The ``extra`` facts saved with a case's pseudo-label (empty for older folders)."""
    _, meta, _ = _paths(Path(folder), case_id)
    if not meta.exists():
        return {}
    try:
        d = json.loads(meta.read_text())
    except ValueError as e:
        raise InputError(meta, f"cannot read the pseudo-label ({e}); delete it to have it made again") from None
    return {k: v for k, v in d.items() if k not in ("pseudo", "entropies")}


__all__ = ["has_pseudo", "load_pseudo", "load_pseudo_extra", "save_pseudo"]
