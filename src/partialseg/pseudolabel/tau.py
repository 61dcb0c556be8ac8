"""Choosing IPnP's τ on held-out annotations (methods.md "IPnP": the paper's value was lost).

τ enters the refinement P_k = G_k ∩ ROI_k ∩ {p_k ≥ τ}. With τ ≥ 0.5 on a softmax, {p_k ≥ τ} lies
inside the specialist's own argmax region, so the generalist can only remove voxels; a small τ
lets it add what the specialist missed. :func:`sweep_tau` measures every τ of a grid on the
*validation* cases of a round-0 specialist (never trained on, never the test split): each organ the
case annotates and contains is pseudo-labelled as if it were unannotated (prompts from the
specialist's argmax, the generalist once per organ; τ only changes the refinement), and scored
against the annotation. It also counts the voxels the refinement adds beyond the specialist's
argmax and how many of them are right.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["choose_tau", "sweep_tau"]


def sweep_tau(
    run: str | Path,
    taus: Sequence[float],
    *,
    generalist: str = "random_walker",
    generalist_options: dict[str, Any] | None = None,
    padding: int = 5,
    dilation: int = 10,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Per (validation case, organ, τ): DSC of the refined pseudo-label against the annotation, and the
    added voxels (``added``, ``added_correct``). ``run``: a finished marginal (round-0) run folder."""
    from partialseg.generalist.base import build_generalist
    from partialseg.generalist.prompts import box_prompts_from_mask, roi_from_prompts
    from partialseg.inference.predict import Predictor
    from partialseg.preprocessing import PreparedDataset
    from partialseg.progress import progress as progress_bar
    from partialseg.pseudolabel.candidates import _protected
    from partialseg.pseudolabel.loop import hounsfield, pseudo_label_quality
    from partialseg.pseudolabel.refine import prompt_mask, refine
    from partialseg.training.trainer import load_train_cases

    run = Path(run)
    split = json.loads((run / "split.json").read_text())
    prepared = PreparedDataset.load(Path(split["prepared"]))
    predictor = Predictor.load(run / "model.pt")
    gopts = dict(generalist_options or {})
    if generalist == "random_walker":
        gopts.setdefault("box_padding", padding)
    gen = build_generalist(generalist, **gopts)
    rows: list[dict[str, Any]] = []
    for case in progress_bar(load_train_cases(prepared, split["validation"]), desc="tau sweep", unit="case", enabled=progress):
        probs = predictor.window_probabilities(case.image).numpy()
        label = np.asarray(case.label)
        hu = hounsfield(case.image, prepared.config, prepared.stats)
        spacing = prepared.case(case.case_id).meta.spacing
        argmax = probs.argmax(0)
        in_phi = np.isin(label, sorted(c for c in case.annotated if c != 0))
        for k in sorted(c for c in case.annotated if 0 < c < probs.shape[0] and (label == c).any()):
            ref = label == k
            m = prompt_mask(probs, k, tau=None, keep_largest=False, argmax=argmax)
            if not m.any():  # missed by the specialist: no prompt, no pseudo-label at any τ
                g, roi = None, None
            else:
                prompts = box_prompts_from_mask(m, axes=(2, 0), padding=padding)
                g = gen.segment(hu, spacing, prompts)
                roi = roi_from_prompts(prompts, probs.shape[1:], dilation)
            protected = _protected(label, in_phi, k)
            for tau in taus:
                pseudo = np.zeros_like(ref) if g is None else refine(g, roi, probs, k, tau=tau, protected=protected)
                rows.append({"case": case.case_id, "organ": prepared.label_space.name(k), "tau": float(tau),
                             **pseudo_label_quality(pseudo, argmax == k, ref)})
    return rows


def choose_tau(rows: Sequence[dict[str, Any]]) -> tuple[float, list[dict[str, Any]]]:
    """The τ with the highest mean pseudo-label DSC, and one summary row per τ (ties: the larger τ)."""
    summary = []
    for tau in sorted({r["tau"] for r in rows}):
        sel = [r for r in rows if r["tau"] == tau]
        added = sum(r["added"] for r in sel)
        summary.append({
            "tau": tau, "n": len(sel), "dsc": float(np.mean([r["dsc"] for r in sel])),
            "specialist_dsc": float(np.mean([r["specialist_dsc"] for r in sel])),
            "added": added, "added_precision": sum(r["added_correct"] for r in sel) / added if added else None,
            "removed": sum(r["removed"] for r in sel), "removed_wrong": sum(r["removed_wrong"] for r in sel),
        })
    best = max(summary, key=lambda s: (s["dsc"], s["tau"]))
    return best["tau"], summary
