"""TCT on nnU-Net v2, ``partialseg predict``/``evaluate`` on nnU-Net runs, and resuming one (engines/nnunet).

Marked ``nnunet`` and skipped without nnunetv2, as tests/engines/test_nnunet.py, whose tiny planned dataset
(four 40×36×32 partially labelled phantoms, a 4-stage 4-16 feature plan, batch 2) these tests reuse.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from partialseg import losses as L
from partialseg.engines.nnunet import trainer_name
from partialseg.engines.nnunet.paths import PATH_VARIABLES
from partialseg.errors import InputError
from partialseg.losses import tct as T
from tests.engines import test_nnunet as base
from tests.engines.test_nnunet import CONFIG, DATASET_ID, _phi, _trainer, needs_nnunet

# the tiny planned dataset of test_nnunet.py (module-scoped there, so built once more for this module)
prepared, nnunet_env = base.prepared, base.nnunet_env
TCT = trainer_name("tct")


def test_predict_on_an_nnunet_run_without_nnunetv2_says_how_to_install_it(tmp_path, monkeypatch):
    import importlib.util

    from typer.testing import CliRunner

    from partialseg.cli import app

    run = tmp_path / "run"
    run.mkdir()
    (run / "nnunet.json").write_text(json.dumps({"engine": "nnunet", "method": "tct", "trainer": TCT,
                                                 "nnunet_dataset": "Dataset001_x", "settings": {}}))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nnunetv2" else real(name, *a))
    r = CliRunner().invoke(app, ["predict", str(run), str(tmp_path), str(tmp_path / "out")])
    assert r.exit_code == 2 and "--engine nnunet" in r.output and "requirements-nnunet.txt" in r.output, r.output
    assert not (tmp_path / "out").exists()


def _batch(prepared, seed: int = 0):
    """Two partially annotated cases; three scales of MSH logits favouring unannotated organs, labels from
    {0} ∪ Phi (nnU-Net's (B, 1, ...) maps) and full-resolution ATH logits (B, N, 2, ...)."""
    g = torch.Generator().manual_seed(seed)
    keys = np.array(prepared["cases"][1::-1])
    phi = _phi(prepared["dataset_json"], keys)
    favour = (~phi).float().reshape(2, 16, 1, 1, 1) * 2
    outputs = [(torch.randn(2, 16, s, s, s, generator=g) * 2 + favour).requires_grad_() for s in (32, 16, 8)]
    targets = [torch.stack([torch.nonzero(phi[b])[torch.randint(0, int(phi[b].sum()), (1, s, s, s), generator=g), 0]
                            for b in range(2)]).float() for s in (32, 16, 8)]
    # ATHs that mostly agree with the MSH's argmax, so that the IoU filter has something to keep and to drop
    agree = torch.nn.functional.one_hot(outputs[0].detach().argmax(1), 16).permute(0, 4, 1, 2, 3)[:, 1:].float()
    aux = torch.stack([-2 * agree, 2 * agree], dim=2) + torch.randn(2, 15, 2, 32, 32, 32, generator=g) * 1.5
    return keys, phi, outputs, targets, aux.requires_grad_()


@pytest.mark.usefixtures("nnunet_env")
@needs_nnunet
def test_tct_trainer_loss_is_partialseg_tct_loss(prepared):
    t = _trainer("tct")
    net = t.tct_network()
    assert t.loss.weights == pytest.approx((2 / 3, 1 / 3, 0.0))
    keys, phi, outputs, targets, aux = _batch(prepared)
    assert not bool(phi.all())
    with torch.no_grad():
        net.extras.log_vars.copy_(torch.tensor([0.3, -0.4]))
    t.partialseg_steps = 1  # 1 of 10 steps: inside the ramp-up (T = 0.4 * 10), w(t) strictly between 0 and lambda
    t.num_epochs, t.num_iterations_per_epoch = 1, 10
    t._set_batch({"keys": keys})
    net.aux_logits = aux  # what the forward pass leaves for the loss
    got = t.loss(outputs, targets)
    # Eq. 7 from partialseg's public loss functions: L_main summed over the scales, L_aux and L_con at full resolution
    y = [tt[:, 0].long() for tt in targets]
    l_main = sum(w * L.marginal_dice_loss(o, yy, phi) for w, o, yy in zip(t.loss.weights, outputs, y))
    w = T.rampup_weight(1, 10, 1.0, 0.4)
    assert 0 < w < 1
    want = (T.uncertainty_weighted([l_main, T.aux_dice_loss(aux, y[0], phi)], net.extras.log_vars)
            + w * T.consistency_loss(outputs[0], aux, phi, threshold="median", absent="drop"))
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    logs = t.loss.last_logs
    assert 0 < logs["con_kept"] < 1 and logs["l_con"] > 0  # the filter kept some terms and dropped others
    got.backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in (outputs[0], outputs[1], aux, net.extras.log_vars))
    assert outputs[2].grad is None  # nnU-Net's lowest scale has weight 0
    # Phi matters: the same tensors as if fully annotated give another loss
    t.loss.annotated = torch.ones_like(phi)
    assert t.loss(outputs, targets).item() != pytest.approx(got.item(), rel=1e-3)


