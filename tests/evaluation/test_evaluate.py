import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from partialseg.cli import app
from partialseg.errors import InputError
from partialseg.evaluation import EvaluationResult, aggregate, dice, evaluate_case, evaluate_folders, format_table, hd95
from partialseg.evaluation.evaluate import CONVENTION, case_means, format_csv, mean_over_organs
from partialseg.io import load_volume, save_volume
from partialseg.labels import LabelSpace

SPACING = (2.0, 2.5, 3.0)  # the block_dataset fixture's spacing
#: HD95 penalty of the block_dataset (20x18x16 voxels): sqrt(40^2 + 45^2 + 48^2) mm, exactly 77
DIAGONAL = 77.0


def _copy_labels(src: Path, dst: Path, edit=None) -> dict[str, np.ndarray]:
    """Copy every label map of ``src`` into ``dst``; ``edit(case, array)`` may change it first."""
    out = {}
    for f in sorted(src.glob("*.nii.gz")):
        vol = load_volume(f)
        arr = vol.array.astype(np.int16)
        case = f.name[: -len(".nii.gz")]
        if edit is not None:
            arr = edit(case, arr)
        save_volume(arr, vol.affine, dst / f.name)
        out[case] = arr
    return out


def _edit_json(root: Path, **changes) -> None:
    p = root / "dataset.json"
    d = json.loads(p.read_text())
    d.update(changes)
    p.write_text(json.dumps(d))


def _perturbed(case: str, arr: np.ndarray) -> np.ndarray:
    arr = arr.copy()
    if case == "case_000":  # liver: keep only the first axial slab of its box
        zs = np.nonzero((arr == 1).any(axis=(0, 1)))[0]
        arr[:, :, zs[1]:][arr[:, :, zs[1]:] == 1] = 0
    if case == "case_001":  # kidney_left: deleted
        arr[arr == 4] = 0
    return arr


# ---- evaluate_case / aggregate --------------------------------------------------------------
def test_evaluate_case_filters_annotated(small_space):
    ref = np.zeros((12, 12, 10), np.int16)
    ref[1:4, 1:4, 1:4] = 1
    ref[6:9, 6:9, 5:8] = 2
    pred = ref.copy()
    pred[6:9, 6:9, 5:8] = 0
    pred[1:5, 1:4, 1:4] = 1  # liver one voxel too long along axis 0
    out = evaluate_case(pred, ref, small_space, SPACING)
    assert list(out) == ["liver", "spleen", "kidney_right", "kidney_left"]
    assert out["liver"]["dsc"] == pytest.approx(2 * 27 / (27 + 36))
    assert out["liver"]["hd95"] == pytest.approx(hd95(pred == 1, ref == 1, SPACING))
    diagonal = math.sqrt((12 * 2.0) ** 2 + (12 * 2.5) ** 2 + (10 * 3.0) ** 2)
    assert out["spleen"]["dsc"] == 0.0 and out["spleen"]["pred_empty"] and out["spleen"]["penalised"]
    assert out["spleen"]["hd95"] == pytest.approx(diagonal)  # missed: the field-of-view diagonal
    kr = out["kidney_right"]  # absent from both: undefined, not a perfect score
    assert math.isnan(kr["dsc"]) and math.isnan(kr["hd95"]) and kr["pred_empty"] and kr["ref_empty"]
    assert not kr["penalised"] and not out["liver"]["penalised"]
    part = evaluate_case(pred, ref, small_space, SPACING, annotated=frozenset({1, 3}))
    assert list(part) == ["liver", "kidney_right"]
    with pytest.raises(ValueError, match="outside"):
        evaluate_case(pred, ref, small_space, SPACING, annotated=frozenset({5}))


