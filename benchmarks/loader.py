"""Loader speed with the ``light`` and ``nnunet`` augmentation presets, against nnU-Net v2's own pipeline.

On N block-organ cases (``tests.conftest.write_block_dataset``: the cost depends on the arrays' size, not
their content) cached as a run caches them (blosc2 by default), for one patch and batch size, in one process:

- the loader alone (``training.loader.batch_loader``: sampling, mirroring and, for ``light``, its
  augmentation; for ``nnunet`` only the crop of the part of the larger source patch its rotation reads):
  batches/s with W forked workers (one torch thread each), after a warm-up;
- the ``nnunet`` augmentation on the training device (``loader.finish_batch`` on a loader batch; here the
  CPU with every torch thread, or ``--device cuda``): s/batch, median;
- the same augmentation in one thread (what a worker would pay with ``augment.on_device=false``);
- the reference: nnU-Net v2's ``nnUNetTrainer.get_training_transforms`` (batchgeneratorsv2; run this script
  with a Python that has nnunetv2, e.g. ``.venv-nnu/bin/python``) on tensors of its initial patch size, one
  thread, as its loader workers run it (the crop from the case not included); without nnunetv2, MONAI's
  dictionary transforms at nnU-Net's probabilities (``RandAffined`` .. ``RandAdjustContrastd``).

- with ``--step``, the pace the loader has to keep on this machine: one training step (forward, marginal
  loss, backward, Adam) of ``unet_tct`` on a loader batch, every torch thread.

Printed: per-worker rates, the workers needed to feed a GPU step of ``--gpu-step`` s (0.13 s, issue 15) and,
with ``--step``, loader batches per CPU step (> 1: the step sets the pace, < 1: the loader does).
Numbers on a shared or loaded machine compare only within one run of this script.

    .venv-nnu/bin/python benchmarks/loader.py --cases 2 --shape 320 320 192 --patch 128 128 128 --batch 2 [--step]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable


def _median_time(fn: Callable[[int], object], n: int, sync: Callable[[], None] = lambda: None) -> float:
    ts = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def _loader_rate(recipe, workers: int, batches: int) -> float:
    from partialseg.training.loader import batch_loader

    it = batch_loader(recipe, 0, batches + 2 * max(workers, 1), num_workers=workers)
    for _ in range(max(workers, 1)):
        next(it)  # start-up and each worker's first batch
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches / (time.perf_counter() - t)
    it.close()
    return rate


def _nnunet_reference(patch: tuple[int, int, int], batch: int, n: int) -> tuple[str, float] | None:
    """s/batch of nnU-Net v2's training transforms, one thread, on its initial patch size; None without nnunetv2."""
    try:
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    except ImportError:
        return None
    import numpy as np
    import torch
    from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size

    nn_patch = (patch[2], patch[0], patch[1])  # nnU-Net puts the out-of-plane axis first
    aniso = max(nn_patch) / nn_patch[0] > 3
    rot = math.pi if aniso else math.radians(30)
    initial = get_patch_size(nn_patch, (-rot, rot), (-rot, rot), (-rot, rot), (0.85, 1.25))
    if aniso:
        initial[0] = nn_patch[0]
    tr = nnUNetTrainer.get_training_transforms(nn_patch, (-rot, rot), None, (0, 1, 2), aniso, use_mask_for_norm=[False],
                                               foreground_labels=list(range(1, 16)))
    g = torch.Generator().manual_seed(0)
    image = torch.randn((1, *initial), generator=g)
    seg = torch.randint(0, 16, (1, *initial), generator=g).to(torch.int16)
    np.random.seed(0)

    def one_batch(_i: int) -> None:
        for _ in range(batch):
            tr(image=image.clone(), segmentation=seg.clone())

    for i in range(3):
        one_batch(i)  # its blur times FFT against direct convolution the first time it meets a kernel size
    return f"nnU-Net v2 get_training_transforms (batchgeneratorsv2), from {tuple(int(s) for s in initial)}", _median_time(one_batch, n)


