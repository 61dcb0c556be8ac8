"""Pseudo-label candidates of one case: everything a round needs from the specialist's probabilities.

IPnP (paper Sec. 2.3–2.4; methods.md "IPnP" steps 1–5) builds, per unannotated organ k, a candidate P_k
from the specialist's softmax: the generalist prompted with the boxes of M_k and refined (source
``"generalist"``), or the specialist's own confident region (``"specialist"``). The organ gate
(``pseudo_source="auto"``) chooses the source per organ from how both sources would have labelled the
organs a case *does* annotate, which needs every case before any case can be pseudo-labelled.

So that a round runs the sliding window once per case and not twice (gate, then pseudo-labels), one pass
makes a :class:`CaseCandidates`: the gate's evidence and every candidate either source could give, each
cropped to its bounding box, with the candidate's mean entropy, the specialist's ``argmax == k`` (for the
quality table) and ``p_k`` over the candidates' box (for :func:`~partialseg.pseudolabel.refine.assemble`,
which gives an overlap to the more probable class). It costs organ-sized crops on disk between the
gate and the pseudo-labels, not the ``C × X × Y × Z`` probabilities; :func:`select_pseudo_labels` then
turns it into the round's masks exactly as a second pass would have.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.errors import InputError
from partialseg.pseudolabel.refine import Decision, entropy, entropy_rule, prompt_mask, refine

__all__ = ["SOURCES", "CaseCandidates", "Crop", "candidate_masks", "case_candidates", "gate_case",
           "load_candidates", "load_evidence", "pseudo_label_case", "round_sources", "save_candidates", "select_pseudo_labels"]

SOURCES = ("generalist", "specialist")


@dataclass(frozen=True)
class Crop:
    """A region of a volume of shape ``shape``: ``data`` placed at ``start`` (zero outside it)."""

    start: tuple[int, int, int]
    data: np.ndarray
    shape: tuple[int, int, int]

    @classmethod
    def of_mask(cls, mask: np.ndarray) -> Crop:
        """The bounding box of a bool mask (an empty mask: a 0-voxel crop)."""
        if not mask.any():
            return cls((0, 0, 0), np.zeros((0, 0, 0), bool), tuple(mask.shape))
        lo, hi = _bbox(mask)
        return cls(lo, mask[tuple(slice(a, b) for a, b in zip(lo, hi))].copy(), tuple(mask.shape))

    @classmethod
    def of_box(cls, array: np.ndarray, lo: tuple[int, ...], hi: tuple[int, ...]) -> Crop:
        return cls(tuple(int(a) for a in lo), np.array(array[tuple(slice(a, b) for a, b in zip(lo, hi))]), tuple(array.shape))

    def box(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(first, one past the last) voxel of the crop per axis."""
        return self.start, tuple(a + n for a, n in zip(self.start, self.data.shape))

    def full(self) -> np.ndarray:
        out = np.zeros(self.shape, self.data.dtype)
        out[tuple(slice(a, a + n) for a, n in zip(self.start, self.data.shape))] = self.data
        return out


def _bbox(mask: np.ndarray) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    lo, hi = [], []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        lo.append(int(hit[0]))
        hi.append(int(hit[-1]) + 1)
    return tuple(lo), tuple(hi)


@dataclass
class CaseCandidates:
    """One case's candidates, keyed ``(class, source)``; see the module docstring.

    ``masks``/``entropies``: each candidate and its mean entropy (nats; absent for an empty one);
    ``no_prediction``: classes whose M_k is empty (no candidate from any source); ``specialist``: class →
    ``argmax == k``; ``probability``: class → ``p_k`` over the box of its candidates; ``evidence``: the
    gate's DSC per annotated organ and source (:func:`gate_case`).
    """

    shape: tuple[int, int, int]
    masks: dict[tuple[int, str], Crop] = field(default_factory=dict)
    entropies: dict[tuple[int, str], float] = field(default_factory=dict)
    no_prediction: set[int] = field(default_factory=set)
    specialist: dict[int, Crop] = field(default_factory=dict)
    probability: dict[int, Crop] = field(default_factory=dict)
    evidence: dict[int, dict[str, float]] = field(default_factory=dict)

    def probability_of(self, k: int) -> np.ndarray:
        """``p_k`` as a full volume, exact inside every candidate of ``k`` and last round's pseudo-label
        (0 elsewhere: unused there)."""
        crop = self.probability.get(k)
        return np.zeros(self.shape, np.float32) if crop is None else crop.full()


