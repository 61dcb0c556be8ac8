"""The ``partialseg`` command line. Heavy modules are imported inside each command."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from partialseg.errors import PartialsegError, PartialsegWarning

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train one multi-organ CT segmentation model from partially labelled data.",
    pretty_exceptions_enable=False,
)


_show_other_warning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Print partialseg's warnings like its errors (``warning: <file>: <problem>``), without a source line."""
    if issubclass(category, PartialsegWarning):
        typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)
    else:
        _show_other_warning(message, category, filename, lineno, file, line)


warnings.showwarning = _show_warning


@app.callback()
def _options(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no informational messages; warnings and errors only.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also print partialseg's log lines (validation scores, cache, rounds) to stderr.")] = False,
) -> None:
    """Train one multi-organ CT segmentation model from partially labelled data."""
    from partialseg.progress import NORMAL, QUIET, VERBOSE, set_verbosity

    if quiet and verbose:
        raise typer.BadParameter("--quiet and --verbose exclude each other")
    set_verbosity(QUIET if quiet else VERBOSE if verbose else NORMAL)


def _say(message: str) -> None:
    """An informational line (what was written where): silent under ``--quiet``; a command's own
    output (tables, summaries) goes through ``typer.echo``."""
    from partialseg.progress import QUIET, verbosity

    if verbosity() > QUIET:
        typer.echo(message)


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="New dataset folder (must not exist).")],
    cases: Annotated[int, typer.Option("--cases", "-n", min=1, help="Number of cases.")] = 20,
    seed: Annotated[int, typer.Option(help="Random seed (the same seed gives the same dataset).")] = 0,
    preset: Annotated[str, typer.Option(help="Geometry preset: 'cpu' (coarse, ~5 mm) or 'gpu' (fine).")] = "cpu",
    shape: Annotated[Optional[str], typer.Option(help="Override the volume shape, e.g. 64,64,48 (x,y,z voxels).")] = None,
    spacing: Annotated[Optional[str], typer.Option(help="Override the voxel spacing in mm, e.g. 5,5,5 (at most 2.5 mm: painted without sub-voxels).")] = None,
    modality: Annotated[str, typer.Option(help="'CT' (Hounsfield units) or 'MR' (T1-like contrast, bias field, noise; normalised per image).")] = "CT",
) -> None:
    """Write a synthetic abdominal CT (or MR-like) dataset (15 AMOS organs, fully labelled) in the nnU-Net v2 layout."""
    from partialseg.synthetic import PRESETS, synthesize_dataset

    try:
        if preset not in PRESETS:
            raise PartialsegError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        cfg = PRESETS[preset]
        overrides = {}
        if shape:
            overrides["shape"] = _triple(shape, int, "--shape")
        if spacing:
            overrides["spacing"] = _triple(spacing, float, "--spacing")
            # sub-voxel painting mimics partial volume at the cpu preset's 5-7 mm voxels; at CT's own <= 2 mm it
            # only multiplies the work (8x the voxels, ~15 GB and ~2 min per 512x512x160 case)
            if max(overrides["spacing"]) <= 2.5:
                overrides["oversample"] = 1
        if overrides:
            import dataclasses

            cfg = dataclasses.replace(cfg, **overrides)
        path = synthesize_dataset(out, cases=cases, seed=seed, config=cfg, modality=modality)
    except (PartialsegError, OSError) as e:
        _fail(e)
    _say(f"wrote {cases} cases to {path}")


def _triple(text: str, kind: type, flag: str) -> tuple:
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    if len(parts) != 3:
        raise PartialsegError(f"{flag} needs three comma-separated values, got {text!r}")
    try:
        return tuple(kind(p) for p in parts)
    except ValueError:
        raise PartialsegError(f"{flag}: cannot parse {text!r}") from None


