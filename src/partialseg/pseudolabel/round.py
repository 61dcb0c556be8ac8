"""One IPnP pseudo-labelling round over a run's cases, whichever engine trained the specialist.

IPnP (paper Sec. 2.2–2.5; methods.md "IPnP" steps 1–5), round ``r``: for every case, the last specialist's
probabilities give the unannotated organs' candidates (:mod:`~partialseg.pseudolabel.candidates`), the
entropy rule keeps the better of this and the last round's, :func:`~partialseg.pseudolabel.refine.assemble`
writes the pseudo-full label map. Both engines run this code: partialseg's own loop
(:func:`~partialseg.pseudolabel.loop.run_ipnp`, preprocessed cases) and the nnU-Net one
(:mod:`partialseg.engines.nnunet.pseudo`, image grids reoriented to RAS). An engine only says, per case, how
to read its labels and how to run its specialist (:class:`RoundCase`).

Files, in ``RUN/pseudo/round_<r>/``: ``<case>.npy`` + ``<case>.json`` (the store, with the case's decisions
and quality rows: a case is done when its JSON exists), ``decisions.json`` (all cases, at the end),
``sources.json`` (the organ gate's choice), ``candidates/`` (the gate pass's candidates, removed when the
round's pseudo-labels are all written).

One sliding window per case: without the gate the case's pass makes its pseudo-label at once; with it
(``pseudo_source="auto"``) the pass saves the candidates of both sources, the gate decides once every case
is seen, and the pseudo-labels are chosen from the saved candidates.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.io import write_json_atomic
from partialseg.pseudolabel.candidates import (
    SOURCES,
    CaseCandidates,
    case_candidates,
    load_candidates,
    load_evidence,
    round_sources,
    save_candidates,
    select_pseudo_labels,
)
from partialseg.pseudolabel.quality import pseudo_label_quality
from partialseg.pseudolabel.refine import assemble, pseudo_labelled
from partialseg.pseudolabel.store import has_pseudo, load_pseudo, load_pseudo_extra, save_pseudo

__all__ = ["RoundCase", "choose_sources", "previous_pseudo", "pseudo_label_round", "round_quality_rows"]

log = logging.getLogger("partialseg.ipnp")


@dataclass(frozen=True)
class RoundCase:
    """What a round needs of one case, read on demand (nothing of it is held between cases).

    ``arrays()``: (partial label (X, Y, Z) int, reference label (X, Y, Z) or None); ``specialist()``: (the
    specialist's softmax (C, X, Y, Z) float32, HU (X, Y, Z) float32, spacing in mm), all on one RAS grid.
    """

    case_id: str
    annotated: frozenset[int]
    arrays: Callable[[], tuple[np.ndarray, np.ndarray | None]]
    specialist: Callable[[], tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]


def previous_pseudo(folder: Path, case_id: str) -> dict[int, tuple[np.ndarray, float]]:
    """The entropy rule's memory of one case: class → (mask, mean entropy) of the pseudo-labels the last
    round kept (read from its file; none in round 1 or for the step control)."""
    if not has_pseudo(folder, case_id):
        return {}
    label, pseudo, ent = load_pseudo(folder, case_id)
    return {k: (np.asarray(label == k), e) for k, e in ent.items() if k in pseudo}


def choose_sources(evidence: list[dict[int, dict[str, float]]], num_classes: int, min_dsc: float) -> dict[int, dict[str, Any]]:
    """Per organ: the source whose candidates agree best with the annotations (mean DSC over the
    cases that annotate the organ), or None when even the best stays below ``min_dsc``. An organ
    that no case annotates keeps the paper's generalist (no evidence either way)."""
    out: dict[int, dict[str, Any]] = {}
    for k in range(1, num_classes):
        vals = {src: [e[k][src] for e in evidence if k in e] for src in SOURCES}
        n = len(vals["generalist"])
        if n == 0:
            out[k] = {"source": "generalist", "n": 0}
            continue
        means = {src: float(np.mean(v)) for src, v in vals.items()}
        best = max(SOURCES, key=lambda s: means[s])
        out[k] = {"source": best if means[best] >= min_dsc else None, "n": n,
                  **{f"dsc_{s}": means[s] for s in SOURCES}}
    return out


def _case_pass(case: RoundCase, label: np.ndarray, ref: np.ndarray | None, previous: dict[int, tuple[np.ndarray, float]],
               generalist: Any, opts: Any, wanted: dict[int, Any], *, gate: bool) -> CaseCandidates:
    """One case's sliding window and its candidates (its probabilities and HU freed on return); ``label``,
    ``ref``: :attr:`RoundCase.arrays`, ``previous``: :func:`previous_pseudo`, read once by the caller."""
    probs, hu, spacing = case.specialist()
    return case_candidates(probs, label, case.annotated, hu, spacing, generalist, opts, wanted=wanted, gate=gate,
                           specialist_masks=ref is not None, previous=previous)


def _organ_gate(pseudo_dir: Path, cases: Sequence[RoundCase], generalist: Any, opts: Any, space: Any,
                previous_dir: Path, progress: bool) -> dict[int, str | None]:
    """``pseudo_source="auto"``: choose each organ's source on the cases that annotate it.

    The evidence is optimistic (the specialist was trained on these very annotations, and so was a
    ``boxnet`` generalist; the weight-free ones were not, which favours the trained sources), so it
    ranks the sources and rejects organs that fail even there; it does not estimate the pseudo-labels' DSC.
    The pass that gathers it keeps each case's candidates from both sources, so the pseudo-labels need no
    second pass. Saved to ``sources.json`` (a resumed round reuses it; a killed gate pass resumes from the
    cases whose candidates it saved).
    """
    from partialseg.progress import progress as progress_bar

    f = pseudo_dir / "sources.json"
    cand_dir = pseudo_dir / "candidates"
    if not f.exists():
        evidence = []
        for case in progress_bar(cases, desc="ipnp organ gate", unit="case", enabled=progress):
            ev = load_evidence(cand_dir, case.case_id)
            if ev is None:
                unannotated = {k: SOURCES for k in range(1, space.num_channels) if k not in case.annotated}
                label, ref = case.arrays()
                cands = _case_pass(case, label, ref, previous_pseudo(previous_dir, case.case_id), generalist, opts,
                                   unannotated, gate=True)
                save_candidates(cand_dir, case.case_id, cands)
                ev = cands.evidence
                del cands
            evidence.append(ev)
        chosen = choose_sources(evidence, space.num_channels, opts.min_organ_dsc)
        write_json_atomic({space.name(k): v for k, v in chosen.items()}, f)
    saved = json.loads(f.read_text())
    log.info("ipnp organ sources: %s", {name: v["source"] for name, v in saved.items()})
    return {space.index(name): v["source"] for name, v in saved.items()}


def _quality_rows(case_id: str, label: np.ndarray, ref: np.ndarray, pseudo: frozenset[int], specialist: Any, space: Any,
                  r: int) -> list[dict[str, Any]]:
    """``pseudo_label_quality`` of each pseudo-labelled organ; ``specialist``: the argmax (X, Y, Z), or
    class → its ``argmax == k`` crop."""
    rows = []
    for k in sorted(pseudo):
        spec = specialist == k if isinstance(specialist, np.ndarray) else specialist[k].full()
        rows.append({"round": r, "case": case_id, "organ": space.name(k),
                     **pseudo_label_quality(np.asarray(label) == k, spec, np.asarray(ref) == k)})
    return rows


def _pseudo_label(case: RoundCase, pseudo_dir: Path, generalist: Any, opts: Any, space: Any,
                  sources: dict[int, str | None], r: int, previous_dir: Path) -> None:
    """One case's pseudo-full label of round ``r``, from the gate pass's candidates or from its own pass;
    written with its decisions and quality rows (so a resumed round needs neither again)."""
    chosen, decisions = round_sources(space.num_channels, case.annotated, opts, sources)
    wanted = {k: (s,) for k, s in chosen.items() if s is not None}
    label, ref = case.arrays()
    previous = previous_pseudo(previous_dir, case.case_id)
    cands = load_candidates(pseudo_dir / "candidates", case.case_id)
    if cands is None:
        cands = _case_pass(case, label, ref, previous, generalist, opts, wanted, gate=False)
    masks, more, ent = select_pseudo_labels(cands, chosen, round_index=r, opts=opts, previous=previous, classes=wanted)
    decisions.update(more)
    full = assemble(np.asarray(label), masks, {k: cands.probability_of(k) for k in masks})
    pseudo = pseudo_labelled(full, masks)
    quality = None if ref is None else _quality_rows(case.case_id, full, ref, pseudo, cands.specialist, space, r)
    save_pseudo(pseudo_dir, case.case_id, full, pseudo, ent,
                extra={"decisions": {space.name(k): asdict(d) for k, d in sorted(decisions.items())}, "quality": quality})


def pseudo_label_round(cases: Sequence[RoundCase], run: Path, r: int, generalist: Any, opts: Any, space: Any, *,
                       progress: bool = False) -> Path:
    """Round ``r``'s pseudo-label of every case into ``RUN/pseudo/round_<r>/`` (cases already there are kept)
    and its ``decisions.json``; returns the folder. Not for the step control (``pseudo_source="none"``)."""
    from partialseg.progress import progress as progress_bar

    if opts.pseudo_source == "none":
        raise ValueError("pseudo_source='none' makes no pseudo-labels")
    pseudo_dir = Path(run) / "pseudo" / f"round_{r}"
    pseudo_dir.mkdir(parents=True, exist_ok=True)
    previous_dir = Path(run) / "pseudo" / f"round_{r - 1}"
    sources: dict[int, str | None] = {}
    if opts.pseudo_source == "auto":
        sources = _organ_gate(pseudo_dir, cases, generalist, opts, space, previous_dir, progress)
    for case in progress_bar(cases, desc=f"ipnp round {r}: pseudo-labels", unit="case", enabled=progress):
        if not has_pseudo(pseudo_dir, case.case_id):
            _pseudo_label(case, pseudo_dir, generalist, opts, space, sources, r, previous_dir)
    write_json_atomic({c.case_id: load_pseudo_extra(pseudo_dir, c.case_id).get("decisions", {}) for c in cases},
                      pseudo_dir / "decisions.json")
    shutil.rmtree(pseudo_dir / "candidates", ignore_errors=True)  # every case has its pseudo-label now
    return pseudo_dir


def round_quality_rows(cases: Sequence[RoundCase], run: Path, r: int, space: Any) -> list[dict[str, Any]]:
    """Round ``r``'s quality rows of every case with a reference, as saved with its pseudo-label (a folder from
    before they were saved: recomputed with one more pass of the specialist)."""
    pseudo_dir = Path(run) / "pseudo" / f"round_{r}"
    rows: list[dict[str, Any]] = []
    for case in cases:
        if not has_pseudo(pseudo_dir, case.case_id):
            continue
        extra = load_pseudo_extra(pseudo_dir, case.case_id)
        quality = extra.get("quality")
        if "quality" not in extra:  # None: saved without a reference; absent: a folder from before
            label, pseudo, _ = load_pseudo(pseudo_dir, case.case_id)
            _, ref = case.arrays()
            if ref is None or not pseudo:
                continue
            quality = _quality_rows(case.case_id, label, ref, pseudo, case.specialist()[0].argmax(0), space, r)
        rows.extend(quality or [])
    return rows
