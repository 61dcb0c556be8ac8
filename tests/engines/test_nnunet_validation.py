"""nnU-Net's final-validation summary restricted to each case's annotated classes (no nnunetv2 needed)."""

from __future__ import annotations

import json
import math

import pytest

from partialseg.engines.nnunet.annotations import CaseAnnotations
from partialseg.engines.nnunet.validation import ALL_CLASSES_FILE, annotated_summary, rewrite_validation_summary

DJSON = {"labels": {"background": 0, "liver": 1, "spleen": 2, "kidney_left": 3}, "file_ending": ".nii.gz",
         "annotated_classes": {"a": ["spleen"]}}  # case "b" has no entry: fully annotated


def _m(dice: float, fp: int) -> dict:
    return {"Dice": dice, "FP": fp}


SUMMARY = {  # what nnU-Net writes: every class on every case, against the label files
    "metric_per_case": [
        # case a: liver and kidney are not annotated, so its label file has 0 there and nnU-Net scores the
        # (correct) predictions of them as false positives
        {"reference_file": "/x/gt_segmentations/a.nii.gz", "prediction_file": "/x/validation/a.nii.gz",
         "metrics": {"1": _m(0.0, 900), "2": _m(0.8, 10), "3": _m(0.0, 300)}},
        {"reference_file": "/x/gt_segmentations/b.nii.gz", "prediction_file": "/x/validation/b.nii.gz",
         "metrics": {"1": _m(0.9, 20), "2": _m(0.6, 40), "3": _m(math.nan, 0)}},  # kidney empty in both
    ],
    "mean": {}, "foreground_mean": {},
}


def test_unannotated_pairs_leave_the_summary_and_the_means_are_recomputed():
    out = annotated_summary(SUMMARY, CaseAnnotations(DJSON), ".nii.gz")
    a, b = out["metric_per_case"]
    assert a["annotated"] == [2] and b["annotated"] == [1, 2, 3]
    assert math.isnan(a["metrics"]["1"]["Dice"]) and math.isnan(a["metrics"]["3"]["FP"])
    assert a["metrics"]["2"] == _m(0.8, 10) and b["metrics"]["1"] == _m(0.9, 20)
    # liver: case b only; spleen: both (0.8, 0.6); kidney: case b, empty in both -> NaN, out of the mean
    assert out["mean"]["1"] == {"Dice": pytest.approx(0.9), "FP": pytest.approx(20), "n_annotated": 1}
    assert out["mean"]["2"] == {"Dice": pytest.approx(0.7), "FP": pytest.approx(25), "n_annotated": 2}
    assert math.isnan(out["mean"]["3"]["Dice"]) and out["mean"]["3"]["FP"] == 0 and out["mean"]["3"]["n_annotated"] == 1
    # foreground mean over the classes with a value: (0.9 + 0.7) / 2; nnU-Net's all-class mean would count a's zeros
    assert out["foreground_mean"]["Dice"] == pytest.approx(0.8)


def test_rewrite_keeps_nnunets_summary_beside_and_is_idempotent(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(SUMMARY))
    first = rewrite_validation_summary(tmp_path, DJSON)
    same = lambda d: json.dumps(d, sort_keys=True) == json.dumps(SUMMARY, sort_keys=True)  # noqa: E731 (NaN != NaN)
    assert same(json.loads((tmp_path / ALL_CLASSES_FILE).read_text()))
    assert json.loads((tmp_path / "summary.json").read_text())["foreground_mean"]["Dice"] == pytest.approx(0.8)
    again = rewrite_validation_summary(tmp_path, DJSON)  # e.g. a repeated call: still from nnU-Net's original
    assert again["foreground_mean"] == first["foreground_mean"]
    assert same(json.loads((tmp_path / ALL_CLASSES_FILE).read_text()))
    assert rewrite_validation_summary(tmp_path / "absent", DJSON) is None


def test_region_summaries_are_refused():
    bad = {"metric_per_case": [{"reference_file": "a.nii.gz", "metrics": {"(1, 2)": _m(0.5, 1)}}]}
    with pytest.raises(ValueError, match="region-based"):
        annotated_summary(bad, CaseAnnotations(DJSON), ".nii.gz")
