"""Forward + backward time of the training losses against their literal implementations.

``partialseg.losses`` computes the marginal (TAL) CE + Dice, TCT's ``L_main`` and TCT's
ATH terms (``L_aux``, ``L_con`` and the IoU gate) with per-label sums and a hand-written backward.
The reference is the same formulas written out literally (one-hot targets, merged probability
maps, 2-channel ATH softmaxes, plain autograd; ``tests/losses/reference_losses.py``, the
implementation the tests check against), run here in float32 on the same tensors, round-robin in
one process. Prints the median ms of each and the ratio reference / partialseg, and checks that
the values agree.

    python benchmarks/loss_step.py --threads 1                 # the quick recipe's shape, 15 organs
    python benchmarks/loss_step.py --patch 96 96 64 --batch 2  # bigger
    python benchmarks/loss_step.py --device cuda --patch 192 192 64 --batch 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.losses.reference_losses

from partialseg.labels import LabelSpace  # noqa: E402
from partialseg.registry import AMOS15  # noqa: E402
from partialseg import losses as L  # noqa: E402
from partialseg.losses import tct as T  # noqa: E402
from tests.losses.reference_losses import reference_ath_terms, reference_marginal_loss  # noqa: E402
from train_step import make_batch  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--patch", type=int, nargs=3, default=[48, 48, 32])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--organs", type=int, default=15)
    ap.add_argument("--steps", type=int, default=9, help="timed repetitions per loss")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: default)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("CUDA is not available")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    space = LabelSpace(AMOS15[: args.organs])
    n = space.num_classes
    batch = make_batch(space, args.batch, tuple(args.patch), device)
    target, ann = batch.target, batch.annotated
    g = torch.Generator(device="cpu").manual_seed(0)
    logits0 = (2 * torch.randn(args.batch, n + 1, *args.patch, generator=g)).to(device)
    aux0 = (2 * torch.randn(args.batch, n, 2, *args.patch, generator=g)).to(device)
    everyone = torch.ones_like(ann)
    f32 = torch.float32

    def tct_fast(x: Tensor, a: Tensor) -> Tensor:
        d = a[:, :, 1:] - a[:, :, :1]  # what TCT.heads hands over
        p = torch.softmax(x, 1)
        ath, terms, _ = T.tct_head_terms(x, d, target, probs=p)
        return L.marginal_dice_loss(x, target, ann, probs=p) + T.supervised_ath_sum(ath, ann).mean() + terms.sum(1).mean()

    def tct_reference(x: Tensor, a: Tensor) -> Tensor:
        ath, terms = reference_ath_terms(x, a, target, dtype=f32)
        return (reference_marginal_loss(x, target, ann, ce_weight=0.0, dtype=f32)
                + torch.where(ann[:, 1:], ath, 0.0).sum(1).mean() + terms.sum(1).mean())

    cases: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]] = {
        "full_loss": (lambda x, a: L.full_loss(x, target), lambda x, a: reference_marginal_loss(x, target, everyone, dtype=f32)),
        "marginal_loss": (lambda x, a: L.marginal_loss(x, target, ann), lambda x, a: reference_marginal_loss(x, target, ann, dtype=f32)),
        "marginal_dice_loss (TCT L_main)": (
            lambda x, a: L.marginal_dice_loss(x, target, ann),
            lambda x, a: reference_marginal_loss(x, target, ann, ce_weight=0.0, dtype=f32),
        ),
        "TCT L_main + L_aux + L_con": (tct_fast, tct_reference),
    }
    sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    clock = time.perf_counter if device.type == "cuda" else time.process_time

    def run(fn: Callable[[Tensor, Tensor], Tensor]) -> tuple[float, float]:
        x = logits0.clone().requires_grad_(True)
        a = aux0.clone().requires_grad_(True)
        sync()
        t0 = clock()
        loss = fn(x, a)
        loss.backward()
        sync()
        return clock() - t0, loss.item()

    times = {(name, k): [] for name in cases for k in (0, 1)}
    values: dict[tuple[str, int], float] = {}
    for rnd in range(args.steps + 1):
        for name, pair in cases.items():
            for k in ((0, 1) if rnd % 2 else (1, 0)):
                t, v = run(pair[k])
                if rnd > 0:  # the first round warms up
                    times[(name, k)].append(t)
                values[(name, k)] = v
    print(f"device {device}, threads {torch.get_num_threads()}, batch {args.batch} x {tuple(args.patch)}, N = {n}, "
          f"{args.steps} timed repetitions, forward + backward")
    print(f"{'loss':<32} {'partialseg ms':>14} {'reference ms':>13} {'reference / partialseg':>23} {'|value diff|':>13}")
    for name in cases:
        fast, ref = statistics.median(times[(name, 0)]), statistics.median(times[(name, 1)])
        diff = abs(values[(name, 0)] - values[(name, 1)])
        print(f"{name:<32} {1e3 * fast:>14.1f} {1e3 * ref:>13.1f} {ref / fast:>23.2f} {diff:>13.1e}")


if __name__ == "__main__":
    main()
