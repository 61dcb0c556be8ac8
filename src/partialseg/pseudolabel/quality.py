"""IPnP's pseudo-label quality table per round (``RUN/pseudo_quality.csv`` / ``.md`` / ``.png``).

Where the dataset has reference labels for its training cases (the benchmarks' simulated partial
labels), each pseudo-label is scored against them next to the specialist prediction that prompted it.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.io import write_text_atomic

__all__ = ["decisions_rounds", "pseudo_label_quality", "write_quality"]


def pseudo_label_quality(pseudo: np.ndarray, specialist: np.ndarray, ref: np.ndarray) -> dict[str, float | int]:
    """One pseudo-label against the reference, next to the specialist's argmax that prompted it.

    ``added`` = pseudo-labelled voxels outside the specialist's argmax (what only the generalist can
    contribute; none at all when τ ≥ 0.5), ``added_correct`` = those inside the reference;
    ``removed`` = argmax voxels the refinement dropped, ``removed_wrong`` = those outside the reference.
    """
    from partialseg.evaluation.metrics import dice

    added = pseudo & ~specialist
    removed = specialist & ~pseudo
    return {"dsc": dice(pseudo, ref), "specialist_dsc": dice(specialist, ref),
            "added": int(np.count_nonzero(added)), "added_correct": int(np.count_nonzero(added & ref)),
            "removed": int(np.count_nonzero(removed)), "removed_wrong": int(np.count_nonzero(removed & ~ref))}


def decisions_rounds(run: Path, rounds: int) -> dict[int, dict[str, Any]]:
    out = {}
    for r in range(1, rounds + 1):
        f = run / "pseudo" / f"round_{r}" / "decisions.json"
        if f.exists():
            out[r] = json.loads(f.read_text())
    return out


def write_quality(run: Path, rows: list[dict[str, Any]], decisions: dict[int, dict[str, Any]], space) -> None:
    """Per round and organ: mean pseudo-label DSC (vs reference) and how many were accepted/rejected."""
    from partialseg.evaluation.evaluate import markdown_table

    table: list[dict[str, Any]] = []
    statuses = ("accepted", "rejected_entropy", "rejected_gate", "empty_after_refinement", "no_prediction", "disabled")
    for r, dec in sorted(decisions.items()):
        for organ in space.names:
            counts = {s: 0 for s in statuses}
            for per_case in dec.values():
                d = per_case.get(organ)
                if d:
                    counts[d["status"]] += 1
            sel = [row for row in rows if row["round"] == r and row["organ"] == organ]
            added = sum(x["added"] for x in sel)
            correct = sum(x["added_correct"] for x in sel)
            table.append({"round": r, "organ": organ,
                          "pseudo_dsc": float(np.mean([x["dsc"] for x in sel])) if sel else None,
                          "specialist_dsc": float(np.mean([x["specialist_dsc"] for x in sel])) if sel else None,
                          "n_pseudo": len(sel), "added": added,
                          "added_precision": correct / added if added else None,
                          "removed": sum(x["removed"] for x in sel),
                          "removed_wrong": sum(x["removed_wrong"] for x in sel), **counts})
    if not table:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(table[0]))
    w.writeheader()
    w.writerows(table)
    write_text_atomic(buf.getvalue(), run / "pseudo_quality.csv")
    header = ["round", "organ", "pseudo DSC", "specialist DSC", "n", "added voxels", "added precision",
              "removed voxels", "removed wrong", *statuses]

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f}"

    body = [[str(t["round"]), t["organ"], pct(t["pseudo_dsc"]), pct(t["specialist_dsc"]), str(t["n_pseudo"]),
             str(t["added"]), pct(t["added_precision"]), str(t["removed"]), str(t["removed_wrong"]),
             *(str(t[s]) for s in statuses)] for t in table]
    lines = []
    for r in sorted(decisions):
        sel = [x for x in rows if x["round"] == r]
        if sel:
            lines.append(f"round {r}: {len(sel)} pseudo-labels (case × organ), mean DSC {100 * np.mean([x['dsc'] for x in sel]):.1f} %"
                         f" vs {100 * np.mean([x['specialist_dsc'] for x in sel]):.1f} % for the specialist's own prediction")
            added = sum(x["added"] for x in sel)
            correct = sum(x["added_correct"] for x in sel)
            removed = sum(x["removed"] for x in sel)
            wrong = sum(x["removed_wrong"] for x in sel)
            lines.append(f"round {r}: the refinement added {added} voxels beyond the specialist's argmax"
                         + (f" ({100 * correct / added:.1f} % of them in the reference)" if added else "")
                         + f" and removed {removed}" + (f" ({100 * wrong / removed:.1f} % of them outside it)" if removed else ""))
    # a mean over a changing set of organs can fall while every organ improves: also compare on the
    # organs pseudo-labelled in every round
    common = None
    for r in sorted(decisions):
        got = {t["organ"] for t in table if t["round"] == r and t["pseudo_dsc"] is not None}
        common = got if common is None else common & got
    if common and len(decisions) > 1:
        per = [f"round {r} {100 * np.mean([t['pseudo_dsc'] for t in table if t['round'] == r and t['organ'] in common]):.1f} %"
               for r in sorted(decisions)]
        lines.append(f"on the {len(common)} organs pseudo-labelled in every round (mean of organ means): " + ", ".join(per))
    notes = ("\n'pseudo DSC': the pseudo-labels against the reference labels; 'specialist DSC': the argmax of the "
             "specialist that prompted them, on the same cases and organs. 'added voxels': pseudo-labelled voxels "
             "outside the specialist's argmax (what the generalist contributed), 'added precision': the share of them "
             "inside the reference; 'removed': argmax voxels the refinement dropped, 'removed wrong': those outside "
             "the reference. Counts are case × organ decisions.\n")
    write_text_atomic("# Pseudo-label quality per round\n\n" + "\n".join(f"- {x}" for x in lines) + "\n\n"
                      + markdown_table(header, body) + "\n" + notes, run / "pseudo_quality.md")
    _plot_quality(table, run / "pseudo_quality.png")


def _plot_quality(table: list[dict[str, Any]], path: Path) -> None:

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = sorted({t["round"] for t in table})
    organs = sorted({t["organ"] for t in table})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for organ in organs:
        ys = [next((t["pseudo_dsc"] for t in table if t["round"] == r and t["organ"] == organ), None) for r in rounds]
        if any(y is not None for y in ys):
            ax.plot(rounds, [float("nan") if y is None else y for y in ys], "o-", alpha=0.5, label=organ)
    means = []
    for r in rounds:
        vals = [t["pseudo_dsc"] for t in table if t["round"] == r and t["pseudo_dsc"] is not None]
        means.append(float(np.mean(vals)) if vals else float("nan"))
    ax.plot(rounds, means, "k-", lw=3, label="mean")
    spec = []
    for r in rounds:
        vals = [t["specialist_dsc"] for t in table if t["round"] == r and t["specialist_dsc"] is not None]
        spec.append(float(np.mean(vals)) if vals else float("nan"))
    ax.plot(rounds, spec, "k--", lw=2, label="specialist's own (mean)")
    ax.set_xlabel("round")
    ax.set_ylabel("pseudo-label DSC vs reference")
    ax.set_xticks(rounds)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    from partialseg.io import save_figure

    save_figure(fig, path)