def test_aggregate_and_mean_row():
    nan = float("nan")
    per_case = {
        "a": {
            "liver": {"dsc": 0.8, "hd95": 4.0, "pred_empty": False, "ref_empty": False, "penalised": False},
            "spleen": {"dsc": 0.0, "hd95": 100.0, "pred_empty": True, "ref_empty": False, "penalised": True},
        },
        "b": {
            "liver": {"dsc": 0.6, "hd95": 6.0, "pred_empty": False, "ref_empty": False, "penalised": False},
            "spleen": {"dsc": nan, "hd95": nan, "pred_empty": True, "ref_empty": True, "penalised": False},
        },
        # spurious; JSON null is how a stored nan comes back, but this one is a penalty
        "c": {"liver": {"dsc": 0.0, "hd95": 90.0, "pred_empty": False, "ref_empty": True, "penalised": True}},
        "d": {"liver": {"dsc": None, "hd95": None, "pred_empty": True, "ref_empty": True, "penalised": False}},
    }
    agg = aggregate(per_case, ["liver", "spleen", "kidney_left"])
    liver, spleen = agg["liver"], agg["spleen"]
    # liver: a, b, c defined (d both empty): DSC (0.8 + 0.6 + 0) / 3, HD95 (4 + 6 + 90) / 3
    assert liver["n_cases"] == 4 and liver["n_evaluated"] == 3 and liver["n_both_empty"] == 1
    assert liver["dsc_mean"] == pytest.approx(1.4 / 3) and liver["hd95_mean"] == pytest.approx(100 / 3)
    assert liver["hd95_std"] == pytest.approx(np.std([4.0, 6.0, 90.0]))
    assert (liver["n_missed"], liver["n_spurious"]) == (0, 1)
    # spleen: only a is defined (missed), b is left out
    assert spleen["dsc_mean"] == 0.0 and spleen["hd95_mean"] == 100.0
    assert (spleen["n_evaluated"], spleen["n_both_empty"], spleen["n_missed"], spleen["n_spurious"]) == (1, 1, 1, 0)
    assert agg["kidney_left"]["n_cases"] == 0 and agg["kidney_left"]["dsc_mean"] is None
    mean = mean_over_organs(agg)
    assert mean["dsc_mean"] == pytest.approx((1.4 / 3 + 0.0) / 2) and mean["n_organs"] == 2
    assert mean["hd95_mean"] == pytest.approx((100 / 3 + 100.0) / 2)
    assert (mean["n_cases"], mean["n_evaluated"], mean["n_both_empty"], mean["n_missed"], mean["n_spurious"]) == (6, 4, 2, 1, 1)
    assert list(aggregate(per_case)) == ["liver", "spleen"]
    table = format_table(EvaluationResult.from_per_case(per_case, ["liver", "spleen", "kidney_left"]))
    assert "| kidney_left | 0 | – | – | 0 | 0 | 0 |" in table and "| **mean** | 6 | 23.33 | 66.67 | 1 | 1 | 2 |" in table
    cm = case_means(per_case)
    assert cm["a"] == {"dsc": pytest.approx(0.4), "hd95": pytest.approx(52.0)}
    assert cm["b"] == {"dsc": 0.6, "hd95": 6.0} and math.isnan(cm["d"]["dsc"])


# ---- evaluate_folders -------------------------------------------------------------------------
def test_evaluate_folders_full_reference(block_dataset, small_space, tmp_path):
    refs = _copy_labels(block_dataset / "labelsTr", tmp_path / "ref")
    preds = _copy_labels(block_dataset / "labelsTr", tmp_path / "pred", _perturbed)
    out = tmp_path / "res" / "results.json"
    result = evaluate_folders(tmp_path / "pred", tmp_path / "ref", out=out, dataset=block_dataset)
    assert result.organs == small_space.names
    assert list(result.per_case) == ["case_000", "case_001", "case_002"]

    exp_liver = [dice(preds[c] == 1, refs[c] == 1) for c in refs]
    assert exp_liver[0] < 1.0 and exp_liver[1:] == [1.0, 1.0]
    assert result.per_case["case_000"]["liver"]["dsc"] == pytest.approx(exp_liver[0])
    assert result.per_case["case_000"]["liver"]["hd95"] == pytest.approx(
        hd95(preds["case_000"] == 1, refs["case_000"] == 1, SPACING)
    )
    assert result.per_organ["liver"]["dsc_mean"] == pytest.approx(np.mean(exp_liver))
    kl = result.per_organ["kidney_left"]
    assert kl["n_cases"] == 3 and kl["n_missed"] == 1 and kl["n_evaluated"] == 3 and kl["n_both_empty"] == 0
    assert kl["dsc_mean"] == pytest.approx(2 / 3)
    assert kl["hd95_mean"] == pytest.approx(DIAGONAL / 3)  # the missed case counts with the penalty
    assert result.per_case["case_001"]["kidney_left"]["hd95"] == pytest.approx(DIAGONAL)
    assert result.per_organ["spleen"]["dsc_mean"] == 1.0 and result.per_organ["spleen"]["hd95_mean"] == 0.0
    assert result.mean["n_missed"] == 1 and result.counts["missed"] == 1 and result.counts["spurious"] == 0
    assert result.mean["dsc_mean"] == pytest.approx((np.mean(exp_liver) + 1 + 1 + 2 / 3) / 4)
    liver_hd = hd95(preds["case_000"] == 1, refs["case_000"] == 1, SPACING) / 3
    assert result.mean["hd95_mean"] == pytest.approx((liver_hd + 0 + 0 + DIAGONAL / 3) / 4)
    assert result.settings["annotated_from"].startswith("all classes")
    assert result.spacings["case_000"] == pytest.approx(SPACING)

    # files: JSON (nan -> null), Markdown, CSV
    data = json.loads(out.read_text())
    assert data["per_case"]["case_001"]["organs"]["kidney_left"]["hd95"] == pytest.approx(DIAGONAL)
    assert data["per_case"]["case_001"]["organs"]["kidney_left"]["pred_empty"] is True
    assert data["per_organ"]["kidney_left"]["n_missed"] == 1 and data["convention"] == CONVENTION
    assert data["counts"]["cases"] == 3 and data["settings"]["label_space"] == list(small_space.names)
    md = out.with_suffix(".md").read_text()
    assert md.startswith("| organ | n | DSC (%) | HD95 (mm) | missed | spurious | both empty |")
    assert "| kidney_left | 3 | 66.67 ± 47.14 |" in md and "| **mean** | 12 |" in md
    rows = out.with_suffix(".csv").read_text().splitlines()
    assert rows[0].startswith("organ,n_cases,dsc_mean") and len(rows) == 1 + 4 + 1
    assert rows[4].startswith("kidney_left,3,0.666667,")
    assert format_csv(result) == out.with_suffix(".csv").read_text()


