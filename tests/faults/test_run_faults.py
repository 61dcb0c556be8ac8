"""Training and prediction misuse: bad options, failed starts, concurrent runs, crafted files, kills."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from partialseg.api import fit
from partialseg.cli import app
from partialseg.config import RANGES, ExperimentConfig, load_config
from partialseg.errors import InputError
from partialseg.locking import folder_lock, lock_path
from tests.conftest import write_block_dataset
from tests.faults.conftest import SHAPE, SPACING, TINY, checksums

KILLER = Path(__file__).with_name("kill_during_prepare.py")


def _train(data, run, *sets, resume=False):
    args = ["train", str(data), "--out", str(run), *(["--resume"] if resume else [])]
    for s in sets:
        args += ["--set", s]
    return CliRunner().invoke(app, args)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step run on a tiny dataset: (dataset, run)."""
    from partialseg.labels import LabelSpace

    root = tmp_path_factory.mktemp("trained")
    data = write_block_dataset(root / "data", LabelSpace(("liver", "spleen", "kidney_right", "kidney_left")),
                               n_cases=3, shape=SHAPE, spacing=SPACING)
    fit(data, root / "run", load_config(None, TINY), progress=False)
    return data, root / "run"


@pytest.mark.parametrize("option, key", [
    ("train.batch_size=0", "train.batch_size"),
    ("train.patch_size=[-16,16,8]", "train.patch_size"),
    ("optim.lr=-1", "optim.lr"),
    ("train.device=gpu", "train.device"),
    ("train.steps=0", "train.steps"),
    ("data.val_fraction=1", "data.val_fraction"),
    ("data.val_fraction=0", "data.val_fraction"),
    ("train.checkpoint_every=0", "train.checkpoint_every"),
])
def test_bad_option_is_a_clear_error_and_creates_no_run(good_dataset, tmp_path, option, key):
    before = checksums(good_dataset)
    r = _train(good_dataset, tmp_path / "run", *TINY, option)
    assert r.exit_code == 2, r.output
    assert f"error: {key} = " in r.output and "Traceback" not in r.output
    assert not (tmp_path / "run").exists()
    assert checksums(good_dataset) == before


def _numeric_keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _numeric_keys(tp, f"{prefix}{f.name}.")
            continue
        args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        flat = {b for a in args for b in (typing.get_args(a) or [a])}
        if flat & {int, float} and bool not in flat:
            out.append(prefix + f.name)
    return out


def test_every_numeric_option_has_a_range():
    assert sorted(_numeric_keys(ExperimentConfig)) == sorted(RANGES)


@pytest.mark.parametrize("key", sorted(RANGES))
def test_each_numeric_option_refuses_a_value_out_of_range(key):
    lo, hi, lo_open, hi_open = RANGES[key]
    bad = lo if lo_open else (hi if hi_open else (lo - 1 if lo > float("-inf") else hi + 1))
    if bad == float("inf"):
        bad = hi + 1
    default = dataclasses.asdict(ExperimentConfig())
    for part in key.split("."):
        default = default[part]
    value = [bad] * len(default) if isinstance(default, (list, tuple)) else bad
    if isinstance(default, int) or (isinstance(default, (list, tuple)) and isinstance(default[0], int)):
        value = [int(v) for v in value] if isinstance(value, list) else int(value)
    with pytest.raises(InputError, match=key.replace(".", r"\.")):
        load_config(None, [f"{key}={value}"])


def test_predict_with_an_unknown_device_is_a_clear_error(trained, tmp_path):
    data, run = trained
    r = CliRunner().invoke(app, ["predict", str(run), str(data / "imagesTr"), str(tmp_path / "pred"), "--device", "gpu"])
    assert r.exit_code == 2 and "unknown device 'gpu'" in r.output, r.output
    assert not (tmp_path / "pred").exists()


def test_failed_start_leaves_no_run_folder_that_blocks_the_rerun(broken_dataset, space, tmp_path):
    bad = broken_dataset("no_qform_sform")  # fails in train's own prepare, after the run folder was made
    run = tmp_path / "run"
    r = _train(bad, run, *TINY)
    assert r.exit_code == 2 and "no qform or sform" in r.output, r.output
    assert not run.exists() and not lock_path(run).exists()
    good = write_block_dataset(tmp_path / "fixed", space, n_cases=3, shape=SHAPE, spacing=SPACING)
    r = _train(good, run, *TINY)
    assert r.exit_code == 0, r.output
    assert (run / "model.pt").exists()