def _monai_dict_reference(patch: tuple[int, int, int], batch: int, n: int) -> tuple[str, float]:
    """s/batch of MONAI dictionary transforms at nnU-Net's probabilities and ranges, one thread."""
    import torch
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandScaleIntensityd,
        RandScaleIntensityFixedMeand,
        RandSimulateLowResolutiond,
    )

    from partialseg.training.augment_nnunet import NnUNetAugment

    src = NnUNetAugment().source_size(patch)
    r = math.radians(30)
    tr = Compose([
        RandAffined(("image", "label"), spatial_size=patch, prob=0.36, rotate_range=(r, r, r), scale_range=(0.3, 0.3, 0.3),
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandGaussianNoised("image", prob=0.1, std=0.1),
        RandGaussianSmoothd("image", sigma_x=(0.5, 1), sigma_y=(0.5, 1), sigma_z=(0.5, 1), prob=0.1),
        RandScaleIntensityd("image", factors=0.25, prob=0.15),
        RandScaleIntensityFixedMeand("image", factors=0.25, preserve_range=True, prob=0.15),
        RandSimulateLowResolutiond("image", prob=0.125, zoom_range=(0.5, 1.0)),
        RandAdjustContrastd("image", gamma=(0.7, 1.5), invert_image=True, retain_stats=True, prob=0.1),
        RandAdjustContrastd("image", gamma=(0.7, 1.5), retain_stats=True, prob=0.3),
    ]).set_random_state(0)
    g = torch.Generator().manual_seed(0)
    data = {"image": torch.randn((1, *src), generator=g), "label": torch.randint(0, 16, (1, *src), generator=g).float()}

    def one_batch(_i: int) -> None:
        for _ in range(batch):
            out = tr(dict(data))
            if out["image"].shape[1:] != tuple(patch):  # RandAffined skipped: crop as nnU-Net does
                lo = [(s - p) // 2 for s, p in zip(src, patch)]
                out["image"][(slice(None), *(slice(a, a + p) for a, p in zip(lo, patch)))].clone()

    for i in range(3):
        one_batch(i)
    return f"MONAI dictionary transforms at nnU-Net's probabilities, from {src}", _median_time(one_batch, n)


def _cpu_step(recipe, threads: int) -> float:
    """Seconds of one ``unet_tct`` marginal training step on a loader batch (the second of two), ``threads`` threads."""
    import torch

    from partialseg.methods import StepContext, get_method
    from partialseg.methods.base import TrainingModel
    from partialseg.networks import build_network
    from partialseg.training.loader import finish_batch, make_batch

    torch.set_num_threads(threads)
    method = get_method("marginal")(recipe.label_space, {})
    model = TrainingModel(method.wrap_network(build_network("unet_tct", 1, method.output_channels())), method)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    batch = finish_batch(recipe, make_batch(recipe, 0), 0)

    def step(i: int) -> None:
        loss, _ = model(batch, StepContext(i, 10))
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(0)
    return _median_time(step, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("--shape", type=int, nargs=3, default=[320, 320, 192])
    ap.add_argument("--patch", type=int, nargs=3, default=[128, 128, 128])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--storage", choices=["blosc2", "npy"], default="blosc2")
    ap.add_argument("--device", default="cpu", help="where the nnunet augmentation runs (the training device)")
    ap.add_argument("--device-threads", type=int, default=0, help="torch threads on a CPU training device (0: torch's default)")
    ap.add_argument("--gpu-step", type=float, default=0.13, help="GPU step time the loader must keep up with (s)")
    ap.add_argument("--step", action="store_true", help="also time one unet_tct training step on this CPU (the loader's pace here)")
    args = ap.parse_args()

    import torch

    from partialseg.config import AugmentConfig
    from partialseg.labels import LabelSpace
    from partialseg.preprocessing import PreparedDataset, PreprocessConfig, prepare_dataset
    from partialseg.training.loader import BatchRecipe, finish_batch, make_batch
    from partialseg.training.trainer import load_train_cases

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.conftest import write_block_dataset

    patch = tuple(args.patch)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    threads = torch.get_num_threads()
    space = LabelSpace.named("amos15")
    rows: list[tuple[str, str, float, int]] = []  # (what, where, s/batch, workers sharing it; 0: on the device)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        root = write_block_dataset(Path(tmp) / "d", space, n_cases=args.cases, shape=tuple(args.shape), spacing=(0.8, 0.8, 2.5))
        prep = PreparedDataset.load(prepare_dataset(root, Path(tmp) / "p", PreprocessConfig(spacing=(0.8, 0.8, 2.5)),
                                                    progress=False, storage=args.storage, workers=1))
        print(f"{args.cases} cases of {tuple(args.shape)} written and cached ({args.storage}) in {time.perf_counter() - t:.0f} s")
        cases = load_train_cases(prep, prep.case_ids)
        recipes = {name: BatchRecipe(cases, space, patch, args.batch, 0.33, AugmentConfig(preset=name, p_mirror_lr=0.5), seed=0)
                   for name in ("light", "nnunet")}
        torch.set_num_threads(1)
        for name, recipe in recipes.items():
            make_batch(recipe, 0)  # page the cache in
            for w in args.workers:
                rate = _loader_rate(recipe, w, args.batches)
                rows.append((f"loader, {name} preset", f"{w} workers" if w else "main process", 1 / rate, max(w, 1)))
                print(f"loader ({name}, {w} workers): {rate:.2f} batches/s", flush=True)
        nn = recipes["nnunet"]
        raw = [make_batch(nn, s) for s in range(args.batches)]
        for i in range(min(3, args.batches)):
            finish_batch(nn, raw[i], i)  # imports, first calls
        one = _median_time(lambda i: finish_batch(nn, raw[i], i), args.batches)
        rows.append(("nnunet augmentation", "1 thread (a worker, on_device=false)", one, 1))
        dev_threads = args.device_threads or threads
        torch.set_num_threads(dev_threads)
        on_dev = [b.to(device) for b in raw]
        finish_batch(nn, on_dev[0], 0)
        dev = _median_time(lambda i: finish_batch(nn, on_dev[i], i), args.batches, sync)
        rows.append(("nnunet augmentation", f"training device {device}" + (f", {dev_threads} threads" if device.type == "cpu" else ""),
                     dev, 0))
        torch.set_num_threads(1)
        ref = _nnunet_reference(patch, args.batch, args.batches) or _monai_dict_reference(patch, args.batch, args.batches)
        rows.append((ref[0], "1 thread (a worker)", ref[1], 1))
        cpu_step = _cpu_step(recipes["light"], threads) if args.step else None
        torch.set_num_threads(threads)

    print(f"\nbatch {args.batch} × {'×'.join(map(str, patch))}, {args.cases} cases of {'×'.join(map(str, args.shape))} "
          f"({args.storage}), {os.cpu_count()} CPU threads; reference: {ref[0]}\n")
    if cpu_step is not None:
        print(f"reference step: unet_tct, marginal, {threads} threads on this CPU: {cpu_step:.2f} s\n")
    extra = " batches per CPU step |" if cpu_step is not None else ""
    print("| what | where | s/batch | batches/s (per worker) | × reference time | workers for a "
          f"{args.gpu_step} s step |" + extra)
    print("|---|---|---:|---:|---:|---:|" + ("---:|" if extra else ""))
    for what, where, s, w in rows:
        per_worker = 1 / (s * max(w, 1))  # a measured rate of W workers, shared out
        need = math.ceil(1 / (args.gpu_step * per_worker)) if w else "-"
        line = f"| {what} | {where} | {s:.3f} | {1 / s:.2f} ({per_worker:.2f}) | {s / ref[1]:.2f} | {need} |"
        print(line + (f" {cpu_step / s:.2f} |" if cpu_step is not None else ""))


if __name__ == "__main__":
    main()
