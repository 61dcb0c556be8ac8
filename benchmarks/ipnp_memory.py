"""Does an IPnP run's peak RAM stay flat as the number of cases grows?

Synthesises phantoms (``--shape`` at ``--spacing``), makes them partially labelled (keep 0.33), then for
each case count in ``--cases`` runs one short IPnP training (``partialseg train --method ipnp``: round 0
and ``--rounds`` pseudo-labelling rounds of a few steps, the default generalist) in its own process and
reads the peak memory of its process tree (``_measure``). With ``--src DIR`` the same runs are repeated with another
checkout's ``src`` (e.g. a commit from before the pseudo-labels were streamed) as the reference.

The figure that matters is the growth of the *anonymous* peak per extra case:
plain RSS also counts the memory-mapped pages of every case read so far, which the kernel reclaims. Per case the pseudo-labelling
round makes a label map (int16) and, for each accepted organ, a boolean mask; a round that keeps them
in RAM grows by about ``voxels × (2 + organs)`` bytes per case, a streamed one not at all.

    python benchmarks/ipnp_memory.py --cases 6 12 --shape 128 120 104 --spacing 3 2.75 3.5 [--method ipnp_gated] [--src /tmp/old/src]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import run_measured  # noqa: E402


def _run(cmd: list[str], src: Path, log: Path) -> tuple[float, float, float]:
    """(peak RSS MB, peak anonymous RSS MB, seconds) of one command's process tree, ``src`` first on the path."""
    m = run_measured(cmd, log, env=dict(os.environ, PYTHONPATH=str(src)))
    return m.peak_rss_mb, m.peak_anon_mb, m.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, nargs="+", default=[6, 12])
    ap.add_argument("--shape", type=int, nargs=3, default=[128, 120, 104])
    ap.add_argument("--spacing", type=float, nargs=3, default=[3.0, 2.75, 3.5])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--method", default="ipnp", help="ipnp (the paper's) or ipnp_gated (the organ gate: its pass "
                    "over every case makes the pseudo-labels too)")
    ap.add_argument("--src", type=Path, help="another checkout's src folder, run as the reference")
    ap.add_argument("--workdir", type=Path, help="keep the data and runs here (default: a temporary folder)")
    args = ap.parse_args()

    cli = [sys.executable, "-m", "partialseg.cli"]
    sets = ["train.steps=4", "train.batch_size=1", "train.patch_size=[48,48,32]", "train.val_every=0",
            "network.options={base_channels: 4}", f"data.spacing={list(args.spacing)}", "train.num_threads=1",
            "train.postprocessing=none", f"method.options.rounds={args.rounds}", "method.options.steps_per_round=4"]
    srcs = {"this checkout": HERE / "src", **({"reference": args.src.resolve()} if args.src else {})}
    with tempfile.TemporaryDirectory() as tmp_name:
        work = args.workdir or Path(tmp_name)
        work.mkdir(parents=True, exist_ok=True)
        rows = []
        for n in args.cases:
            full, partial = work / f"full_{n}", work / f"partial_{n}"
            if not partial.exists():
                shape, spacing = ",".join(map(str, args.shape)), ",".join(map(str, args.spacing))
                _run([*cli, "-q", "synth", str(full), "--cases", str(n), "--shape", shape, "--spacing", spacing, "--seed", "0"],
                     HERE / "src", work / f"synth_{n}.log")
                _run([*cli, "-q", "simulate", str(full), str(partial), "--keep", "0.33", "--seed", "0"], HERE / "src",
                     work / f"simulate_{n}.log")
            for name, src in srcs.items():
                run = work / f"run_{n}_{name.replace(' ', '_')}"
                cmd = [*cli, "-q", "train", str(partial), "--out", str(run), "--method", args.method,
                       *[x for s in sets for x in ("--set", s)]]
                if run.exists():  # a finished run would resume to nothing: measure from a fresh folder
                    shutil.rmtree(run)
                rss, anon, secs = _run(cmd, src, work / f"train_{n}_{name.replace(' ', '_')}.log")
                rows.append((name, n, rss, anon, secs))
                print(f"{name}: {n} cases, peak RSS {rss:.0f} MB (anonymous {anon:.0f} MB), {secs:.0f} s", flush=True)
    voxels = args.shape[0] * args.shape[1] * args.shape[2]
    print(f"\n{len(args.cases)} case counts, phantoms {'×'.join(map(str, args.shape))} at {args.spacing} mm "
          f"({voxels / 1e6:.2f} M voxels), {args.method}, {args.rounds} round(s), one process each\n")
    print("| code | cases | peak RSS (MB) | per extra case | peak anonymous RSS (MB) | per extra case | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in srcs:
        mine = [r for r in rows if r[0] == name]
        for i, (_, n, rss, anon, secs) in enumerate(mine):
            g = ("–", "–") if i == 0 else tuple(f"{(v - mine[0][j]) / (n - mine[0][1]):+.1f}" for j, v in ((2, rss), (3, anon)))
            print(f"| {name} | {n} | {rss:.0f} | {g[0]} | {anon:.0f} | {g[1]} | {secs:.0f} |")
    print("\nRSS counts the memory-mapped cache and pseudo-label pages a process has touched (file-backed, given back"
          "\nby the kernel under pressure); anonymous RSS is the memory the run itself holds.")


if __name__ == "__main__":
    main()
