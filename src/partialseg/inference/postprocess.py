"""Postprocessing chosen on validation, as nnU-Net v2 does (``determine_postprocessing``): per organ,
keep only the largest connected component of its predicted mask when that helps on the validation
cases, and apply the choice at prediction time.

The choice is per class label, so the left and right members of a paired organ (the kidneys, the
adrenal glands) are separate labels and neither can be removed for being the smaller of two.
Voxels removed from an organ become background.

Rule (per organ, over the validation cases whose reference annotates it and where the organ is in
the reference or the prediction): keep the largest component if the mean DSC does not drop and
the mean DSC rises or the mean HD95 falls. Evidence is collected case by case
(:class:`PostprocessingEvidence`), so no prediction is held in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of ``mask`` (empty stays empty)."""
    import cc3d

    if not mask.any():
        return mask.copy()
    labels = cc3d.connected_components(mask.astype(np.uint8), connectivity=26)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return labels == int(counts.argmax())


def keep_largest_components(labels: np.ndarray, classes: Iterable[int]) -> np.ndarray:
    """``labels`` with every class in ``classes`` cut to its largest connected component (rest -> 0)."""
    out = np.array(labels, copy=True)
    for k in classes:
        mask = out == k
        if mask.any():
            out[mask & ~largest_component(mask)] = 0
    return out


@dataclass
class PostprocessingEvidence:
    """Per-organ DSC and HD95 of the validation predictions, as predicted and with the largest component only."""

    names: Sequence[str]
    scores: dict[int, dict[str, list[float]]] = field(default_factory=dict)

    def add_case(self, pred: np.ndarray, ref: np.ndarray, classes: Iterable[int], spacing: Sequence[float]) -> None:
        """Score one validation case: ``pred``/``ref`` label maps, ``classes`` the organs its reference annotates."""
        from partialseg.evaluation.metrics import compare_masks

        for k in classes:
            if k == 0:
                continue
            p, r = pred == k, ref == k
            if not (p.any() or r.any()):
                continue  # absent from both: undefined (methods.md, Evaluation)
            raw = compare_masks(p, r, spacing)
            cut = compare_masks(largest_component(p), r, spacing) if p.any() else raw
            s = self.scores.setdefault(int(k), {"dsc": [], "dsc_lcc": [], "hd95": [], "hd95_lcc": []})
            s["dsc"].append(raw.dsc)
            s["dsc_lcc"].append(cut.dsc)
            s["hd95"].append(raw.hd95)
            s["hd95_lcc"].append(cut.hd95)

    def decide(self) -> dict[str, Any]:
        """``{"largest_component": [organ names], "organs": {name: means before/after, n, applied}}``."""
        organs: dict[str, Any] = {}
        chosen: list[str] = []
        for k in sorted(self.scores):
            s = self.scores[k]
            m = {key: float(np.mean(v)) for key, v in s.items()}
            better = m["dsc_lcc"] > m["dsc"] + 1e-12 or (not math.isnan(m["hd95"]) and m["hd95_lcc"] < m["hd95"] - 1e-9)
            apply = m["dsc_lcc"] >= m["dsc"] - 1e-12 and better
            name = self.names[k - 1]
            organs[name] = {**m, "n": len(s["dsc"]), "applied": bool(apply)}
            if apply:
                chosen.append(name)
        return {"largest_component": chosen, "organs": organs,
                "rule": "per organ on the validation cases: largest component kept if mean DSC does not drop and mean DSC "
                        "rises or mean HD95 falls"}


__all__ = ["PostprocessingEvidence", "keep_largest_components", "largest_component"]
