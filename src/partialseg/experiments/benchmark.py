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

from partialseg.config import EXECUTION_KEYS, ExperimentConfig, load_config
from partialseg.errors import InputError, PartialsegError
from partialseg.evaluation.evaluate import CONVENTION
from partialseg.io import write_json_atomic, write_text_atomic
from partialseg.methods.resolve import config_differences

log = logging.getLogger("partialseg.benchmark")

UPPER_BOUND = "upper_bound"
#: In every finished benchmark run folder: its (setting, method label) in the tables.
RUN_LABEL_FILE = "benchmark_run.json"


@dataclass(frozen=True)
class BenchmarkPreset:
    """Data sizes and training budget of a benchmark preset."""

    train_cases: int
    test_cases: int
    phantom: Any  # phantom preset name or a PhantomConfig
    overrides: tuple[str, ...] = ()  # config overrides applied to every training
    description: str = ""
    #: fully labelled target cases of the transfer setting (small, as fine-tuning targets are: BTCV has 30)
    transfer_cases: int = 12


#: The CPU recipe: 48×48×32 patches (half of them centred on an annotated organ), batch 2, the Table-6
#: U-Net in bf16 where the CPU has it, 1200 steps (~5 steps/s, ~4.3 min on this 2-core machine when idle).
#: Chosen on the upper bound's validation DSC: whole 64×64×48 volumes reached 0.70 after 500 steps in 6.6 min,
#: these patches 0.77 after 1200 steps in 4.2 min (README, "Results").
_CPU_TRAINING: tuple[str, ...] = (
    "train.steps=1200", "train.batch_size=2", "train.patch_size=[48,48,32]", "train.foreground_fraction=0.5",
    "train.val_every=200", "train.checkpoint_every=100", "network.options={base_channels: 16, norm: instance}",
    "optim.lr=0.003", "data.val_fraction=0.15", "train.amp_cpu=true",
)

PRESETS: dict[str, BenchmarkPreset] = {
    "quick": BenchmarkPreset(
        train_cases=40, test_cases=10, phantom="cpu",
        overrides=_CPU_TRAINING,
        description="CPU: coarse phantoms, the Table-6 U-Net on 48x48x32 patches (bf16 where the CPU has it), ~4-5 min per training",
    ),
    "demo": BenchmarkPreset(
        train_cases=16, test_cases=6, phantom="cpu",
        overrides=(*_CPU_TRAINING, "train.steps=1000"),  # later overrides win
        description="the README's demo: two trainings of ~5 minutes each on a 2-core CPU",
    ),
    "full": BenchmarkPreset(
        train_cases=120, test_cases=40, phantom="gpu",
        overrides=(
            "train.steps=20000", "train.batch_size=4", "train.patch_size=[192,192,64]", "train.val_every=1000",
            "train.checkpoint_every=500", "optim.lr=0.0003",
            # nnU-Net v2's augmentation at its strength, on the GPU (AugmentConfig). Not its mirroring: even with the
            # left/right labels swapped a mirrored abdomen has its liver on the left (situs inversus), an image no
            # test case holds; p_mirror_lr stays at its default until validation says otherwise
            "augment.preset=nnunet",
        ),
        description="GPU: fine phantoms, the paper's Table-6 U-Net and patch size, nnU-Net's augmentation",
    ),
}


