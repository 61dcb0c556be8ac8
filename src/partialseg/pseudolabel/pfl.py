"""PFL, pseudo-full labels (methods.md "Baselines"): one network per source dataset (or per organ)
predicts the organs its source annotates on every training case that lacks them; the predictions,
merged under the ground truth, make pseudo-full label maps on which one multi-class network trains.

Run folder (every stage resumes; a finished stage is skipped)::

    RUN/config.yaml
    RUN/teachers.json             the teachers: organs and training cases
    RUN/teachers/teacher_<i>/     one ordinary training run each (marginal loss on its cases)
    RUN/pseudo/round_1/<case>.npy, .json the merged label maps (``partialseg export-pseudo`` reads them)
    RUN/student/                  the multi-class network on the pseudo-full labels
    RUN/model.pt                  the student's model

Pure pieces (:func:`teacher_groups`, :func:`teacher_candidates`, :func:`merge_pseudo_full`) carry
the method; :func:`run_pfl` drives them with the one training loop.
"""

from __future__ import annotations

import copy
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.config import ExperimentConfig
from partialseg.errors import InputError, PartialsegError
from partialseg.io import read_json, write_json_atomic
from partialseg.methods.pfl import GROUPINGS
from partialseg.pseudolabel.store import has_pseudo, load_pseudo, save_pseudo

log = logging.getLogger("partialseg.pfl")


@dataclass(frozen=True)
class Teacher:
    """One single-task network: the organs it learns and the training cases it learns them from."""

    name: str
    organs: tuple[int, ...]
    cases: tuple[str, ...]


def teacher_groups(annotated: Mapping[str, frozenset[int]], grouping: str = "auto", num_classes: int | None = None) -> list[Teacher]:
    """The teachers for training cases with annotated classes ``annotated`` (background 0 ignored).

    ``"source"``: one teacher per distinct annotated set (cases of one source dataset share theirs);
    ``"organ"``: one teacher per organ, on every case that annotates it; ``"auto"``: ``"source"`` when
    there are at most ``num_classes`` distinct sets (source datasets), else ``"organ"`` (random
    per-case subsets, where sets are nearly unique).
    """
    if grouping not in GROUPINGS:
        raise PartialsegError(f"pfl: grouping must be one of {list(GROUPINGS)}, got {grouping!r}")
    sets = {cid: frozenset(a) - {0} for cid, a in annotated.items()}
    distinct = sorted({s for s in sets.values() if s}, key=lambda s: (sorted(s), len(s)))
    if grouping == "auto":
        limit = num_classes if num_classes is not None else max((max(s) for s in distinct), default=0)
        grouping = "source" if len(distinct) <= limit else "organ"
    if grouping == "source":
        groups = [(tuple(sorted(s)), tuple(c for c in sorted(sets) if sets[c] == s)) for s in distinct]
    else:
        organs = sorted(set().union(*distinct)) if distinct else []
        groups = [((k,), tuple(c for c in sorted(sets) if k in sets[c])) for k in organs]
    return [Teacher(f"teacher_{i}", organs, cases) for i, (organs, cases) in enumerate(groups)]


def organ_teachers(teachers: list[Teacher]) -> dict[int, Teacher]:
    """Which teacher labels each organ: among those that learn it, the one with the most cases (then the first)."""
    out: dict[int, Teacher] = {}
    for t in teachers:
        for k in t.organs:
            if k not in out or len(t.cases) > len(out[k].cases):
                out[k] = t
    return out


