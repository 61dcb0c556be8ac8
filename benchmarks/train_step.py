"""Cost of one full training step of every registered method, on the same network and batch.

A step is what the trainer does: forward of the network *and* the method's training-only
extras (TCT's auxiliary heads, ...), the loss, backward, and an Adam step. Every method gets
the same network (same seed), the same fixed random batch (box-shaped organs, each sample
annotated on a different half of the organs) and its own Adam. All methods live in one
process and the steps are taken round-robin (one step of each per round, the order rotated
every round), so a load change on the shared machine hits all of them alike. The table
gives the median and minimum ms/step and the ratios to ``full`` and ``marginal``: of the
medians and the median of the per-round ratios (on a noisy machine trust a method only
where these agree).

Extra variants, for comparison only (never registered as methods):

- ``tct-2conv``: TCT with its MSH and its one 2N-output ATH conv run as two convolutions and
  the ATH logits as ``(B, N, 2, ...)`` (``tct`` runs the MSH and the N ATH logit-difference
  filters as one convolution: see ``TCT.heads``);
- ``tct[aux_kernel_size=1]``: the registered ``tct`` with its pointwise-ATH option (timed whenever
  ``tct`` is);
- ``tct-naive`` (``--naive``): TCT with N separate 2-channel ATH convs, the literal reading
  of "one head per class".

On a shared CPU, ``--threads 1 --clock cpu`` (this process's CPU time, one thread) measures
the work itself: with two threads, waiting for a descheduled thread dominates wall time.

    python benchmarks/train_step.py                                   # CPU, small config, wall clock
    python benchmarks/train_step.py --threads 1 --clock cpu --naive   # stable on a busy machine
    python benchmarks/train_step.py --device cuda --amp --patch 192 192 64 --batch 4 --base-channels 16
    python benchmarks/train_step.py --threads 1 --clock cpu --network dynunet   # nnU-Net-style, 1x1x1 heads
    python benchmarks/train_step.py --threads 1 --clock cpu --amp --base-channels 16 --patch 48 48 32  # the quick recipe
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from partialseg.labels import LabelSpace
from partialseg.methods import Batch, StepContext, get_method
from partialseg.methods.base import Method, TrainingModel
from partialseg.methods.tct import TCT, TCTExtras
from partialseg.networks import build_network
from partialseg.registry import AMOS15, METHODS


# ---- comparison-only TCT variants ------------------------------------------------------------
class TCTTwoConv(TCT):
    """TCT with the MSH and the (single, 2N-output) ATH conv as two separate convolutions."""

    name = "tct-2conv"

    def heads(self, net: nn.Module, extras: TCTExtras, f: Tensor) -> tuple[Tensor, Tensor]:
        return net.head(f), extras.aux_logits(f)


class _NaiveExtras(TCTExtras):
    def __init__(self, net: nn.Module, num_classes: int, weighting: str) -> None:
        super().__init__(net, num_classes, weighting)
        del self.aux_head
        self.aux_heads = nn.ModuleList([net.make_head(2) for _ in range(num_classes)])

    def aux_logits(self, f: Tensor) -> Tensor:
        return torch.stack([h(f) for h in self.aux_heads], dim=1)


class TCTNaive(TCTTwoConv):
    """TCT with N separate 2-channel ATH convs."""

    name = "tct-naive"

    def build_extras(self, net: nn.Module) -> nn.Module:
        return _NaiveExtras(net, self.label_space.num_classes, self.options.weighting)


# ---- benchmark -------------------------------------------------------------------------------
@dataclass
class Runner:
    name: str
    model: TrainingModel
    optimizer: torch.optim.Optimizer
    times: list[float]


def make_batch(space: LabelSpace, batch: int, patch: tuple[int, int, int], device: torch.device, seed: int = 0) -> Batch:
    """Fixed random batch: box organs on noise; sample b annotates every other organ, shifted by b."""
    g = torch.Generator().manual_seed(seed)
    n = space.num_classes
    target = torch.zeros(batch, *patch, dtype=torch.int64)
    for b in range(batch):
        for c in range(1, n + 1):
            lo = [int(torch.randint(0, s - s // 4, (1,), generator=g)) for s in patch]
            size = [max(2, s // 8) for s in patch]
            target[b, lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]] = c
    image = torch.randn(batch, 1, *patch, generator=g) * 0.1 + target.unsqueeze(1).float() / n
    annotated = torch.zeros(batch, n + 1, dtype=torch.bool)
    annotated[:, 0] = True
    for b in range(batch):
        annotated[b, 1 + (b % 2) :: 2] = True
    # unannotated organs carry 0, as in the data
    keep = torch.gather(annotated, 1, target.reshape(batch, -1)).reshape(target.shape)
    target = torch.where(keep, target, torch.zeros_like(target))
    return Batch(image, target, annotated).to(device)


def build_runner(name: str, method: Method, args: argparse.Namespace, device: torch.device) -> Runner:
    torch.manual_seed(0)
    options: dict[str, Any] = {"base_channels": args.base_channels}
    if args.network == "dynunet":  # it plans its kernels and strides from the patch
        options["patch_size"] = tuple(args.patch)
    for item in args.net_option:
        key, _, value = item.partition("=")
        options[key] = yaml.safe_load(value)
    net = method.wrap_network(build_network(args.network, 1, method.output_channels(), **options))
    model = TrainingModel(net, method).to(device)
    model.train()
    return Runner(name, model, torch.optim.Adam(model.parameters(), lr=1e-4), [])


def one_step(
    r: Runner, batch: Batch, step: int, total: int, device: torch.device, amp: bool, clock: Callable[[], float]
) -> float:
    sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    sync()
    t0 = clock()
    with ctx:
        loss, _ = r.model(batch, StepContext(step, total))
    r.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    r.optimizer.step()
    sync()
    return clock() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--amp", action="store_true",
                    help="bf16 autocast (CUDA; on the CPU as train.amp_cpu, fast only with native bf16)")
    ap.add_argument("--patch", type=int, nargs=3, default=[64, 64, 48])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--base-channels", type=int, default=8)
    ap.add_argument("--network", default="unet_tct")
    ap.add_argument("--net-option", action="append", default=[], metavar="KEY=VALUE",
                    help="network option, e.g. head_kernel_size=1 (unet_tct), repeatable")
    ap.add_argument("--organs", type=int, default=15, help="N, the first N AMOS organs")
    ap.add_argument("--steps", type=int, default=12, help="timed steps per method (median over them)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: default)")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="wall: elapsed time; cpu: this process's CPU time (CPU device only). On a shared machine "
                         "'--threads 1 --clock cpu' measures the work itself, unaffected by waiting for a core")
    ap.add_argument("--methods", nargs="*", help="registered methods to time (default: all)")
    ap.add_argument("--naive", action="store_true", help="also time TCT with N separate ATH convs")
    ap.add_argument("--no-2conv", action="store_true", help="skip the unfused-TCT variant")
    ap.add_argument("--quiet", action="store_true", help="no per-round progress on stderr")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("CUDA is not available")
    if args.clock == "cpu" and device.type != "cpu":
        ap.error("--clock cpu measures CPU work; use it with --device cpu")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    space = LabelSpace(AMOS15[: args.organs])
    patch = tuple(args.patch)
    batch = make_batch(space, args.batch, patch, device)

    runners: list[Runner] = []
    for name in args.methods or list(METHODS):
        try:
            runners.append(build_runner(name, get_method(name)(space), args, device))
        except Exception as e:  # a method another change has not registered yet, or one that needs data
            print(f"skipping {name}: {type(e).__name__}: {e}")
    if not args.no_2conv:
        runners.append(build_runner("tct-2conv", TCTTwoConv(space), args, device))
    if args.naive:
        runners.append(build_runner("tct-naive", TCTNaive(space), args, device))
    if "tct" in (args.methods or list(METHODS)):
        # the registered method with its cheap option (pointwise ATH conv)
        runners.append(build_runner("tct[aux_kernel_size=1]", TCT(space, {"aux_kernel_size": 1}), args, device))

    total = args.warmup + args.steps
    print(f"device {device}{' bf16' if args.amp else ''}, threads {torch.get_num_threads()}, "
          f"{args.clock} clock, "
          f"network {args.network} base {args.base_channels}, batch {args.batch} x {patch}, N = {space.num_classes}, "
          f"{args.warmup} warm-up + {args.steps} timed steps per method, round-robin")
    failed: set[str] = set()
    for rnd in range(total):
        k = rnd % len(runners)
        for r in runners[k:] + runners[:k]:  # rotate the order every round
            if r.name in failed:
                continue
            try:
                t = one_step(r, batch, rnd, total, device, args.amp, clock)
            except Exception as e:
                print(f"{r.name} failed: {type(e).__name__}: {e}")
                failed.add(r.name)
                continue
            if rnd >= args.warmup:
                r.times.append(t)
        if not args.quiet:
            print(f"round {rnd + 1}/{total}: " + ", ".join(f"{r.name} {1e3 * r.times[-1]:.0f}" for r in runners if r.times and rnd >= args.warmup),
                  file=sys.stderr, flush=True)
    runners = [r for r in runners if r.name not in failed]

    def med(r: Runner) -> float:
        return statistics.median(r.times)

    refs = {name: next((r for r in runners if r.name == name), None) for name in ("full", "marginal")}
    head = f"{'method':<12} {'params':>9} {'extras':>7} {'median ms':>10} {'min ms':>8}"
    for ref in refs:
        head += f" {'/' + ref:>9} {'/' + ref + ' rnd':>13}"
    print(head)
    for r in runners:
        n_net = sum(p.numel() for p in r.model.net.parameters())
        n_ext = sum(p.numel() for p in r.model.extras.parameters()) if r.model.extras is not None else 0
        line = f"{r.name:<12} {n_net:>9,} {n_ext:>7,} {1e3 * med(r):>10.1f} {1e3 * min(r.times):>8.1f}"
        for ref in refs.values():
            if ref is None:
                line += f" {'-':>9} {'-':>13}"
            else:
                per_round = statistics.median(a / b for a, b in zip(r.times, ref.times, strict=True))
                line += f" {med(r) / med(ref):>9.3f} {per_round:>13.3f}"
        print(line)


if __name__ == "__main__":
    main()
