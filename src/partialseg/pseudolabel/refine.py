"""Pseudo-label refinement rules of IPnP (paper Sec. 2.4; methods.md "IPnP" steps 2 and 5).

All functions work on one case in the preprocessed (RAS) grid: ``probs`` (C, X, Y, Z) is the
specialist's softmax (channel 0 background), masks are bool (X, Y, Z).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from partialseg.inference.postprocess import largest_component


def prompt_mask(
    probs: np.ndarray, k: int, *, tau: float | None, keep_largest: bool, argmax: np.ndarray | None = None
) -> np.ndarray:
    """M_k: voxels whose argmax is ``k`` (and, with ``tau``, whose p_k ≥ τ: the high-confidence region).

    ``argmax``: ``probs.argmax(0)`` when the caller has it (one argmax per case, not one per organ)."""
    m = (probs.argmax(0) if argmax is None else argmax) == k
    if tau is not None:
        m &= probs[k] >= tau
    return largest_component(m) if keep_largest else m


def entropy(probs: np.ndarray) -> np.ndarray:
    """H(v) = −Σ_c p_c log p_c (nats), (X, Y, Z) float32."""
    p = np.clip(probs.astype(np.float32), 1e-8, 1.0)
    return -(p * np.log(p)).sum(0)


def refine(
    generalist_mask: np.ndarray,
    roi: tuple[slice, slice, slice],
    probs: np.ndarray,
    k: int,
    *,
    tau: float,
    protected: np.ndarray,
) -> np.ndarray:
    """P_k = G_k ∩ ROI_k ∩ {p_k ≥ τ}, minus ``protected`` voxels (those annotated with a class in Φ).

    The generalist gives no probabilities, so the threshold uses the specialist's (methods.md).
    """
    in_roi = np.zeros_like(generalist_mask, dtype=bool)
    in_roi[roi] = True
    return generalist_mask.astype(bool) & in_roi & (probs[k] >= tau) & ~protected


@dataclass
class Decision:
    """What happened to one organ of one case in one round."""

    status: str  # "accepted", "rejected_entropy", "no_prediction", "empty_after_refinement", "kept_previous"
    voxels: int = 0
    mean_entropy: float | None = None


def entropy_rule(new_mean: float, previous_mean: float | None) -> bool:
    """Replace the previous pseudo-label only if the mean entropy over it decreased (paper Eq. 3)."""
    return previous_mean is None or new_mean < previous_mean


def assemble(
    label: np.ndarray, masks: dict[int, np.ndarray], probs: Any
) -> np.ndarray:
    """The pseudo-full label map: the partial ``label`` plus each class's pseudo-label mask.

    Where pseudo-labels of two classes overlap, the voxel goes to the class the specialist finds
    more probable: ``probs[k]`` is ``p_k`` (X, Y, Z), read inside ``masks[k]`` only (the softmax
    (C, X, Y, Z), or a mapping class → volume). Voxels carrying an annotated label are never changed (callers exclude them from
    the masks, and this function writes only where ``label == 0``).
    """
    out = label.copy()
    if not masks:
        return out
    classes = sorted(masks)
    stack = np.stack([masks[c] for c in classes])
    score = np.where(stack, np.stack([np.asarray(probs[c]) for c in classes]), -1.0)
    best = score.argmax(0)
    anywhere = stack.any(0) & (label == 0)
    out[anywhere] = np.asarray(classes, dtype=out.dtype)[best[anywhere]]
    return out


def pseudo_labelled(assembled: np.ndarray, masks: dict[int, np.ndarray]) -> frozenset[int]:
    """P of a case: the classes of ``masks`` that kept voxels in the map :func:`assemble` made. A class whose every
    voxel went to a more probable overlapping class is none (listed in P, it would teach that the organ is
    absent from the case)."""
    return frozenset(k for k in masks if bool((assembled == k).any()))
