"""The MR path: MR-like phantoms, channel_names deciding the normalisation, and train -> predict -> evaluate."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from partialseg.cli import app
from partialseg.data.dataset import PartialDataset
from partialseg.io import load_volume
from partialseg.preprocessing import PreparedDataset
from partialseg.preprocessing.normalisation import zscore_body
from tests.methods.test_tct import TINY


def test_zscore_over_the_body_by_hand():
    x = np.zeros((2, 2, 2), np.float32)
    x[0, 0, 0], x[0, 0, 1], x[0, 1, 0] = 1.0, 2.0, 3.0  # the body: 1, 2, 3 (mean 2, std sqrt(2/3))
    out, (lo, hi) = zscore_body(x)
    s = np.sqrt(2 / 3)
    np.testing.assert_allclose(out[0, 0, :2], [-1 / s, 0.0], rtol=1e-5)
    assert out[1].sum() == 0 and out[0, 1, 1] == 0  # background stays 0
    assert lo == pytest.approx(-1 / s, rel=1e-5) and hi == pytest.approx(1 / s, rel=1e-5)


def test_mr_phantoms_train_predict_and_evaluate_without_ct_warnings(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["synth", str(tmp_path / "mr"), "--cases", "3", "--modality", "MR", "--shape", "32,32,32", "--spacing", "12,11,12"])
    assert r.exit_code == 0, r.output
    ds = PartialDataset.load(tmp_path / "mr")
    assert ds.modality == "MR" and not ds.is_ct
    assert load_volume(ds.cases[0].image).array.min() >= 0  # no HU: a CT normalisation would be wrong
    args = ["train", str(tmp_path / "mr"), "--out", str(tmp_path / "run"), "--method", "marginal"]
    for s in TINY + ["data.spacing=[12.0,11.0,12.0]", "train.patch_size=[16,16,16]", "network.options={base_channels: 4, norm: batch}"]:
        args += ["--set", s]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even the "cannot be CT" warning
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        cache = Path(json.loads((tmp_path / "run" / "split.json").read_text())["prepared"])
        prepared = PreparedDataset.load(cache)
        assert prepared.config.normalization == "zscore"  # although the config asked for the CT default
        img = np.asarray(prepared.case(ds.cases[0].case_id).image)
        assert img.min() < -0.5 and img.max() > 1.0  # standardised: a CT window would give [0, 1]
        r = runner.invoke(app, ["predict", str(tmp_path / "run"), str(tmp_path / "mr" / "imagesTr"), str(tmp_path / "pred")])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path / "pred"), str(tmp_path / "mr" / "labelsTr"), "--dataset",
                            str(tmp_path / "mr"), "--out", str(tmp_path / "res.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "res.json").read_text())["mean"]["dsc_mean"] is not None
