"""The per-step training log on disk, with O(new rows) I/O per checkpoint.

Rows are appended to ``RUN/log_rows.jsonl`` (one JSON object per optimiser step) at every checkpoint,
and the checkpoint records how many rows it covers; a resumed run keeps exactly those (rows after the
last checkpoint belong to steps it repeats). ``log.csv``, whose columns are the union of the rows'
keys, is written once, when training ends. Checkpoints therefore no longer carry the whole log, and
neither checkpoint nor log rewrites grow with the number of steps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ROWS_FILE = "log_rows.jsonl"


def append_rows(run: Path, rows: list[dict[str, Any]]) -> None:
    """Append ``rows`` to the run's row file and flush them to disk."""
    if not rows:
        return
    with (Path(run) / ROWS_FILE).open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, allow_nan=True) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def read_rows(run: Path, count: int) -> list[dict[str, Any]]:
    """The first ``count`` rows of the run's row file; the file is cut back to them."""
    path = Path(run) / ROWS_FILE
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    if len(lines) < count:
        from partialseg.errors import InputError

        raise InputError(path, f"holds {len(lines)} log rows but the checkpoint covers {count}; the run folder is damaged")
    kept = lines[:count]
    if len(lines) > count:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        tmp.replace(path)
    return [json.loads(line) for line in kept]


__all__ = ["ROWS_FILE", "append_rows", "read_rows"]


def run_summary(run: Path) -> str:
    """A few lines on a run folder: method, network, the plan (when training planned) and progress."""
    from partialseg.config import load_config

    cfg = load_config(run / "config.yaml")
    lines = [f"run {run}: method {cfg.method.name}, network {cfg.network.name}, {cfg.train.steps} steps"]
    lines.append(f"  spacing {list(cfg.data.spacing) if cfg.data.spacing else 'unset'} mm, patch "
                 f"{list(cfg.train.patch_size) if cfg.train.patch_size else 'unset'}, batch {cfg.train.batch_size}")
    if (run / "plan.json").exists():
        from partialseg.preprocessing.plan import Plan

        plan = Plan.from_dict(json.loads((run / "plan.json").read_text()))
        lines.append(f"  planned: {plan.summary()}")
        lines += [f"  note: {n}" for n in plan.notes]
    else:
        lines.append("  planned: nothing (every planned field was set)")
    rows = run / ROWS_FILE
    if rows.exists():
        n = sum(1 for _ in rows.open())
        lines.append(f"  {n} logged steps so far" + ("; model.pt written" if (run / "model.pt").exists() else ""))
    return "\n".join(lines)