def test_evaluate_folders_partial_reference(block_dataset, tmp_path):
    # case_001 annotates only liver and spleen; its kidneys are 0 in labelsTr, as after simulation
    _edit_json(block_dataset, annotated_classes={"case_001": ["liver", "spleen"]})
    lab = block_dataset / "labelsTr" / "case_001.nii.gz"
    vol = load_volume(lab)
    save_volume(np.where(vol.array > 2, 0, vol.array), vol.affine, lab, overwrite=True)
    _copy_labels(block_dataset / "labelsTr", tmp_path / "pred", _perturbed)
    # the same folder through a different spelling of the path still counts as labelsTr
    ref_dir = block_dataset / "imagesTr" / ".." / "labelsTr"
    result = evaluate_folders(tmp_path / "pred", ref_dir, out=tmp_path / "r.json", dataset=block_dataset)
    assert set(result.per_case["case_001"]) == {"liver", "spleen"}
    assert result.per_organ["kidney_left"]["n_cases"] == 2
    assert result.per_organ["kidney_left"]["n_missed"] == 0  # the deletion was in an unannotated organ
    assert result.per_organ["liver"]["n_cases"] == 3
    assert result.settings["annotated_from"].startswith("dataset.json")
    # full references of the same dataset: every class annotated, and evaluating labelsTr says they exist
    _copy_labels(block_dataset / "labelsTr", block_dataset / "labelsRef")
    _edit_json(block_dataset, reference_labels="labelsRef")
    ref_full = evaluate_folders(tmp_path / "pred", block_dataset / "labelsRef", out=tmp_path / "g.json",
                                dataset=block_dataset)
    assert ref_full.per_organ["kidney_left"]["n_cases"] == 3 and not ref_full.warnings
    again = evaluate_folders(tmp_path / "pred", ref_dir, out=tmp_path / "h.json", dataset=block_dataset)
    assert any("labelsRef" in w for w in again.warnings)
    # without --dataset the same folder is a full reference in the registered label space
    full = evaluate_folders(tmp_path / "pred", ref_dir, out=tmp_path / "f.json", label_space_name="amos15")
    assert len(full.per_case["case_001"]) == 15
    assert any("absent from every reference" in w for w in full.warnings)


def test_extra_predictions_are_ignored_with_a_warning(block_dataset, tmp_path):
    _copy_labels(block_dataset / "labelsTr", tmp_path / "pred")
    extra = load_volume(tmp_path / "pred" / "case_000.nii.gz")
    save_volume(extra.array, extra.affine, tmp_path / "pred" / "case_999.nii.gz")
    result = evaluate_folders(
        tmp_path / "pred", block_dataset / "labelsTr", out=tmp_path / "r.json", dataset=block_dataset
    )
    assert list(result.per_case) == ["case_000", "case_001", "case_002"]
    assert any("case_999" in w for w in result.warnings)
    assert "warning:" in format_table(result) and "case_999" in format_table(result)
    assert result.mean["dsc_mean"] == 1.0


