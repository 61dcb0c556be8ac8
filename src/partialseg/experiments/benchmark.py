"""The papers' comparison protocol on synthetic data (IPnP Table 1 layout).

Layout of a benchmark folder (every step is skipped when its output exists, and a training that
was killed resumes from its checkpoint, so re-running the same command finishes the job)::

    OUT/data/train_full/      synthetic training cases, all organs labelled
    OUT/data/test/            held-out synthetic test cases (never seen in training or validation)
    OUT/data/keep0.33/        partial copy of train_full (``simulate --keep 0.33``)
    OUT/runs/<setting>/<method>/            training run (config, log, curves, model)
    OUT/runs/<setting>/<method>/test_pred/  predictions on the test images
    OUT/runs/<setting>/<method>/test_eval.json (+ .md, .csv)
    OUT/benchmark.md / .csv / .json, OUT/benchmark_dsc.png

The upper bound is ``full`` trained on the fully labelled training set. Hyper-parameters come
from the config; the validation split inside each training run is carved from the training
cases, so the test cases are only ever used for the final numbers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from partialseg.config import ExperimentConfig, load_config
from partialseg.errors import PartialsegError
from partialseg.io import write_json_atomic, write_text_atomic

log = logging.getLogger("partialseg.benchmark")

UPPER_BOUND = "upper_bound"


@dataclass(frozen=True)
class BenchmarkPreset:
    """Data sizes and training budget of a benchmark preset."""

    train_cases: int
    test_cases: int
    phantom: str  # phantom preset name
    overrides: tuple[str, ...] = ()  # config overrides applied to every training
    description: str = ""


PRESETS: dict[str, BenchmarkPreset] = {
    "quick": BenchmarkPreset(
        train_cases=24, test_cases=8, phantom="cpu",
        overrides=(
            "train.steps=300", "train.batch_size=2", "train.patch_size=[64,64,48]", "train.val_every=100",
            "train.checkpoint_every=25", "network.options={base_channels: 8, norm: instance}",
            "optim.lr=0.003", "data.val_fraction=0.15",
        ),
        description="CPU: ~5 mm phantoms, slim Table-6 U-Net, a few minutes per training",
    ),
    "demo": BenchmarkPreset(
        train_cases=16, test_cases=6, phantom="cpu",
        overrides=(
            "train.steps=200", "train.batch_size=2", "train.patch_size=[64,64,48]", "train.val_every=100",
            "train.checkpoint_every=25", "network.options={base_channels: 8, norm: instance}",
            "optim.lr=0.003", "data.val_fraction=0.15",
        ),
        description="the README's demo: two trainings of ~5 minutes each on a 2-core CPU",
    ),
    "full": BenchmarkPreset(
        train_cases=120, test_cases=40, phantom="gpu",
        overrides=(
            "train.steps=20000", "train.batch_size=4", "train.patch_size=[192,192,64]", "train.val_every=1000",
            "train.checkpoint_every=500", "optim.lr=0.0003",
        ),
        description="GPU: fine phantoms, the paper's Table-6 U-Net and patch size",
    ),
}


@dataclass
class RunSpec:
    setting: str  # "upper_bound" or "keep0.33"
    method: str
    dataset: Path
    run_dir: Path


@dataclass
class BenchmarkResult:
    out: Path
    settings: list[str]
    methods: dict[str, list[str]]  # setting -> methods
    results: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (setting, method) -> eval json
    organs: tuple[str, ...] = ()


def setting_name(keep: float) -> str:
    return f"keep{keep:g}"


def _ensure_dataset(path: Path, build) -> Path:
    if (path / "dataset.json").exists():
        return path
    build()
    return path


def build_config(preset: BenchmarkPreset, method: str, config_file: Path | None, overrides: Sequence[str]) -> ExperimentConfig:
    return load_config(config_file, [*preset.overrides, *overrides, f"method.name={method}"])


def train_predict_evaluate(spec: RunSpec, cfg: ExperimentConfig, test: Path, *, progress: bool = True) -> dict[str, Any]:
    """Train (or resume, or skip if done), predict the test images, evaluate against the test labels."""
    from partialseg.evaluation.evaluate import evaluate_folders
    from partialseg.inference.predict import predict_folder
    from partialseg.training.checkpoint import CHECKPOINT_FILE, MODEL_FILE
    from partialseg.training.trainer import train

    run = spec.run_dir
    if not (run / MODEL_FILE).exists():
        resume = (run / CHECKPOINT_FILE).exists()
        log.info("%s %s: %s", spec.setting, spec.method, "resuming" if resume else "training")
        train(spec.dataset, run, cfg, resume=resume, progress=progress)
    pred = run / "test_pred"
    if not pred.exists():
        predict_folder(run, test / "imagesTr", pred, progress=progress)
    result_file = run / "test_eval.json"
    if not result_file.exists():
        evaluate_folders(pred, _reference_dir(test), out=result_file, dataset=test)
    return json.loads(result_file.read_text())


def _reference_dir(dataset: Path) -> Path:
    meta = json.loads((dataset / "dataset.json").read_text())
    return dataset / meta.get("reference_labels", "labelsTr")


def run_benchmark(
    out: str | Path,
    *,
    keeps: Sequence[float] = (0.67, 0.33),
    methods: Sequence[str] = ("full", "sigmoid", "marginal", "exclusion"),
    preset: str = "quick",
    seed: int = 0,
    upper_bound: bool = True,
    config_file: Path | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
) -> BenchmarkResult:
    """IPnP protocol: upper bound + each method at each keep ratio, all evaluated on one held-out test set."""
    from partialseg.data.phantom import PRESETS as PHANTOMS
    from partialseg.data.phantom import synthesize_dataset
    from partialseg.data.simulate import simulate_partial_labels
    from partialseg.methods import get_method

    if preset not in PRESETS:
        raise PartialsegError(f"unknown benchmark preset {preset!r}; choose from {sorted(PRESETS)}")
    for m in methods:
        get_method(m)
    for k in keeps:
        if not 0 < k <= 1:
            raise PartialsegError(f"--keep values must be in (0, 1], got {k}")
    p = PRESETS[preset]
    out = Path(out)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    phantom = PHANTOMS[p.phantom]
    _check_same_benchmark(out, {"preset": preset, "seed": seed, "phantom": dataclasses.asdict(phantom)})
    full = _ensure_dataset(data / "train_full", lambda: synthesize_dataset(data / "train_full", cases=p.train_cases, seed=seed, config=phantom))
    # a different seed stream: test phantoms are new patients, not re-draws of training ones
    test = _ensure_dataset(data / "test", lambda: synthesize_dataset(data / "test", cases=p.test_cases, seed=seed + 100_003, config=phantom))

    specs: list[RunSpec] = []
    if upper_bound:
        specs.append(RunSpec(UPPER_BOUND, "full", full, out / "runs" / UPPER_BOUND / "full"))
    for k in keeps:
        name = setting_name(k)
        ds = _ensure_dataset(data / name, lambda k=k, name=name: simulate_partial_labels(full, data / name, keep=k, seed=seed))
        specs.extend(RunSpec(name, m, ds, out / "runs" / name / m) for m in methods)

    result = BenchmarkResult(out, [], {})
    for s in specs:
        if s.setting not in result.methods:
            result.settings.append(s.setting)
            result.methods[s.setting] = []
        result.methods[s.setting].append(s.method)
    for i, s in enumerate(specs):
        log.info("[%d/%d] %s / %s", i + 1, len(specs), s.setting, s.method)
        cfg = build_config(p, s.method, config_file, overrides)
        result.results[(s.setting, s.method)] = train_predict_evaluate(s, cfg, test, progress=progress)
        write_benchmark_tables(result)  # partial tables after every run: a long benchmark shows progress
    return result


def _check_same_benchmark(out: Path, key: dict[str, Any]) -> None:
    f = out / "benchmark_setup.json"
    if f.exists():
        old = json.loads(f.read_text())
        if old != json.loads(json.dumps(key)):
            raise PartialsegError(f"{out} holds a benchmark with other settings ({old}); choose a new folder")
    else:
        write_json_atomic(key, f)


# ---- tables ------------------------------------------------------------------------------------
def _fmt(v: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * scale:.{digits}f}"


def comparison_rows(result: BenchmarkResult) -> tuple[list[str], list[list[str]], list[dict[str, Any]]]:
    """Organ rows × (setting, method) DSC/HD95 columns, a mean row and a '% of upper bound' row."""
    cols = [(s, m) for s in result.settings for m in result.methods[s] if (s, m) in result.results]
    if not cols:
        return [], [], []
    organs = list(next(iter(result.results.values()))["per_organ"].keys())
    header = ["organ"]
    for s, m in cols:
        header += [f"{m} {s} DSC", f"{m} {s} HD95"]
    rows, records = [], []
    for organ in organs:
        row = [organ]
        for c in cols:
            o = result.results[c]["per_organ"][organ]
            row += [_fmt(o["dsc_mean"], 100), _fmt(o["hd95_mean"], 1, 1)]
            records.append({"organ": organ, "setting": c[0], "method": c[1], "dsc": o["dsc_mean"], "hd95": o["hd95_mean"],
                            "hd95_missing": o["hd95_missing"], "n_cases": o["n_cases"]})
        rows.append(row)
    mean_row = ["**mean**"]
    for c in cols:
        m = result.results[c]["mean"]
        mean_row += [f"**{_fmt(m['dsc_mean'], 100)}**", f"**{_fmt(m['hd95_mean'], 1, 1)}**"]
        records.append({"organ": "mean", "setting": c[0], "method": c[1], "dsc": m["dsc_mean"], "hd95": m["hd95_mean"],
                        "hd95_missing": m["hd95_missing"], "n_cases": None})
    rows.append(mean_row)
    ub = result.results.get((UPPER_BOUND, "full"))
    if ub and ub["mean"]["dsc_mean"]:
        pct = ["% of upper bound"]
        for c in cols:
            d = result.results[c]["mean"]["dsc_mean"]
            pct += [_fmt(d / ub["mean"]["dsc_mean"], 100, 1) if d is not None else "–", ""]
        rows.append(pct)
    return header, rows, records


def write_benchmark_tables(result: BenchmarkResult) -> None:
    from partialseg.evaluation.evaluate import markdown_table

    header, rows, records = comparison_rows(result)
    if not rows:
        return
    out = result.out
    notes = (
        "DSC in %, HD95 in mm, mean over the held-out test cases (reference: full labels). "
        "HD95 means exclude cases with an empty prediction; the per-run `test_eval.md` counts them."
    )
    write_text_atomic(f"# Benchmark\n\n{notes}\n\n" + markdown_table(header, rows) + "\n", out / "benchmark.md")
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["organ", "setting", "method", "dsc", "hd95", "hd95_missing", "n_cases"])
    w.writeheader()
    w.writerows(records)
    write_text_atomic(buf.getvalue(), out / "benchmark.csv")
    write_json_atomic(records, out / "benchmark.json")
    plot_dsc_bars(result, out / "benchmark_dsc.png")


def plot_dsc_bars(result: BenchmarkResult, path: Path) -> None:
    """Per-organ DSC bars, one group per organ, one bar per (setting, method)."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = [(s, m) for s in result.settings for m in result.methods[s] if (s, m) in result.results]
    organs = list(next(iter(result.results.values()))["per_organ"].keys()) + ["mean"]
    width = 0.8 / max(len(cols), 1)
    fig, ax = plt.subplots(figsize=(max(10, len(organs) * 0.9), 4.5))
    x = np.arange(len(organs))
    for i, c in enumerate(cols):
        r = result.results[c]
        vals = [r["per_organ"][o]["dsc_mean"] or 0.0 for o in organs[:-1]] + [r["mean"]["dsc_mean"] or 0.0]
        ax.bar(x + (i - (len(cols) - 1) / 2) * width, vals, width, label=f"{c[1]} ({c[0]})")
    ax.set_xticks(x)
    ax.set_xticklabels(organs, rotation=45, ha="right")
    ax.set_ylabel("DSC")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("Per-organ DSC on the held-out synthetic test cases")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