@app.command()
def simulate(
    dataset: Annotated[Path, typer.Argument(help="Fully labelled dataset folder.")],
    out: Annotated[Path, typer.Argument(help="New partially labelled dataset folder.")],
    keep: Annotated[float, typer.Option(help="Fraction of organs kept per case (IPnP protocol).")] = 0.33,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    mode: Annotated[str, typer.Option(help="'random' (per-case random subset) or 'groups' (TCT: fixed subsets per source group).")] = "random",
    groups: Annotated[Optional[Path], typer.Option(help="YAML/JSON file {group: [class names]} or {group: {classes: [...], cases: N}} for --mode groups; default: the TCT paper's five sources and their sizes.")] = None,
    balance: Annotated[str, typer.Option(help="--mode groups: group sizes in proportion to their 'cases' ('proportional') or equal ('equal').")] = "proportional",
) -> None:
    """Make a partially labelled copy: removed organs become 0, dataset.json lists each case's annotated classes."""
    from partialseg.data.simulate import simulate_partial_labels

    try:
        path = simulate_partial_labels(dataset, out, keep=keep, seed=seed, mode=mode, groups_file=groups, balance=balance)
    except (PartialsegError, OSError) as e:
        _fail(e)
    _say(f"wrote partially labelled dataset to {path}")


@app.command()
def convert(
    format: Annotated[str, typer.Argument(help="Source layout: msd (an MSD CT task folder), kits (a KiTS19/21 data folder), btcv (img/ and label/), amos (AMOS22), totalseg (TotalSegmentator v2), chaos (CHAOS Train_Sets: DICOM series + PNG masks), word, flare22 or named (a dataset.json naming its labels).")],
    src: Annotated[Path, typer.Argument(help="The collection's folder, as downloaded.")],
    out: Annotated[Path, typer.Argument(help="New dataset folder (nnU-Net v2 raw layout, registry class names).")],
    keep_tumours: Annotated[bool, typer.Option(help="Keep tumour (and cyst) labels as classes instead of merging them into their organ.")] = False,
    modality: Annotated[str, typer.Option(help="amos and chaos only: convert its CT scans or its MR scans.")] = "CT",
    sequence: Annotated[Optional[str], typer.Option(help="chaos MR only: T2SPIR (default), T1DUAL_in or T1DUAL_out.")] = None,
) -> None:
    """Convert a public collection to a partialseg dataset (annotated classes and case groups filled in)."""
    from partialseg.data.convert import convert as run_convert

    try:
        if modality != "CT" and format not in ("amos", "chaos"):
            raise PartialsegError(f"--modality applies to amos and chaos only ({format} is CT)")
        if sequence is not None and format != "chaos":
            raise PartialsegError(f"--sequence applies to chaos only, not {format}")
        extra: dict = {"modality": modality} if format in ("amos", "chaos") else {}
        if sequence is not None:
            extra["sequence"] = sequence
        written = run_convert(format, src, out, keep_tumours=keep_tumours, **extra)
    except (PartialsegError, OSError) as e:
        _fail(e)
    _say(f"wrote {written}")


@app.command()
def merge(
    mapping: Annotated[Path, typer.Argument(help="YAML/JSON mapping of source datasets and labels onto the target label space.")],
    out: Annotated[Path, typer.Argument(help="New merged dataset folder.")],
) -> None:
    """Merge several source datasets with different label sets into one partially labelled dataset."""
    from partialseg.data.merge import merge_datasets

    try:
        path = merge_datasets(mapping, out)
    except (PartialsegError, OSError) as e:
        _fail(e)
    _say(f"wrote merged dataset to {path}")