def candidate_masks(
    probs: np.ndarray,
    label: np.ndarray,
    annotated: frozenset[int],
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    generalist: Any,
    opts: Any,
    *,
    classes: list[int],
    sources: dict[int, str],
    argmax: np.ndarray | None = None,
) -> tuple[dict[int, np.ndarray], dict[int, Decision]]:
    """Each class's pseudo-label candidate from its source, as if the class were unannotated.

    ``sources[k]`` is ``"generalist"`` (the paper: P_k = G_k ∩ ROI_k ∩ {p_k ≥ τ}, the generalist
    prompted with the two boxes of the specialist's M_k) or ``"specialist"`` (no generalist:
    P_k = {argmax = k, p_k ≥ τ}, its largest component with ``opts.largest_component``). Voxels
    annotated with another class of Φ are never part of a candidate. Returns (masks, decisions
    for the classes that got none).
    """
    from partialseg.generalist.prompts import box_prompts_from_mask, roi_from_prompts

    prompts: dict[int, list] = {}
    masks: dict[int, np.ndarray] = {}
    decisions: dict[int, Decision] = {}
    argmax = probs.argmax(0) if argmax is None else argmax  # once per case: every organ's M_k reads it
    in_phi = np.isin(label, sorted(c for c in annotated if c != 0))
    for k in classes:
        m = prompt_mask(probs, k, tau=opts.tau if opts.prompt_high_confidence else None, keep_largest=opts.largest_component,
                        argmax=argmax)
        if not m.any():
            decisions[k] = Decision("no_prediction")
            continue
        if sources[k] == "specialist":
            p = prompt_mask(probs, k, tau=opts.tau, keep_largest=opts.largest_component, argmax=argmax)
            masks[k] = p & ~_protected(label, in_phi, k)
        else:
            prompts[k] = box_prompts_from_mask(m, axes=(2, 0), padding=opts.padding)
    # segment_many segments each object independently, so one call for all classes equals one per class
    for k, g in (generalist.segment_many(hu, spacing, prompts) if prompts else {}).items():
        roi = roi_from_prompts(prompts[k], probs.shape[1:], opts.dilation)
        masks[k] = refine(g, roi, probs, k, tau=opts.tau, protected=_protected(label, in_phi, k))
    return masks, decisions


def _protected(label: np.ndarray, in_phi: np.ndarray, k: int) -> np.ndarray:
    """Voxels annotated with a class of Phi other than ``k`` (``in_phi``: annotated with any class of Phi)."""
    return in_phi & (label != k)


def gate_classes(probs_classes: int, label: np.ndarray, annotated: frozenset[int]) -> list[int]:
    """The organs a case can give the gate evidence on: annotated and present in it."""
    return [k for k in sorted(annotated) if 0 < k < probs_classes and bool((label == k).any())]


