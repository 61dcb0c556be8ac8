"""Peak memory of whole-volume inference: partialseg's sliding window against one plain MONAI pass.

``sliding_window_probabilities`` runs MONAI's inferer over slabs along Z (``slab_gb`` of float32
logits each, at least three patches tall), turns logits into probabilities a few slices at a time,
and keeps only what the caller wants: the label map (``argmax``) or float16 probabilities. The
reference is the literal formula, what inference did before: MONAI's inferer over the whole volume,
float32 probabilities of all of it, then the argmax. Each configuration runs
in its own process; the figure is its peak resident memory (``ru_maxrss``) above the same process's
memory right before the call, and the wall time.

The network is a single 3×3×3 convolution to ``--classes`` channels: the buffers (MONAI's output and
count maps, the logits, the probabilities), not the network, set the memory, and a trained U-Net
would only add time. The label maps are compared with the one-pass one (float16 probabilities can flip near-ties).

    python benchmarks/inference_memory.py --shape 512 512 300 --classes 16 --patch 128 128 128
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _child(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from torch import nn

    from partialseg.inference.sliding_window import sliding_window_probabilities

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.manual_seed(0)
    net = nn.Conv3d(1, args.classes, 3, padding=1)
    net.out_channels = args.classes  # type: ignore[attr-defined]
    image = np.random.default_rng(0).normal(size=(1, *args.shape)).astype(np.float32)
    soft = lambda z: torch.softmax(z, 1)  # noqa: E731
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if args.mode == "one_pass":  # the reference: MONAI's inferer over the whole volume, then probabilities, argmax
        from monai.inferers import sliding_window_inference

        with torch.no_grad():
            logits = sliding_window_inference(torch.from_numpy(image)[None], roi_size=tuple(args.patch), sw_batch_size=2,
                                              predictor=net, overlap=0.5, mode="gaussian", padding_mode="replicate")
            probs = soft(logits)[0]
            del logits
            labels = probs.argmax(0).to(torch.int16)
            del probs
    elif args.mode == "slabs_labels":
        labels = sliding_window_probabilities(net, soft, image, args.patch, overlap=0.5, amp=False, argmax=True,
                                              slab_gb=args.slab_gb)
    else:  # slabs, float16 probabilities
        probs = sliding_window_probabilities(net, soft, image, args.patch, overlap=0.5, amp=False, dtype=torch.float16,
                                             slab_gb=args.slab_gb)
        labels = probs.argmax(0).to(torch.int16)
        del probs
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    np.save(args.labels_out, labels.numpy())
    print(json.dumps({"mode": args.mode, "seconds": secs, "peak_mb": peak / 1024, "before_mb": base / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300])
    ap.add_argument("--classes", type=int, default=16)
    ap.add_argument("--patch", type=int, nargs=3, default=[128, 128, 128])
    ap.add_argument("--slab-gb", type=float, default=2.0)
    ap.add_argument("--mode", choices=["one_pass", "slabs_labels", "slabs_float16"], help=argparse.SUPPRESS)
    ap.add_argument("--labels-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        return _child(args)

    import tempfile

    import numpy as np

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("one_pass", "slabs_labels", "slabs_float16"):
            out = f"{tmp}/{mode}.npy"
            cmd = [sys.executable, __file__, "--mode", mode, "--labels-out", out, "--shape", *map(str, args.shape),
                   "--classes", str(args.classes), "--patch", *map(str, args.patch), "--slab-gb", str(args.slab_gb)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                sys.exit(f"{mode} failed:\n{res.stderr[-3000:]}")
            row = json.loads(res.stdout.strip().splitlines()[-1])
            row["labels"] = out
            rows.append(row)
            print(f"{mode}: {row['peak_mb'] - row['before_mb']:.0f} MB above the start, {row['seconds']:.1f} s", flush=True)
        ref = np.load(rows[0]["labels"])
        differ = [int(np.count_nonzero(ref != np.load(r["labels"]))) for r in rows]
    n = args.shape[0] * args.shape[1] * args.shape[2]
    print(f"\n{'×'.join(map(str, args.shape))} voxels ({n / 1e6:.0f} M), {args.classes} classes, patch "
          f"{'×'.join(map(str, args.patch))}, overlap 0.5, slab budget {args.slab_gb} GB, {os.cpu_count()} CPU threads\n")
    print("| inference | peak memory above start (MB) | ratio to one pass | seconds | ratio | label voxels differing from one pass |")
    print("|---|---:|---:|---:|---:|---|")
    m0, s0 = rows[0]["peak_mb"] - rows[0]["before_mb"], rows[0]["seconds"]
    for r, d in zip(rows, differ):
        m = r["peak_mb"] - r["before_mb"]
        print(f"| {r['mode']} | {m:.0f} | {m / m0:.2f} | {r['seconds']:.1f} | {r['seconds'] / s0:.2f} | {d} ({100 * d / n:.4f} %) |")
    print(f"\none float32 (C, X, Y, Z) array is {args.classes * n * 4 / 2**20:.0f} MB; the int16 label map {n * 2 / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
