"""The IPnP rounds (paper Sec. 2.2–2.5; methods.md "IPnP").

Run folder of an ``ipnp`` training::

    RUN/round_0/                 specialist trained on the partial labels (an ordinary run folder)
    RUN/pseudo/round_<r>/<case>.npz   pseudo-full label map of round r (preprocessed grid), pseudo classes
    RUN/pseudo/round_<r>/decisions.json  per case and organ: accepted / rejected and why, voxels, entropy
    RUN/round_<r>/                    the specialist retrained on annotations + pseudo-labels (VLS loss)
    RUN/pseudo_quality.csv / .md / .png   per round and organ: pseudo-label DSC vs the reference (when
                                          the dataset has one) and the accept/reject counts
    RUN/model.pt                      the last round's specialist (what ``predict`` uses)

Every round is resumable: finished rounds are skipped, a killed retraining resumes from its checkpoint.
Pseudo-labels live in the run folder only; the user's files are never touched.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.config import ExperimentConfig
from partialseg.errors import PartialsegError
from partialseg.io import write_json_atomic, write_text_atomic
from partialseg.pseudolabel.refine import Decision, assemble, entropy, entropy_rule, prompt_mask, refine

log = logging.getLogger("partialseg.ipnp")


def hounsfield(image: np.ndarray, preprocess: Any, stats: Any) -> np.ndarray:
    """Undo the intensity normalisation of a prepared image (1, X, Y, Z) → HU (X, Y, Z).

    The generalist wants raw intensities; values outside the normalisation's clip range stay clipped,
    which loses nothing inside the abdomen's soft-tissue range.
    """
    x = np.asarray(image[0], dtype=np.float32)
    if preprocess.normalization == "tct":
        lo, hi = preprocess.clip
        return x * np.float32(hi - lo) + np.float32(lo)
    return x * np.float32(max(stats.std, 1e-8)) + np.float32(stats.mean)


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
) -> tuple[dict[int, np.ndarray], dict[int, Decision], dict[int, float]]:
    """One case, one round: pseudo-label masks for the unannotated classes that are found.

    ``previous`` maps class → (mask, mean entropy) of the last accepted pseudo-label, used by the
    entropy rule from round ``opts.entropy_from_round`` on. Returns (masks, decisions, entropies).
    """
    from partialseg.generalist.prompts import box_prompts_from_mask, roi_from_prompts

    previous = previous or {}
    n = probs.shape[0]
    protected = np.isin(label, sorted(annotated)) & (label > 0)
    prompts: dict[int, list] = {}
    decisions: dict[int, Decision] = {}
    for k in range(1, n):
        if k in annotated:
            continue
        m = prompt_mask(probs, k, tau=opts.tau if opts.prompt_high_confidence else None, keep_largest=opts.largest_component)
        if not m.any():
            decisions[k] = Decision("no_prediction")
            continue
        prompts[k] = box_prompts_from_mask(m, axes=(2, 0), padding=opts.padding)
    masks_g = generalist.segment_many(hu, spacing, prompts) if prompts else {}
    h = entropy(probs) if prompts else None
    masks: dict[int, np.ndarray] = {}
    entropies: dict[int, float] = {}
    for k, g in masks_g.items():
        roi = roi_from_prompts(prompts[k], probs.shape[1:], opts.dilation)
        p = refine(g, roi, probs, k, tau=opts.tau, protected=protected)
        if not p.any():
            decisions[k] = Decision("empty_after_refinement")
            if k in previous:
                masks[k], entropies[k] = previous[k]
            continue
        mean_h = float(h[p].mean())
        prev = previous.get(k)
        if round_index >= opts.entropy_from_round and prev is not None and not entropy_rule(mean_h, prev[1]):
            decisions[k] = Decision("rejected_entropy", int(p.sum()), mean_h)
            masks[k], entropies[k] = prev
            continue
        decisions[k] = Decision("accepted", int(p.sum()), mean_h)
        masks[k], entropies[k] = p, mean_h
    return masks, decisions, entropies


def _round_cfg(cfg: ExperimentConfig, opts: Any, r: int) -> ExperimentConfig:
    import copy

    c = copy.deepcopy(cfg)
    if r > 0 and opts.steps_per_round:
        c.train.steps = int(opts.steps_per_round)
    return c


def _load_pseudo(path: Path) -> tuple[np.ndarray, frozenset[int], dict[int, float]]:
    z = np.load(path)
    ent = json.loads(str(z["entropies"]))
    return z["label"], frozenset(int(c) for c in z["pseudo"]), {int(k): float(v) for k, v in ent.items()}


def _save_pseudo(path: Path, label: np.ndarray, pseudo: frozenset[int], ent: dict[int, float]) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, label=label, pseudo=np.array(sorted(pseudo), dtype=np.int16), entropies=json.dumps(ent))
    tmp.replace(path)


def run_ipnp(dataset: str | Path, out: str | Path, cfg: ExperimentConfig, opts: Any, *, resume: bool, progress: bool) -> Path:
    """Round 0 on the partial labels, then ``opts.rounds`` rounds of prompting, refinement and retraining."""
    from tqdm.auto import tqdm

    from partialseg.data.preprocess import PreparedDataset, class_locations
    from partialseg.evaluation.metrics import dice
    from partialseg.generalist.base import build_generalist
    from partialseg.inference.predict import Predictor
    from partialseg.inference.sliding_window import sliding_window_probabilities
    from partialseg.training import checkpoint as ckpt
    from partialseg.training.trainer import TrainCase, load_train_cases, train

    run = Path(out)
    if run.exists() and any(run.iterdir()) and not resume:
        from partialseg.errors import OutputExistsError

        raise OutputExistsError(run)
    run.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cfg.to_yaml(), run / "config.yaml")

    r0 = run / "round_0"
    if not (r0 / ckpt.MODEL_FILE).exists():
        train(dataset, r0, _round_cfg(cfg, opts, 0), resume=(r0 / "config.yaml").exists(), progress=progress)
    prepared_dir = Path(json.loads((r0 / "split.json").read_text())["prepared"])
    prepared = PreparedDataset.load(prepared_dir)
    space = prepared.label_space
    gopts = dict(opts.generalist_options)
    if opts.generalist == "random_walker":
        gopts.setdefault("box_padding", opts.padding)  # it locates the organ inside the padded box
    generalist = build_generalist(opts.generalist, **gopts)
    all_ids = [c.case_id for c in prepared.cases]
    quality_rows: list[dict[str, Any]] = []
    previous: dict[str, dict[int, tuple[np.ndarray, float]]] = {cid: {} for cid in all_ids}

    for r in range(1, opts.rounds + 1):
        rdir = run / f"round_{r}"
        pseudo_dir = run / "pseudo" / f"round_{r}"
        pseudo_dir.mkdir(parents=True, exist_ok=True)
        prev_model = run / f"round_{r - 1}" / ckpt.MODEL_FILE
        predictor = None
        # decisions of cases already pseudo-labelled before a kill, read once per round
        dec_file = pseudo_dir / "decisions.json"
        saved_decisions = json.loads(dec_file.read_text()) if dec_file.exists() else {}
        decisions_all: dict[str, dict[str, Any]] = {}
        cases: list[TrainCase] = []
        for base in tqdm(load_train_cases(prepared, all_ids), desc=f"ipnp round {r}: pseudo-labels", unit="case", disable=not progress):
            f = pseudo_dir / f"{base.case_id}.npz"
            if f.exists():
                label, pseudo, ent = _load_pseudo(f)
                decisions_all[base.case_id] = saved_decisions.get(base.case_id, {})
            else:
                if predictor is None:
                    predictor = Predictor.load(prev_model)
                probs = sliding_window_probabilities(
                    predictor.net, predictor.method.probabilities, base.image, predictor.patch_size,
                    overlap=predictor.overlap, device=predictor.device, amp=predictor.amp, amp_cpu=predictor.amp_cpu,
                ).numpy()
                hu = hounsfield(base.image, prepared.config, prepared.stats)
                spacing = prepared.case(base.case_id).meta.spacing
                masks, decisions, ent = pseudo_label_case(
                    probs, np.asarray(base.label), base.annotated, hu, spacing, generalist, opts,
                    round_index=r, previous=previous[base.case_id],
                )
                label = assemble(np.asarray(base.label), masks, probs)
                pseudo = frozenset(k for k, m in masks.items() if m.any())
                _save_pseudo(f, label, pseudo, ent)
                decisions_all[base.case_id] = {space.name(k): asdict(d) for k, d in decisions.items()}
            previous[base.case_id] = {k: (label == k, e) for k, e in ent.items() if k in pseudo}
            locs = dict(base.class_locations)
            locs.update(class_locations(label, pseudo, seed=r))
            cases.append(TrainCase(base.case_id, base.image, label, base.annotated, locs, base.reference, pseudo, base.pad_value))
            if base.reference is not None:
                ref = np.asarray(base.reference)
                for k in pseudo:
                    quality_rows.append({"round": r, "case": base.case_id, "organ": space.name(k),
                                         "dsc": dice(label == k, ref == k)})
        write_json_atomic(decisions_all, pseudo_dir / "decisions.json")
        _write_quality(run, quality_rows, decisions_rounds(run, opts.rounds), space)
        if not (rdir / ckpt.MODEL_FILE).exists():
            init = None
            if opts.retrain == "continue":
                init = ckpt.load(prev_model)["state_dict"]
            train(prepared_dir, rdir, _round_cfg(cfg, opts, r), resume=(rdir / "config.yaml").exists(),
                  cases=cases, init_weights=init, progress=progress)
    last = run / f"round_{opts.rounds}" / ckpt.MODEL_FILE
    final = run / ckpt.MODEL_FILE
    tmp = final.with_name(".model.pt.tmp")
    shutil.copyfile(last, tmp)
    tmp.replace(final)
    return final


def decisions_rounds(run: Path, rounds: int) -> dict[int, dict[str, Any]]:
    out = {}
    for r in range(1, rounds + 1):
        f = run / "pseudo" / f"round_{r}" / "decisions.json"
        if f.exists():
            out[r] = json.loads(f.read_text())
    return out


def _write_quality(run: Path, rows: list[dict[str, Any]], decisions: dict[int, dict[str, Any]], space) -> None:
    """Per round and organ: mean pseudo-label DSC (vs reference) and how many were accepted/rejected."""
    from partialseg.evaluation.evaluate import markdown_table

    table: list[dict[str, Any]] = []
    statuses = ("accepted", "rejected_entropy", "empty_after_refinement", "no_prediction")
    for r, dec in sorted(decisions.items()):
        for organ in space.names:
            counts = {s: 0 for s in statuses}
            for per_case in dec.values():
                d = per_case.get(organ)
                if d:
                    counts[d["status"]] += 1
            d_vals = [row["dsc"] for row in rows if row["round"] == r and row["organ"] == organ]
            table.append({"round": r, "organ": organ, "pseudo_dsc": float(np.mean(d_vals)) if d_vals else None,
                          "n_pseudo": len(d_vals), **counts})
    if not table:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(table[0]))
    w.writeheader()
    w.writerows(table)
    write_text_atomic(buf.getvalue(), run / "pseudo_quality.csv")
    header = ["round", "organ", "pseudo DSC", "n", *statuses]
    body = [[str(t["round"]), t["organ"], "–" if t["pseudo_dsc"] is None else f"{100 * t['pseudo_dsc']:.1f}",
             str(t["n_pseudo"]), *(str(t[s]) for s in statuses)] for t in table]
    means = {}
    for r in sorted(decisions):
        vals = [t["pseudo_dsc"] for t in table if t["round"] == r and t["pseudo_dsc"] is not None]
        means[r] = float(np.mean(vals)) if vals else None
    lines = [f"round {r}: mean pseudo-label DSC {100 * m:.1f} %" for r, m in means.items() if m is not None]
    write_text_atomic("# Pseudo-label quality per round\n\n" + "\n".join(f"- {x}" for x in lines) + "\n\n"
                      + markdown_table(header, body) + "\n", run / "pseudo_quality.md")
    _plot_quality(table, run / "pseudo_quality.png")


def _plot_quality(table: list[dict[str, Any]], path: Path) -> None:

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = sorted({t["round"] for t in table})
    organs = sorted({t["organ"] for t in table})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for organ in organs:
        ys = [next((t["pseudo_dsc"] for t in table if t["round"] == r and t["organ"] == organ), None) for r in rounds]
        if any(y is not None for y in ys):
            ax.plot(rounds, [float("nan") if y is None else y for y in ys], "o-", alpha=0.5, label=organ)
    means = []
    for r in rounds:
        vals = [t["pseudo_dsc"] for t in table if t["round"] == r and t["pseudo_dsc"] is not None]
        means.append(float(np.mean(vals)) if vals else float("nan"))
    ax.plot(rounds, means, "k-", lw=3, label="mean")
    ax.set_xlabel("round")
    ax.set_ylabel("pseudo-label DSC vs reference")
    ax.set_xticks(rounds)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    from partialseg.io import save_figure

    save_figure(fig, path)