@app.command()
def info(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder, or a run folder.")],
    check: Annotated[bool, typer.Option(help="Also load every file and check grids, label values and NaN.")] = False,
) -> None:
    """Summarise a dataset (cases, label space, per-organ annotation counts, spacings, shapes, orientation)
    or a run folder (method, network, what planning chose, progress)."""
    from partialseg.data.info import dataset_info, format_info

    try:
        if (dataset / "config.yaml").exists() and not (dataset / "dataset.json").exists():
            from partialseg.training.runlog import run_summary

            typer.echo(run_summary(dataset))
            return
        summary = dataset_info(dataset, check=check)
    except (PartialsegError, OSError) as e:
        _fail(e)
    typer.echo(format_info(summary))


@app.command()
def plan(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder (nnU-Net v2 layout) or a prepared cache.")],
    method: Annotated[Optional[str], typer.Option(help="Training method the plan is for (its heads count in memory).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML config file (what it sets is not planned).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key, e.g. --set plan.memory_gb=24 (repeatable).")] = None,
    intensities: Annotated[bool, typer.Option(help="Also read every image for the foreground intensity statistics (slow).")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the fingerprint and plan to this JSON file (new).")] = None,
) -> None:
    """Fingerprint a dataset and show what `train` would plan: spacing, patch, network topology, batch."""
    from partialseg.config import load_config
    from partialseg.data.dataset import PartialDataset
    from partialseg.errors import OutputExistsError
    from partialseg.io import write_json_atomic
    from partialseg.preprocessing.cache import PREPARED_JSON, PreparedDataset
    from partialseg.preprocessing.fingerprint import fingerprint_dataset, fingerprint_prepared
    from partialseg.preprocessing.plan import apply_plan

    try:
        if out is not None and out.exists():
            raise OutputExistsError(out)
        overrides = list(set_ or []) + ([f"method.name={method}"] if method else [])
        cfg = load_config(config, overrides)
        if (dataset / PREPARED_JSON).exists():
            prepared = PreparedDataset.load(dataset)
            fp, space = fingerprint_prepared(prepared), prepared.label_space
            if cfg.data.spacing is None:
                cfg.data.spacing = tuple(prepared.config.spacing)
        else:
            ds = PartialDataset.load(dataset)
            fp, space = fingerprint_dataset(ds, intensities=intensities, progress=True), ds.label_space
        planned, result = apply_plan(cfg, fp, space)
    except (PartialsegError, OSError) as e:
        _fail(e)
    d = fp.to_dict()
    typer.echo(f"{d['num_cases']} cases ({fp.modality}); median spacing "
               f"{' × '.join(f'{s:g}' for s in d['median_spacing'])} mm, median shape {'×'.join(map(str, d['median_shape']))}")
    if fp.intensities is not None:
        s = fp.intensities
        typer.echo(f"foreground intensities: mean {s.mean:.1f}, sd {s.std:.1f}, 0.5–99.5 % [{s.percentile_00_5:.1f}, {s.percentile_99_5:.1f}]")
    if result is None:
        typer.echo("nothing to plan: the configuration sets spacing, patch and batch size")
    else:
        typer.echo(f"plan for {planned.method.name}: {result.summary()}")
        for note in result.notes:
            typer.echo(f"  note: {note}")
    typer.echo(f"train would use: data.spacing={list(planned.data.spacing)} train.patch_size={list(planned.train.patch_size)} "
               f"train.batch_size={planned.train.batch_size}")
    if out is not None:
        write_json_atomic({"fingerprint": d, "plan": None if result is None else result.to_dict()}, out)
        _say(f"wrote {out}")


@app.command()
def prepare(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder.")],
    out: Annotated[Path, typer.Argument(help="New folder for the preprocessed cache.")],
    spacing: Annotated[Optional[str], typer.Option(help="Target spacing in mm, e.g. 5,5,5 (default: the dataset's median).")] = None,
    normalization: Annotated[str, typer.Option(help="'tct' (clip HU to [-1024,1024], scale to [0,1]) or 'nnunet' (CT percentile clip + z-score).")] = "tct",
    storage: Annotated[str, typer.Option(help="'blosc2' (compressed, nnU-Net v2's format) or 'npy' (memory maps).")] = "blosc2",
    workers: Annotated[int, typer.Option(min=0, help="Processes (0: one per core, at most 8, for CT-sized images).")] = 0,
) -> None:
    """Reorient to RAS, resample, normalise and cache (blosc2-compressed or memory-mappable arrays)."""
    from partialseg.preprocessing import PreprocessConfig, prepare_dataset

    try:
        cfg = PreprocessConfig(
            spacing=_triple(spacing, float, "--spacing") if spacing else None, normalization=normalization
        )
        path = prepare_dataset(dataset, out, cfg, storage=storage, workers=workers)
    except (PartialsegError, OSError) as e:
        _fail(e)
    _say(f"wrote preprocessed cache to {path}")


@app.command()
def evaluate(
    pred_dir: Annotated[Path, typer.Argument(help="Folder of predicted label maps <case>.nii.gz.")],
    ref_dir: Annotated[Path, typer.Argument(help="Folder of reference label maps <case>.nii.gz.")],
    out: Annotated[Path, typer.Option("--out", help="Results JSON path; .md and .csv tables are written beside it.")] = Path("results.json"),
    dataset: Annotated[Optional[Path], typer.Option(help="Dataset folder: label space, and annotated classes when REF_DIR is its labelsTr.")] = None,
    labels: Annotated[str, typer.Option(help="Registered label space when no --dataset is given.")] = "amos15",
    overwrite: Annotated[bool, typer.Option(help="Replace existing results files (never an input).")] = False,
    pred_labels: Annotated[Optional[Path], typer.Option(help="The predictions' label space (labels.json; default: PRED_DIR/labels.json, which `partialseg predict` writes). Classes are matched to the reference's by name.")] = None,
) -> None:
    """DSC and HD95 (mm) per organ per case, aggregated per organ over the cases whose reference annotates it.

    A model evaluated on a dataset with another label space: classes are matched by name, reference
    organs the model does not know are listed and left out of the means."""
    from partialseg.evaluation.evaluate import evaluate_folders, format_table

    try:
        result = evaluate_folders(pred_dir, ref_dir, out=out, dataset=dataset, label_space_name=labels,
                                  overwrite=overwrite, pred_labels=pred_labels)
    except (PartialsegError, OSError) as e:
        _fail(e)
    typer.echo(format_table(result))
    _say(f"wrote {out}")


@app.command()
def methods() -> None:
    """List the registered training methods."""
    from partialseg.registry import METHODS

    width = max(len(n) for n in METHODS)
    for name, desc in METHODS.items():
        typer.echo(f"{name:<{width}}  {desc}")


@app.command()
def train(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder (nnU-Net v2 layout) or a prepared cache.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (created; with --resume, the run to continue).")],
    method: Annotated[Optional[str], typer.Option(help="Training method (see `partialseg methods`).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML config file.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key, e.g. --set train.steps=200 (repeatable).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue a killed or finished run from its last checkpoint.")] = False,
    engine: Annotated[str, typer.Option(help="'partialseg' or 'nnunet': nnU-Net v2 plans, preprocesses and trains with the method's loss inside RUN (needs requirements-nnunet.txt; --set nnunet.epochs=...).")] = "partialseg",
) -> None:
    """Train a model on a partially labelled dataset."""
    if engine != "partialseg":
        from partialseg.engines.nnunet.drive import train_run

        try:
            if engine != "nnunet" or config is not None:
                raise PartialsegError("--engine takes 'partialseg' or 'nnunet'; the nnunet engine reads no --config")
            folder = train_run(dataset, out, method or "marginal", set_ or [], resume=resume)
        except (PartialsegError, OSError) as e:
            _fail(e)
        _say(f"nnU-Net model in {folder}")
        return
    from partialseg.api import fit as run_training
    from partialseg.config import load_config

    try:
        overrides = list(set_ or [])
        if method:
            overrides.append(f"method.name={method}")
        cfg = None
        if config is not None or overrides or not resume:
            cfg = load_config(config, overrides)
        model = run_training(dataset, out, cfg, resume=resume)
    except (PartialsegError, OSError) as e:
        _fail(e)
    _say(f"model saved to {model}")


@app.command()
def finetune(
    run: Annotated[Path, typer.Argument(help="Trained run folder (or model.pt) to start from.")],
    dataset: Annotated[Path, typer.Argument(help="Target dataset folder (nnU-Net v2 layout) or a prepared cache.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New run folder (with --resume, the fine-tuning run to continue).")],
    method: Annotated[str, typer.Option(help="Training method on the target (default full: a fully labelled target).")] = "full",
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a key of the trained run's config, e.g. --set train.steps=200 (repeatable).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue a killed fine-tuning run.")] = False,
) -> None:
    """Fine-tune a trained model on another dataset; classes are matched by name (RUN2/finetune.json)."""
    from partialseg.training.finetune import finetune as run_finetune

    try:
        model = run_finetune(run, dataset, out, method=method, overrides=set_ or [], resume=resume)
    except (PartialsegError, OSError) as e:
        _fail(e)
    _say(f"model saved to {model}")


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Run folder (or model.pt) from `partialseg train`.")],
    input_dir: Annotated[Path, typer.Argument(help="Folder of CT images (.nii.gz), or one image.")],
    out_dir: Annotated[Path, typer.Argument(help="New folder for the label maps.")],
    probabilities: Annotated[bool, typer.Option(help="Also write class probabilities (.npz, float16).")] = False,
    overlap: Annotated[Optional[float], typer.Option(help="Sliding-window overlap (default: the run's).")] = None,
    device: Annotated[str, typer.Option(help="'auto', 'cpu' or 'cuda[:i]'.")] = "auto",
    postprocess: Annotated[bool, typer.Option(help="Apply the postprocessing chosen on validation (largest component per organ, RUN/postprocessing.json).")] = True,
    mirror: Annotated[bool, typer.Option(help="Left-right mirror test-time augmentation (left/right organs swapped back; twice the time).")] = False,
    low_memory: Annotated[Optional[bool], typer.Option("--low-memory/--no-low-memory", help="One sliding window at a time, logits blended in float16 (as nnU-Net's predictor): less memory, near-tie voxels may change label. Default: on for volumes whose float32 logits would exceed 1 GB (a 512×512×160 CT with 15 organs), off for smaller ones. Our own runs only.")] = None,
) -> None:
    """Segment images; each output has the input's exact shape and affine."""
    from partialseg.engines.nnunet.predict import is_nnunet_run
    from partialseg.inference.predict import predict_folder

    try:
        if is_nnunet_run(run):  # trained with --engine nnunet: nnU-Net's predictor (no postprocessing step)
            from partialseg.engines.nnunet.predict import predict_run

            written = predict_run(run, input_dir, out_dir, device=device, overlap=overlap, mirror=mirror,
                                  probabilities=probabilities)
        else:
            written = predict_folder(run, input_dir, out_dir, probabilities=probabilities, device=device,
                                     overlap=overlap, postprocess=postprocess, mirror=mirror, low_memory=low_memory)
    except (PartialsegError, OSError) as e:
        _fail(e)
    _say(f"wrote {len(written)} label maps to {out_dir}")


