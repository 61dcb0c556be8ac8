"""partialseg's nnU-Net v2 trainers against nnU-Net's own ``nnUNetTrainer``, in one process.

Issue 14's two figures, on one synthetic collection planned and preprocessed by nnU-Net itself:

1. **Step time.** ``train_step`` (forward, deep-supervised loss, backward, SGD step: nnU-Net's own step,
   with our loss in it) of every ``nnUNetTrainer_partialseg_<method>`` and of the plain ``nnUNetTrainer``
   on the *same* batches from nnU-Net's loader, round-robin (one batch for every trainer, then the next),
   so that a change in the machine's load hits every trainer alike. Printed: median ms/step and the
   ratio to ``nnUNetTrainer`` (the issue's goal: ≤ 1.05). The batches carry partial labels and their
   cases' annotated sets; the plain trainer's loss ignores them (it is only the reference for the time).
2. **A sanity check of the full-label case** (``--epochs E``, 0 skips it): ``nnUNetTrainer`` and our
   ``full`` trainer each trained E epochs of ``--iterations`` steps on the *fully* labelled copy, then
   nnU-Net's final validation of fold 0: mean foreground Dice of each (same loss family: CE + Dice against
   CE; "same within noise" is what is expected, one run each).

Needs nnunetv2 (``pip install -c constraints.txt -r requirements-nnunet.txt``); run with that Python::

    .venv-nnu/bin/python benchmarks/nnunet_trainers.py --cases 6 --shape 128,128,64 --steps 12 --epochs 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _cli(*args: str) -> None:
    # the CLI of this environment (the one with nnunetv2)
    subprocess.run([str(Path(sys.executable).parent / "partialseg"), *args], check=True, stdout=subprocess.DEVNULL)


def _edit_plan(patch: list[int], batch: int):
    def edit(plans: dict) -> None:
        c = plans["configurations"]["3d_fullres"]
        c["patch_size"], c["batch_size"] = patch, batch
        # the planner sized pooling for its own patch: keep as many stages as the new patch allows
        strides = c["architecture"]["arch_kwargs"]["strides"]
        shape, keep = list(patch), 1
        for s in strides[1:]:
            nxt = [a // b for a, b in zip(shape, s)]
            if min(nxt) < 4 or any(a % b for a, b in zip(shape, s)):
                break
            shape, keep = nxt, keep + 1
        kw = c["architecture"]["arch_kwargs"]
        for key in ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage"):
            kw[key] = kw[key][:keep]
        kw["n_conv_per_stage_decoder"] = kw["n_conv_per_stage_decoder"][: keep - 1]
        kw["n_stages"] = keep
    return edit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--shape", default="128,128,64", help="phantom grid X,Y,Z")
    ap.add_argument("--spacing", default="", help="phantom spacing in mm (default: the grid spans the 384×384×360 mm "
                    "a phantom abdomen needs)")
    ap.add_argument("--keep", type=float, default=0.5, help="share of the organs each case keeps")
    ap.add_argument("--patch", default="64,64,64")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12, help="timed batches per trainer (after 2 warm-up batches)")
    ap.add_argument("--methods", default="", help="comma-separated; default: every partialseg trainer")
    ap.add_argument("--epochs", type=int, default=0, help="full-label sanity check: epochs per trainer (0: skip)")
    ap.add_argument("--iterations", type=int, default=50, help="iterations per epoch of the sanity check")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    import numpy as np
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from partialseg.engines.nnunet.paths import nnunet_environment
    from partialseg.engines.nnunet.prepare import plan_and_preprocess
    from partialseg.engines.nnunet.run import build_trainer, train
    from partialseg.engines.nnunet.trainers import TRAINERS

    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("nnUNet_n_proc_DA", "0")  # batches made in this process: nothing competes with the step
    if not args.spacing:
        args.spacing = ",".join(f"{fov / int(n):.4g}" for fov, n in zip((384, 384, 360), args.shape.split(",")))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="nnunet_trainers_"))
    work.mkdir(parents=True, exist_ok=True)
    full, partial = work / "full", work / "partial"
    if not (full / "dataset.json").exists():
        _cli("synth", str(full), "--cases", str(args.cases), "--shape", args.shape, "--spacing", args.spacing)
    if not (partial / "dataset.json").exists():
        _cli("simulate", str(full), str(partial), "--keep", str(args.keep), "--seed", "0")
    cases = sorted(json.loads((partial / "dataset.json").read_text())["annotated_classes"])
    splits = [{"train": cases[:-2], "val": cases[-2:]}]
    patch = [int(v) for v in args.patch.split(",")]
    methods = [m for m in args.methods.split(",") if m] or sorted(n.removeprefix("nnUNetTrainer_partialseg_") for n in TRAINERS)
    print(f"{args.cases} phantoms {args.shape} at {args.spacing} mm, keep {args.keep}; patch {patch}, batch {args.batch}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU (load: {os.getloadavg()[0]:.1f})", flush=True)

    with nnunet_environment(work / "run") as paths:
        for ds_id, ds in ((811, partial), (812, full)):
            if not (paths["nnUNet_preprocessed"] / f"Dataset{ds_id}_{ds.name}" / "nnUNetPlans.json").exists():
                plan_and_preprocess(ds, paths, ds_id, num_processes=2, edit_plans=_edit_plan(patch, args.batch), splits=splits)

        # ---- 1. step time on the same batches ------------------------------------------------------------
        reference = build_trainer(811, "3d_fullres", 0, nnUNetTrainer, device="cpu")
        reference.initialize()
        reference.on_train_start()
        try:
            batches = [next(reference.dataloader_train) for _ in range(args.steps + 2)]
        finally:
            reference.on_train_end()
        trainers = {"nnUNetTrainer": reference}
        for m in methods:
            t = build_trainer(811, "3d_fullres", 0, m, device="cpu")
            t.initialize()
            trainers[m] = t
        for t in trainers.values():
            t.network.train()
        times: dict[str, list[float]] = {name: [] for name in trainers}
        losses: dict[str, float] = {}
        for i, batch in enumerate(batches):
            for name, t in trainers.items():
                b = {"data": batch["data"].clone(), "target": [y.clone() for y in batch["target"]], "keys": batch["keys"]}
                t0 = time.perf_counter()
                out = t.train_step(b)
                dt = time.perf_counter() - t0
                if i >= 2:
                    times[name].append(dt)
                losses[name] = float(np.mean(out["loss"]))
        ref = statistics.median(times["nnUNetTrainer"])
        params = {name: sum(p.numel() for p in t.network.parameters()) for name, t in trainers.items()}
        print("\n| trainer | ms/step (median) | range | × nnUNetTrainer | parameters (training) | last loss |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"| {name} | {1000 * med:.0f} | {1000 * min(ts):.0f}–{1000 * max(ts):.0f} | {med / ref:.3f} | "
                  f"{params[name] / 1e6:.2f} M | {losses[name]:.3f} |")

        # ---- 2. full labels: nnUNetTrainer against our full trainer -------------------------------------
        if args.epochs:
            print(f"\nfull labels, {args.epochs} epochs × {args.iterations} iterations, fold 0 ({len(splits[0]['val'])} "
                  "validation cases), nnU-Net's final validation:")
            for name, cls in (("nnUNetTrainer", nnUNetTrainer), ("full", "full")):
                t0 = time.perf_counter()
                t = train(812, "3d_fullres", 0, cls, device="cpu", num_epochs=args.epochs,
                          num_iterations_per_epoch=args.iterations, num_val_iterations_per_epoch=5)
                summary = json.loads((Path(t.output_folder) / "validation" / "summary.json").read_text())
                print(f"- {name}: mean foreground Dice {100 * summary['foreground_mean']['Dice']:.1f} % "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\nwork folder: {work}")


if __name__ == "__main__":
    main()
