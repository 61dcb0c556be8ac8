"""Choose IPnP's τ on the validation cases of a round-0 specialist (``partialseg.pseudolabel.tau``).

    python benchmarks/ipnp_tau.py RUN [--taus 0.05 0.1 0.2 0.3 0.4 0.5] [--out tau.md]

RUN is a finished ``marginal`` run (IPnP's round 0), e.g. the keep-0.33 benchmark's. For each τ: the
mean DSC of the refined pseudo-labels against the validation cases' annotations (each annotated,
present organ pseudo-labelled as if unannotated), the voxels the refinement added beyond the
specialist's argmax and the share of them inside the annotation, and the argmax voxels it removed.
Prints a Markdown table and the chosen τ (highest mean DSC).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from partialseg.evaluation.evaluate import markdown_table
from partialseg.pseudolabel.tau import choose_tau, sweep_tau


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--taus", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.4, 0.5])
    ap.add_argument("--generalist", default="random_walker")
    ap.add_argument("--options", default="{}", help="generalist options as JSON")
    ap.add_argument("--out", type=Path, default=None, help="also write the table (and the per-case rows as .json)")
    args = ap.parse_args()
    rows = sweep_tau(args.run, args.taus, generalist=args.generalist, generalist_options=json.loads(args.options))
    tau, summary = choose_tau(rows)
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    table = markdown_table(
        ["τ", "n (case × organ)", "pseudo-label DSC (%)", "specialist argmax DSC (%)", "added voxels",
         "added precision (%)", "removed voxels", "removed wrong (%)"],
        [[f"{s['tau']:g}", str(s["n"]), pct(s["dsc"]), pct(s["specialist_dsc"]), str(s["added"]),
          pct(s["added_precision"]), str(s["removed"]), pct(s["removed_wrong"] / s["removed"] if s["removed"] else None)]
         for s in summary])
    text = f"{table}\n\nchosen τ (highest mean DSC on the validation cases of {args.run}): {tau:g}\n"
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
