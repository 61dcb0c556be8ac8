"""Integration tests of the training loop on tiny block datasets (CPU, a few steps)."""

import csv
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from partialseg.cli import app
from partialseg.config import load_config
from partialseg.errors import OutputExistsError
from partialseg.training.trainer import split_cases, train
from tests.conftest import write_block_dataset

TINY = [
    "train.steps=4",
    "train.batch_size=2",
    "train.patch_size=[32,16,16]",
    "train.val_every=2",
    "train.checkpoint_every=1",
    "network.options={base_channels: 4}",
    "data.spacing=[2.0,2.5,3.0]",
    "train.num_threads=1",
]


@pytest.fixture
def partial_blocks(tmp_path, small_space):
    return write_block_dataset(
        tmp_path / "blocks", small_space, n_cases=4,
        annotated={"case_000": ["liver"], "case_001": ["spleen", "kidney_left"]},
    )


@pytest.mark.parametrize("method", ["full", "sigmoid", "marginal", "exclusion"])
def test_each_baseline_trains(partial_blocks, tmp_path, method):
    cfg = load_config(None, TINY + [f"method.name={method}", "train.steps=2"])
    model = train(partial_blocks, tmp_path / "run", cfg, progress=False)
    assert model.exists()
    run = tmp_path / "run"
    for f in ("config.yaml", "split.json", "log.csv", "curves.png", "train.log", "checkpoints/last.pt"):
        assert (run / f).exists(), f
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [r["step"] for r in rows] == ["1", "2"]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert "val_dsc_mean" in rows[-1] and rows[-1]["val_dsc_mean"] != ""
    saved = torch.load(model, weights_only=False)
    assert saved["method"]["name"] == method and saved["label_space"] == ["liver", "spleen", "kidney_right", "kidney_left"]


def test_refuses_existing_run(partial_blocks, tmp_path):
    cfg = load_config(None, TINY + ["train.steps=1"])
    train(partial_blocks, tmp_path / "run", cfg, progress=False)
    with pytest.raises(OutputExistsError):
        train(partial_blocks, tmp_path / "run", cfg, progress=False)


class Killed(Exception):
    pass


@pytest.mark.parametrize("kill_step", [0, 2])
def test_resume_after_kill_matches_uninterrupted_run(partial_blocks, tmp_path, kill_step):
    cfg = load_config(None, TINY)
    train(partial_blocks, tmp_path / "straight", cfg, progress=False)

    def kill_at_step_2(step):
        if step == kill_step:  # step kill_step + 1 has been taken and checkpointed; die before the next
            raise Killed

    with pytest.raises(Killed):
        train(partial_blocks, tmp_path / "killed", cfg, progress=False, on_step=kill_at_step_2)
    assert not (tmp_path / "killed" / "model.pt").exists()
    train(partial_blocks, tmp_path / "killed", None, resume=True, progress=False)
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "killed" / "model.pt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows_a = list(csv.DictReader((tmp_path / "straight" / "log.csv").open()))
    rows_b = list(csv.DictReader((tmp_path / "killed" / "log.csv").open()))
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]


def test_resume_rejects_a_different_config(partial_blocks, tmp_path):
    cfg = load_config(None, TINY + ["train.steps=1"])
    train(partial_blocks, tmp_path / "run", cfg, progress=False)
    other = load_config(None, TINY + ["train.steps=2", "optim.lr=0.5"])
    with pytest.raises(Exception, match="differs"):
        train(partial_blocks, tmp_path / "run", other, resume=True, progress=False)
    longer = load_config(None, TINY + ["train.steps=2"])
    train(partial_blocks, tmp_path / "run", longer, resume=True, progress=False)
    assert len(list(csv.DictReader((tmp_path / "run" / "log.csv").open()))) == 2


def test_split_is_deterministic_and_respects_explicit_cases():
    cfg = load_config(None, ["data.val_fraction=0.25"])
    ids = [f"c{i}" for i in range(8)]
    tr, va = split_cases(ids, cfg)
    assert len(va) == 2 and set(tr) | set(va) == set(ids) and split_cases(ids, cfg) == (tr, va)
    tr, va = split_cases(ids, load_config(None, ["data.val_cases=[c3]"]))
    assert va == ["c3"] and "c3" not in tr


