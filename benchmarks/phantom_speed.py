"""Phantom speed: seconds per synthetic case (``partialseg.synthetic.make_phantom``) at three sizes.

Run: ``python benchmarks/phantom_speed.py [--cases 3] [--seed 0] [--sizes cpu mid large] [--exact]``

Sizes:

- ``cpu``: the cpu preset, 64×60×52 at 6×5.5×7 mm, painted at oversample 2 (the benchmark tables' phantoms);
- ``mid``: 256×256×80 at 1.6×1.6×5 mm;
- ``large``: 512×512×160 at 0.8×0.8×2.5 mm (the issue's size).

``mid`` and ``large`` use the gpu preset's settings (oversample 1, 1 mm blur) at that grid; the others are
the defaults. Cases ``case_seed(seed, i)``, i = 0..cases-1, one after another in this process; each size
starts with one untimed case. Grids of more than ``EXACT_MAX_VOXELS`` (2^23) fine voxels, here only
``large``, take the large-grid shortcuts; ``--exact`` turns them off (what ``large`` cost before them).

Prints per size the median and the range of the wall seconds per case, the process CPU seconds, and the
ratio of the median to the goal of 10 s per 512×512×160 case (issue 15): below 1 meets it.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from partialseg.synthetic import PRESETS, PhantomConfig, case_seed, make_phantom
from partialseg.synthetic import grid as synthetic_grid

GOAL_S = 10.0

SIZES: dict[str, PhantomConfig] = {
    "cpu": PRESETS["cpu"],
    "mid": dataclasses.replace(PRESETS["gpu"], shape=(256, 256, 80), spacing=(1.6, 1.6, 5.0)),
    "large": dataclasses.replace(PRESETS["gpu"], shape=(512, 512, 160), spacing=(0.8, 0.8, 2.5)),
}


def time_cases(cfg: PhantomConfig, seed: int, cases: int) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds of each of ``cases`` phantoms (after one untimed warm-up case)."""
    make_phantom(case_seed(seed, cases), cfg)
    wall, cpu = [], []
    for i in range(cases):
        t, c = time.perf_counter(), time.process_time()
        make_phantom(case_seed(seed, i), cfg)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=3, help="timed cases per size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    ap.add_argument("--exact", action="store_true", help="no large-grid shortcuts (every grid on the exact path)")
    args = ap.parse_args()
    if args.exact:
        synthetic_grid.EXACT_MAX_VOXELS = 2**62

    print(f"| size | grid (mm) | fine voxels | path | s / case (median, range) | CPU s / case | median / {GOAL_S:g} s |")
    print("|---|---|---:|---|---:|---:|---:|")
    for name in args.sizes:
        cfg = SIZES[name]
        fine = synthetic_grid.Grid(cfg).shape
        path = "large-grid" if synthetic_grid.is_large(fine) else "exact"
        wall, cpu = time_cases(cfg, args.seed, args.cases)
        med = statistics.median(wall)
        grid_desc = f"{'×'.join(map(str, cfg.shape))} at {'×'.join(f'{v:g}' for v in cfg.spacing)}, os {cfg.oversample}"
        print(f"| {name} | {grid_desc} | {fine[0] * fine[1] * fine[2] / 1e6:.1f} M | {path} | "
              f"{med:.2f} ({min(wall):.2f}–{max(wall):.2f}) | {statistics.median(cpu):.2f} | {med / GOAL_S:.2f} |", flush=True)


if __name__ == "__main__":
    main()
