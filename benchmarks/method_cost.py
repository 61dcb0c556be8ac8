"""Parameters and inference time of each method's model against ``marginal``'s (the TCT paper's Table 8 columns).

Every method builds its inference network the way training does (``method.wrap_network`` around the
same backbone) and predicts the same random volume with partialseg's sliding window, in one process,
round-robin (one prediction of each method per round, order rotated every round), so a load change on
the shared machine hits all alike. The table gives parameters, the median seconds per volume and the
ratio to ``marginal`` of the medians and the median of the per-round ratios.

The TCT paper's figures on its GPU: ``marginal``/TCT 4.12 M / 0.96 s, DoDNet 4.34 M / 7.43 s (one pass
per organ), CLIP-Driven 4.43 M / 1.39 s, Hermes 14.9 M / 13.43 s.

    python benchmarks/method_cost.py                            # CPU, the quick preset's network
    python benchmarks/method_cost.py --threads 1 --rounds 5
    python benchmarks/method_cost.py --device cuda --base-channels 16 --volume 256 256 128 --patch 128 128 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from partialseg.inference.sliding_window import sliding_window_probabilities
from partialseg.labels import LabelSpace
from partialseg.methods import get_method
from partialseg.networks import build_network
from partialseg.registry import AMOS15

DEFAULT_METHODS = ("marginal", "sigmoid", "tct", "aal", "dodnet", "clip_driven", "transdodnet", "hermes")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    ap.add_argument("--organs", type=int, default=15, help="N (the AMOS organs' first N)")
    ap.add_argument("--base-channels", type=int, default=16)
    ap.add_argument("--volume", type=int, nargs=3, default=[96, 96, 64])
    ap.add_argument("--patch", type=int, nargs=3, default=[64, 64, 48])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    space = LabelSpace(AMOS15[: args.organs])
    models = {}
    for name in args.methods:
        torch.manual_seed(0)
        method = get_method(name)(space)
        backbone = build_network("unet_tct", 1, method.output_channels(), base_channels=args.base_channels)
        models[name] = (method, method.wrap_network(backbone).to(device).eval())
    volume = torch.randn(1, *args.volume).numpy()
    times: dict[str, list[float]] = {n: [] for n in models}
    names = list(models)
    for r in range(args.rounds + 1):  # round 0 warms up
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            method, net = models[name]
            t0 = time.perf_counter()
            sliding_window_probabilities(net, method.probabilities, volume, tuple(args.patch), overlap=0.5, device=device, amp=False)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r:
                times[name].append(time.perf_counter() - t0)
    ref = "marginal" if "marginal" in models else names[0]
    print(f"{args.organs} organs, base {args.base_channels}, volume {args.volume}, patch {args.patch}, {args.device}, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds")
    print(f"| method | parameters | s / volume (median) | × {ref} (medians) | × {ref} (median of rounds) |")
    print("|---|---|---|---|---|")
    for name in names:
        params = sum(p.numel() for p in models[name][1].parameters())
        med = statistics.median(times[name])
        per_round = statistics.median(a / b for a, b in zip(times[name], times[ref], strict=True))
        print(f"| {name} | {params / 1e6:.2f} M | {med:.2f} | {med / statistics.median(times[ref]):.2f} | {per_round:.2f} |")


if __name__ == "__main__":
    main()