def case_candidates(
    probs: np.ndarray,
    label: np.ndarray,
    annotated: frozenset[int],
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    generalist: Any,
    opts: Any,
    *,
    wanted: Mapping[int, Iterable[str]],
    gate: bool = False,
    specialist_masks: bool = False,
    previous: Mapping[int, tuple[np.ndarray, float]] | None = None,
) -> CaseCandidates:
    """One pass over a case's probabilities ``probs`` (C, X, Y, Z): the candidates of every unannotated
    class ``k`` from each source in ``wanted[k]``, and with ``gate`` the gate's evidence (both sources on
    every annotated, present organ). ``specialist_masks``: also keep ``argmax == k`` of those classes.
    ``previous``: the last round's pseudo-labels (class → (mask, entropy)); ``p_k`` is kept over them too,
    since the entropy rule may keep one and :func:`~partialseg.pseudolabel.refine.assemble` then reads it."""
    from partialseg.evaluation.metrics import dice

    out = CaseCandidates(tuple(probs.shape[1:]))
    argmax = probs.argmax(0)
    h = None
    gated = gate_classes(probs.shape[0], label, annotated) if gate else []
    for src in SOURCES:
        classes = sorted(k for k, s in wanted.items() if src in set(s))
        if not classes and not gated:
            continue
        masks, none = candidate_masks(probs, label, annotated, hu, spacing, generalist, opts,
                                      classes=sorted(set(classes) | set(gated)), sources=dict.fromkeys(set(classes) | set(gated), src),
                                      argmax=argmax)
        for k in gated:
            out.evidence.setdefault(k, {})[src] = dice(masks[k], label == k) if k in masks else 0.0
        out.no_prediction.update(k for k in none if k in classes)
        for k in classes:
            if k not in masks:
                continue
            m = masks[k]
            out.masks[(k, src)] = Crop.of_mask(m)
            if m.any():
                h = entropy(probs) if h is None else h
                out.entropies[(k, src)] = float(h[m].mean())
    for k in sorted(wanted):
        if k in out.no_prediction:
            continue
        boxes = [c.box() for s in SOURCES if (c := out.masks.get((k, s))) is not None and c.data.size]
        if previous and k in previous and previous[k][0].any():
            boxes.append(_bbox(previous[k][0]))
        if boxes:
            lo = tuple(min(b[0][a] for b in boxes) for a in range(3))
            hi = tuple(max(b[1][a] for b in boxes) for a in range(3))
            out.probability[k] = Crop.of_box(probs[k], lo, hi)
        if specialist_masks:
            out.specialist[k] = Crop.of_mask(argmax == k)
    return out


def select_pseudo_labels(
    cands: CaseCandidates,
    sources: Mapping[int, str | None],
    *,
    round_index: int,
    opts: Any,
    previous: dict[int, tuple[np.ndarray, float]] | None = None,
    classes: Iterable[int],
) -> tuple[dict[int, np.ndarray], dict[int, Decision], dict[int, float]]:
    """The round's pseudo-labels of one case from its candidates: for each of ``classes`` (the unannotated
    ones) the candidate of ``sources[k]`` (None: rejected by the gate, stays marginalised), kept unless
    empty or, from round ``opts.entropy_from_round`` on, its mean entropy is not below the previous
    accepted pseudo-label's (paper Eq. 3; then the previous one is kept). Returns (masks, decisions, entropies)."""
    previous = previous or {}
    masks: dict[int, np.ndarray] = {}
    decisions: dict[int, Decision] = {}
    entropies: dict[int, float] = {}
    for k in sorted(classes):
        src = sources.get(k)
        if src is None:
            continue
        if k in cands.no_prediction:
            decisions[k] = Decision("no_prediction")
            continue
        crop = cands.masks[(k, src)]
        if not crop.data.any():
            decisions[k] = Decision("empty_after_refinement")
            if k in previous:
                masks[k], entropies[k] = previous[k]
            continue
        p = crop.full()
        mean_h = cands.entropies[(k, src)]
        prev = previous.get(k)
        if round_index >= opts.entropy_from_round and prev is not None and not entropy_rule(mean_h, prev[1]):
            decisions[k] = Decision("rejected_entropy", int(p.sum()), mean_h)
            masks[k], entropies[k] = prev
            continue
        decisions[k] = Decision("accepted", int(p.sum()), mean_h)
        masks[k], entropies[k] = p, mean_h
    return masks, decisions, entropies


def round_sources(num_classes: int, annotated: frozenset[int], opts: Any,
                  sources: Mapping[int, str | None] | None = None) -> tuple[dict[int, str | None], dict[int, Decision]]:
    """Per unannotated class its source this round (``sources``, else ``opts.pseudo_source``; ``"auto"``
    without a gate decision means the paper's generalist), and the decisions of classes that get none."""
    sources = sources or {}
    default = {"auto": "generalist", "none": None}.get(opts.pseudo_source, opts.pseudo_source)
    out: dict[int, str | None] = {}
    decisions: dict[int, Decision] = {}
    for k in range(1, num_classes):
        if k in annotated:
            continue
        out[k] = sources.get(k, default)
        if out[k] is None:
            decisions[k] = Decision("rejected_gate" if k in sources else "disabled")
    return out, decisions


