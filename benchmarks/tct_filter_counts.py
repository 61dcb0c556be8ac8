"""How many (sample, class) consistency terms TCT's IoU filter passes per step, from a run's log.csv.

    python benchmarks/tct_filter_counts.py RUN [RUN ...]

Per run (a finished or running ``tct`` training): the mean per step of the (sample, class) terms of
organs that at least one head predicts (``con_present``), how many of them the filter kept
(``con_present_kept``), and how many the literal rule would have kept, under which two empty masks
have IoU 1 and enter theta's median (``con_present_kept_literal``; methods.md "TCT"). Both counts
come from the same steps of the same run, so they compare the two rules on identical IoUs.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def counts(run: Path) -> dict[str, float]:
    with (run / "log.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("con_present")]
    if not rows:
        raise SystemExit(f"{run}: no consistency counts in log.csv (not a tct run, or made before they were logged)")
    mean = lambda key: sum(float(r[key]) for r in rows) / len(rows)  # noqa: E731
    out = {"steps": len(rows), "present": mean("con_present"), "kept": mean("con_present_kept")}
    if rows[0].get("con_present_kept_literal"):
        out["kept_literal"] = mean("con_present_kept_literal")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+")
    args = ap.parse_args()
    print("| run | steps | present terms / step | kept (this run's rule) | kept (literal rule) |")
    print("|:---|---:|---:|---:|---:|")
    for run in args.runs:
        c = counts(run)
        lit = c.get("kept_literal")
        print(f"| {run} | {c['steps']} | {c['present']:.2f} | {c['kept']:.2f} ({100 * c['kept'] / c['present']:.0f} %) | "
              + ("–" if lit is None else f"{lit:.2f} ({100 * lit / c['present']:.0f} %)") + " |")


if __name__ == "__main__":
    main()