@app.command()
def benchmark(
    out: Annotated[Path, typer.Option("--out", "-o", help="Benchmark folder (re-running resumes and skips finished work).")] = Path("benchmark_out"),
    keep: Annotated[Optional[list[float]], typer.Option(help="Keep ratios of the partial-label settings (repeatable).")] = None,
    methods: Annotated[Optional[list[str]], typer.Option("--methods", "-m", help="Methods to compare (repeatable); a variant is name:key=value,... e.g. tct:threshold=mean.")] = None,
    preset: Annotated[str, typer.Option(help="'quick' (CPU) or 'full' (GPU).")] = "full",
    quick: Annotated[bool, typer.Option("--quick", help="Shorthand for --preset quick.")] = False,
    protocol: Annotated[str, typer.Option(help="'ipnp' (random organ subsets per case, keep ratios) or 'tct' (five source datasets with fixed organ subsets).")] = "ipnp",
    table: Annotated[Optional[str], typer.Option(help="A headline table of the README (ipnp-0.67, ipnp-0.33, tct): its protocol, methods and step budget; use with --seeds.")] = None,
    ablation: Annotated[bool, typer.Option(help="With --protocol tct: add the TCT ablation variants (paper Tables 5 and 7).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic data and the partial-label draw.")] = 0,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Several seeds, e.g. 0,1,2: one benchmark per seed in OUT/seed_S/, and OUT/summary.md with mean ± sd and paired Wilcoxon tests against marginal.")] = None,
    balance: Annotated[str, typer.Option(help="With --protocol tct: source groups in the paper's proportions ('proportional') or of equal size ('equal').")] = "proportional",
    match_steps: Annotated[bool, typer.Option(help="Every method and the upper bound train as many steps as IPnP with its rounds.")] = False,
    upper_bound: Annotated[bool, typer.Option(help="Also train `full` on the full labels (the upper bound).")] = True,
    transfer: Annotated[bool, typer.Option(help="Afterwards fine-tune every method's model on a small fully labelled 15-organ target, against training from scratch (TCT Table 4); tables in OUT/transfer/.")] = False,
    config: Annotated[Optional[Path], typer.Option(help="YAML config applied to every training.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Config override for every training (repeatable).")] = None,
) -> None:
    """The papers' protocol on synthetic data: upper bound + each method at each keep ratio, one test set."""
    from partialseg.experiments.benchmark import TCT_ABLATIONS, run_benchmark

    try:
        default = ["full", "sigmoid", "marginal", "exclusion"] + (["tct"] if protocol == "tct" else [])
        chosen = list(methods or default) + (list(TCT_ABLATIONS) if ablation else [])
        kwargs = dict(keeps=keep or [0.67, 0.33], methods=chosen, preset="quick" if quick else preset, protocol=protocol,
                      upper_bound=upper_bound, config_file=config, overrides=set_ or [], balance=balance,
                      match_steps=match_steps, transfer=transfer)
        if seeds or table:
            from partialseg.experiments.headline import run_seeds

            try:
                seed_list = [int(x) for x in (seeds or str(seed)).replace(" ", ",").split(",") if x]
            except ValueError:
                raise PartialsegError(f"--seeds takes comma-separated integers, got {seeds!r}") from None
            summary = run_seeds(out, seed_list, table=table, **kwargs)
            typer.echo(summary.read_text())
            return
        result = run_benchmark(out, seed=seed, **kwargs)
        from partialseg.experiments.report import write_report

        report = write_report(result.out) if result.results else None
    except (PartialsegError, OSError) as e:
        _fail(e)
    typer.echo((result.out / "benchmark.md").read_text())
    if report is not None:
        _say(f"report: {report}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (re-running resumes and skips finished work).")] = Path("demo_out"),
    method: Annotated[str, typer.Option(help="Partial-label method to show against the naive baseline.")] = "marginal",
    keep: Annotated[float, typer.Option(help="Fraction of organs kept per training case.")] = 0.33,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Config override (repeatable).")] = None,
) -> None:
    """Synthesise data, train a partial-label method and the naive baseline on CPU, compare them on held-out cases."""
    from partialseg.experiments.demo import run_demo, summary

    try:
        result = run_demo(out, method=method, keep=keep, seed=seed, overrides=set_ or [])
        from partialseg.experiments.report import write_report

        report = write_report(result.out)
    except (PartialsegError, OSError) as e:
        _fail(e)
    typer.echo(summary(result))
    _say(f"report: {report}")


