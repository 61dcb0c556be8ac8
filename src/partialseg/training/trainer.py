"""The training loop shared by every method.

``train(dataset, out, config)`` prepares (or reuses) a preprocessed cache, splits off
validation cases, and runs ``config.train.steps`` optimiser steps of the registered method,
writing into the run folder::

    RUN/config.yaml        resolved configuration
    RUN/split.json         training / validation case ids
    RUN/prepared/          preprocessed cache (unless an existing cache was given)
    RUN/log.csv            one row per step: loss terms, lr, time; validation DSC when measured
    RUN/curves.png         loss and validation-DSC curves
    RUN/train.log          human-readable log
    RUN/checkpoints/last.pt  full training state (atomic; ``resume=True`` continues from it)
    RUN/model.pt           the inference model (network only) with everything ``predict`` needs

Determinism: all sampling and augmentation randomness comes from generators whose state is
checkpointed, so a resumed CPU run reproduces an uninterrupted one bit for bit.
Multi-GPU / multi-process: launch with ``torchrun``; each process samples its own patches and
DDP averages gradients; only rank 0 validates and writes.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from partialseg import checkpoint as ckpt
from partialseg.config import ExperimentConfig
from partialseg.errors import InputError, OutputExistsError, PartialsegError
from partialseg.io import write_json_atomic, write_text_atomic
from partialseg.labels import LabelSpace
from partialseg.locking import folder_lock
from partialseg.methods.base import Method, StepContext, TrainingModel, get_method
from partialseg.methods.resolve import with_method_defaults
from partialseg.runtime import resolve_device
from partialseg.training import runlog
from partialseg.training.engine import lr_at, run_steps
from partialseg.training.validation import validate, validate_patches

log = logging.getLogger("partialseg.train")


@dataclass
class TrainCase:
    """What the loop needs of a case. ``label`` may hold pseudo-labels for the classes in ``pseudo``."""

    case_id: str
    image: np.ndarray  # (1, X, Y, Z) float32 (memory-mapped)
    label: np.ndarray  # (X, Y, Z) int
    annotated: frozenset[int]
    class_locations: dict[int, np.ndarray]
    reference: np.ndarray | None = None
    pseudo: frozenset[int] = frozenset()
    pad_value: float = 0.0


@dataclass
class RunState:
    step: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)


def build_optimizer(params, cfg: ExperimentConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=True, weight_decay=o.weight_decay)
    raise PartialsegError(f"unknown optimizer {o.name!r}; use 'adam' or 'sgd'")


def split_cases(case_ids: Sequence[str], cfg: ExperimentConfig) -> tuple[list[str], list[str]]:
    """Deterministic train/validation split (a seeded shuffle), or the explicit ``data.val_cases``."""
    ids = list(case_ids)
    if cfg.data.val_cases:
        unknown = sorted(set(cfg.data.val_cases) - set(ids))
        if unknown:
            raise PartialsegError(f"data.val_cases names unknown cases: {unknown}")
        val = [c for c in ids if c in set(cfg.data.val_cases)]
    elif cfg.data.val_fraction <= 0 or len(ids) < 2:
        val = []
    else:
        n_val = max(1, int(round(cfg.data.val_fraction * len(ids))))
        n_val = min(n_val, len(ids) - 1)
        order = np.random.default_rng(cfg.train.seed).permutation(len(ids))
        val = sorted(ids[i] for i in order[:n_val])
    train = [c for c in ids if c not in set(val)]
    if not train:
        raise PartialsegError("no training cases left after the validation split")
    return train, val


def _every(step: int, cadence: int | None) -> bool:
    return bool(cadence) and (step + 1) % int(cadence) == 0  # type: ignore[operator]


def write_log(rows: list[dict[str, Any]], run: Path) -> None:
    """``run/log.csv`` (atomic) from per-step rows; the columns are the union of the rows' keys."""
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow(r)
    write_text_atomic(buf.getvalue(), run / "log.csv")