def pseudo_label_case(
    probs: np.ndarray,
    label: np.ndarray,
    annotated: frozenset[int],
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    generalist: Any,
    opts: Any,
    *,
    round_index: int,
    previous: dict[int, tuple[np.ndarray, float]] | None = None,
    sources: dict[int, str | None] | None = None,
) -> tuple[dict[int, np.ndarray], dict[int, Decision], dict[int, float]]:
    """One case, one round: pseudo-label masks for the unannotated classes that are found.

    ``sources`` maps class → ``"generalist"``, ``"specialist"`` or None (the organ gate rejected the
    class this round: it stays marginalised); a class not in it uses ``opts.pseudo_source`` (the
    generalist when that is ``"auto"``). ``previous`` maps class → (mask, mean entropy) of the last
    accepted pseudo-label, used by the entropy rule from round ``opts.entropy_from_round`` on.
    Returns (masks, decisions, entropies).
    """
    chosen, decisions = round_sources(probs.shape[0], annotated, opts, sources)
    wanted = {k: (s,) for k, s in chosen.items() if s is not None}
    cands = case_candidates(probs, label, annotated, hu, spacing, generalist, opts, wanted=wanted, previous=previous)
    masks, more, entropies = select_pseudo_labels(cands, chosen, round_index=round_index, opts=opts,
                                                  previous=previous, classes=wanted)
    decisions.update(more)
    return masks, decisions, entropies


def gate_case(
    probs: np.ndarray, label: np.ndarray, annotated: frozenset[int], hu: np.ndarray,
    spacing: tuple[float, float, float], generalist: Any, opts: Any,
) -> dict[int, dict[str, float]]:
    """The organ gate's evidence from one case: for every organ annotated *and present* in it, the
    DSC against the annotation of each source's candidate, built as if the organ were unannotated
    (prompts from the specialist's prediction, the annotation itself unused)."""
    return case_candidates(probs, label, annotated, hu, spacing, generalist, opts, wanted={}, gate=True).evidence


def _candidates_path(folder: Path, case_id: str) -> Path:
    return Path(folder) / f"{case_id}.npz"


def save_candidates(folder: Path, case_id: str, cands: CaseCandidates) -> Path:
    """Write one case's candidates (compressed crops + a JSON header), atomically."""
    arrays: dict[str, np.ndarray] = {}
    header: dict[str, Any] = {"shape": list(cands.shape), "no_prediction": sorted(cands.no_prediction),
                              "evidence": {str(k): v for k, v in cands.evidence.items()}, "crops": []}
    groups = (("mask", cands.masks), ("specialist", cands.specialist), ("probability", cands.probability))
    for kind, crops in groups:
        for key, crop in crops.items():
            k, src = key if isinstance(key, tuple) else (key, "")
            name = f"{kind}_{len(header['crops'])}"
            arrays[name] = crop.data
            header["crops"].append({"kind": kind, "class": int(k), "source": src, "start": list(crop.start), "array": name,
                                    "entropy": cands.entropies.get((k, src)) if kind == "mask" else None})
    path = _candidates_path(folder, case_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, header=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)
    tmp.replace(path)
    return path


def load_evidence(folder: Path, case_id: str) -> dict[int, dict[str, float]] | None:
    """Only the gate's evidence of a case's saved candidates (reads the header, not the crops), or None."""
    path = _candidates_path(folder, case_id)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(bytes(z["header"]).decode())
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise InputError(path, f"cannot read the pseudo-label candidates ({type(e).__name__}: {e}); delete it to have "
                         "it made again") from None
    return {int(k): v for k, v in header["evidence"].items()}


def load_candidates(folder: Path, case_id: str) -> CaseCandidates | None:
    """The case's saved candidates, or None when there are none."""
    path = _candidates_path(folder, case_id)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(bytes(z["header"]).decode())
            shape = tuple(header["shape"])
            out = CaseCandidates(shape, no_prediction=set(header["no_prediction"]),
                                 evidence={int(k): v for k, v in header["evidence"].items()})
            for c in header["crops"]:
                crop = Crop(tuple(c["start"]), z[c["array"]], shape)
                k = int(c["class"])
                if c["kind"] == "mask":
                    out.masks[(k, c["source"])] = crop
                    if c["entropy"] is not None:
                        out.entropies[(k, c["source"])] = float(c["entropy"])
                elif c["kind"] == "specialist":
                    out.specialist[k] = crop
                else:
                    out.probability[k] = crop
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise InputError(path, f"cannot read the pseudo-label candidates ({type(e).__name__}: {e}); delete it to have "
                         "it made again") from None
    return out