@app.command()
def report(
    path: Annotated[Path, typer.Argument(help="A benchmark folder or a run folder.")],
    out: Annotated[Optional[Path], typer.Option(help="Where to write the page (default: PATH/report.html).")] = None,
) -> None:
    """One self-contained HTML page: tables, per-case box plots, curves and overlays of reference and prediction."""
    from partialseg.experiments.report import write_report

    try:
        written = write_report(path, out)
    except (PartialsegError, OSError) as e:
        _fail(e)
    _say(f"wrote {written}")


@app.command()
def pseudolabel(
    run: Annotated[Path, typer.Argument(help="An ipnp or pfl run folder.")],
    dataset: Annotated[Path, typer.Argument(help="The dataset the run was trained on.")],
    out: Annotated[Path, typer.Argument(help="New dataset folder with pseudo-full labels (nnU-Net v2 raw layout).")],
) -> None:
    """Export the dataset with the last round's pseudo-labels filled in (annotated voxels keep their labels)."""
    from partialseg.pseudolabel.export import export_pseudo_labels

    try:
        path = export_pseudo_labels(run, dataset, out)
    except (PartialsegError, OSError) as e:
        _fail(e)
    _say(f"wrote pseudo-labelled dataset to {path}")


@app.command("segment-box")
def segment_box(
    image: Annotated[Path, typer.Argument(help="CT image (.nii.gz).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output mask (.nii.gz), written in the image's geometry.")],
    box: Annotated[Optional[list[str]], typer.Option(help="2D box on the image array, e.g. 'z=40,x=10:51,y=20:61' (one axis a slice index, two half-open ranges); repeatable (the paper uses an axial and a sagittal box).")] = None,
    backend: Annotated[str, typer.Option(help="Generalist: 'random_walker' (weight-free, CPU), 'nninteractive', or 'boxnet' (a model an IPnP run trained: RUN/generalist; the image must be on that run's RAS grid and spacing).")] = "random_walker",
    model_folder: Annotated[Optional[Path], typer.Option(help="nnInteractive model folder (weights are not bundled), or a boxnet folder.")] = None,
    device: Annotated[Optional[str], typer.Option(help="nnInteractive/boxnet device: 'auto', 'cpu', 'cuda'.")] = None,
    from_mask: Annotated[Optional[Path], typer.Option(help="Instead of --box: derive the two box prompts from this label map...")] = None,
    label: Annotated[Optional[int], typer.Option(help="...for this label value.")] = None,
    padding: Annotated[int, typer.Option(help="Box padding in voxels when prompts come from --from-mask.")] = 5,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
) -> None:
    """Segment one object from box prompts with the IPnP generalist."""
    from partialseg.generalist import segment_box_file

    options = {}
    if model_folder is not None:
        options["model_folder"] = model_folder
    if device is not None:
        options["device"] = device
    try:
        res = segment_box_file(image, box or None, out, backend=backend, prompt_mask=from_mask, label=label,
                               padding=padding, overwrite=overwrite, **options)
    except (PartialsegError, OSError, ValueError) as e:
        _fail(e)
    _say(f"wrote {res.path} ({res.voxels} voxels, {res.seconds:.1f} s)")


_GLOBAL_FLAGS = ("--quiet", "-q", "--verbose", "-v")


def _global_flags_first(argv: list[str]) -> list[str]:
    """``partialseg train ... --quiet`` as well as ``partialseg --quiet train ...``: the global flags
    may stand anywhere before a ``--``."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[:end] if a in _GLOBAL_FLAGS]
    return flags + [a for a in argv[:end] if a not in _GLOBAL_FLAGS] + argv[end:]


def main() -> None:
    try:
        app(args=_global_flags_first(sys.argv[1:]), prog_name="partialseg")
    except PartialsegError as e:  # errors raised outside a command's own handler
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