def plot_curves(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Loss (smoothed) and validation DSC against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows], dtype=float)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(steps, loss, alpha=0.3, color="C0", label="loss")
    k = max(1, len(loss) // 20)
    if len(loss) >= k:
        a.plot(steps[k - 1 :], np.convolve(loss, np.ones(k) / k, mode="valid"), color="C0", label=f"mean of {k}")
    a.set_xlabel("step")
    a.set_ylabel("training loss")
    a.legend()
    for key, style, label in (("val_patch_dsc_mean", "s--", "on fixed patches"), ("val_dsc_mean", "o-", "sliding window")):
        val = [(r["step"], r[key]) for r in rows if r.get(key) not in (None, "")]
        if val:
            vs, vd = zip(*val)
            b.plot(vs, vd, style, label=label)
    if b.lines:
        b.legend()
    b.set_xlabel("step")
    b.set_ylabel("validation mean DSC")
    b.set_ylim(0, 1)
    fig.suptitle(title)
    fig.tight_layout()
    from partialseg.io import save_figure

    save_figure(fig, path)


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def _setup_logging(run: Path, rank: int) -> None:
    if rank != 0:
        return
    for h in list(log.handlers):
        if isinstance(h, logging.FileHandler):
            log.removeHandler(h)
            h.close()
    fh = logging.FileHandler(run / "train.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(fh)
    log.setLevel(logging.INFO)


def load_train_cases(prepared, case_ids: Sequence[str]) -> list[TrainCase]:
    out = []
    for cid in case_ids:
        c = prepared.case(cid)
        # the minimum is recorded at prepare time: computing it here would read every case in full at every start
        pad = c.image_min if c.image_min is not None else float(np.min(c.image))
        out.append(TrainCase(cid, c.image, c.label, c.annotated, c.class_locations, c.reference, pad_value=pad))
    return out


def _resolve_run(run: Path, config: ExperimentConfig | None, resume: bool, rank: int = 0) -> ExperimentConfig:
    from partialseg.config import EXECUTION_KEYS, load_config
    from partialseg.methods.resolve import config_differences

    cfg_file = run / "config.yaml"
    if resume:
        if not (run / ckpt.CHECKPOINT_FILE).exists() and not cfg_file.exists():
            raise InputError(run, "nothing to resume: no checkpoint or config.yaml in this run folder")
        saved = load_config(cfg_file)
        if config is not None:
            # steps may grow (train longer); anything else would make the resumed run a different experiment
            differ = config_differences(config, saved, ignore=("train.steps", *EXECUTION_KEYS))
            if differ:
                raise InputError(cfg_file, f"the given configuration differs from the run's in {differ}; resume uses "
                                           "the saved one (only train.steps, num_threads and device may change)")
            saved.train.steps = config.train.steps
            saved.train.num_threads, saved.train.device = config.train.num_threads, config.train.device
            saved.train.num_workers = config.train.num_workers
        return saved
    # other ranks would see the folder rank 0 just made
    if rank == 0 and run.exists() and any(run.iterdir()):
        raise OutputExistsError(run, "continue it with --resume, or choose a new --out")
    return config or ExperimentConfig()


@contextlib.contextmanager
def run_guard(run: Path, resume: bool, rank: int = 0) -> Iterator[None]:
    """Hold the run folder's lock; if a new run fails before saving any model, remove its folder.

    A start that fails (bad data, bad network options, Ctrl-C during prepare) then leaves
    nothing that blocks the rerun. A killed process cannot clean up: its run folder already
    holds ``config.yaml``, so ``--resume`` picks it up (and prepare's leftovers are removed).
    """
    if rank != 0:
        yield
        return
    with folder_lock(run):
        existed = run.exists()
        fresh = not resume and (not existed or not any(run.iterdir()))
        try:
            yield
        except BaseException:
            if fresh and run.is_dir() and not any(run.rglob("*.pt")):
                for h in list(log.handlers):  # train.log is open inside the folder
                    if isinstance(h, logging.FileHandler) and Path(h.baseFilename).is_relative_to(run.absolute()):
                        log.removeHandler(h)
                        h.close()
                shutil.rmtree(run, ignore_errors=True)
                if existed:
                    run.mkdir(exist_ok=True)
            raise


def train(
    dataset: str | Path,
    out: str | Path,
    config: ExperimentConfig | None = None,
    *,
    resume: bool = False,
    cases: list[TrainCase] | None = None,
    label_space: LabelSpace | None = None,
    init_weights: dict[str, torch.Tensor] | None = None,
    on_step: Callable[[int], None] | None = None,
    progress: bool = True,
    run_files: dict[str, Any] | None = None,
) -> Path:
    """Train ``config.method.name`` on ``dataset`` (a raw dataset folder or a prepared cache) into ``out``.

    ``cases``/``label_space``/``init_weights`` let pseudo-labelling methods (IPnP) retrain on
    their own labels from given weights; ordinary use passes only the dataset. ``run_files``: JSON
    files written into the run folder beside ``config.yaml`` (fine-tuning's record of its start).
    Returns the path of the saved inference model.
    """
    if config is not None:
        config.validate()
    _, rank, _ = _dist_info()
    with run_guard(Path(out), resume, rank):
        return _train(dataset, out, config, resume=resume, cases=cases, label_space=label_space,
                      init_weights=init_weights, on_step=on_step, progress=progress, run_files=run_files)


def _train(
    dataset: str | Path,
    out: str | Path,
    config: ExperimentConfig | None,
    *,
    resume: bool,
    cases: list[TrainCase] | None,
    label_space: LabelSpace | None,
    init_weights: dict[str, torch.Tensor] | None,
    on_step: Callable[[int], None] | None,
    progress: bool,
    run_files: dict[str, Any] | None = None,
) -> Path:
    from partialseg.preprocessing import PreparedDataset

    dataset, run = Path(dataset), Path(out)
    world, rank, local = _dist_info()
    from partialseg.preprocessing.plan import plan_for_dataset

    cfg = with_method_defaults(_resolve_run(run, config, resume, rank))
    cfg, plan = plan_for_dataset(cfg, dataset, label_space)  # a resumed run's config is already concrete
    run.mkdir(parents=True, exist_ok=True)
    _setup_logging(run, rank)
    if rank == 0:
        # first, so a run killed during prepare is a run --resume accepts
        write_text_atomic(cfg.to_yaml(), run / "config.yaml")  # resolved: every method option, defaults filled in
        if plan is not None:
            write_json_atomic(plan.to_dict(), run / "plan.json")
            log.info("plan: %s", plan.summary())
        for name, obj in (run_files or {}).items():
            write_json_atomic(obj, run / name)

    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and cfg.train.device != "cpu" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    device = resolve_device(cfg.train.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)

    # --- data -------------------------------------------------------------------------------
    prepared_dir = prepared_cache(dataset, run, cfg, build=rank == 0)
    if world > 1 and prepared_dir != dataset:
        torch.distributed.barrier()
    prepared = PreparedDataset.load(prepared_dir)
    space = label_space or prepared.label_space
    train_ids, val_ids = split_cases([c.case_id for c in prepared.cases], cfg)
    if cases is None:
        train_cases = load_train_cases(prepared, train_ids)
    else:
        train_cases = [c for c in cases if c.case_id in set(train_ids)]
    val_cases = load_train_cases(prepared, val_ids)
    if rank == 0:
        write_json_atomic({"train": train_ids, "validation": val_ids, "prepared": str(prepared_dir.resolve())}, run / "split.json")

    # --- model ------------------------------------------------------------------------------
    method, net = build_model(cfg, space)
    if init_weights is not None:
        net.load_state_dict(init_weights)
    model = TrainingModel(net, method).to(device)
    optimizer = build_optimizer(model.parameters(), cfg)
    state = RunState()
    logged = 0  # rows already in the row file
    ck_path = run / ckpt.CHECKPOINT_FILE
    if rank == 0 and not (resume and ck_path.exists()):
        (run / runlog.ROWS_FILE).unlink(missing_ok=True)  # rows of a start killed before its first checkpoint
    if resume and ck_path.exists():
        ck = ckpt.load(ck_path, map_location=device)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if "rows" in ck:  # a checkpoint from before the row file: it carries the whole log
            (run / runlog.ROWS_FILE).unlink(missing_ok=True)
            runlog.append_rows(run, ck["rows"])
            state = RunState(ck["step"], list(ck["rows"]))
        else:
            state = RunState(ck["step"], runlog.read_rows(run, ck["log_rows"]))
        logged = len(state.rows)
        if rank == 0:
            log.info("resumed from %s at step %d", ck_path, state.step)
    ddp_model: nn.Module = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    total = cfg.train.steps
    if rank == 0:
        n_params = sum(p.numel() for p in net.parameters())
        log.info("method %s, network %s (%.2f M parameters), %d training / %d validation cases, %d steps on %s",
                 method.name, cfg.network.name, n_params / 1e6, len(train_cases), len(val_cases), total, device)
    evidence = None  # postprocessing evidence, collected at the last validation
    bar = None
    if progress and rank == 0:
        from partialseg.progress import progress as progress_bar

        bar = progress_bar(total=total, initial=state.step, desc=f"train {method.name}", unit="step")
    patch = cfg.train.patch_size
    from partialseg.training.loader import BatchRecipe, batch_loader, finish_batch, resolve_workers

    recipe = BatchRecipe(train_cases, space, tuple(patch), cfg.train.batch_size, cfg.train.foreground_fraction,
                         cfg.augment, cfg.train.seed, rank)
    workers = resolve_workers(cfg.train.num_workers, device)
    batches = batch_loader(recipe, state.step, total, num_workers=workers, pin_memory=device.type == "cuda")
    if rank == 0 and workers:
        log.info("batches made by %d background workers", workers)
    model.train()
    t0 = time.perf_counter()

    def after_step(step: int, row: dict[str, Any], loss: torch.Tensor) -> None:
        nonlocal evidence, logged
        last = step + 1 == total
        if rank == 0 and val_cases and (_every(step, cfg.train.val_every) or _every(step, cfg.train.val_full_every) or last):
            if last and cfg.train.postprocessing == "auto":
                from partialseg.inference.postprocess import PostprocessingEvidence

                evidence = PostprocessingEvidence(space.names)
            full = last or (cfg.train.val_full_every and (step + 1) % cfg.train.val_full_every == 0)
            if full:
                row.update(validate(net, method, val_cases, cfg, device, evidence=evidence if last else None,
                                    spacing=prepared.config.spacing))
            if not last:
                row.update(validate_patches(net, method, val_cases, cfg, device))
            log.info("step %d: %s", step + 1, ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k.endswith("dsc_mean")))
        state.rows.append(row)
        state.step = step + 1
        if (step + 1) % max(cfg.train.checkpoint_every, 1) == 0 or last:
            if rank == 0:
                # rows first: a kill between the two leaves extra rows, which the resume cuts off
                runlog.append_rows(run, state.rows[logged:])
                logged = len(state.rows)
                ckpt.save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                  "step": state.step, "log_rows": logged, "config": cfg.to_dict()}, ck_path)
        if bar is not None:
            val = row.get("val_dsc_mean", row.get("val_patch_dsc_mean"))
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", **({"val": f"{val:.3f}"} if val is not None else {}))
            bar.update(1)
        if on_step is not None:
            on_step(step)

    try:
        run_steps(start=state.step, total=total, next_batch=lambda step: finish_batch(recipe, next(batches).to(device), step),
                  loss_of=lambda batch, step: ddp_model(batch, StepContext(step, total)), optimizer=optimizer,
                  parameters=model.parameters(), lr=lambda step: lr_at(step, total, cfg.optim.lr, cfg.optim.schedule),
                  grad_clip=cfg.optim.grad_clip, device=device, amp=cfg.train.amp, amp_cpu=cfg.train.amp_cpu,
                  after_step=after_step)
    finally:
        batches.close()  # stops the loader's workers
        if bar is not None:
            bar.close()

    model_path = run / ckpt.MODEL_FILE
    if rank == 0:
        postprocessing: dict[str, Any] = {"largest_component": []}
        if evidence is not None:
            postprocessing = evidence.decide()
            write_json_atomic(postprocessing, run / "postprocessing.json")
            if postprocessing["largest_component"]:
                log.info("postprocessing: largest component only for %s", ", ".join(postprocessing["largest_component"]))
        elif (run / "postprocessing.json").exists():  # resumed after the last validation
            postprocessing = json.loads((run / "postprocessing.json").read_text())
        write_log(state.rows, run)
        plot_curves(state.rows, run / "curves.png", title=f"{method.name} on {dataset.name}")
        ckpt.save_atomic(
            {
                "format": 1,
                "state_dict": net.state_dict(),
                "network": {"name": cfg.network.name, "options": cfg.network.options, "in_channels": 1,
                            "out_channels": method.output_channels()},
                "method": {"name": cfg.method.name, "options": cfg.method.options},
                "label_space": list(space.names),
                "preprocess": prepared.config.to_dict(),
                "stats": None if prepared.stats is None else prepared.stats.to_dict(),
                "patch_size": list(patch),
                "sw_overlap": cfg.train.sw_overlap,
                "config": cfg.to_dict(),
                "steps": state.step,
                "postprocessing": {"largest_component": list(postprocessing["largest_component"])},
            },
            model_path,
        )
        log.info("saved %s after %d steps (%.1f s)", model_path, state.step, time.perf_counter() - t0)
    if world > 1:
        torch.distributed.barrier()
    return model_path


