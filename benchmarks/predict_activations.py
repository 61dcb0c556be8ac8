"""Where ``predict``'s memory goes at real size: the network's activations on one sliding-window batch
against the blending buffers of a slab.

One process per sliding-window batch size B (run the script once per B: ``ru_maxrss`` only grows): a no-grad
float32 forward (how ``predict`` runs on a CPU) of ``--network`` with ``--classes`` outputs on a B × patch
batch, peak RSS above the process's start; printed beside the float32 logits buffer and weight map MONAI's
inferer keeps for a ``--volume`` slab.

    python benchmarks/predict_activations.py --batch 2 --patch 192 208 64 --volume 512 512 160
"""

from __future__ import annotations

import argparse
import resource
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--patch", type=int, nargs=3, default=[192, 208, 64])
    ap.add_argument("--volume", type=int, nargs=3, default=[512, 512, 160])
    ap.add_argument("--classes", type=int, default=16, help="output channels (labels incl. background)")
    ap.add_argument("--network", default="unet_tct")
    args = ap.parse_args()

    import torch

    from partialseg.networks import build_network

    torch.manual_seed(0)
    net = build_network(args.network, 1, args.classes, patch_size=tuple(args.patch)).eval()
    x = torch.randn(args.batch, 1, *args.patch)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    with torch.no_grad():
        y = net(x)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    voxels = args.volume[0] * args.volume[1] * args.volume[2]
    print(f"{args.network}, sliding-window batch {args.batch} × {'×'.join(map(str, args.patch))}: forward peak "
          f"{peak - start:.0f} MB above the start ({start:.0f} MB), {time.perf_counter() - t:.1f} s, output {y.numel() * 4 / 2**20:.0f} MB")
    print(f"blending buffers of a {'×'.join(map(str, args.volume))} slab: logits {args.classes * voxels * 4 / 2**20:.0f} MB float32 "
          f"({args.classes * voxels * 2 / 2**20:.0f} MB float16), weight map {voxels * 4 / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
