"""CPU cost of one training step (forward + backward + Adam) for the partialseg networks.

Used to choose the CPU presets. Reference: the TCT Table-6 U-Net (base 16, instance norm,
float32, default threads and memory format) at batch 2 x 48x64x64, 16 output channels
(15 organs + background: the demo's label space), cross-entropy loss.

Every variant lives in the same process and the steps are taken round-robin (one step of
each variant per round), so a load change on the shared machine hits all variants alike;
the table reports median and minimum step times and three ratios against the reference:
of medians, of minima (the intrinsic cost when other jobs add delay), and the median of
the per-round ratios. On a shared machine trust a variant only where these agree.

    python benchmarks/network_step.py                     # everything, ~10 min on 2 cores
    python benchmarks/network_step.py --no-compile --steps 5
    python benchmarks/network_step.py --only ref base8 base8_batch
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from partialseg.networks import SegmentationNetwork, build_network


@dataclass
class Variant:
    name: str
    network: str = "unet_tct"
    options: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None
    channels_last: bool = False
    compile: bool = False
    bf16: bool = False
    batch: int = 2
    patch: tuple[int, int, int] = (48, 64, 64)
    #: >0: also a TCT-style auxiliary head (``make_head(aux_channels)``) on the same features.
    aux_channels: int = 0


def train_variants() -> list[Variant]:
    dyn = {"patch_size": (48, 64, 64), "spacing": (5.0, 5.0, 5.0)}
    return [
        Variant("ref"),
        Variant("base8", options={"base_channels": 8}),
        Variant("base12", options={"base_channels": 12}),
        Variant("batchnorm", options={"norm": "batch"}),
        Variant("groupnorm", options={"norm": "group"}),
        Variant("threads1", threads=1),
        Variant("threads2", threads=2),
        Variant("channels_last_3d", channels_last=True),
        Variant("bf16_autocast", bf16=True),
        Variant("compile", compile=True),
        # TCT training: 15 ATHs x 2 channels as one extra conv on the shared features.
        Variant("tct_aux_heads30", aux_channels=30),
        Variant("bf16_tct_aux_heads30", bf16=True, aux_channels=30),
        Variant("base8_batch", options={"base_channels": 8, "norm": "batch"}),
        Variant("base8_bf16", options={"base_channels": 8}, bf16=True),
        # One thread loses ~1.8x on an idle box but wins ~2x when other jobs hold the cores.
        Variant("bf16_threads1", bf16=True, threads=1),
        Variant("base8_bf16_threads1", options={"base_channels": 8}, bf16=True, threads=1),
        Variant("base8_compile", options={"base_channels": 8}, compile=True),
        Variant("base8_b1", options={"base_channels": 8}, batch=1),
        Variant("base8_b1_64x64x48", options={"base_channels": 8}, batch=1, patch=(64, 64, 48)),
        Variant("dynunet32", network="dynunet", options=dyn),
        Variant("dynunet16", network="dynunet", options={**dyn, "base_channels": 16}),
    ]


def infer_variants() -> list[Variant]:
    dyn = {"patch_size": (64, 64, 48), "spacing": (5.0, 5.0, 5.0)}
    return [
        Variant("ref", batch=1, patch=(64, 64, 48)),
        Variant("base8", options={"base_channels": 8}, batch=1, patch=(64, 64, 48)),
        Variant("batchnorm", options={"norm": "batch"}, batch=1, patch=(64, 64, 48)),
        Variant("bf16_autocast", bf16=True, batch=1, patch=(64, 64, 48)),
        Variant("base8_bf16", options={"base_channels": 8}, bf16=True, batch=1, patch=(64, 64, 48)),
        Variant("dynunet32", network="dynunet", options=dyn, batch=1, patch=(64, 64, 48)),
    ]


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class Runner:
    """One variant's model, optimiser and fixed batch; ``step()`` returns seconds."""

    def __init__(self, v: Variant, out_channels: int, train: bool) -> None:
        self.v = v
        torch.manual_seed(0)
        net: SegmentationNetwork = build_network(v.network, 1, out_channels, **v.options)
        self.x = torch.rand(v.batch, 1, *v.patch)
        self.y = torch.randint(0, out_channels, (v.batch, *v.patch))
        if v.channels_last:
            net = net.to(memory_format=torch.channels_last_3d)
            self.x = self.x.contiguous(memory_format=torch.channels_last_3d)
        self.net = net.train(train)
        self.model: Callable[[torch.Tensor], torch.Tensor] = torch.compile(net) if v.compile else net
        self.aux = net.make_head(v.aux_channels) if v.aux_channels else None
        params = list(net.parameters()) + (list(self.aux.parameters()) if self.aux is not None else [])
        self.opt = torch.optim.Adam(params, lr=1e-4) if train else None
        self.params_m = net.num_parameters() / 1e6

    def step(self) -> float:
        with threads(self.v.threads):
            t0 = time.perf_counter()
            ac = torch.autocast("cpu", dtype=torch.bfloat16) if self.v.bf16 else contextlib.nullcontext()
            if self.opt is None:
                with torch.inference_mode(), ac:
                    self.model(self.x)
            else:
                self.opt.zero_grad(set_to_none=True)
                with ac:
                    if self.aux is None:
                        logits, aux = self.model(self.x), None
                    else:
                        feats = self.net.features(self.x)
                        logits, aux = self.net.head(feats), self.aux(feats)
                # Loss in float32, as a bf16 training loop would do it.
                loss = F.cross_entropy(logits.float(), self.y)
                if aux is not None:
                    # Stand-in for L_aux + L_con: any loss reaching every aux output costs the same.
                    loss = loss + aux.float().square().mean()
                loss.backward()
                self.opt.step()
            return time.perf_counter() - t0


