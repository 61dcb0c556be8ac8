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

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.config import EXECUTION_KEYS, ExperimentConfig
from partialseg.errors import InputError
from partialseg.io import write_json_atomic
from partialseg.methods.resolve import config_differences
from partialseg.pseudolabel.candidates import SOURCES, candidate_masks, case_candidates, gate_case, pseudo_label_case
from partialseg.pseudolabel.quality import decisions_rounds, pseudo_label_quality, write_quality
from partialseg.pseudolabel.round import RoundCase, choose_sources, previous_pseudo, pseudo_label_round, round_quality_rows
from partialseg.pseudolabel.store import load_pseudo

# the round's pieces, importable from here as before
__all__ = ["SOURCES", "HounsfieldView", "adopt_specialist", "candidate_masks", "case_candidates", "choose_sources",
           "decisions_rounds", "gate_case", "hounsfield", "previous_pseudo", "pseudo_label_case", "pseudo_label_quality",
           "run_ipnp"]

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
    """Round 0 on the partial labels, then ``opts.rounds`` rounds of prompting, refinement and retraining.

    Each round runs the last specialist's sliding window once per training case: with the organ gate
    (``pseudo_source="auto"``) that pass keeps every candidate either source could give
    (:mod:`~partialseg.pseudolabel.candidates`, under ``pseudo/round_<r>/candidates/`` until the round's
    pseudo-labels are written), and the pseudo-labels are chosen from them once the gate has seen every case.
    """
    from partialseg import checkpoint as ckpt
    from partialseg.generalist.base import build_generalist
    from partialseg.inference.predict import Predictor
    from partialseg.preprocessing import PreparedDataset, class_locations
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
            return predictor.window_probabilities(base.image).numpy()

        train_cases = load_train_cases(prepared, all_ids)
        round_cases = [_round_case(base, case_probs, prepared) for base in train_cases]
        if opts.pseudo_source != "none":  # the step control: no prediction, no pseudo-label
            pseudo_label_round(round_cases, run, r, generalist, opts, space, progress=progress)
        cases: list[TrainCase] = []
        for base in train_cases:
            if opts.pseudo_source == "none":
                label, pseudo = base.label, frozenset()
            else:
                label, pseudo, _ = load_pseudo(pseudo_dir, base.case_id)
            locs = dict(base.class_locations)
            locs.update(class_locations(label, pseudo, seed=r))
            cases.append(TrainCase(base.case_id, base.image, label, base.annotated, locs, base.reference, pseudo, base.pad_value))
        if opts.pseudo_source == "none":
            write_json_atomic({base.case_id: {} for base in train_cases}, pseudo_dir / "decisions.json")
        else:
            quality_rows.extend(round_quality_rows(round_cases, run, r, space))
        write_quality(run, quality_rows, decisions_rounds(run, opts.rounds), space)
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


def _round_case(base: Any, case_probs: Any, prepared: Any) -> RoundCase:
    """A prepared training case as the round reads it (memory-mapped; the specialist's pass on demand)."""
    def arrays() -> tuple[np.ndarray, np.ndarray | None]:
        return np.asarray(base.label), None if base.reference is None else np.asarray(base.reference)

    def specialist() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
        return (case_probs(base), hounsfield(base.image, prepared.config, prepared.stats),
                prepared.case(base.case_id).meta.spacing)

    return RoundCase(base.case_id, base.annotated, arrays, specialist)