def test_cli_train_predict_evaluate_round_trip(partial_blocks, tmp_path, monkeypatch):
    runner = CliRunner()
    run = tmp_path / "run"
    args = ["train", str(partial_blocks), "--out", str(run), "--method", "marginal"]
    for s in TINY + ["train.steps=2"]:
        args += ["--set", s]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    pred = tmp_path / "pred"
    r = runner.invoke(app, ["predict", str(run), str(partial_blocks / "imagesTr"), str(pred), "--probabilities"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in pred.glob("*.nii.gz")) == [f"case_{i:03d}.nii.gz" for i in range(4)]
    assert len(list(pred.glob("*_probabilities.npz"))) == 4
    r = runner.invoke(app, ["evaluate", str(pred), str(partial_blocks / "labelsTr"), "--dataset", str(partial_blocks),
                            "--out", str(tmp_path / "eval" / "results.json")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "eval" / "results.md").exists()
    r = runner.invoke(app, ["predict", str(run), str(partial_blocks / "imagesTr"), str(pred)])
    assert r.exit_code == 2 and "already exists" in r.output
    # mirror test-time augmentation: same files, each the average of two predictions (probabilities differ)
    r = runner.invoke(app, ["predict", str(run), str(partial_blocks / "imagesTr"), str(tmp_path / "tta"), "--mirror", "--probabilities"])
    assert r.exit_code == 0, r.output
    plain, tta = (np.load(d / "case_000_probabilities.npz")["probabilities"] for d in (pred, tmp_path / "tta"))
    assert plain.shape == tta.shape and not np.array_equal(plain, tta)
    # low memory (one window at a time, float16 blending): the same probabilities up to float16 rounding
    r = runner.invoke(app, ["predict", str(run), str(partial_blocks / "imagesTr"), str(tmp_path / "low"), "--low-memory", "--probabilities"])
    assert r.exit_code == 0, r.output
    low = np.load(tmp_path / "low" / "case_000_probabilities.npz")["probabilities"]
    assert low.shape == plain.shape and np.abs(low.astype(np.float32) - plain.astype(np.float32)).max() < 5e-3
    assert not np.array_equal(low, plain)
    # the default chooses per volume: float32 blending for a phantom (the run above), low memory above 1 GB of logits
    from partialseg.inference import predict as predict_module

    assert predict_module.low_memory_for((512, 512, 160), 16) and not predict_module.low_memory_for((64, 60, 52), 16)
    monkeypatch.setattr(predict_module, "LOW_MEMORY_ABOVE_GB", 0.0)
    r = runner.invoke(app, ["predict", str(run), str(partial_blocks / "imagesTr"), str(tmp_path / "auto"), "--probabilities"])
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.load(tmp_path / "auto" / "case_000_probabilities.npz")["probabilities"], low)
    r = runner.invoke(app, ["predict", str(run), str(partial_blocks / "imagesTr"), str(tmp_path / "f32"), "--no-low-memory", "--probabilities"])
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.load(tmp_path / "f32" / "case_000_probabilities.npz")["probabilities"], plain)


def test_predict_geometry_equals_non_ras_anisotropic_input(partial_blocks, tmp_path):
    import nibabel as nib

    cfg = load_config(None, TINY + ["train.steps=1", "data.spacing=[3.0,3.0,3.0]"])
    train(partial_blocks, tmp_path / "run", cfg, progress=False)
    src = nib.load(str(partial_blocks / "imagesTr" / "case_000_0000.nii.gz"))
    lps = src.as_reoriented(np.array([[1, -1], [0, -1], [2, 1]]))  # swap and flip x/y: PLS
    aff = lps.affine.copy()
    aff[:3, :3] = aff[:3, :3] @ np.diag([1.0, 1.0, 1.7])  # and stretch z: anisotropic, not the training spacing
    weird = nib.Nifti1Image(np.asarray(lps.dataobj)[:, :, :11], aff)
    inp = tmp_path / "in"
    inp.mkdir()
    nib.save(weird, str(inp / "scan.nii.gz"))
    from partialseg.inference.predict import predict_folder

    (out,) = predict_folder(tmp_path / "run", inp, tmp_path / "out", progress=False)
    got = nib.load(str(out))
    assert got.shape == weird.shape
    np.testing.assert_allclose(got.affine, weird.affine, atol=1e-5)
    assert nib.aff2axcodes(got.affine) == nib.aff2axcodes(weird.affine) != ("R", "A", "S")


def test_ddp_two_processes_gloo(partial_blocks, tmp_path):
    """torchrun with 2 CPU processes (gloo backend), as a multi-GPU run would be launched."""
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "partialseg.cli", "train", str(partial_blocks), "--out", str(run)]
    for s in TINY + ["train.steps=2"]:
        cmd += ["--set", s]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (run / "model.pt").exists()


def test_log_rows_are_appended_per_checkpoint_and_cut_back_on_resume(partial_blocks, tmp_path):
    from partialseg.training.runlog import ROWS_FILE

    cfg = load_config(None, TINY + ["train.steps=4", "train.checkpoint_every=2"])
    train(partial_blocks, tmp_path / "straight", cfg, progress=False)
    ck = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    assert "rows" not in ck and ck["log_rows"] == 4  # the checkpoint holds a count, not the log
    assert len((tmp_path / "straight" / ROWS_FILE).read_text().splitlines()) == 4

    def kill_after_step_3(step):
        if step == 2:
            raise Killed

    run = tmp_path / "killed"
    with pytest.raises(Killed):
        train(partial_blocks, run, cfg, progress=False, on_step=kill_after_step_3)
    # as if killed between appending rows and saving the checkpoint: a row the checkpoint does not cover
    with (run / ROWS_FILE).open("a") as f:
        f.write('{"step": 3, "loss": 123.0}\n')
    train(partial_blocks, run, None, resume=True, progress=False)
    rows = list(csv.DictReader((run / "log.csv").open()))
    straight = list(csv.DictReader((tmp_path / "straight" / "log.csv").open()))
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"] and [r["loss"] for r in rows] == [r["loss"] for r in straight]
    assert len((run / ROWS_FILE).read_text().splitlines()) == 4