def teacher_candidates(probs: np.ndarray, organs: tuple[int, ...]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """A teacher's prediction of its organs: ``{k: (mask, p_k)}`` from its ``(N+1, X, Y, Z)`` probabilities.

    The teacher was trained with the marginal loss on its organs only, so every other channel belongs
    to its background: the label is the argmax over (merged background, its organs).
    """
    organs = tuple(organs)
    own = probs[list(organs)]
    background = probs.sum(axis=0) - own.sum(axis=0)
    best = np.argmax(np.concatenate([background[None], own]), axis=0)
    return {k: (best == i + 1, probs[k]) for i, k in enumerate(organs)}


def merge_pseudo_full(
    label: np.ndarray, annotated: frozenset[int], candidates: Mapping[int, tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, frozenset[int]]:
    """The pseudo-full label map of one case, and the classes it pseudo-labels.

    The ground truth has priority: a voxel of an annotated organ keeps it. Elsewhere (label 0), a voxel
    takes the unannotated organ whose teacher predicts it there, the most probable one where several do.
    Candidates for annotated organs are ignored.
    """
    out = np.array(label, copy=True)
    missing = [k for k in sorted(candidates) if k not in annotated]
    if not missing:
        return out, frozenset()
    free = np.asarray(label) == 0
    score = np.full(out.shape, -1.0, dtype=np.float32)
    choice = np.zeros(out.shape, dtype=out.dtype)
    for k in missing:
        mask, p = candidates[k]
        better = mask & free & (p > score)
        score[better] = p[better]
        choice[better] = k
    chosen = choice > 0
    out[chosen] = choice[chosen]
    return out, frozenset(int(k) for k in np.unique(choice[chosen]))


def _restricted(case: Any, organs: tuple[int, ...]) -> Any:
    """A training case that annotates only ``organs`` of its annotated set (other organs become 0)."""
    from partialseg.training.trainer import TrainCase

    keep = frozenset(organs) & case.annotated
    if keep == case.annotated - {0}:
        return case
    label = np.where(np.isin(case.label, sorted(keep)), case.label, 0).astype(case.label.dtype)
    locs = {k: v for k, v in case.class_locations.items() if k in keep or k == 0}
    return TrainCase(case.case_id, case.image, label, keep | (case.annotated & {0}), locs, case.reference,
                     pad_value=case.pad_value)


def _stage_cfg(cfg: ExperimentConfig, steps: int) -> ExperimentConfig:
    c = copy.deepcopy(cfg)
    if steps:
        c.train.steps = int(steps)
    return c


def run_pfl(dataset: str | Path, out: str | Path, cfg: ExperimentConfig, opts: Any, *, resume: bool, progress: bool) -> Path:
    """Train the teachers, write the pseudo-full labels, train the student (module docstring)."""
    from partialseg import checkpoint as ckpt
    from partialseg.inference.predict import Predictor
    from partialseg.preprocessing import PreparedDataset, class_locations
    from partialseg.progress import progress as progress_bar
    from partialseg.training.stages import open_stage_run
    from partialseg.training.trainer import TrainCase, load_train_cases, prepared_cache, split_cases, train

    run, cfg = open_stage_run(out, cfg, resume=resume)

    # one cache for every stage: the teachers and the student read the same prepared cases
    prepared_dir = prepared_cache(Path(dataset), run, cfg)
    prepared = PreparedDataset.load(prepared_dir)
    space = prepared.label_space
    train_ids, _ = split_cases([c.case_id for c in prepared.cases], cfg)
    cases = load_train_cases(prepared, train_ids)
    by_id = {c.case_id: c for c in cases}

    teachers_file = run / "teachers.json"
    if teachers_file.exists():
        teachers = [Teacher(t["name"], tuple(t["organs"]), tuple(t["cases"])) for t in read_json(teachers_file)]
    else:
        teachers = teacher_groups({c.case_id: c.annotated for c in cases}, opts.grouping, space.num_classes)
        write_json_atomic([{"name": t.name, "organs": list(t.organs), "organ_names": space.names_of(frozenset(t.organs)),
                            "cases": list(t.cases)} for t in teachers], teachers_file)
    if not teachers:
        raise InputError(prepared_dir, "pfl: no training case annotates any organ")

    for t in teachers:
        tdir = run / "teachers" / t.name
        if not (tdir / ckpt.MODEL_FILE).exists():
            log.info("pfl: %s learns %s from %d cases", t.name, space.names_of(frozenset(t.organs)), len(t.cases))
            train(prepared_dir, tdir, _stage_cfg(cfg, opts.teacher_steps), resume=(tdir / "config.yaml").exists(),
                  cases=[_restricted(by_id[c], t.organs) for c in t.cases], progress=progress)

    pseudo_dir = run / "pseudo" / "round_1"
    pseudo_dir.mkdir(parents=True, exist_ok=True)
    chosen = organ_teachers(teachers)
    predictors: dict[str, Any] = {}
    student_cases: list[TrainCase] = []
    counts: dict[str, int] = {}
    for base in progress_bar(cases, desc="pfl: pseudo-full labels", unit="case", enabled=progress):
        # every organ a teacher labels counts as labelled in the student's loss, also where the
        # teacher finds nothing (the paper trains the student on the merged maps as full labels)
        labelled = frozenset(k for k in chosen if k not in base.annotated)
        if has_pseudo(pseudo_dir, base.case_id):
            label, labelled, _ = load_pseudo(pseudo_dir, base.case_id)
        else:
            candidates: dict[int, tuple[np.ndarray, np.ndarray]] = {}
            for t in {chosen[k].name: chosen[k] for k in labelled}.values():
                if t.name not in predictors:
                    predictors[t.name] = Predictor.load(run / "teachers" / t.name / ckpt.MODEL_FILE)
                probs = predictors[t.name].window_probabilities(base.image).numpy()
                candidates |= {k: v for k, v in teacher_candidates(probs, t.organs).items() if k in labelled and chosen[k] is t}
            label, _ = merge_pseudo_full(np.asarray(base.label), base.annotated, candidates)
            save_pseudo(pseudo_dir, base.case_id, label, labelled)
            label = load_pseudo(pseudo_dir, base.case_id)[0]  # the memory map: no label map of any case stays in RAM
        for k in labelled:
            if np.any(label == k):
                counts[space.name(k)] = counts.get(space.name(k), 0) + 1
        locs = dict(base.class_locations)
        locs.update(class_locations(label, labelled, seed=1))
        student_cases.append(TrainCase(base.case_id, base.image, label, base.annotated, locs, base.reference, labelled,
                                       base.pad_value))
    write_json_atomic({"pseudo_labelled_cases_per_organ": counts}, pseudo_dir / "summary.json")
    del predictors

    sdir = run / "student"
    if not (sdir / ckpt.MODEL_FILE).exists():
        train(prepared_dir, sdir, _stage_cfg(cfg, 0), resume=(sdir / "config.yaml").exists(), cases=student_cases,
              progress=progress)
    last, final = sdir / ckpt.MODEL_FILE, run / ckpt.MODEL_FILE
    if not final.exists() or final.stat().st_mtime_ns < last.stat().st_mtime_ns:
        tmp = final.with_name(".model.pt.tmp")
        shutil.copyfile(last, tmp)
        tmp.replace(final)
    return final


__all__ = ["GROUPINGS", "Teacher", "merge_pseudo_full", "organ_teachers", "run_pfl", "teacher_candidates", "teacher_groups"]