@dataclass
class RunSpec:
    setting: str  # "upper_bound", "keep0.33", "groups"
    method: str  # label: a method name, or a variant such as "tct[threshold=mean]"
    dataset: Path
    run_dir: Path
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class MethodSpec:
    """A registered method with option overrides: ``"tct"`` or ``"tct:threshold=mean,weighting=none"``.

    A key with a dot is a config override of this training alone (``"marginal:train.steps=1200"``).
    """

    name: str
    options: tuple[tuple[str, str], ...] = ()
    display: str = ""  # a label to show instead of the name and options

    @classmethod
    def parse(cls, text: str) -> MethodSpec:
        name, _, rest = text.partition(":")
        opts = []
        for item in filter(None, (x.strip() for x in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise PartialsegError(f"method variant {text!r}: options must look like key=value")
            opts.append((key.strip(), value.strip()))
        return cls(name.strip(), tuple(opts))

    @property
    def label(self) -> str:
        if self.display:
            return self.display
        if not self.options:
            return self.name
        return f"{self.name}[{','.join(f'{k}={v}' for k, v in self.options)}]"

    @property
    def folder(self) -> str:
        return self.label.replace("[", "__").replace("]", "").replace(",", "_").replace("=", "-")

    def overrides(self) -> list[str]:
        return [f"method.name={self.name}",
                *(f"{k}={v}" if "." in k else f"method.options.{k}={v}" for k, v in self.options)]

    def with_option(self, key: str, value: str, display: str = "") -> MethodSpec:
        return MethodSpec(self.name, (*((k, v) for k, v in self.options if k != key), (key, value)), display)


#: Ablations of the TCT paper: Table 5 (components) and Table 7 (consistency threshold).
TCT_ABLATIONS: tuple[str, ...] = (
    "tct:filtering=false,weighting=none",  # TCT alone
    "tct:filtering=true,weighting=none",  # + consistency filtering
    "tct:filtering=false,weighting=uauwl",  # + UAUWL
    "tct:weighting=uwl",  # UWL (one uncertainty per head) instead of UAUWL
    "tct:threshold=mean",
    "tct:threshold=batch-mean",
    "tct:threshold=0.5",
)


@dataclass
class BenchmarkResult:
    out: Path
    settings: list[str]
    methods: dict[str, list[str]]  # setting -> methods
    results: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (setting, method) -> eval json
    organs: tuple[str, ...] = ()
    #: (setting, method) -> the organs postprocessed and the evaluation with the postprocessing applied
    postprocessed: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


def setting_name(keep: float) -> str:
    return f"keep{keep:g}"


#: The smallest source group of the TCT protocol gets at least this many training cases.
MIN_GROUP_CASES = 3


def _ensure_dataset(path: Path, build) -> Path:
    if (path / "dataset.json").exists():
        return path
    build()
    return path


def build_config(preset: BenchmarkPreset, spec: MethodSpec, config_file: Path | None, overrides: Sequence[str]) -> ExperimentConfig:
    return load_config(config_file, [*preset.overrides, *overrides, *spec.overrides()])


def train_predict_evaluate(spec: RunSpec, cfg: ExperimentConfig, test: Path, *, progress: bool = True) -> dict[str, Any]:
    """Train (or resume, or skip if done), predict the test images, evaluate against the test labels."""
    from partialseg.api import fit
    from partialseg.checkpoint import CHECKPOINT_FILE, MODEL_FILE
    from partialseg.evaluation.evaluate import evaluate_folders
    from partialseg.inference.predict import predict_folder

    run = spec.run_dir
    if (run / "config.yaml").exists():
        # a run folder made with other settings (an older default, a changed preset) must not be
        # reported under this configuration's name
        differ = config_differences(cfg, load_config(run / "config.yaml"), ignore=EXECUTION_KEYS)
        if differ:
            raise InputError(run, f"this run folder was made with another configuration ({differ}); delete it or "
                                  "benchmark into another --out")
    if not (run / MODEL_FILE).exists():
        resume = (run / CHECKPOINT_FILE).exists() or (run / "config.yaml").exists()
        log.info("%s %s: %s", spec.setting, spec.method, "resuming" if resume else "training")
        fit(spec.dataset, run, cfg, resume=resume, progress=progress)
    pred = run / "test_pred"
    if not pred.exists():  # the tables score the raw predictions; the postprocessed ones are reported beside them
        predict_folder(run, test / "imagesTr", pred, progress=progress, postprocess=False)
    result_file = run / "test_eval.json"
    if not result_file.exists() or json.loads(result_file.read_text()).get("convention") != CONVENTION:
        # no result yet, or one scored under older metric conventions: (re-)evaluate
        for f in (result_file, result_file.with_suffix(".md"), result_file.with_suffix(".csv")):
            f.unlink(missing_ok=True)
        evaluate_folders(pred, _reference_dir(test), out=result_file, dataset=test)
    label_file = run / RUN_LABEL_FILE
    if not label_file.exists():  # what this run is in the tables, for summaries over several invocations
        write_json_atomic({"setting": spec.setting, "method": spec.method}, label_file)
    return json.loads(result_file.read_text())


def postprocessed_evaluation(run: Path, test: Path) -> dict[str, Any] | None:
    """The test evaluation with the run's postprocessing applied to its raw test predictions, or None
    when training chose none (``RUN/test_pred_pp/``, ``RUN/test_eval_pp.json``)."""
    from partialseg import checkpoint as ckpt
    from partialseg.evaluation.evaluate import evaluate_folders
    from partialseg.inference.postprocess import keep_largest_components
    from partialseg.io import atomic_output_dir, load_volume, save_volume
    from partialseg.labels import LabelSpace

    m = ckpt.load(run / ckpt.MODEL_FILE)
    organs = list(m.get("postprocessing", {}).get("largest_component", []))
    if not organs:
        return None
    space = LabelSpace(tuple(m["label_space"]))
    pp, out = run / "test_pred_pp", run / "test_eval_pp.json"
    if not pp.exists():
        with atomic_output_dir(pp) as tmp:
            for f in sorted((run / "test_pred").glob("*.nii.gz")):
                vol = load_volume(f)
                labels = keep_largest_components(vol.array, [space.index(o) for o in organs])
                save_volume(labels.astype(vol.array.dtype), vol.affine, tmp / f.name)
            for extra in (run / "test_pred").glob("*.json"):
                (tmp / extra.name).write_bytes(extra.read_bytes())
    if not out.exists() or json.loads(out.read_text()).get("convention") != CONVENTION:
        for f in (out, out.with_suffix(".md"), out.with_suffix(".csv")):
            f.unlink(missing_ok=True)
        evaluate_folders(pp, _reference_dir(test), out=out, dataset=test)
    return {"organs": organs, "evaluation": json.loads(out.read_text())}


def _reference_dir(dataset: Path) -> Path:
    meta = json.loads((dataset / "dataset.json").read_text())
    return dataset / meta.get("reference_labels", "labelsTr")


def run_benchmark(
    out: str | Path,
    *,
    keeps: Sequence[float] = (0.67, 0.33),
    methods: Sequence[str] = ("full", "sigmoid", "marginal", "exclusion"),
    preset: str | BenchmarkPreset = "quick",
    protocol: str = "ipnp",
    seed: int = 0,
    upper_bound: bool = True,
    config_file: Path | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
    balance: str = "proportional",
    match_steps: bool = False,
    transfer: bool = False,
) -> BenchmarkResult:
    """Upper bound + each method in each partial-label setting, all evaluated on one held-out test set.

    ``protocol="ipnp"``: settings are the keep ratios (a random organ subset per case, all 15 organs).
    ``protocol="tct"``: one setting, "groups": the training cases are split into five source datasets
    that each annotate a fixed subset of {liver, spleen, kidneys, pancreas} (TCT paper, Sec. 4.1);
    evaluation on those five organs; the groups get the paper's training-set proportions
    (``balance="proportional"``, with enough phantoms that the smallest gets ``MIN_GROUP_CASES``) or
    equal sizes (``"equal"``). ``methods`` may hold variants such as ``tct:threshold=mean``.

    ``match_steps``: every method trains as many optimiser steps in all as the IPnP methods do with
    their rounds (``train.steps + rounds * steps_per_round``), the upper bound included; the IPnP
    methods share a round-0 specialist trained ``train.steps`` (the column ``marginal[train.steps=N]``).
    Without it, every method trains ``train.steps`` and IPnP adopts this setting's ``marginal`` run.

    ``transfer``: afterwards, every method's model is fine-tuned (``full``, ``train.steps``) on a small
    fully labelled 15-organ target and compared with training it from scratch
    (:mod:`partialseg.experiments.transfer`; tables in ``OUT/transfer/``).
    """
    from partialseg.data.simulate import (
        BALANCES,
        TCT_GROUP_CASES,
        TCT_GROUPS,
        cases_for_min_group,
        simulate_partial_labels,
    )
    from partialseg.methods import get_method
    from partialseg.methods.ipnp import is_ipnp
    from partialseg.synthetic import PRESETS as PHANTOMS
    from partialseg.synthetic import synthesize_dataset

    if isinstance(preset, str) and preset not in PRESETS:
        raise PartialsegError(f"unknown benchmark preset {preset!r}; choose from {sorted(PRESETS)}")
    if protocol not in ("ipnp", "tct"):
        raise PartialsegError(f"unknown protocol {protocol!r}; choose 'ipnp' or 'tct'")
    if balance not in BALANCES:
        raise PartialsegError(f"unknown balance {balance!r}; choose from {list(BALANCES)}")
    specs_m = [MethodSpec.parse(m) for m in methods]
    for m in specs_m:
        get_method(m.name)
    # IPnP methods after the marginal run they adopt as round 0
    specs_m.sort(key=lambda m: is_ipnp(m.name))
    for k in keeps:
        if not 0 < k <= 1:
            raise PartialsegError(f"--keep values must be in (0, 1], got {k}")
    p = PRESETS[preset] if isinstance(preset, str) else preset
    out = Path(out)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    phantom = PHANTOMS[p.phantom] if isinstance(p.phantom, str) else p.phantom
    train_cases = p.train_cases
    if protocol == "tct" and balance == "proportional":
        train_cases = max(train_cases, cases_for_min_group(list(TCT_GROUP_CASES.values()), MIN_GROUP_CASES))
    # transfer_cases shapes only the transfer setting's own data: not part of what a folder's runs were made with
    preset_key = {k: v for k, v in dataclasses.asdict(p).items() if k != "transfer_cases"} | {"phantom": None}
    setup = {"preset": preset_key, "protocol": protocol, "seed": seed,
             "phantom": dataclasses.asdict(phantom)}
    if protocol == "tct":
        setup |= {"balance": balance, "train_cases": train_cases}
    if match_steps:
        setup["match_steps"] = True
    _check_same_benchmark(out, setup)
    full = _ensure_dataset(data / "train_full", lambda: synthesize_dataset(data / "train_full", cases=train_cases, seed=seed, config=phantom))
    # a different seed stream: test phantoms are new patients, not re-draws of training ones
    test = _ensure_dataset(data / "test", lambda: synthesize_dataset(data / "test", cases=p.test_cases, seed=seed + 100_003, config=phantom))

    settings: list[tuple[str, Path]] = []
    if protocol == "ipnp":
        upper = full
        for k in keeps:
            name = setting_name(k)
            settings.append((name, _ensure_dataset(data / name, lambda k=k, name=name: simulate_partial_labels(full, data / name, keep=k, seed=seed))))
    else:
        organs = sorted({c for cs in TCT_GROUPS.values() for c in cs})
        all_file = data / "tct_all_organs.yaml"
        if not all_file.exists():
            write_text_atomic("all: [" + ", ".join(organs) + "]\n", all_file)
        # the same five organs, fully labelled: upper bound and test reference
        upper = _ensure_dataset(data / "train_tct_full", lambda: simulate_partial_labels(full, data / "train_tct_full", keep=1.0, seed=seed, mode="groups", groups_file=all_file))
        test = _ensure_dataset(data / "test_tct", lambda: simulate_partial_labels(test, data / "test_tct", keep=1.0, seed=seed, mode="groups", groups_file=all_file))
        settings.append(("groups", _ensure_dataset(data / "groups", lambda: simulate_partial_labels(full, data / "groups", keep=1.0, seed=seed, mode="groups", balance=balance))))

    base_steps = build_config(p, MethodSpec("marginal"), config_file, overrides).train.steps
    round0: MethodSpec | None = None
    if match_steps and any(is_ipnp(m.name) for m in specs_m):
        total = max(_ipnp_total_steps(build_config(p, m, config_file, overrides)) for m in specs_m if is_ipnp(m.name))
        # every other method, the upper bound included, trains IPnP's total; the label stays the method's
        round0 = MethodSpec("marginal", (("train.steps", str(base_steps)),), f"marginal@{base_steps}")
        specs_m = [m if is_ipnp(m.name) else m.with_option("train.steps", str(total), m.label) for m in specs_m]
        specs_m.insert(0, round0)
        ub = MethodSpec("full", (("train.steps", str(total)),), "full")
    else:
        ub = MethodSpec("full")

    runs: list[tuple[RunSpec, MethodSpec]] = []
    if upper_bound:
        runs.append((RunSpec(UPPER_BOUND, "full", upper, out / "runs" / UPPER_BOUND / ub.folder), ub))
    for name, ds in settings:
        runs.extend((RunSpec(name, m.label, ds, out / "runs" / name / m.folder), m) for m in specs_m)

    result = BenchmarkResult(out, [], {})
    for s, _ in runs:
        if s.setting not in result.methods:
            result.settings.append(s.setting)
            result.methods[s.setting] = []
        result.methods[s.setting].append(s.method)
    for i, (s, m) in enumerate(runs):
        log.info("[%d/%d] %s / %s", i + 1, len(runs), s.setting, s.method)
        extra: list[str] = []
        if is_ipnp(m.name) and "specialist_run" not in dict(m.options):
            # IPnP's round 0 is a marginal training with the same recipe: reuse this setting's
            specialist = round0 or MethodSpec("marginal")
            marginal = next((r for r, mm in runs if r.setting == s.setting and mm == specialist), None)
            if marginal is not None:
                extra = [f"method.options.specialist_run={marginal.run_dir}"]
        cfg = build_config(p, m, config_file, [*overrides, *extra])
        result.results[(s.setting, s.method)] = train_predict_evaluate(s, cfg, test, progress=progress)
        pp = postprocessed_evaluation(s.run_dir, test)
        if pp is not None:
            result.postprocessed[(s.setting, s.method)] = pp
        write_benchmark_tables(result)  # partial tables after every run: a long benchmark shows progress
    if transfer:
        from partialseg.experiments.transfer import SCRATCH, run_transfer

        steps = build_config(p, MethodSpec("full"), config_file, overrides).train.steps
        run_transfer(
            out, [(s.method, m.folder, s.run_dir) for s, m in runs if s.setting != UPPER_BOUND],
            phantom=phantom, train_cases=p.transfer_cases, test_cases=p.test_cases, seed=seed,
            scratch_config=build_config(p, MethodSpec("full", (), SCRATCH), config_file, overrides),
            finetune_overrides=[*overrides, f"train.steps={steps}"], progress=progress,
        )
    return result


def _ipnp_total_steps(cfg: ExperimentConfig) -> int:
    """Optimiser steps of an IPnP training in all: round 0 plus its rounds."""
    from partialseg.methods import get_method

    opts = get_method(cfg.method.name).options_cls(**cfg.method.options)
    return cfg.train.steps + opts.rounds * (opts.steps_per_round or cfg.train.steps)


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
    """Organ rows × (setting, method) DSC/HD95 columns, a mean row, the missed/spurious counts and a
    '% of upper bound' row. HD95 means include the penalty of missed and spurious organs."""
    cols = [(s, m) for s in result.settings for m in result.methods[s] if (s, m) in result.results]
    if not cols:
        return [], [], []
    organs = list(next(iter(result.results.values()))["per_organ"].keys())
    header = ["organ"]
    for s, m in cols:
        header += [f"{m} {s} DSC", f"{m} {s} HD95"]
    rows, records = [], []
    counts = ("n_cases", "n_evaluated", "n_both_empty", "n_missed", "n_spurious")
    for organ in organs:
        row = [organ]
        for c in cols:
            o = result.results[c]["per_organ"][organ]
            row += [_fmt(o["dsc_mean"], 100), _fmt(o["hd95_mean"], 1, 1)]
            records.append({"organ": organ, "setting": c[0], "method": c[1], "dsc": o["dsc_mean"], "hd95": o["hd95_mean"],
                            **{k: o[k] for k in counts}})
        rows.append(row)
    mean_row, miss_row = ["**mean**"], ["missed / spurious organs"]
    for c in cols:
        m = result.results[c]["mean"]
        mean_row += [f"**{_fmt(m['dsc_mean'], 100)}**", f"**{_fmt(m['hd95_mean'], 1, 1)}**"]
        miss_row += [f"{m['n_missed']} / {m['n_spurious']}", ""]
        records.append({"organ": "mean", "setting": c[0], "method": c[1], "dsc": m["dsc_mean"], "hd95": m["hd95_mean"],
                        **{k: m[k] for k in counts}})
    rows += [mean_row, miss_row]
    ub = next((r for (st, _), r in result.results.items() if st == UPPER_BOUND), None)
    if ub and ub["mean"]["dsc_mean"]:
        pct = ["% of upper bound"]
        for c in cols:
            d = result.results[c]["mean"]["dsc_mean"]
            pct += [_fmt(d / ub["mean"]["dsc_mean"], 100, 1) if d is not None else "–", ""]
        rows.append(pct)
    return header, rows, records


BENCHMARK_NOTES = (
    "DSC in %, HD95 in mm: mean over the held-out test cases (reference: full labels) of each organ, then over the "
    "organs. An organ absent from both reference and prediction is left out; a missed or spurious organ scores DSC 0 "
    "and HD95 = the image's field-of-view diagonal, and is counted in the 'missed / spurious organs' row "
    "(case × organ instances)."
)


def write_benchmark_tables(result: BenchmarkResult) -> None:
    from partialseg.evaluation.evaluate import markdown_table

    header, rows, records = comparison_rows(result)
    if not rows:
        return
    out = result.out
    text = f"# Benchmark\n\n{BENCHMARK_NOTES}\n\n" + markdown_table(header, rows) + "\n"
    if result.postprocessed:
        pp_rows = []
        for (st, m), pp in result.postprocessed.items():
            before, after = result.results[(st, m)]["mean"], pp["evaluation"]["mean"]
            pp_rows.append([st, m, ", ".join(pp["organs"]), f"{100 * before['dsc_mean']:.2f} → {100 * after['dsc_mean']:.2f}",
                            f"{before['hd95_mean']:.1f} → {after['hd95_mean']:.1f}",
                            f"{before['n_missed']} / {before['n_spurious']} → {after['n_missed']} / {after['n_spurious']}"])
        text += ("\n## Postprocessing chosen on validation\n\nThe table above scores the raw predictions. Where training "
                 "chose to keep only the largest connected component of some organs (on its validation cases), the same "
                 "test predictions with that applied score:\n\n"
                 + markdown_table(["setting", "method", "largest component only", "mean DSC (%)", "mean HD95 (mm)",
                                   "missed / spurious"], pp_rows) + "\n")
    write_text_atomic(text, out / "benchmark.md")
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(records[0]))
    w.writeheader()
    w.writerows(records)
    write_text_atomic(buf.getvalue(), out / "benchmark.csv")
    write_json_atomic(records, out / "benchmark.json")
    plot_dsc_bars(result, out / "benchmark_dsc.png")


def plot_dsc_bars(result: BenchmarkResult, path: Path) -> None:
    """Per-organ DSC bars, one group per organ, one bar per (setting, method)."""

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
    from partialseg.io import save_figure

    save_figure(fig, path)