def prepared_cache(dataset: Path, run: Path, cfg: ExperimentConfig, *, build: bool = True) -> Path:
    """The prepared cache to train from: ``dataset`` itself when it is one, else the dataset's shared
    cache for this preprocessing (``preprocessing.cache.shared_cache``: built on first use, reused by
    every later run and method; ``build``: this process may build it, other DDP ranks only name it)."""
    from partialseg.preprocessing import PreprocessConfig
    from partialseg.preprocessing.cache import shared_cache

    dataset = Path(dataset)
    if (dataset / "prepared.json").exists():
        return dataset
    pcfg = PreprocessConfig(spacing=cfg.data.spacing, normalization=cfg.data.normalization)
    try:
        return shared_cache(dataset, pcfg, cache_root=cfg.data.cache_dir, build=build, storage=cfg.data.cache_storage,
                            workers=cfg.data.cache_workers)
    except PermissionError as e:
        raise InputError(e.filename or dataset, "cannot write the preprocessed cache beside the dataset; set "
                                                "data.cache_dir to a writable folder") from None


def build_model(cfg: ExperimentConfig, space: LabelSpace) -> tuple[Method, nn.Module]:
    """The method and its freshly initialised network for ``cfg`` on ``space``, as training starts them."""
    from partialseg.networks import build_network

    torch.manual_seed(cfg.train.seed)
    method = get_method(cfg.method.name)(space, cfg.method.options)
    return method, method.wrap_network(build_network(cfg.network.name, 1, method.output_channels(), **cfg.network.options))