def test_errors_name_the_file(block_dataset, tmp_path):
    ref = block_dataset / "labelsTr"
    pred = tmp_path / "pred"
    _copy_labels(ref, pred)
    out = tmp_path / "r.json"
    kw = dict(out=out, dataset=block_dataset)

    (pred / "case_002.nii.gz").unlink()
    with pytest.raises(InputError, match="does not exist") as e:
        evaluate_folders(pred, ref, **kw)
    assert e.value.path == pred / "case_002.nii.gz"

    vol = load_volume(ref / "case_002.nii.gz")
    save_volume(vol.array[:, :, :-1], vol.affine, pred / "case_002.nii.gz")
    with pytest.raises(InputError, match="shape") as e:
        evaluate_folders(pred, ref, **kw)
    assert e.value.path == pred / "case_002.nii.gz"

    save_volume(vol.array, vol.affine @ np.diag([1.0, 1.0, 2.0, 1.0]), pred / "case_002.nii.gz", overwrite=True)
    with pytest.raises(InputError, match="affine"):
        evaluate_folders(pred, ref, **kw)

    bad = vol.array.astype(np.int16)
    bad[0, 0, 0] = 7
    save_volume(bad, vol.affine, pred / "case_002.nii.gz", overwrite=True)
    with pytest.raises(InputError, match="outside the label space") as e:
        evaluate_folders(pred, ref, **kw)
    assert e.value.path == pred / "case_002.nii.gz"
    assert not out.exists()  # nothing written on failure

    save_volume(vol.array, vol.affine, pred / "case_002.nii.gz", overwrite=True)
    with pytest.raises(InputError, match=r"\.json"):
        evaluate_folders(pred, ref, out=tmp_path / "r.md", dataset=block_dataset)
    with pytest.raises(InputError, match="folder does not exist"):
        evaluate_folders(tmp_path / "nope", ref, **kw)
    with pytest.raises(InputError, match="unknown label space"):
        evaluate_folders(pred, ref, out=out, label_space_name="nope")
    with pytest.raises(InputError, match="no reference label maps"):
        evaluate_folders(pred, block_dataset, **kw)


def test_cli_round_trip(block_dataset, tmp_path):
    _copy_labels(block_dataset / "labelsTr", tmp_path / "pred", _perturbed)
    out = tmp_path / "x" / "results.json"
    runner = CliRunner()
    res = runner.invoke(
        app,
        ["evaluate", str(tmp_path / "pred"), str(block_dataset / "labelsTr"), "--out", str(out),
         "--dataset", str(block_dataset)],
    )
    assert res.exit_code == 0, res.output
    assert "| kidney_left | 3 |" in res.output and f"wrote {out}" in res.output
    assert out.exists() and out.with_suffix(".md").exists() and out.with_suffix(".csv").exists()
    assert json.loads(out.read_text())["per_organ"]["kidney_left"]["n_missed"] == 1

    (tmp_path / "pred" / "case_001.nii.gz").unlink()
    res = runner.invoke(app, ["evaluate", str(tmp_path / "pred"), str(block_dataset / "labelsTr"),
                              "--out", str(out), "--dataset", str(block_dataset)])
    assert res.exit_code == 2
    assert "case_001.nii.gz" in res.output and "error:" in res.output


def test_label_space_from_registry(tmp_path):
    space = LabelSpace.named("amos15")
    ref = np.zeros((10, 10, 8), np.int16)
    ref[2:5, 2:5, 2:5] = space.index("pancreas")
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    save_volume(ref, affine, tmp_path / "ref" / "c1.nii.gz")
    save_volume(ref, affine, tmp_path / "pred" / "c1.nii.gz")
    result = evaluate_folders(tmp_path / "pred", tmp_path / "ref", out=tmp_path / "r.json")
    assert result.per_case["c1"]["pancreas"] == {"dsc": 1.0, "hd95": 0.0, "pred_empty": False, "ref_empty": False,
                                                 "penalised": False}
    assert result.per_organ["liver"]["n_both_empty"] == 1 and result.per_organ["liver"]["dsc_mean"] is None
