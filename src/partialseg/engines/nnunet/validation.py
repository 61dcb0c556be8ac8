"""nnU-Net's final validation scored against partial labels: each case's annotated organs only.

nnU-Net v2 (Isensee et al. 2021, Nature Methods) ends training by predicting the fold's validation cases and
scoring them with ``compute_metrics_on_folder`` against their label files, every class on every case. With
partial labels, an organ a case does not annotate is 0 in its label file, so a correct prediction of it counts
as false positives and its Dice as 0 (or, predicted absent, as NaN "both empty"): the summary mixes real
errors with missing annotations. :func:`annotated_summary` keeps, per case, only the classes of its Phi
(``annotated_classes`` in ``dataset.json``; a case without an entry is fully annotated), as partialseg's own
evaluation does (methods.md, "Evaluation"); the trainers write it as ``validation/summary.json`` and keep
nnU-Net's all-class version beside it as ``summary_all_classes.json``.

No nnunetv2 import: the summary is nnU-Net's JSON, the rules are partialseg's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from partialseg.engines.nnunet.annotations import CaseAnnotations
from partialseg.io import write_json_atomic

__all__ = ["ALL_CLASSES_FILE", "annotated_summary", "rewrite_validation_summary"]

#: where nnU-Net's own all-class summary is kept
ALL_CLASSES_FILE = "summary_all_classes.json"


def _case_id(entry: Mapping[str, Any], file_ending: str) -> str:
    name = Path(entry["reference_file"]).name
    return name[: -len(file_ending)] if file_ending and name.endswith(file_ending) else name.split(".")[0]


def _nanmean(values: list[float]) -> float:
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(kept) / len(kept) if kept else math.nan


def annotated_summary(summary: Mapping[str, Any], annotations: CaseAnnotations, file_ending: str) -> dict[str, Any]:
    """nnU-Net's ``summary.json`` dict with every (case, class) pair outside the case's Phi set to NaN,
    and ``mean`` / ``foreground_mean`` recomputed from what is left.

    ``mean[c]``: the mean of each metric over the cases that annotate ``c`` (NaN-skipping, as nnU-Net's, so a
    pair empty in both prediction and reference stays out), with ``n_annotated`` cases; ``foreground_mean``:
    the mean over the classes some validation case annotates (nnU-Net's is over all classes). Region-based
    summaries (keys like ``"(1, 2)"``) are not supported: partialseg's trainers train labels.
    """
    per_case = []
    for entry in summary["metric_per_case"]:
        phi = annotations.phi(_case_id(entry, file_ending))
        metrics = {}
        for key, values in entry["metrics"].items():
            if not str(key).lstrip("-").isdigit():
                raise ValueError(f"region-based nnU-Net summary (class key {key!r}): not supported for partial labels")
            metrics[key] = dict(values) if int(key) in phi else {m: math.nan for m in values}
        per_case.append({**entry, "metrics": metrics, "annotated": sorted(int(c) for c in phi)})
    keys = list(per_case[0]["metrics"]) if per_case else []
    names = list(per_case[0]["metrics"][keys[0]]) if keys else []
    means: dict[str, dict[str, float]] = {}
    for key in keys:
        annotated = [e["metrics"][key] for e in per_case if int(key) in e["annotated"]]
        means[key] = {m: _nanmean([v[m] for v in annotated]) for m in names}
        means[key]["n_annotated"] = len(annotated)
    foreground = {m: _nanmean([means[k][m] for k in keys if int(k) != 0 and means[k]["n_annotated"]]) for m in names}
    return {"metric_per_case": per_case, "mean": means, "foreground_mean": foreground,
            "note": "partialseg: each case scored on its annotated classes only (annotated_classes in dataset.json); "
                    f"nnU-Net's all-class summary is {ALL_CLASSES_FILE}"}


def rewrite_validation_summary(validation_folder: str | Path, dataset_json: Mapping[str, Any]) -> dict[str, Any] | None:
    """After nnU-Net's final validation: move its ``summary.json`` to :data:`ALL_CLASSES_FILE` and write the
    annotated-only one in its place (atomically). Returns it; None when there is no summary (validation off)."""
    folder = Path(validation_folder)
    src = folder / "summary.json"
    if not src.exists():
        return None
    raw = json.loads(src.read_text())
    if "note" in raw and str(raw["note"]).startswith("partialseg:"):  # already rewritten (a repeated --val)
        raw = json.loads((folder / ALL_CLASSES_FILE).read_text())
    out = annotated_summary(raw, CaseAnnotations(dataset_json), str(dataset_json.get("file_ending", "")))
    write_json_atomic(raw, folder / ALL_CLASSES_FILE)
    write_json_atomic(out, src)
    return out