def test_predict_on_a_two_channel_case_is_an_error(trained, tmp_path):
    data, run = trained
    inp = tmp_path / "in"
    inp.mkdir()
    for ch in ("0000", "0001"):
        shutil.copy(data / "imagesTr" / "case_000_0000.nii.gz", inp / f"case_000_{ch}.nii.gz")
    r = CliRunner().invoke(app, ["predict", str(run), str(inp), str(tmp_path / "pred")])
    assert r.exit_code == 2, r.output
    assert "case 'case_000' has channel(s) ['0000', '0001'], but the model takes 1 channel" in r.output
    assert not (tmp_path / "pred").exists()


class _Payload:
    """Unpickling this creates the marker file: proof that loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_crafted_model_pt_is_refused_without_running_it(trained, tmp_path):
    data, run = trained
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"format": 1, "state_dict": {}, "network": _Payload(marker)}, evil / "model.pt")
    r = CliRunner().invoke(app, ["predict", str(evil), str(data / "imagesTr"), str(tmp_path / "pred")])
    assert r.exit_code == 2 and "refused" in r.output and str(evil / "model.pt") in r.output, r.output
    assert not marker.exists()


def test_crafted_checkpoint_is_refused_on_resume_without_running_it(trained, tmp_path):
    data, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "model.pt").unlink()
    marker = tmp_path / "pwned"
    torch.save({"model": _Payload(marker), "step": 1}, copy / "checkpoints" / "last.pt")
    r = _train(data, copy, resume=True)
    assert r.exit_code == 2 and "refused" in r.output and "last.pt" in r.output, r.output
    assert not marker.exists()


def test_checkpoint_refuses_to_save_anything_but_plain_data(tmp_path):
    from partialseg.checkpoint import save_atomic
    from partialseg.errors import PartialsegError

    with pytest.raises(PartialsegError, match=r"checkpoint\.config\.out is a pathlib"):
        save_atomic({"config": {"out": tmp_path}}, tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()


_HOLDER = ("import sys, time; from partialseg.locking import folder_lock\n"
           "with folder_lock(sys.argv[1]):\n    print('ready', flush=True); time.sleep(60)\n")


def _hold_lock(run: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_second_resume_on_a_run_in_use_names_the_pid(tmp_path, good_dataset):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(load_config(None, TINY).to_yaml())
    proc = _hold_lock(run)
    try:
        r = _train(good_dataset, run, resume=True)
    finally:
        proc.kill()
        proc.wait()
    assert r.exit_code == 2 and f"in use by PID {proc.pid}" in r.output, r.output
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"], "the second process wrote nothing"


def test_stale_lock_of_a_killed_process_is_recognised(tmp_path, caplog):
    run = tmp_path / "run"
    proc = _hold_lock(run)
    proc.kill()  # SIGKILL: no clean-up, the lock file stays
    proc.wait()
    assert lock_path(run).read_text().split()[0] == str(proc.pid)
    with caplog.at_level(logging.WARNING, logger="partialseg"):
        with folder_lock(run):
            pass
    assert f"stale lock of PID {proc.pid}" in caplog.text
    assert not lock_path(run).exists()


def test_kill_during_trains_prepare_then_resume_matches_an_uninterrupted_run(trained, tmp_path):
    data, straight = trained
    before = checksums(data)
    run, cache = tmp_path / "run", tmp_path / "cache"  # its own cache root: the fixture's cache exists already
    res = subprocess.run([sys.executable, str(KILLER), "train", str(data), str(run), *TINY, f"data.cache_dir={cache}"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == -9, res.stderr[-2000:]
    assert (run / "config.yaml").exists() and not [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert [p for p in cache.iterdir() if p.name.endswith(".partial")], "the kill left prepare's partial folder"
    r = _train(data, run, resume=True)
    assert r.exit_code == 0, r.output
    assert not [p for p in cache.iterdir() if p.name.endswith(".partial")]
    a = torch.load(straight / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert checksums(data) == before
