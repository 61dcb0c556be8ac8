"""The IPnP rounds (paper Sec. 2.2–2.5; methods.md "IPnP").

Run folder of an ``ipnp`` training::

    RUN/round_0/                 specialist trained on the partial labels (an ordinary run folder, or the
                                 files of the finished run given as ``specialist_run``)
    RUN/pseudo/round_<r>/<case>.npy   pseudo-full label map of round r (preprocessed grid; memory-mapped by
                                 training), <case>.json its pseudo classes and their entropies
    RUN/pseudo/round_<r>/decisions.json  per case and organ: accepted / rejected and why, voxels, entropy
    RUN/pseudo/round_<r>/sources.json    with pseudo_source="auto": each organ's source and the gate's evidence
    RUN/round_<r>/                    the specialist retrained on annotations + pseudo-labels (VLS loss)
    RUN/pseudo_quality.csv / .md / .png   per round and organ: pseudo-label DSC vs the reference (when
                                          the dataset has one) and the accept/reject counts
    RUN/model.pt                      the last round's specialist (what ``predict`` uses)

Every round is resumable: finished rounds are skipped, a killed retraining resumes from its checkpoint.
Pseudo-labels live in the run folder only; the user's files are never touched.

Memory: a round streams its cases. Each case's probabilities, HU copy and candidate masks live only
while that case is pseudo-labelled; its label map goes to disk and training memory-maps it; the
entropy rule's "previous pseudo-label" is read back from the last round's file. What stays in RAM for
the whole round is per case a few numbers (entropies, decisions) and its sampled foreground locations.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.config import EXECUTION_KEYS, ExperimentConfig
from partialseg.errors import InputError
from partialseg.io import write_json_atomic, write_text_atomic
from partialseg.methods.resolve import config_differences
from partialseg.pseudolabel.refine import Decision, assemble, entropy, entropy_rule, prompt_mask, refine
from partialseg.pseudolabel.store import has_pseudo, load_pseudo, save_pseudo

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


class HounsfieldView:
    """:func:`hounsfield` of a prepared image ``(1, X, Y, Z)`` computed per crop: ``view[sl]`` gives HU of
    that region only, so a generalist trained on many cases holds no HU copy of any (``np.asarray``
    materialises the whole volume)."""

    def __init__(self, image: np.ndarray, preprocess: Any, stats: Any) -> None:
        self.image, self.preprocess, self.stats = image, preprocess, stats
        self.shape = tuple(image.shape[1:])
        self.ndim, self.dtype = 3, np.dtype(np.float32)

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        # one indexing of the stored image: a blosc2 cache then decompresses the crop's chunks only
        return hounsfield(np.asarray(self.image[(0, *index)])[None], self.preprocess, self.stats)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = hounsfield(self.image, self.preprocess, self.stats)
        return out if dtype is None else out.astype(dtype)


SOURCES = ("generalist", "specialist")


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
    argmax = probs.argmax(0)  # once per case: every organ's M_k reads it
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
    for k, g in (generalist.segment_many(hu, spacing, prompts) if prompts else {}).items():
        roi = roi_from_prompts(prompts[k], probs.shape[1:], opts.dilation)
        masks[k] = refine(g, roi, probs, k, tau=opts.tau, protected=_protected(label, in_phi, k))
    return masks, decisions


def _protected(label: np.ndarray, in_phi: np.ndarray, k: int) -> np.ndarray:
    """Voxels annotated with a class of Phi other than ``k`` (``in_phi``: annotated with any class of Phi)."""
    return in_phi & (label != k)


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
    previous = previous or {}
    sources = sources or {}
    default = {"auto": "generalist", "none": None}.get(opts.pseudo_source, opts.pseudo_source)
    decisions: dict[int, Decision] = {}
    todo: dict[int, str] = {}
    for k in range(1, probs.shape[0]):
        if k in annotated:
            continue
        src = sources.get(k, default)
        if src is None:
            decisions[k] = Decision("rejected_gate" if k in sources else "disabled")
        else:
            todo[k] = src
    cand, none = candidate_masks(probs, label, annotated, hu, spacing, generalist, opts, classes=sorted(todo), sources=todo)
    decisions.update(none)
    h = entropy(probs) if cand else None
    masks: dict[int, np.ndarray] = {}
    entropies: dict[int, float] = {}
    for k, p in cand.items():
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


def gate_case(
    probs: np.ndarray, label: np.ndarray, annotated: frozenset[int], hu: np.ndarray,
    spacing: tuple[float, float, float], generalist: Any, opts: Any,
) -> dict[int, dict[str, float]]:
    """The organ gate's evidence from one case: for every organ annotated *and present* in it, the
    DSC against the annotation of each source's candidate, built as if the organ were unannotated
    (prompts from the specialist's prediction, the annotation itself unused)."""
    from partialseg.evaluation.metrics import dice

    classes = [k for k in sorted(annotated) if k > 0 and k < probs.shape[0] and bool((label == k).any())]
    out: dict[int, dict[str, float]] = {k: {} for k in classes}
    for src in SOURCES:
        masks, _ = candidate_masks(probs, label, annotated, hu, spacing, generalist, opts, classes=classes,
                                   sources=dict.fromkeys(classes, src))
        for k in classes:
            out[k][src] = dice(masks[k], label == k) if k in masks else 0.0
    return out


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


def pseudo_label_quality(pseudo: np.ndarray, specialist: np.ndarray, ref: np.ndarray) -> dict[str, float | int]:
    """One pseudo-label against the reference, next to the specialist's argmax that prompted it.

    ``added`` = pseudo-labelled voxels outside the specialist's argmax (what only the generalist can
    contribute; none at all when τ ≥ 0.5), ``added_correct`` = those inside the reference;
    ``removed`` = argmax voxels the refinement dropped, ``removed_wrong`` = those outside the reference.
    """
    from partialseg.evaluation.metrics import dice

    added = pseudo & ~specialist
    removed = specialist & ~pseudo
    return {"dsc": dice(pseudo, ref), "specialist_dsc": dice(specialist, ref),
            "added": int(np.count_nonzero(added)), "added_correct": int(np.count_nonzero(added & ref)),
            "removed": int(np.count_nonzero(removed)), "removed_wrong": int(np.count_nonzero(removed & ~ref))}


def _round_cfg(cfg: ExperimentConfig, opts: Any, r: int) -> ExperimentConfig:
    import copy

    c = copy.deepcopy(cfg)
    if r > 0 and opts.steps_per_round:
        c.train.steps = int(opts.steps_per_round)
    return c


def check_generalist_options(opts: Any) -> None:
    """Fail on a bad ``generalist_training`` before round 0 trains, not after it."""
    if opts.generalist == "boxnet" and opts.generalist_training:
        from partialseg.generalist.boxnet import BoxNetConfig

        BoxNetConfig.from_options(opts.generalist_training)


def run_ipnp(dataset: str | Path, out: str | Path, cfg: ExperimentConfig, opts: Any, *, resume: bool, progress: bool) -> Path:
    """Round 0 on the partial labels, then ``opts.rounds`` rounds of prompting, refinement and retraining."""
    from partialseg import checkpoint as ckpt
    from partialseg.generalist.base import build_generalist
    from partialseg.inference.predict import Predictor
    from partialseg.inference.sliding_window import sliding_window_probabilities
    from partialseg.preprocessing import PreparedDataset, class_locations
    from partialseg.progress import progress as progress_bar
    from partialseg.training.stages import open_stage_run
    from partialseg.training.trainer import TrainCase, load_train_cases, train

    check_generalist_options(opts)
    run, cfg = open_stage_run(out, cfg, resume=resume)

    r0 = run / "round_0"
    if opts.specialist_run and not (r0 / ckpt.MODEL_FILE).exists():
        adopt_specialist(Path(opts.specialist_run), r0, cfg, dataset)
    if not (r0 / ckpt.MODEL_FILE).exists():
        train(dataset, r0, _round_cfg(cfg, opts, 0), resume=(r0 / "config.yaml").exists(), progress=progress)
    prepared_dir = Path(json.loads((r0 / "split.json").read_text())["prepared"])
    prepared = PreparedDataset.load(prepared_dir)
    space = prepared.label_space
    gopts = dict(opts.generalist_options)
    if opts.generalist == "random_walker":
        gopts.setdefault("box_padding", opts.padding)  # it locates the organ inside the padded box
    if opts.generalist == "boxnet" and "model_folder" not in gopts:
        gopts["model_folder"] = str(_train_boxnet(run / "generalist", r0, prepared, cfg, opts, progress).parent)
        gopts.setdefault("amp_cpu", cfg.train.amp_cpu)
        gopts.setdefault("device", cfg.train.device)
    generalist = build_generalist(opts.generalist, **gopts)
    all_ids = [c.case_id for c in prepared.cases]
    quality_rows: list[dict[str, Any]] = []

    for r in range(1, opts.rounds + 1):
        rdir = run / f"round_{r}"
        pseudo_dir = run / "pseudo" / f"round_{r}"
        pseudo_dir.mkdir(parents=True, exist_ok=True)
        prev_model = run / f"round_{r - 1}" / ckpt.MODEL_FILE
        predictor = None

        def case_probs(base: TrainCase) -> np.ndarray:
            nonlocal predictor
            if predictor is None:
                predictor = Predictor.load(prev_model)
            return sliding_window_probabilities(
                predictor.net, predictor.method.probabilities, base.image, predictor.patch_size,
                overlap=predictor.overlap, device=predictor.device, amp=predictor.amp, amp_cpu=predictor.amp_cpu,
            ).numpy()

        train_cases = load_train_cases(prepared, all_ids)
        sources: dict[int, str | None] = {}
        if opts.pseudo_source == "auto":
            sources = _organ_gate(pseudo_dir, train_cases, case_probs, prepared, generalist, opts, space, progress)
        # decisions of cases already pseudo-labelled before a kill, read once per round
        dec_file = pseudo_dir / "decisions.json"
        saved_decisions = json.loads(dec_file.read_text()) if dec_file.exists() else {}
        decisions_all: dict[str, dict[str, Any]] = {}
        cases: list[TrainCase] = []
        for base in progress_bar(train_cases, desc=f"ipnp round {r}: pseudo-labels", unit="case", enabled=progress):
            probs = None
            if opts.pseudo_source == "none":  # the step control: no prediction, no pseudo-label
                label, pseudo = base.label, frozenset()
                decisions_all[base.case_id] = {}
            else:
                if not has_pseudo(pseudo_dir, base.case_id):
                    probs = case_probs(base)
                    hu = hounsfield(base.image, prepared.config, prepared.stats)
                    spacing = prepared.case(base.case_id).meta.spacing
                    masks, decisions, ent = pseudo_label_case(
                        probs, np.asarray(base.label), base.annotated, hu, spacing, generalist, opts,
                        round_index=r, previous=previous_pseudo(run / "pseudo" / f"round_{r - 1}", base.case_id), sources=sources,
                    )
                    del hu
                    label = assemble(np.asarray(base.label), masks, probs)
                    save_pseudo(pseudo_dir, base.case_id, label, frozenset(k for k, m in masks.items() if m.any()), ent)
                    saved_decisions[base.case_id] = {space.name(k): asdict(d) for k, d in decisions.items()}
                    del masks, label
                label, pseudo, _ = load_pseudo(pseudo_dir, base.case_id)
                decisions_all[base.case_id] = saved_decisions.get(base.case_id, {})
            locs = dict(base.class_locations)
            locs.update(class_locations(label, pseudo, seed=r))
            cases.append(TrainCase(base.case_id, base.image, label, base.annotated, locs, base.reference, pseudo, base.pad_value))
            if base.reference is not None and pseudo:
                ref = np.asarray(base.reference)
                if probs is None:
                    probs = case_probs(base)
                argmax = probs.argmax(0)
                for k in pseudo:
                    quality_rows.append({"round": r, "case": base.case_id, "organ": space.name(k),
                                         **pseudo_label_quality(label == k, argmax == k, ref == k)})
                del argmax
            del probs
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
    if not final.exists() or final.stat().st_mtime_ns < last.stat().st_mtime_ns:
        tmp = final.with_name(".model.pt.tmp")
        shutil.copyfile(last, tmp)
        tmp.replace(final)
    return final


def previous_pseudo(folder: Path, case_id: str) -> dict[int, tuple[np.ndarray, float]]:
    """The entropy rule's memory of one case: class → (mask, mean entropy) of the pseudo-labels the last
    round kept (read from its file; none in round 1 or for the step control)."""
    if not has_pseudo(folder, case_id):
        return {}
    label, pseudo, ent = load_pseudo(folder, case_id)
    return {k: (np.asarray(label == k), e) for k, e in ent.items() if k in pseudo}


def _train_boxnet(out: Path, r0: Path, prepared: Any, cfg: ExperimentConfig, opts: Any, progress: bool) -> Path:
    """The ``boxnet`` generalist, trained on the annotations of round 0's training cases (not its validation ones)."""
    from partialseg.generalist.boxnet import BoxNetCase, BoxNetConfig, existing_boxnet, train_boxnet
    from partialseg.training.trainer import load_train_cases

    bcfg = BoxNetConfig.from_options({"padding": opts.padding, "seed": cfg.train.seed, **opts.generalist_training})
    done = existing_boxnet(out, bcfg, prepared.config.spacing)
    if done is not None:  # a resumed run: no need to load the cases
        return done
    # memory-mapped images, HU computed per crop: no case is copied into RAM
    ids = json.loads((r0 / "split.json").read_text())["train"]
    cases = [BoxNetCase(HounsfieldView(c.image, prepared.config, prepared.stats), c.label, c.annotated, c.case_id)
             for c in load_train_cases(prepared, ids)]
    return train_boxnet(cases, out, prepared.config.spacing, bcfg, device=cfg.train.device, amp=cfg.train.amp,
                        amp_cpu=cfg.train.amp_cpu, progress=progress)


def adopt_specialist(source: Path, r0: Path, cfg: ExperimentConfig, dataset: str | Path) -> None:
    """Use a finished run as round 0: round 0 *is* a marginal-loss training on the partial labels.

    The run must be a ``marginal`` or ``ipnp`` run on the same dataset whose network, data, optimiser,
    augmentation and training settings equal ``cfg``'s; its files are copied into ``r0`` (nothing is
    moved), and a prepared cache inside it hard-linked where possible (a shared cache is referenced).
    """
    from partialseg import checkpoint as ckpt

    model = source / ckpt.MODEL_FILE
    if not model.exists():
        raise InputError(source, "specialist_run has no model.pt (is the run finished?)")
    saved = ckpt.load(model)
    from partialseg.methods.ipnp import is_ipnp

    name = saved.get("method", {}).get("name")
    # a marginal-loss specialist on the partial labels: a marginal run, or an IPnP run's last round
    if name != "marginal" and not is_ipnp(str(name)):
        raise InputError(source, f"specialist_run must be a 'marginal' or IPnP run, not {name!r}")
    differ = config_differences(cfg, dict(saved["config"]), ignore=("method", *EXECUTION_KEYS))
    if differ:
        raise InputError(source, f"specialist_run was trained with other settings in {differ}; round 0 must match the IPnP run")
    split = json.loads((source / "split.json").read_text())
    prepared_from = json.loads((Path(split["prepared"]) / "prepared.json").read_text()).get("source")
    if prepared_from is not None and Path(prepared_from).resolve() != Path(dataset).resolve():
        raise InputError(source, f"specialist_run was trained on {prepared_from}, not on {dataset}")
    r0.mkdir(parents=True, exist_ok=True)
    # A cache inside the adopted run (runs from before the shared caches) is linked in too (hard links
    # where the filesystem allows): the IPnP run must not break when that folder is deleted. A shared
    # cache is referenced, not copied.
    prepared = Path(split["prepared"])
    if prepared.resolve().is_relative_to(source.resolve()):
        prepared = r0 / "prepared"
    if not prepared.exists():
        tmp_dir = r0 / ".prepared.tmp"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir()
        for f in sorted(Path(split["prepared"]).iterdir()):
            if f.is_file():
                try:
                    os.link(f, tmp_dir / f.name)
                except OSError:
                    shutil.copy2(f, tmp_dir / f.name)
        tmp_dir.replace(prepared)
    split["prepared"] = str(prepared.resolve())
    write_json_atomic(split, r0 / "split.json")
    # model.pt last: its presence marks round 0 as done
    for name in ("config.yaml", "log.csv", "curves.png", ckpt.MODEL_FILE):
        if (source / name).exists():
            tmp = r0 / f".{name}.tmp"
            shutil.copyfile(source / name, tmp)
            tmp.replace(r0 / name)
    log.info("round 0: adopted the specialist of %s", source)


def _organ_gate(pseudo_dir: Path, train_cases: list, case_probs: Any, prepared: Any, generalist: Any, opts: Any,
                space: Any, progress: bool) -> dict[int, str | None]:
    """``pseudo_source="auto"``: choose each organ's source on the cases that annotate it.

    The evidence is optimistic (the specialist was trained on these very annotations, and so was a
    ``boxnet`` generalist; the weight-free ones were not, which favours the trained sources), so it
    ranks the sources and rejects organs that fail even there; it does not estimate the pseudo-labels' DSC.
    Saved to ``sources.json`` (a resumed round reuses it).
    """
    from partialseg.progress import progress as progress_bar

    f = pseudo_dir / "sources.json"
    if not f.exists():
        evidence = []
        for base in progress_bar(train_cases, desc="ipnp organ gate", unit="case", enabled=progress):
            hu = hounsfield(base.image, prepared.config, prepared.stats)
            spacing = prepared.case(base.case_id).meta.spacing
            evidence.append(gate_case(case_probs(base), np.asarray(base.label), base.annotated, hu, spacing, generalist, opts))
        chosen = choose_sources(evidence, len(space.names) + 1, opts.min_organ_dsc)
        write_json_atomic({space.name(k): v for k, v in chosen.items()}, f)
    saved = json.loads(f.read_text())
    out = {space.index(name): v["source"] for name, v in saved.items()}
    log.info("ipnp organ sources: %s", {name: v["source"] for name, v in saved.items()})
    return out


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
    statuses = ("accepted", "rejected_entropy", "rejected_gate", "empty_after_refinement", "no_prediction", "disabled")
    for r, dec in sorted(decisions.items()):
        for organ in space.names:
            counts = {s: 0 for s in statuses}
            for per_case in dec.values():
                d = per_case.get(organ)
                if d:
                    counts[d["status"]] += 1
            sel = [row for row in rows if row["round"] == r and row["organ"] == organ]
            added = sum(x["added"] for x in sel)
            correct = sum(x["added_correct"] for x in sel)
            table.append({"round": r, "organ": organ,
                          "pseudo_dsc": float(np.mean([x["dsc"] for x in sel])) if sel else None,
                          "specialist_dsc": float(np.mean([x["specialist_dsc"] for x in sel])) if sel else None,
                          "n_pseudo": len(sel), "added": added,
                          "added_precision": correct / added if added else None,
                          "removed": sum(x["removed"] for x in sel),
                          "removed_wrong": sum(x["removed_wrong"] for x in sel), **counts})
    if not table:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(table[0]))
    w.writeheader()
    w.writerows(table)
    write_text_atomic(buf.getvalue(), run / "pseudo_quality.csv")
    header = ["round", "organ", "pseudo DSC", "specialist DSC", "n", "added voxels", "added precision",
              "removed voxels", "removed wrong", *statuses]

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f}"

    body = [[str(t["round"]), t["organ"], pct(t["pseudo_dsc"]), pct(t["specialist_dsc"]), str(t["n_pseudo"]),
             str(t["added"]), pct(t["added_precision"]), str(t["removed"]), str(t["removed_wrong"]),
             *(str(t[s]) for s in statuses)] for t in table]
    lines = []
    for r in sorted(decisions):
        sel = [x for x in rows if x["round"] == r]
        if sel:
            lines.append(f"round {r}: {len(sel)} pseudo-labels (case × organ), mean DSC {100 * np.mean([x['dsc'] for x in sel]):.1f} %"
                         f" vs {100 * np.mean([x['specialist_dsc'] for x in sel]):.1f} % for the specialist's own prediction")
            added = sum(x["added"] for x in sel)
            correct = sum(x["added_correct"] for x in sel)
            removed = sum(x["removed"] for x in sel)
            wrong = sum(x["removed_wrong"] for x in sel)
            lines.append(f"round {r}: the refinement added {added} voxels beyond the specialist's argmax"
                         + (f" ({100 * correct / added:.1f} % of them in the reference)" if added else "")
                         + f" and removed {removed}" + (f" ({100 * wrong / removed:.1f} % of them outside it)" if removed else ""))
    # a mean over a changing set of organs can fall while every organ improves: also compare on the
    # organs pseudo-labelled in every round
    common = None
    for r in sorted(decisions):
        got = {t["organ"] for t in table if t["round"] == r and t["pseudo_dsc"] is not None}
        common = got if common is None else common & got
    if common and len(decisions) > 1:
        per = [f"round {r} {100 * np.mean([t['pseudo_dsc'] for t in table if t['round'] == r and t['organ'] in common]):.1f} %"
               for r in sorted(decisions)]
        lines.append(f"on the {len(common)} organs pseudo-labelled in every round (mean of organ means): " + ", ".join(per))
    notes = ("\n'pseudo DSC': the pseudo-labels against the reference labels; 'specialist DSC': the argmax of the "
             "specialist that prompted them, on the same cases and organs. 'added voxels': pseudo-labelled voxels "
             "outside the specialist's argmax (what the generalist contributed), 'added precision': the share of them "
             "inside the reference; 'removed': argmax voxels the refinement dropped, 'removed wrong': those outside "
             "the reference. Counts are case × organ decisions.\n")
    write_text_atomic("# Pseudo-label quality per round\n\n" + "\n".join(f"- {x}" for x in lines) + "\n\n"
                      + markdown_table(header, body) + "\n" + notes, run / "pseudo_quality.md")
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
    spec = []
    for r in rounds:
        vals = [t["specialist_dsc"] for t in table if t["round"] == r and t["specialist_dsc"] is not None]
        spec.append(float(np.mean(vals)) if vals else float("nan"))
    ax.plot(rounds, spec, "k--", lw=2, label="specialist's own (mean)")
    ax.set_xlabel("round")
    ax.set_ylabel("pseudo-label DSC vs reference")
    ax.set_xticks(rounds)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    from partialseg.io import save_figure

    save_figure(fig, path)
