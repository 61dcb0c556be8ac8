"""Per-organ DSC of a generalist given box prompts taken from the ground truth.

For every organ present in a case: the paper's two prompts from the reference mask
(``box_prompts_from_mask(gt == k, padding=P)``: median axial and sagittal slices, bounding box +
P voxels), the generalist's mask, its DSC against the reference, and the wall time of the call.
Datasets: synthetic phantoms (``make_phantom(case_seed(seed, i), PRESETS["cpu"])``) and the real
CT in ``shared/data/totalseg_example`` (labels are TotalSegmentator output, AMOS ids; esophagus
absent). Organs absent from a case are skipped, not scored.

    python benchmarks/generalist_dsc.py                            # default backend, 4 phantoms + real CT
    python benchmarks/generalist_dsc.py --cases 2 --no-real
    python benchmarks/generalist_dsc.py --options '{"gamma": 0.1}'
    python benchmarks/generalist_dsc.py --backend nninteractive --options '{"model_folder": "..."}'
    # a boxnet an IPnP benchmark run trained; --seed 100003 draws the benchmark's *test* phantoms,
    # which it never saw (seed 0 would be its own training cases); it refuses the real CT's spacing
    python benchmarks/generalist_dsc.py --backend boxnet --seed 100003 --cases 10 \
        --options '{"model_folder": "BENCH/runs/keep0.33/ipnp__.../generalist"}'
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.evaluation.metrics import dice
from partialseg.generalist import box_prompts_from_mask, build_generalist
from partialseg.registry import AMOS15
from partialseg.synthetic import PRESETS, case_seed, make_phantom

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalseg_example"


def run_case(gen: Any, image: np.ndarray, labels: np.ndarray, spacing: tuple[float, ...], padding: int) -> dict[int, tuple[float, float]]:
    """{organ id: (DSC, seconds)} for every organ present in ``labels``."""
    out = {}
    for k in range(1, len(AMOS15) + 1):
        gt = labels == k
        if not gt.any():
            continue
        prompts = box_prompts_from_mask(gt, padding=padding)
        t = time.perf_counter()
        mask = gen.segment(image, spacing, prompts)
        out[k] = (dice(mask, gt), time.perf_counter() - t)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default=None, help="generalist name (default: the default backend)")
    ap.add_argument("--options", default="{}", help="JSON dict of backend options")
    ap.add_argument("--cases", type=int, default=4, help="synthetic phantoms (cpu preset)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--padding", type=int, default=5, help="box padding in voxels")
    ap.add_argument("--no-real", action="store_true", help="skip the real CT")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = ap.parse_args(argv)

    gen = build_generalist(args.backend, **json.loads(args.options))
    results: dict[str, dict[int, list[tuple[float, float]]]] = {}

    synth: dict[int, list[tuple[float, float]]] = {}
    for i in range(args.cases):
        ph = make_phantom(case_seed(args.seed, i), PRESETS["cpu"])
        sp = tuple(float(s) for s in PRESETS["cpu"].spacing)
        for k, v in run_case(gen, ph.image, ph.labels, sp, args.padding).items():
            synth.setdefault(k, []).append(v)
    if args.cases:
        results[f"synthetic (cpu preset, {args.cases} cases)"] = synth

    if not args.no_real and (REAL / "ct.nii.gz").exists():
        from partialseg.io import load_volume

        ct = load_volume(REAL / "ct.nii.gz", dtype=np.float32)
        lab = load_volume(REAL / "labels.nii.gz")
        from partialseg.errors import InputError

        try:
            real = {k: [v] for k, v in run_case(gen, ct.array, lab.array, ct.spacing, args.padding).items()}
            results["real CT (totalseg_example)"] = real
        except InputError as e:  # boxnet at another spacing than it was trained at
            print(f"real CT skipped: {e}", file=sys.stderr)

    names = list(results)
    print(f"generalist: {gen!r}  options: {args.options}  box padding: {args.padding} voxels")
    head = f"| {'organ':<20} |" + "".join(f" {n} DSC | ms/organ |" for n in names)
    print(head)
    print("|" + "---|" * (1 + 2 * len(names)))
    big = {"liver", "spleen", "kidney_right", "kidney_left", "urinary_bladder"}
    summary: dict[str, dict[str, list[float]]] = {n: {"all": [], "big": []} for n in names}
    for k in range(1, len(AMOS15) + 1):
        row = f"| {AMOS15[k - 1]:<20} |"
        for n in names:
            vals = results[n].get(k, [])
            if not vals:
                row += " absent | |"
                continue
            d = [v[0] for v in vals]
            ms = statistics.median(v[1] for v in vals) * 1000
            summary[n]["all"] += d
            if AMOS15[k - 1] in big:
                summary[n]["big"] += d
            sd = f" ± {statistics.pstdev(d):.3f}" if len(d) > 1 else ""
            row += f" {statistics.mean(d):.3f}{sd} | {ms:.0f} |"
        print(row)
    for n in names:
        s = summary[n]
        print(f"{n}: mean DSC all organs {statistics.mean(s['all']):.3f}; "
              f"liver/spleen/kidneys/bladder {statistics.mean(s['big']):.3f}" if s["big"] else "")
    if args.json:
        args.json.write_text(json.dumps({n: {AMOS15[k - 1]: v for k, v in r.items()} for n, r in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