@pytest.mark.usefixtures("nnunet_env")
@needs_nnunet
def test_tct_heads_read_the_decoder_features_of_nnunets_segmentation_layer(prepared):
    t = _trainer("tct")
    net = t.tct_network()
    seen = {}
    net.net.decoder.seg_layers[-1].register_forward_hook(lambda m, a, out: seen.update(f=a[0], logits=out))
    x = torch.randn(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(3))
    out = t.network(x)
    assert isinstance(out, list) and [o.shape[2] for o in out] == [32, 16, 8] and torch.equal(out[0], seen["logits"])
    assert net.aux_logits.shape == (2, 15, 2, 32, 32, 32)
    assert torch.allclose(net.aux_logits, net.extras.aux_head(seen["f"]).reshape(2, 15, 2, 32, 32, 32))
    # the optimiser trains the heads and the log-variances with the network
    params = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in params for p in net.extras.parameters()) and all(id(p) in params for p in net.net.parameters())
    net.heads_enabled = False
    assert torch.equal(t.network(x)[0], out[0]) and net.aux_logits is None


@pytest.mark.usefixtures("nnunet_env")
@needs_nnunet
def test_tct_trains_and_exports_a_plain_nnunet_checkpoint(prepared, tmp_path):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from partialseg.engines.nnunet.run import build_trainer, train
    from partialseg.engines.nnunet.tct import TCT_STATE_KEY

    t = train(DATASET_ID, CONFIG, 0, "tct", device="cpu", num_epochs=1, num_iterations_per_epoch=2,
              num_val_iterations_per_epoch=1, validate=False)
    assert type(t).__name__ == TCT and t.partialseg_steps == 2
    assert math.isfinite(t.logger.get_value("train_losses", -1)) and math.isfinite(t.logger.get_value("val_losses", -1))
    fold = Path(t.output_folder)
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    plain = nnUNetTrainer.build_network_architecture(t.plans_manager, t.configuration_manager, 1, 16, True)
    assert ckpt["trainer_name"] == "nnUNetTrainer" and set(ckpt["network_weights"]) == set(plain.state_dict())
    heads = ckpt[TCT_STATE_KEY]
    assert heads["trainer_name"] == TCT and set(heads["heads"]) == {"aux_head.weight", "aux_head.bias", "log_vars"}
    assert bool(heads["heads"]["log_vars"].abs().sum() > 0)  # trained, not the initial zeros
    # nnU-Net's own save_checkpoint writes the same keys (ours: + the TCT state), but the ATHs inside the weights
    nnUNetTrainer.save_checkpoint(t, str(tmp_path / "nnunet_own.pth"))
    own = torch.load(tmp_path / "nnunet_own.pth", map_location="cpu", weights_only=False)
    assert set(ckpt) == set(own) | {TCT_STATE_KEY}
    assert any("aux_head" in k for k in own["network_weights"])
    # nnU-Net's predictor rebuilds the plain network from the checkpoint alone and predicts a raw image
    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(fold.parent), (0,), "checkpoint_final.pth")
    assert type(predictor.network) is type(plain)
    # ... and in a process that never imports partialseg (nothing of ours is pickled in the checkpoint either)
    code = ("import sys, torch; from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor; "
            "p = nnUNetPredictor(device=torch.device('cpu'), allow_tqdm=False); "
            f"p.initialize_from_trained_model_folder({str(fold.parent)!r}, (0,), 'checkpoint_final.pth'); "
            "assert not [m for m in sys.modules if m.startswith('partialseg')]; print(type(p.network).__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith(type(plain).__name__), done.stdout + done.stderr
    case = prepared["cases"][3]
    (tmp_path / "pred").mkdir()
    predictor.predict_from_files_sequential([[str(prepared["dataset"] / "imagesTr" / f"{case}_0000.nii.gz")]],
                                            [str(tmp_path / "pred" / case)], save_probabilities=False)
    import nibabel as nib

    seg = np.asarray(nib.load(tmp_path / "pred" / f"{case}.nii.gz").dataobj)
    ref = nib.load(prepared["dataset"] / "labelsTr" / f"{case}.nii.gz")
    assert seg.shape == ref.shape and set(np.unique(seg)) <= set(range(16))
    # the exported weights are the trained ones, and continue-training restores the heads with them
    x = torch.randn(1, 1, 32, 32, 32)
    t.tct_network().eval()
    t.set_deep_supervision_enabled(False)
    predictor.network.eval()
    with torch.no_grad():
        assert torch.allclose(predictor.network(x), t.tct_network().net(x))
    again = build_trainer(DATASET_ID, CONFIG, 0, "tct", continue_training=True)
    again.load_checkpoint(str(fold / "checkpoint_final.pth"))
    assert again.current_epoch == 1
    assert all(torch.equal(v, heads["heads"][k]) for k, v in again.tct_network().extras.state_dict().items())


@pytest.fixture(scope="module")
def tct_run(prepared, tmp_path_factory):
    """``partialseg train --engine nnunet --method tct`` for one epoch of two iterations (nnU-Net's own plan)."""
    from typer.testing import CliRunner

    from partialseg.cli import app

    run = tmp_path_factory.mktemp("tct_run") / "run"
    mp = pytest.MonkeyPatch()
    for name in PATH_VARIABLES:
        mp.delenv(name, raising=False)
    mp.setenv("nnUNet_n_proc_DA", "0")
    try:
        r = CliRunner().invoke(app, ["train", str(prepared["dataset"]), "--out", str(run), "--engine", "nnunet",
                                     "--method", "tct", *SMALL])
    finally:
        mp.undo()
    assert r.exit_code == 0, r.output
    return run


SMALL = ["--set", "nnunet.epochs=1", "--set", "nnunet.iterations=2", "--set", "nnunet.val_iterations=1",
         "--set", "nnunet.validate=false", "--set", "nnunet.num_processes=1", "--set", "method.options.lam=0.5"]


def _fold(run: Path) -> Path:
    record = json.loads((run / "nnunet.json").read_text())
    return run / "nnUNet_results" / record["nnunet_dataset"] / f"{record['trainer']}__nnUNetPlans__{CONFIG}" / "fold_0"


@needs_nnunet
def test_predict_and_evaluate_an_nnunet_run(tct_run, prepared, tmp_path):
    from typer.testing import CliRunner

    from partialseg.cli import app
    from partialseg.io import load_volume

    ds, out = prepared["dataset"], tmp_path / "pred"
    r = CliRunner().invoke(app, ["predict", str(tct_run), str(ds / "imagesTr"), str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    labels = json.loads((out / "labels.json").read_text())
    assert labels["labels"] == prepared["dataset_json"]["labels"] and labels["engine"] == "nnunet"
    for case in prepared["cases"]:
        pred, image = load_volume(out / f"{case}.nii.gz"), load_volume(ds / "imagesTr" / f"{case}_0000.nii.gz")
        assert pred.array.shape == image.array.shape and np.array_equal(pred.affine, image.affine)
        assert set(np.unique(pred.array).tolist()) <= set(range(16))
    assert all(name not in __import__("os").environ for name in PATH_VARIABLES)
    r = CliRunner().invoke(app, ["evaluate", str(out), str(ds / "labelsTr"), "--dataset", str(ds),
                                 "--out", str(tmp_path / "eval" / "results.json")])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "eval" / "results.json").read_text())
    # DSC/HD95 per case over the organs its partial reference annotates, and none of the others
    assert set(result["per_case"]) == set(prepared["cases"])
    for case, entry in result["per_case"].items():
        assert set(entry["organs"]) == set(prepared["dataset_json"]["annotated_classes"][case])
        assert all(m["dsc"] is None or 0.0 <= m["dsc"] <= 1.0 for m in entry["organs"].values())
    for extra, message in ((["--mirror"], "nnU-Net's mirroring"), (["--probabilities"], "not supported")):
        r = CliRunner().invoke(app, ["predict", str(tct_run), str(ds / "imagesTr"), str(tmp_path / "p2"), *extra])
        assert r.exit_code == 2 and message in r.output, r.output


@needs_nnunet
def test_a_killed_nnunet_run_continues_with_resume_and_is_not_overwritten_without_it(tct_run, prepared, tmp_path,
                                                                                      monkeypatch):
    from typer.testing import CliRunner

    from partialseg.cli import app

    run = tmp_path / "run"
    shutil.copytree(tct_run, run, symlinks=True)
    fold = _fold(run)
    # what a run killed after nnU-Net's periodic save leaves: checkpoint_latest.pth, no checkpoint_final.pth
    (fold / "checkpoint_final.pth").rename(fold / "checkpoint_latest.pth")
    before = torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    logs_before = set(fold.glob("training_log_*.txt"))
    for name in PATH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    args = ["train", str(prepared["dataset"]), "--out", str(run), "--engine", "nnunet", "--method", "tct"]
    longer = [*SMALL, "--set", "nnunet.epochs=2"]
    # without --resume: refused, nothing touched
    r = CliRunner().invoke(app, args + longer)
    assert r.exit_code == 2 and "already exists" in r.output, r.output
    assert not (fold / "checkpoint_final.pth").exists()
    r = CliRunner().invoke(app, args[:-1] + ["marginal", "--resume", *longer[:-4], "--set", "nnunet.epochs=2"])
    assert r.exit_code == 2 and "resume it with those" in r.output, r.output
    r = CliRunner().invoke(app, args + ["--resume", *longer])
    assert r.exit_code == 0, r.output
    after = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert after["current_epoch"] == 2 and not (fold / "checkpoint_latest.pth").exists()
    # epoch 0 is the killed run's (restored from its checkpoint), epoch 1 the continuation's
    tr = after["logging"]["train_losses"]
    assert len(tr) == 2 and tr[0] == before["logging"]["train_losses"][0]
    new_log = (set(fold.glob("training_log_*.txt")) - logs_before)
    text = "".join(p.read_text() for p in new_log)
    assert "Epoch 1" in text and "Epoch 0" not in text
    assert not torch.equal(after["partialseg_tct"]["heads"]["log_vars"], before["partialseg_tct"]["heads"]["log_vars"])


@pytest.mark.usefixtures("nnunet_env")
@needs_nnunet
def test_entry_point_trains_tct_and_runs_nnunets_final_validation_without_the_heads(prepared, monkeypatch):
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module

    from partialseg.engines.nnunet.run import main
    from partialseg.engines.nnunet.tct import TCTNetwork

    monkeypatch.setattr(nnunet_trainer_module, "default_num_processes", 1)  # one export worker, not 8
    calls = []
    forward = TCTNetwork.forward
    monkeypatch.setattr(TCTNetwork, "forward", lambda self, x: calls.append(self.heads_enabled) or forward(self, x))
    main([str(DATASET_ID), CONFIG, "0", "-tr", TCT, "-device", "cpu", "--epochs", "1", "--iterations", "2",
          "--val_iterations", "1"])
    fold = prepared["paths"]["nnUNet_results"] / prepared["folder"].name / f"{TCT}__nnUNetPlans__{CONFIG}" / "fold_0"
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert set(summary["metric_per_case"][0]["metrics"]) == {str(c) for c in range(1, 16)}
    # 2 training + 1 online-validation passes with the heads, then the final sliding window without them
    assert calls[:3] == [True] * 3 and len(calls) > 3 and not any(calls[3:])


@pytest.mark.usefixtures("nnunet_env")
@needs_nnunet
def test_predictor_for_a_partialseg_trainer_name_rebuilds_its_network(prepared, tmp_path):
    from partialseg.engines.nnunet.predict import load_predictor
    from partialseg.engines.nnunet.run import train
    from partialseg.engines.nnunet.trainers import BackgroundLogit

    t = train(DATASET_ID, CONFIG, 0, "sigmoid", device="cpu", num_epochs=1, num_iterations_per_epoch=1,
              num_val_iterations_per_epoch=1, validate=False)
    fold = Path(t.output_folder)
    # the sigmoid trainer's network (N logits behind a constant background logit) is not nnUNetTrainer's
    predictor = load_predictor(fold.parent, 0)
    assert isinstance(predictor.network, BackgroundLogit) and predictor.trainer_name == trainer_name("sigmoid")
    case = prepared["cases"][0]
    (tmp_path / "pred").mkdir()
    predictor.predict_from_files_sequential([[str(prepared["dataset"] / "imagesTr" / f"{case}_0000.nii.gz")]],
                                            [str(tmp_path / "pred" / case)], save_probabilities=False)
    assert (tmp_path / "pred" / f"{case}.nii.gz").is_file()
    with pytest.raises(InputError, match="no trained nnU-Net checkpoint"):
        load_predictor(fold.parent, 0, checkpoint="checkpoint_best_missing.pth")
