"""CLI surface: help, method listing, the generalist command, and clean errors (no tracebacks)."""

import numpy as np
from typer.testing import CliRunner

from partialseg.cli import app
from partialseg.io import load_volume, save_volume
from partialseg.registry import METHODS

runner = CliRunner()


def test_help_lists_every_verb():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for verb in ("synth", "simulate", "merge", "info", "prepare", "train", "predict", "evaluate", "methods",
                 "benchmark", "demo", "pseudolabel", "segment-box"):
        assert verb in r.output


def test_methods_lists_the_registry():
    r = runner.invoke(app, ["methods"])
    assert r.exit_code == 0
    assert [line.split()[0] for line in r.output.strip().splitlines()] == list(METHODS)


def test_every_listed_method_is_registered():
    from partialseg.methods import get_method

    for name in METHODS:
        assert get_method(name).name == name


def test_segment_box_on_a_blob(tmp_path):
    x, y, z = np.meshgrid(np.arange(30), np.arange(30), np.arange(20), indexing="ij")
    blob = ((x - 15) / 7) ** 2 + ((y - 14) / 6) ** 2 + ((z - 10) / 5) ** 2 <= 1
    img = np.where(blob, 60.0, -100.0) + np.random.default_rng(0).normal(0, 10, blob.shape)
    save_volume(img.astype(np.float32), np.diag([1.5, 1.5, 3.0, 1.0]), tmp_path / "img.nii.gz")
    save_volume(blob.astype(np.uint8), np.diag([1.5, 1.5, 3.0, 1.0]), tmp_path / "lab.nii.gz")
    out = tmp_path / "mask.nii.gz"
    r = runner.invoke(app, ["segment-box", str(tmp_path / "img.nii.gz"), "--out", str(out),
                            "--box", "z=10,x=5:26,y=5:24", "--box", "x=15,y=5:24,z=2:19"])
    assert r.exit_code == 0, r.output
    m = load_volume(out).array > 0
    assert 2 * (m & blob).sum() / (m.sum() + blob.sum()) > 0.8
    r = runner.invoke(app, ["segment-box", str(tmp_path / "img.nii.gz"), "--out", str(tmp_path / "m2.nii.gz"),
                            "--from-mask", str(tmp_path / "lab.nii.gz"), "--label", "1"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["segment-box", str(tmp_path / "img.nii.gz"), "--out", str(out), "--box", "z=10,x=5:26,y=5:24"])
    assert r.exit_code == 2 and "exists" in r.output


def test_errors_are_one_line_without_traceback(tmp_path):
    r = runner.invoke(app, ["info", str(tmp_path / "missing")])
    assert r.exit_code == 2
    assert "does not exist" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["train", str(tmp_path / "missing"), "--out", str(tmp_path / "run"), "--set", "train.stepz=1"])
    assert r.exit_code == 2 and "stepz" in r.output
    r = runner.invoke(app, ["train", str(tmp_path / "missing"), "--out", str(tmp_path / "run"), "--method", "nope"])
    assert r.exit_code == 2 and "unknown method" in r.output