def run(variants: list[Variant], steps: int, warmup: int, out_channels: int, train: bool) -> list[dict[str, Any]]:
    runners: list[Runner] = []
    first: dict[str, float] = {}
    for v in variants:
        try:
            r = Runner(v, out_channels, train)
            t0 = time.perf_counter()
            for _ in range(warmup):
                r.step()
            first[v.name] = time.perf_counter() - t0
            runners.append(r)
            print(f"  warmed {v.name} ({first[v.name]:.1f} s)", file=sys.stderr, flush=True)
        except Exception as e:  # a variant that fails here (compile) is reported, not fatal
            print(f"  {v.name} FAILED: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            first[v.name] = float("nan")
    times: dict[str, list[float]] = {r.v.name: [] for r in runners}
    for i in range(steps):
        for r in runners:
            times[r.v.name].append(r.step())
        print(f"  round {i + 1}/{steps} done", file=sys.stderr, flush=True)
    ref = times.get("ref")
    rows = []
    for r in runners:
        t = times[r.v.name]
        row: dict[str, Any] = {
            "variant": r.v.name,
            "params_M": round(r.params_m, 2),
            "batch x patch": f"{r.v.batch} x {'x'.join(map(str, r.v.patch))}",
            "median_s": statistics.median(t),
            "min_s": min(t),
            "warmup_s": first[r.v.name],
            "times_s": t,
        }
        if ref:
            row["ratio_of_medians"] = statistics.median(t) / statistics.median(ref)
            row["ratio_of_mins"] = min(t) / min(ref)
            row["median_round_ratio"] = statistics.median(a / b for a, b in zip(t, ref, strict=True))
        rows.append(row)
    for name, w in first.items():
        if w != w:  # NaN: failed
            rows.append({"variant": name, "median_s": float("nan"), "note": "failed"})
    return rows


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n### {title}\n")
    print(
        "| variant | params (M) | batch x patch | median s | min s | ratio of medians | ratio of mins "
        "| median per-round ratio | warm-up s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    nan = float("nan")
    for r in rows:
        if r.get("note") == "failed":
            print(f"| {r['variant']} | | | failed | | | | | |")
            continue
        print(
            f"| {r['variant']} | {r['params_M']:.2f} | {r['batch x patch']} | {r['median_s']:.2f} | {r['min_s']:.2f} "
            f"| {r.get('ratio_of_medians', nan):.2f} | {r.get('ratio_of_mins', nan):.2f} "
            f"| {r.get('median_round_ratio', nan):.2f} | {r['warmup_s']:.1f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant (after warm-up)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out-channels", type=int, default=16)
    ap.add_argument("--only", nargs="*", help="variant names to run (ref is always added)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile variants (~1.5 min compile each)")
    ap.add_argument("--no-inference", action="store_true")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()

    def pick(vs: list[Variant]) -> list[Variant]:
        if args.only:
            vs = [v for v in vs if v.name in set(args.only) | {"ref"}]
        if args.no_compile:
            vs = [v for v in vs if not v.compile]
        return vs

    print(
        f"torch {torch.__version__}, default threads {torch.get_num_threads()}, "
        f"interop {torch.get_num_interop_threads()}, out_channels {args.out_channels}"
    )
    result = {"train": run(pick(train_variants()), args.steps, args.warmup, args.out_channels, train=True)}
    print_table("forward + backward + Adam step", result["train"])
    if not args.no_inference:
        result["inference"] = run(pick(infer_variants()), args.steps, args.warmup, args.out_channels, train=False)
        print_table("inference forward (eval, inference_mode)", result["inference"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
