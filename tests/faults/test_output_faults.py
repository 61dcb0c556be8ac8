"""Outputs: nothing written over an input or an earlier result without --overwrite, kills leave
nothing that blocks the rerun, errors name the user's path, files follow the umask."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from partialseg.checkpoint import save_atomic
from partialseg.cli import app
from partialseg.errors import OutputWriteError
from partialseg.preprocessing import PreprocessConfig, prepare_dataset
from tests.faults.conftest import SPACING, checksums

KILLER = Path(__file__).with_name("kill_during_prepare.py")


@pytest.fixture
def pred_ref(good_dataset, tmp_path):
    """Predictions (a copy of the labels) and the dataset's labelsTr as references."""
    pred = tmp_path / "pred"
    shutil.copytree(good_dataset / "labelsTr", pred)
    return pred, good_dataset / "labelsTr"


def _evaluate(pred, ref, out, *extra):
    return CliRunner().invoke(app, ["evaluate", str(pred), str(ref), "--out", str(out), *extra])


def test_evaluate_never_writes_over_the_dataset_json(good_dataset, pred_ref):
    pred, ref = pred_ref
    before = checksums(good_dataset, pred)
    for extra in ([], ["--overwrite"]):
        r = _evaluate(pred, ref, good_dataset / "dataset.json", "--dataset", str(good_dataset), *extra)
        assert r.exit_code == 2, r.output
        assert "input of this command" in r.output
    assert checksums(good_dataset, pred) == before
    assert not (good_dataset / "dataset.md").exists() and not (good_dataset / "dataset.csv").exists()


def test_evaluate_out_onto_an_existing_file_needs_overwrite(good_dataset, pred_ref):
    pred, ref = pred_ref
    before = checksums(good_dataset, pred)
    r = _evaluate(pred, ref, good_dataset / "dataset.json")  # without --dataset it is just an existing file
    assert r.exit_code == 2 and "already exists" in r.output and "--overwrite" in r.output, r.output
    assert checksums(good_dataset, pred) == before


def test_evaluate_keeps_an_earlier_result_unless_overwrite(good_dataset, pred_ref, tmp_path):
    pred, ref = pred_ref
    out = tmp_path / "eval" / "results.json"
    assert _evaluate(pred, ref, out).exit_code == 0
    out.write_text("{}\n")  # an earlier result the user edited
    (tmp_path / "eval" / "results.csv").unlink()  # a refusal must not depend on the first file only
    before = checksums(tmp_path / "eval", good_dataset, pred)
    r = _evaluate(pred, ref, out)
    assert r.exit_code == 2 and "already exists" in r.output, r.output
    assert checksums(tmp_path / "eval", good_dataset, pred) == before
    assert not (tmp_path / "eval" / "results.csv").exists()
    r = _evaluate(pred, ref, out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert out.read_text() != "{}\n" and (tmp_path / "eval" / "results.csv").exists()


def _read_only_dir(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d
    try:  # root ignores permissions: use a read-only kernel file system
        shutil.rmtree(tempfile.mkdtemp(dir="/sys"))
    except OSError:
        return Path("/sys")
    pytest.skip("no read-only folder available")


def test_read_only_output_error_names_the_users_folder(good_dataset, tmp_path):
    ro = _read_only_dir(tmp_path)
    out = ro / "partialseg_cache"
    r = CliRunner().invoke(app, ["prepare", str(good_dataset), str(out), "--spacing", "2,2.5,3"])
    assert r.exit_code == 2, r.output
    assert f"error: {out}: cannot write" in r.output and ".partial" not in r.output, r.output
    with pytest.raises(OutputWriteError) as e:
        save_atomic({"a": 1}, ro / "sub" / "model.pt")
    assert str(ro / "sub") in str(e.value) and ".tmp" not in str(e.value)


def test_checkpoint_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        p = save_atomic({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "run" / "model.pt")
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o640


def test_kill_during_prepare_leftover_is_cleaned_by_the_next_prepare(good_dataset, tmp_path):
    before = checksums(good_dataset)
    out = tmp_path / "cache"
    res = subprocess.run([sys.executable, str(KILLER), "prepare", str(good_dataset), str(out)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == -9, res.stderr[-2000:]
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".cache.") and p.name.endswith(".partial")]
    assert len(leftovers) == 1 and not out.exists()
    prepare_dataset(good_dataset, out, PreprocessConfig(spacing=SPACING), progress=False)
    assert (out / "prepared.json").exists()
    assert not leftovers[0].exists(), "the dead process's partial folder is removed"
    assert checksums(good_dataset) == before
