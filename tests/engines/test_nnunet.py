"""nnU-Net v2 as the engine: partialseg's losses inside nnU-Net trainers (partialseg.engines.nnunet).

The first tests need no nnunetv2 (annotated sets, path variables). The rest are marked ``nnunet`` and need the
optional extra (``pip install -c constraints.txt -r requirements-nnunet.txt``); they are skipped without it.
They plan and preprocess four tiny partially labelled phantoms with nnU-Net's own functions, shrink the plan
(32³ patch, 4 stages of 4-16 features, batch 2) and train every trainer for two iterations on the CPU.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from partialseg import losses as L
from partialseg.engines.nnunet import EXT_TRAINER_DIR, METHODS, trainer_name
from partialseg.engines.nnunet.annotations import CaseAnnotations
from partialseg.engines.nnunet.paths import PATH_VARIABLES, link_raw_dataset, nnunet_environment
from partialseg.errors import InputError

HAS_NNUNET = importlib.util.find_spec("nnunetv2") is not None
_skip = pytest.mark.skipif(not HAS_NNUNET, reason='nnunetv2 not installed (pip install -c constraints.txt '
                                                   '"partialseg[nnunet]", see requirements-nnunet.txt)')


def needs_nnunet(test):
    """Marked ``nnunet`` (``pytest -m nnunet``) and skipped without nnunetv2."""
    return pytest.mark.nnunet(_skip(test))

DATASET_ID = 501
CONFIG = "3d_fullres"
DJSON = {"labels": {"background": 0, "liver": 1, "spleen": 2, "kidney_left": 3},
         "annotated_classes": {"a": ["spleen"], "b": ["liver", "kidney_left"]}}


# ---- no nnunetv2 needed ----------------------------------------------------------------------------------


def test_case_annotations_give_one_row_per_key_in_batch_order():
    ann = CaseAnnotations(DJSON)
    mask = ann.mask(np.array(["b", "zz", "a"]))  # nnU-Net's keys are a numpy array; "zz" has no entry
    assert mask.dtype == torch.bool and mask.tolist() == [
        [True, True, False, True],  # b: liver, kidney_left
        [True, True, True, True],  # no entry: fully annotated (README, "Dataset format")
        [True, False, True, False],  # a: spleen
    ]


@pytest.mark.parametrize("bad, match", [({"a": ["pancreas"]}, "not in the label space"), ({"a": []}, "empty"),
                                        ({"a": "spleen"}, "must be a list")])
def test_case_annotations_reject_bad_entries(bad, match):
    with pytest.raises(InputError, match=match):
        CaseAnnotations({**DJSON, "annotated_classes": bad})


def test_path_variables_point_inside_the_run_and_are_restored(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", "/users/own/raw")
    monkeypatch.delenv("nnUNet_results", raising=False)
    with nnunet_environment(tmp_path / "run") as paths:
        for name in PATH_VARIABLES:
            assert os.environ[name] == str(tmp_path.resolve() / "run" / name) == str(paths[name])
            assert paths[name].is_dir()
    assert os.environ["nnUNet_raw"] == "/users/own/raw" and "nnUNet_results" not in os.environ


def test_raw_dataset_is_a_link_to_the_users_folder(tmp_path):
    ds = tmp_path / "my data"
    ds.mkdir()
    (ds / "dataset.json").write_text(json.dumps(DJSON))
    link = link_raw_dataset(ds, tmp_path / "raw", 7)
    assert link.name == "Dataset007_mydata" and link.is_symlink() and link.resolve() == ds.resolve()
    assert link_raw_dataset(ds, tmp_path / "raw", 7) == link  # idempotent
    other = tmp_path / "other"
    other.mkdir()
    (other / "dataset.json").write_text("{}")
    with pytest.raises(InputError, match="another dataset"):
        link_raw_dataset(other, tmp_path / "raw", 7, name="mydata")


# ---- nnU-Net: a planned, preprocessed tiny dataset ---------------------------------------------------------


def _tiny_plan(plans: dict) -> None:
    c = plans["configurations"][CONFIG]
    c["patch_size"], c["batch_size"] = [32, 32, 32], 2
    c["architecture"]["arch_kwargs"].update(
        n_stages=4, features_per_stage=[4, 8, 16, 16], kernel_sizes=[[3, 3, 3]] * 4,
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], n_conv_per_stage=[1] * 4, n_conv_per_stage_decoder=[1] * 3)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Four 40×36×32 phantoms, a random third of the organs kept per case (``partialseg synth`` + ``simulate``),
    planned and preprocessed by nnU-Net inside a run folder; fold 0 = three training cases, one validation."""
    if not HAS_NNUNET:
        pytest.skip("nnunetv2 not installed")
    from typer.testing import CliRunner

    from partialseg.cli import app
    from partialseg.engines.nnunet.prepare import plan_and_preprocess

    root = tmp_path_factory.mktemp("nnunet")
    runner = CliRunner()
    for args in (["synth", str(root / "full"), "--cases", "4", "--shape", "40,36,32", "--spacing", "9.6,9.2,11.25"],
                 ["simulate", str(root / "full"), str(root / "partial"), "--keep", "0.33", "--seed", "0"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
    dj = json.loads((root / "partial" / "dataset.json").read_text())
    cases = sorted(dj["annotated_classes"])
    assert len(cases) == 4 and all(len(v) < 15 for v in dj["annotated_classes"].values())
    with nnunet_environment(root / "run") as paths:
        folder = plan_and_preprocess(root / "partial", paths, DATASET_ID, num_processes=1, edit_plans=_tiny_plan,
                                     splits=[{"train": cases[:3], "val": cases[3:]}])
    return {"paths": paths, "folder": folder, "dataset_json": dj, "cases": cases, "dataset": root / "partial"}


@pytest.fixture
def nnunet_env(prepared, monkeypatch):
    for name, folder in prepared["paths"].items():
        monkeypatch.setenv(name, str(folder))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # batches in this process: no augmentation workers
    return prepared


def _trainer(method: str):
    from partialseg.engines.nnunet.run import build_trainer

    t = build_trainer(DATASET_ID, CONFIG, 0, method, device="cpu")
    t.initialize()
    return t


def _phi(dj: dict, keys) -> torch.Tensor:
    """Phi straight from dataset.json's names and label values (independent of CaseAnnotations)."""
    rows = torch.zeros(len(keys), len(dj["labels"]), dtype=torch.bool)
    rows[:, 0] = True
    for b, k in enumerate(keys):
        for name in dj["annotated_classes"].get(k, [n for n in dj["labels"] if n != "background"]):
            rows[b, dj["labels"][name]] = True
    return rows


REFERENCE = {  # each method's loss written with partialseg's loss functions, at one scale
    "full": lambda x, y, a: L.full_loss(x, y),
    "marginal": lambda x, y, a: L.marginal_loss(x, y, a),
    "exclusion": lambda x, y, a: L.marginal_loss(x, y, a) + 1.0 * L.exclusion_loss(x, y, a),
    "sigmoid": lambda x, y, a: L.sigmoid_loss(x[:, 1:], y, a),  # channel 0 is the constant background logit
    "aal": lambda x, y, a: L.aal_loss(x, y, a),
}


@pytest.mark.parametrize("method", [m for m in METHODS if m != "tct"])  # tct: test_nnunet_tct.py (it has heads)
@pytest.mark.usefixtures("nnunet_env")
@needs_nnunet
def test_trainer_loss_is_partialseg_loss_weighted_over_the_deep_supervision_scales(method, prepared):
    t = _trainer(method)
    # nnU-Net's weights for 3 outputs: 1, 1/2, 1/4 -> lowest scale 0 -> normalised
    assert t.loss.weights == pytest.approx((2 / 3, 1 / 3, 0.0))
    g = torch.Generator().manual_seed(0)
    keys = np.array(prepared["cases"][1::-1])
    phi = _phi(prepared["dataset_json"], keys)
    assert not bool(phi.all()), "the cases must be partially annotated for this test to mean anything"
    # logits that favour the unannotated organs, labels from {0} ∪ Phi (the convention): Phi changes every loss
    favour = (~phi).float().reshape(2, 16, 1, 1, 1) * 3
    outputs = [torch.randn(2, 16, s, s, s, generator=g) * 2 + favour for s in (32, 16, 8)]
    targets = [torch.stack([torch.nonzero(phi[b])[torch.randint(0, int(phi[b].sum()), (1, s, s, s), generator=g), 0]
                            for b in range(2)]).float() for s in (32, 16, 8)]  # nnU-Net's (B, 1, ...) label maps
    t._set_batch({"keys": keys})
    got = t.loss(outputs, targets)
    want = sum(w * REFERENCE[method](o, y[:, 0].long(), phi) for w, o, y in zip(t.loss.weights, outputs, targets))
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    if method != "full":  # Phi must matter: the all-annotated loss is a different number
        assert float(got) != pytest.approx(float(sum(w * REFERENCE[method](o, y[:, 0].long(), torch.ones_like(phi))
                                                     for w, o, y in zip(t.loss.weights, outputs, targets))), rel=1e-2)


@pytest.mark.usefixtures("nnunet_env")
@needs_nnunet
def test_annotated_sets_reach_the_loss_for_the_batch_cases(prepared):
    t = _trainer("marginal")
    np.random.seed(0)  # nnU-Net's in-process loader draws cases with numpy's global generator
    t.on_train_start()  # nnU-Net's data loaders: batches name their cases in batch["keys"]
    try:
        seen, mixed = set(), 0
        for _ in range(8):
            batch = next(t.dataloader_train)
            t.train_step(batch)
            assert t.loss.annotated.tolist() == _phi(prepared["dataset_json"], batch["keys"]).tolist()
            seen.update(batch["keys"])
            if batch["keys"][0] != batch["keys"][1]:  # two cases: the rows must follow the batch order
                mixed += 1
                flipped = {"data": batch["data"].flip(0), "target": [y.flip(0) for y in batch["target"]],
                           "keys": batch["keys"][::-1]}
                t.train_step(flipped)
                assert t.loss.annotated.tolist() == _phi(prepared["dataset_json"], flipped["keys"]).tolist()
                if mixed == 2:
                    break
        assert mixed >= 1 and seen <= set(prepared["cases"][:3])
    finally:
        t.on_train_end()


class _Fixed(torch.nn.Module):
    """A 'network' returning given deep-supervision outputs, to test the validation step's bookkeeping."""

    def __init__(self, outputs, decoder) -> None:
        super().__init__()
        self.outputs, self.decoder = outputs, decoder

    def forward(self, x):
        return self.outputs


@pytest.mark.usefixtures("nnunet_env")
@needs_nnunet
def test_online_pseudo_dice_counts_annotated_pairs_only(prepared):
    t = _trainer("exclusion")
    g = torch.Generator().manual_seed(1)
    keys = np.array(prepared["cases"][2:0:-1])
    phi = _phi(prepared["dataset_json"], keys).numpy()
    outputs = [torch.randn(2, 16, s, s, s, generator=g) for s in (32, 16, 8)]
    targets = [torch.randint(0, 16, (2, 1, s, s, s), generator=g).float() for s in (32, 16, 8)]
    t.network = _Fixed(outputs, t.network.decoder)
    out = t.validation_step({"data": torch.zeros(2, 1, 32, 32, 32), "target": targets, "keys": keys})
    pred, gt = outputs[0].argmax(1).numpy(), targets[0][:, 0].numpy()
    for name, cond in (("tp_hard", lambda p, y: p & y), ("fp_hard", lambda p, y: p & ~y), ("fn_hard", lambda p, y: ~p & y)):
        want = [sum(int(cond(pred[b] == c, gt[b] == c).sum()) for b in range(2) if phi[b, c]) for c in range(1, 16)]
        assert out[name].tolist() == want, name
    never = [c for c in range(1, 16) if not phi[:, c].any()]
    assert never and all(out["fp_hard"][c - 1] == 0 for c in never) and (pred == never[0]).any()
    assert math.isfinite(float(out["loss"]))


@needs_nnunet
def test_sigmoid_network_argmax_is_partialseg_sigmoid_label_rule():
    from partialseg.engines.nnunet.trainers import BackgroundLogit
    from partialseg.labels import LabelSpace
    from partialseg.methods.base import get_method

    x = torch.randn(2, 5, 6, 7, 8, generator=torch.Generator().manual_seed(2)) * 2
    inner = _Fixed([x, x[..., ::2, ::2, ::2]], decoder=torch.nn.Identity())
    net = BackgroundLogit(inner)
    out = net(torch.zeros(1))
    assert [o.shape[1] for o in out] == [6, 6] and bool((out[0][:, 0] == 0).all()) and net.decoder is inner.decoder
    rule = get_method("sigmoid")(LabelSpace(tuple("abcde"))).probabilities(x).argmax(1)
    assert torch.equal(out[0].argmax(1), rule) and 0 < int((rule == 0).sum()) < rule.numel()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.usefixtures("nnunet_env")
@needs_nnunet
def test_each_trainer_trains_a_few_iterations(method, prepared):
    from partialseg.engines.nnunet.run import train

    t = train(DATASET_ID, CONFIG, 0, method, device="cpu", num_epochs=1, num_iterations_per_epoch=2,
              num_val_iterations_per_epoch=1, validate=False)
    assert type(t).__name__ == trainer_name(method) and t.partialseg_steps == 2
    assert (Path(t.output_folder) / "checkpoint_final.pth").is_file()
    assert math.isfinite(t.logger.get_value("train_losses", -1)) and math.isfinite(t.logger.get_value("val_losses", -1))
    # the validation case's unannotated organs are never counted: their pseudo-Dice is 0/0
    dice = t.logger.get_value("dice_per_class_or_region", -1)
    val_phi = _phi(prepared["dataset_json"], prepared["cases"][3:])[0]
    assert all(math.isnan(d) for c, d in enumerate(dice, start=1) if not val_phi[c])


@pytest.mark.usefixtures("nnunet_env")
@needs_nnunet
def test_entry_point_trains_and_runs_nnunets_final_validation(prepared, monkeypatch):
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module

    from partialseg.engines.nnunet.run import main

    monkeypatch.setattr(nnunet_trainer_module, "default_num_processes", 1)  # one export worker, not 8
    main([str(DATASET_ID), CONFIG, "0", "-tr", trainer_name("sigmoid"), "-device", "cpu", "--epochs", "1",
          "--iterations", "2", "--val_iterations", "1"])
    fold = prepared["paths"]["nnUNet_results"] / prepared["folder"].name / f"{trainer_name('sigmoid')}__nnUNetPlans__{CONFIG}" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert set(summary["metric_per_case"][0]["metrics"]) == {str(c) for c in range(1, 16)}
    # scored on the validation case's annotated classes only; nnU-Net's all-class summary kept beside it
    val_phi = _phi(prepared["dataset_json"], prepared["cases"][3:])[0]
    case = summary["metric_per_case"][0]
    assert case["annotated"] == [c for c in range(1, 16) if val_phi[c]]
    assert all(math.isnan(case["metrics"][str(c)]["Dice"]) for c in range(1, 16) if not val_phi[c])
    raw = json.loads((fold / "validation" / "summary_all_classes.json").read_text())
    assert "annotated" not in raw["metric_per_case"][0] and len(raw["metric_per_case"][0]["metrics"]) == 15
    # no mirroring in training or in the predictor's test-time augmentation (left/right organs)
    saved = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert saved["inference_allowed_mirroring_axes"] is None
    with pytest.raises(SystemExit, match="unknown partialseg nnU-Net trainer"):
        main([str(DATASET_ID), CONFIG, "0", "-tr", "nnUNetTrainer", "-device", "cpu"])


@needs_nnunet
def test_nnunets_external_trainer_lookup_finds_our_classes():
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    from partialseg.engines.nnunet.trainers import TRAINERS

    folder = str(EXT_TRAINER_DIR)
    for name, cls in TRAINERS.items():
        # what nnunetv2.utilities.find_objects does with each nnUNet_extTrainer folder
        found = recursive_find_python_class(folder, name, None, base_folder=folder, cleanup_imports_from_base_folder=True)
        assert found is cls


@needs_nnunet
def test_cli_train_with_the_nnunet_engine_keeps_everything_inside_the_run(prepared, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from partialseg.cli import app
    from partialseg.engines.nnunet.drive import _trainer_class

    for name in PATH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    ds, run = prepared["dataset"], tmp_path / "run"
    before = {p: p.read_bytes() for p in ds.rglob("*") if p.is_file()}
    args = ["train", str(ds), "--out", str(run), "--engine", "nnunet", "--method", "exclusion"]
    small = ["--set", "nnunet.epochs=1", "--set", "nnunet.iterations=2", "--set", "nnunet.val_iterations=1",
             "--set", "nnunet.validate=false", "--set", "nnunet.num_processes=1"]
    r = CliRunner().invoke(app, args + small + ["--set", "method.options.exclusion_weight=0.5"])
    assert r.exit_code == 0, r.output
    record = json.loads((run / "nnunet.json").read_text())
    assert record["trainer"] == trainer_name("exclusion") and record["method_options"] == {"exclusion_weight": 0.5}
    raw = run / "nnUNet_raw" / record["nnunet_dataset"]
    assert raw.is_symlink() and raw.resolve() == ds.resolve()
    fold = run / "nnUNet_results" / record["nnunet_dataset"] / f"{trainer_name('exclusion')}__nnUNetPlans__{CONFIG}" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file() and (run / "nnUNet_preprocessed" / record["nnunet_dataset"]).is_dir()
    assert all(name not in os.environ for name in PATH_VARIABLES)  # set for the call only
    assert {p: p.read_bytes() for p in ds.rglob("*") if p.is_file()} == before  # the dataset is only read
    cls = _trainer_class("exclusion", {"exclusion_weight": 0.5})
    assert cls.__name__ == trainer_name("exclusion") and cls.partialseg_options == {"exclusion_weight": 0.5}
    for extra, message in ((small, "already exists"), (["--set", "train.steps=3"], "nnunet engine takes"),
                           (["--engine", "monai"], "--engine takes")):
        r = CliRunner().invoke(app, args + extra if extra != small else args + small)
        assert r.exit_code == 2 and message in r.output, r.output


def _torchvision_imports() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # a CUDA torchvision beside a CPU torch raises RuntimeError, not ImportError
        return False
    return True


@needs_nnunet
def test_plain_nnunetv2_train_lookup_with_nnunet_exttrainer(monkeypatch):
    if not _torchvision_imports():
        pytest.skip("torchvision does not import here (CUDA build beside a CPU torch): nnU-Net's own trainer scan "
                    "dies in its Primus trainers before nnUNet_extTrainer is read; use partialseg-nnunet-train")
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from partialseg.engines.nnunet.trainers import nnUNetTrainer_partialseg_marginal

    monkeypatch.setenv("nnUNet_extTrainer", str(EXT_TRAINER_DIR))
    assert recursive_find_trainer_class_by_name(trainer_name("marginal")) is nnUNetTrainer_partialseg_marginal


@pytest.mark.usefixtures("nnunet_env")
@needs_nnunet
def test_crafted_nnunet_checkpoints_are_refused_without_running_them(prepared, tmp_path):
    import shutil

    from partialseg.engines.nnunet.predict import load_predictor
    from partialseg.engines.nnunet.run import train
    from tests.test_checkpoint import _Payload

    t = train(DATASET_ID, CONFIG, 0, "marginal", device="cpu", num_epochs=1, num_iterations_per_epoch=1,
              num_val_iterations_per_epoch=1, validate=False)
    model = Path(t.output_folder).parent
    evil = tmp_path / "evil"
    shutil.copytree(model, evil)
    marker = tmp_path / "pwned"
    saved = torch.load(evil / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    torch.save({**saved, "logging": _Payload(marker)}, evil / "fold_0" / "checkpoint_final.pth")
    # nnU-Net's own loading would run it (weights_only=False); ours refuses, naming the file
    assert load_predictor(model, 0) is not None  # the genuine one (numpy numbers in its logs) loads
    with pytest.raises(InputError, match="refused") as e:
        load_predictor(evil, 0)
    assert "checkpoint_final.pth" in str(e.value)
    with pytest.raises(InputError, match="refused"):  # continue-training and --val go through load_checkpoint
        _trainer("marginal").load_checkpoint(str(evil / "fold_0" / "checkpoint_final.pth"))
    with pytest.raises(InputError, match="refused"):  # -pretrained_weights
        train(DATASET_ID, CONFIG, 0, "marginal", device="cpu", num_epochs=1, num_iterations_per_epoch=1,
              num_val_iterations_per_epoch=1, validate=False,
              pretrained_weights=str(evil / "fold_0" / "checkpoint_final.pth"))
    assert not marker.exists()
