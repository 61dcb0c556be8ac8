"""Largest-component postprocessing: hand-built label maps, the validation rule, and a run end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from partialseg.cli import app
from partialseg.inference.postprocess import PostprocessingEvidence, keep_largest_components
from tests.conftest import write_block_dataset
from tests.methods.test_tct import TINY


def _scene():
    labels = np.zeros((12, 12, 12), np.int16)
    labels[1:3, 1:3, 1:3] = 1  # organ 1: 8 voxels ...
    labels[6, 6, 10] = 1  # ... and a far-off voxel
    labels[1:3, 8:10, 1:3] = 2  # kidney_right
    labels[9:11, 8:10, 1:2] = 3  # kidney_left, smaller than the right one: a separate label, kept
    return labels


def test_keep_largest_component_per_class_only():
    labels = _scene()
    out = keep_largest_components(labels, [1, 2, 3])
    assert out[6, 6, 10] == 0 and (out == 1).sum() == 8
    assert (out == 2).sum() == 8 and (out == 3).sum() == 4  # both kidneys stay
    untouched = keep_largest_components(labels, [2])
    assert untouched[6, 6, 10] == 1
    assert labels[6, 6, 10] == 1  # the input is not modified


def test_rule_applies_where_it_helps_and_not_where_an_organ_has_two_parts():
    ref = np.zeros((12, 12, 12), np.int16)
    ref[1:3, 1:3, 1:3] = 1
    ref[1:3, 8:10, 1:3] = 2
    ref[9:11, 8:10, 8:10] = 2  # organ 2 really has two parts (think of a bowel loop)
    pred = _scene()
    pred[pred == 3] = 0
    pred[9:11, 8:10, 8:10] = 2
    ev = PostprocessingEvidence(("liver", "bowel"))
    ev.add_case(pred, ref, [1, 2], (1.0, 1.0, 1.0))
    d = ev.decide()
    assert d["largest_component"] == ["liver"]
    liver = d["organs"]["liver"]
    assert liver["dsc"] == pytest.approx(2 * 8 / 17) and liver["dsc_lcc"] == pytest.approx(1.0)
    assert liver["hd95_lcc"] < liver["hd95"] and d["organs"]["bowel"]["applied"] is False
    assert d["organs"]["bowel"]["dsc_lcc"] < d["organs"]["bowel"]["dsc"]


def test_training_decides_it_and_predict_applies_it(tmp_path, small_space):
    data = write_block_dataset(tmp_path / "blocks", small_space, n_cases=3)
    run = tmp_path / "run"
    args = ["train", str(data), "--out", str(run), "--method", "marginal"]
    for s in TINY:
        args += ["--set", s]
    assert CliRunner().invoke(app, args).exit_code == 0
    decided = json.loads((run / "postprocessing.json").read_text())
    assert set(decided["organs"]) <= set(small_space.names) and decided["organs"]
    model = torch.load(run / "model.pt", weights_only=True)
    assert model["postprocessing"]["largest_component"] == decided["largest_component"]
    # force it on for every organ: predictions then have one component per organ, and --no-postprocess none of it
    model["postprocessing"]["largest_component"] = list(small_space.names)
    torch.save(model, run / "model.pt")
    r = CliRunner().invoke(app, ["predict", str(run), str(data / "imagesTr"), str(tmp_path / "pp")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "pp" / "labels.json").read_text())["largest_component"] == list(small_space.names)
    r = CliRunner().invoke(app, ["predict", str(run), str(data / "imagesTr"), str(tmp_path / "raw"), "--no-postprocess"])
    assert r.exit_code == 0, r.output
    import cc3d

    from partialseg.io import load_volume

    for f in sorted((tmp_path / "pp").glob("*.nii.gz")):
        pp, raw = load_volume(f).array, load_volume(tmp_path / "raw" / f.name).array
        for k in range(1, small_space.num_classes + 1):
            if (pp == k).any():
                assert cc3d.connected_components((pp == k).astype(np.uint8), connectivity=26).max() == 1
        assert np.all((pp == raw) | (pp == 0))  # only removals
