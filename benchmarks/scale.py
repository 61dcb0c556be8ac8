"""partialseg at real size, side by side with nnU-Net v2 on the same cases.

On N synthetic cases of ``--shape`` at ``--spacing`` (default 512×512×160 at 0.8×0.8×2.5 mm, partially
labelled at keep 0.5), each stage runs as its own command and is measured with ``_measure`` (wall time,
peak memory of the whole process tree, workers included):

- phantoms: ``partialseg synth --preset gpu`` at that grid (s/case; the ``cpu`` preset renders at twice the
  resolution, 8× the voxels, which at 0.8 mm buys nothing);
- planning: ``partialseg plan`` (what ``train`` will use; s);
- preprocessing: ``partialseg prepare`` at the planned spacing (s/case, peak RSS, MB/case on disk), and
  nnU-Net v2's ``nnUNetv2_plan_and_preprocess -c 3d_fullres`` on the same raw folder when
  ``--nnunet-python`` names a Python with nnunetv2 (its own environment, requirements-nnunet.txt);
- training: ``partialseg train --method marginal`` for ``--steps`` steps with the planned patch and batch
  (s/step from the run's log, peak RSS; the end-of-training validation is on one case);
- inference: ``partialseg predict`` of one case (s/case, peak RSS);
- with ``--nnunet-python``, the same two with the nnU-Net engine (``partialseg train --engine nnunet --method
  marginal``: nnU-Net's plan and network, our loss; ``partialseg predict`` of its run: nnU-Net's predictor).

Ratios are partialseg / nnU-Net where both ran. Numbers on a shared or loaded machine compare only within
one run of this script.

    python benchmarks/scale.py --cases 4 [--nnunet-python .venv-nnu/bin/python] [--workdir /tmp/scale]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import Measured, folder_mb, run_measured  # noqa: E402


def _nnunet_raw(dataset: Path, raw: Path, dataset_id: int) -> str:
    """The dataset as nnU-Net raw ``DatasetXXX_scale`` (links to the images and labels)."""
    name = f"Dataset{dataset_id:03d}_scale"
    d = raw / name
    (d / "imagesTr").mkdir(parents=True, exist_ok=True)
    (d / "labelsTr").mkdir(exist_ok=True)
    for sub in ("imagesTr", "labelsTr"):
        for f in (dataset / sub).iterdir():
            (d / sub / f.name).symlink_to(f.resolve())
    meta = json.loads((dataset / "dataset.json").read_text())
    keep = {k: meta[k] for k in ("channel_names", "labels", "numTraining", "file_ending")}
    (d / "dataset.json").write_text(json.dumps(keep, indent=1))
    return name


def _nnunet_epoch_seconds(run: Path) -> float:
    """The last 'Epoch time' nnU-Net's trainer logged in ``run`` (seconds)."""
    import re

    times = [float(m) for log in run.glob("nnUNet_results/*/*/fold_*/training_log_*.txt")
             for m in re.findall(r"Epoch time: ([0-9.]+) s", log.read_text())]
    if not times:
        sys.exit(f"no epoch time in nnU-Net's training log under {run}")
    return times[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 160])
    ap.add_argument("--spacing", type=float, nargs=3, default=[0.8, 0.8, 2.5])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="prepare workers (nnU-Net: -np)")
    ap.add_argument("--nnunet-python", type=Path, help="a Python with nnunetv2 installed")
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()

    cli = [sys.executable, "-m", "partialseg.cli", "-q"]
    with tempfile.TemporaryDirectory() as tmp_name:
        work = args.workdir or Path(tmp_name)
        work.mkdir(parents=True, exist_ok=True)
        rows: list[tuple[str, str, Measured, str]] = []

        def measure(stage: str, tool: str, cmd: list[str], note: str = "", env: dict[str, str] | None = None) -> Measured:
            m = run_measured(cmd, work / f"{stage}_{tool}.log", env=env)
            rows.append((stage, tool, m, note))
            print(f"{stage} ({tool}): {m.seconds:.1f} s, peak RSS {m.peak_rss_mb:.0f} MB (anonymous {m.peak_anon_mb:.0f}) {note}",
                  flush=True)
            return m

        full, data = work / "full", work / "partial"
        for p in (full, data):
            shutil.rmtree(p, ignore_errors=True)
        n = args.cases
        m = measure("phantoms", "partialseg", [*cli, "synth", str(full), "--cases", str(n), "--preset", "gpu", "--shape", ",".join(map(str, args.shape)),
                                                "--spacing", ",".join(map(str, args.spacing))])
        rows[-1] = (*rows[-1][:3], f"{m.seconds / n:.1f} s/case")
        run_measured([*cli, "simulate", str(full), str(data), "--keep", "0.5", "--seed", "0"], work / "simulate.log")
        plan_json = work / "plan.json"
        plan_json.unlink(missing_ok=True)
        measure("planning", "partialseg", [*cli, "plan", str(data), "--out", str(plan_json)])
        plan = json.loads(plan_json.read_text())
        spacing = plan.get("train_would_use", {}).get("data.spacing") or plan["plan"]["spacing"]
        cache = work / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        m = measure("preprocessing", "partialseg", [*cli, "prepare", str(data), str(cache), "--spacing", ",".join(map(str, spacing)),
                                                     "--workers", str(args.workers)])
        rows[-1] = (*rows[-1][:3], f"{m.seconds / n:.1f} s/case, {folder_mb(cache) / n:.0f} MB/case at {[round(x, 3) for x in spacing]} mm")
        if args.nnunet_python:
            raw, pre, res = work / "nnUNet_raw", work / "nnUNet_preprocessed", work / "nnUNet_results"
            for p in (raw, pre, res):
                shutil.rmtree(p, ignore_errors=True)
                p.mkdir()
            name = _nnunet_raw(data, raw, 901)
            env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre), nnUNet_results=str(res))
            tool = str(Path(args.nnunet_python).parent / "nnUNetv2_plan_and_preprocess")
            m = measure("preprocessing", "nnU-Net v2", [tool, "-d", "901", "-c", "3d_fullres", "-np", str(args.workers)], env=env)
            pl = json.loads((pre / name / "nnUNetPlans.json").read_text())["configurations"]["3d_fullres"]
            rows[-1] = (*rows[-1][:3], f"{m.seconds / n:.1f} s/case, {folder_mb(pre / name / 'nnUNetPlans_3d_fullres') / n:.0f} MB/case "
                        f"at {[round(x, 3) for x in pl['spacing']]} mm, patch {pl['patch_size']}, batch {pl['batch_size']}")
        run = work / "run"
        shutil.rmtree(run, ignore_errors=True)
        sets = [f"train.steps={args.steps}", "train.val_every=0", f"data.cache_dir={work / 'shared_cache'}",
                "train.postprocessing=none", f"data.val_cases=[{json.dumps(sorted(p.name.split('.')[0] for p in (data / 'labelsTr').iterdir())[0])}]"]
        measure("training", "partialseg", [*cli, "train", str(data), "--out", str(run), "--method", "marginal",
                                           *[x for s in sets for x in ("--set", s)]])
        log_rows = [json.loads(line) for line in (run / "log_rows.jsonl").read_text().splitlines()]
        per_step = log_rows[-1]["seconds"] / len(log_rows)
        import yaml

        saved = yaml.safe_load((run / "config.yaml").read_text())["train"]
        rows[-1] = (*rows[-1][:3], f"{per_step:.1f} s/step ({args.steps} steps incl. one validation case), planned patch "
                    f"{saved['patch_size']}, batch {saved['batch_size']}")
        one = work / "one"
        shutil.rmtree(one, ignore_errors=True)
        one.mkdir()
        first = sorted((data / "imagesTr").iterdir())[0]
        (one / first.name).symlink_to(first.resolve())
        shutil.rmtree(work / "pred", ignore_errors=True)
        measure("inference", "partialseg", [*cli, "predict", str(run), str(one), str(work / "pred")], "1 case")
        if args.nnunet_python:
            # the nnU-Net engine on the same cases: its own plan and network (3d_fullres), our marginal loss;
            # the command plans and preprocesses again inside its run, so s/step comes from nnU-Net's epoch time
            nnu_cli = [str(args.nnunet_python), "-m", "partialseg.cli", "-q"]
            nrun = work / "run_nnunet"
            shutil.rmtree(nrun, ignore_errors=True)
            nsets = ["nnunet.epochs=1", f"nnunet.iterations={args.steps}", "nnunet.val_iterations=1", "nnunet.validate=false",
                     f"nnunet.num_processes={args.workers}", "nnunet.device=cpu"]
            measure("training", "nnU-Net v2", [*nnu_cli, "train", str(data), "--out", str(nrun), "--engine", "nnunet",
                                                "--method", "marginal", *[x for s in nsets for x in ("--set", s)]],
                    env=dict(os.environ, nnUNet_n_proc_DA=str(args.workers)))
            epoch = _nnunet_epoch_seconds(nrun)
            plans = json.loads(next((nrun / "nnUNet_preprocessed").glob("*/nnUNetPlans.json")).read_text())
            c = plans["configurations"]["3d_fullres"]
            rows[-1] = (*rows[-1][:3], (f"{epoch / (args.steps + 1):.1f} s/step ({args.steps} + 1 validation iterations, "
                                        "from nnU-Net's epoch time; the command's time and memory include its planning and "
                                        f"preprocessing), patch {c['patch_size']}, batch {c['batch_size']}, marginal trainer"))
            shutil.rmtree(work / "pred_nnunet", ignore_errors=True)
            measure("inference", "nnU-Net v2", [*nnu_cli, "predict", str(nrun), str(one), str(work / "pred_nnunet")],
                    "1 case, nnU-Net's predictor (no mirroring), step 0.5")

    print(f"\n{n} cases of {'×'.join(map(str, args.shape))} at {args.spacing} mm, {os.cpu_count()} CPU threads\n")
    print("| stage | tool | seconds | peak RSS (MB) | peak anonymous (MB) | details |")
    print("|---|---|---:|---:|---:|---|")
    for stage, tool, m, note in rows:
        print(f"| {stage} | {tool} | {m.seconds:.1f} | {m.peak_rss_mb:.0f} | {m.peak_anon_mb:.0f} | {note} |")
    both = {(s, t): m for s, t, m, _ in rows}
    if ("preprocessing", "nnU-Net v2") in both:
        a, b = both[("preprocessing", "partialseg")], both[("preprocessing", "nnU-Net v2")]
        print(f"\npreprocessing partialseg / nnU-Net v2: time {a.seconds / b.seconds:.2f}, peak RSS {a.peak_rss_mb / b.peak_rss_mb:.2f}")


if __name__ == "__main__":
    main()
