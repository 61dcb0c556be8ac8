"""Can the loader feed the network? Batches per second of ``training.loader`` against one training step.

On N cases of 512×512×160 at 0.8×0.8×2.5 mm (random intensities, box organs: the loader's cost
depends on the arrays' size, not their content), cached at their own spacing, this measures in one
process:

- ``make_batch`` alone in the main process, one thread (the work one worker does per batch): s/batch,
  split into sampling (crop + collate) and augmentation;
- ``batch_loader`` with W forked workers: batches/s over ``--batches`` batches after a warm-up;
- the reference: one training step (forward, marginal loss, backward, Adam) of ``unet_tct`` on the
  same batch, on this machine's CPU, and the GPU step the issue measured (0.13 s, bf16, H100) given
  with ``--gpu-step``.

The ratio loader rate / step rate says whether the step (> 1) or the loader (< 1) sets the pace.

    python benchmarks/loader.py --cases 4 --patch 192 192 64 --batch 4 --workers 0 1 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 160])
    ap.add_argument("--patch", type=int, nargs=3, default=[192, 192, 64])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--gpu-step", type=float, default=0.13, help="GPU step time to compare against (s)")
    ap.add_argument("--no-step", action="store_true", help="skip the CPU training step reference")
    args = ap.parse_args()

    import numpy as np
    import torch

    from partialseg.config import AugmentConfig
    from partialseg.labels import LabelSpace
    from partialseg.preprocessing import PreparedDataset, PreprocessConfig, prepare_dataset
    from partialseg.training.augment import augment_batch
    from partialseg.training.loader import BatchRecipe, batch_loader, collate, make_batch
    from partialseg.training.sampling import sample_patch
    from partialseg.training.trainer import load_train_cases

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.conftest import write_block_dataset

    torch.set_num_threads(1)
    space = LabelSpace.named("amos15")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        root = write_block_dataset(Path(tmp) / "d", space, n_cases=args.cases, shape=tuple(args.shape), spacing=(0.8, 0.8, 2.5))
        prep = PreparedDataset.load(prepare_dataset(root, Path(tmp) / "p", PreprocessConfig(spacing=(0.8, 0.8, 2.5)), progress=False))
        print(f"{args.cases} cases of {tuple(args.shape)} written and cached in {time.perf_counter() - t:.0f} s")
        cases = load_train_cases(prep, prep.case_ids)
        recipe = BatchRecipe(cases, space, tuple(args.patch), args.batch, 0.33, AugmentConfig(), seed=0)

        make_batch(recipe, 0)  # page the maps in
        ts, tsamp, taug = [], [], []
        for s in range(1, args.batches + 1):
            t = time.perf_counter()
            rng = np.random.default_rng(s)
            picks = [cases[int(rng.integers(len(cases)))] for _ in range(args.batch)]
            ps = [sample_patch(c.image, c.label, c.annotated, c.class_locations, recipe.patch_size, rng,
                               force_foreground=i % 2 == 0, pad_value=c.pad_value, pseudo=c.pseudo) for i, c in enumerate(picks)]
            b = collate(ps, space.num_channels)
            t1 = time.perf_counter()
            augment_batch(b.image, b.target, recipe.augment, torch.Generator().manual_seed(s))
            t2 = time.perf_counter()
            make_batch(recipe, s)
            ts.append(time.perf_counter() - t2)
            tsamp.append(t1 - t)
            taug.append(t2 - t1)
        per_batch = sorted(ts)[len(ts) // 2]
        print(f"make_batch, 1 thread: {per_batch:.3f} s/batch (median of {len(ts)}); sampling+collate "
              f"{sorted(tsamp)[len(ts) // 2]:.3f} s, augmentation {sorted(taug)[len(ts) // 2]:.3f} s")

        step = None
        if not args.no_step:
            from partialseg.methods import StepContext, get_method
            from partialseg.networks import build_network
            from partialseg.training.trainer import TrainingModel

            method = get_method("marginal")(space, {})
            net = method.wrap_network(build_network("unet_tct", 1, method.output_channels()))
            model = TrainingModel(net, method)
            opt = torch.optim.Adam(model.parameters(), 1e-3)
            b = make_batch(recipe, 0)
            times = []
            for i in range(2):
                t = time.perf_counter()
                loss, _ = model(b, StepContext(i, 10))
                opt.zero_grad()
                loss.backward()
                opt.step()
                times.append(time.perf_counter() - t)
            step = times[-1]
            print(f"reference: one unet_tct training step on this CPU, 1 thread: {step:.2f} s")

        rows = []
        for w in args.workers:
            it = batch_loader(recipe, 0, args.batches + 2 * max(w, 1), num_workers=w)
            for _ in range(max(w, 1)):
                next(it)  # start-up and the first batch of each worker
            t = time.perf_counter()
            n = 0
            for _ in range(args.batches):
                next(it)
                n += 1
            rate = n / (time.perf_counter() - t)
            it.close()
            rows.append((w, rate))
        print("\n| workers | batches/s | s/batch | vs GPU step (batches per step) |" + (" vs this CPU step |" if step else ""))
        print("|---:|---:|---:|---:|" + ("---:|" if step else ""))
        for w, rate in rows:
            line = f"| {w} | {rate:.2f} | {1 / rate:.3f} | {rate * args.gpu_step:.2f} |"
            if step:
                line += f" {rate * step:.1f} |"
            print(line)


if __name__ == "__main__":
    main()
