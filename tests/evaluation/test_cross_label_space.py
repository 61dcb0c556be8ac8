"""A model evaluated on a dataset with another label space (TCT Table 3): classes matched by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from partialseg.cli import app
from partialseg.errors import InputError
from partialseg.evaluation.evaluate import evaluate_folders, label_space_match
from partialseg.io import save_volume
from partialseg.labels import LabelSpace
from tests.conftest import write_block_dataset
from tests.methods.test_tct import TINY

MODEL = LabelSpace(("spleen", "liver", "pancreas"))
REF = LabelSpace(("liver", "spleen", "kidney_left"))


def test_match_by_name():
    space, pred_lut, ref_lut, unknown, extra = label_space_match(MODEL, REF)
    assert space == ("liver", "spleen")
    np.testing.assert_array_equal(pred_lut, [0, 2, 1, 0])  # spleen -> 2, liver -> 1, pancreas -> background
    np.testing.assert_array_equal(ref_lut, [0, 1, 2, 0])
    assert unknown == ["kidney_left"] and extra == ["pancreas"]


def _labels_json(folder, space):
    (folder / "labels.json").write_text(json.dumps({"labels": {"background": 0, **{n: i + 1 for i, n in enumerate(space.names)}}}))


def test_folder_evaluation_with_the_predictions_label_space(tmp_path):
    affine = np.eye(4)
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[0:4, 0:4, 0:4] = 1  # liver
    ref[5:9, 5:9, 0:4] = 2  # spleen
    ref[0:3, 6:9, 6:9] = 3  # kidney_left: unknown to the model
    pred = np.zeros_like(ref)
    pred[0:4, 0:4, 0:4] = 2  # liver in the model's numbering, exact
    pred[5:9, 5:9, 0:2] = 1  # spleen, half of it: DSC 2*32/(32+64) = 2/3
    pred[0:3, 6:9, 6:9] = 3  # pancreas where the kidney is: background for this reference
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    save_volume(ref, affine, tmp_path / "r" / "c.nii.gz")
    save_volume(pred, affine, tmp_path / "p" / "c.nii.gz")
    ds_space = tmp_path / "ds"
    write_block_dataset(ds_space, REF, n_cases=1)  # only for its dataset.json label space
    _labels_json(tmp_path / "p", MODEL)
    res = evaluate_folders(tmp_path / "p", tmp_path / "r", out=tmp_path / "res.json", dataset=ds_space)
    assert res.organs == ("liver", "spleen")
    assert res.per_organ["liver"]["dsc_mean"] == pytest.approx(1.0)
    assert res.per_organ["spleen"]["dsc_mean"] == pytest.approx(2 / 3)
    assert res.mean["dsc_mean"] == pytest.approx((1 + 2 / 3) / 2)
    assert res.settings["not_in_model"] == ["kidney_left"] and res.settings["not_in_reference"] == ["pancreas"]
    assert any("kidney_left" in w for w in res.warnings)
    # the same maps read as the reference's numbering would score liver and spleen 0
    (tmp_path / "p" / "labels.json").unlink()
    plain = evaluate_folders(tmp_path / "p", tmp_path / "r", out=tmp_path / "plain.json", dataset=ds_space)
    assert plain.per_organ["liver"]["dsc_mean"] == 0.0


def test_no_shared_class_is_an_error(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    save_volume(np.zeros((4, 4, 4), np.uint8), np.eye(4), tmp_path / "r" / "c.nii.gz")
    save_volume(np.zeros((4, 4, 4), np.uint8), np.eye(4), tmp_path / "p" / "c.nii.gz")
    _labels_json(tmp_path / "p", LabelSpace(("heart",)))
    with pytest.raises(InputError, match="share no name"):
        evaluate_folders(tmp_path / "p", tmp_path / "r", out=tmp_path / "res.json", label_space_name="amos15")
    (tmp_path / "p" / "labels.json").write_text('{"labels": {"background": 0, "heart": 2}}')
    with pytest.raises(InputError, match="without gaps"):
        evaluate_folders(tmp_path / "p", tmp_path / "r", out=tmp_path / "res2.json", label_space_name="amos15")


def test_cli_train_predict_evaluate_on_an_unseen_label_space(tmp_path, small_space):
    train_ds = write_block_dataset(tmp_path / "train", small_space, n_cases=3)
    unseen = write_block_dataset(tmp_path / "unseen", LabelSpace(("spleen", "liver", "pancreas")), n_cases=2, seed=3)
    runner = CliRunner()
    args = ["train", str(train_ds), "--out", str(tmp_path / "run"), "--method", "marginal"]
    for s in TINY:
        args += ["--set", s]
    assert runner.invoke(app, args).exit_code == 0
    r = runner.invoke(app, ["predict", str(tmp_path / "run"), str(unseen / "imagesTr"), str(tmp_path / "pred")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "pred" / "labels.json").read_text())["labels"]["liver"] == 1
    r = runner.invoke(app, ["evaluate", str(tmp_path / "pred"), str(unseen / "labelsTr"), "--dataset", str(unseen),
                            "--out", str(tmp_path / "res.json")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "res.json").read_text())
    assert list(res["per_organ"]) == ["spleen", "liver"] and res["settings"]["not_in_model"] == ["pancreas"]
    assert "unknown to the model" in r.output
