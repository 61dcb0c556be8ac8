"""IPnP with an nnU-Net v2 specialist (partialseg.engines.nnunet.ipnp, .pseudo, .vls), marked ``nnunet``.

One module-scoped run: four tiny partially labelled phantoms, a shrunken plan (32³ patch, 4 stages of 4-16
features), round 0 and one IPnP round with the random-walker generalist, each training two iterations on the
CPU. The tests read that run, resume it, and check the loss of the VLS trainer on hand-built tensors.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from partialseg import losses as L
from tests.engines.test_nnunet import _tiny_plan

HAS_NNUNET = importlib.util.find_spec("nnunetv2") is not None
pytestmark = [pytest.mark.nnunet, pytest.mark.skipif(not HAS_NNUNET, reason="nnunetv2 not installed (requirements-nnunet.txt)")]

CONFIG = "3d_fullres"
SMALL = ["nnunet.epochs=1", "nnunet.iterations=2", "nnunet.val_iterations=1", "nnunet.validate=false",
         "nnunet.num_processes=1", "nnunet.device=cpu", "method.options.rounds=1",
         "method.options.generalist=random_walker"]




def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ipnp_run(tmp_path_factory):
    from typer.testing import CliRunner

    from partialseg.cli import app
    from partialseg.engines.nnunet.ipnp import train_ipnp_run

    root = tmp_path_factory.mktemp("nnunet_ipnp")
    runner = CliRunner()
    for args in (["synth", str(root / "full"), "--cases", "4", "--shape", "40,36,32", "--spacing", "9.6,9.2,11.25"],
                 ["simulate", str(root / "full"), str(root / "partial"), "--keep", "0.33", "--seed", "0"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
    ds = root / "partial"
    before = _files(ds)
    saved = os.environ.get("nnUNet_n_proc_DA")
    os.environ["nnUNet_n_proc_DA"] = "0"  # batches in this process: no augmentation workers
    try:
        fold = train_ipnp_run(ds, root / "run", "ipnp", SMALL, edit_plans=_tiny_plan)
    finally:
        if saved is None:
            os.environ.pop("nnUNet_n_proc_DA", None)
        else:
            os.environ["nnUNet_n_proc_DA"] = saved
    return {"dataset": ds, "run": root / "run", "fold": fold, "before": before,
            "dataset_json": json.loads((ds / "dataset.json").read_text())}


def _raw(run: Path, r: int) -> Path:
    from partialseg.engines.nnunet.ipnp import round_dataset_name

    return run / "nnUNet_raw" / round_dataset_name(r, "partial")


def test_one_round_end_to_end_writes_a_pseudo_label_dataset_and_trains_the_vls_trainer(ipnp_run):
    from partialseg.data.dataset import PartialDataset
    from partialseg.engines.nnunet.vls import IPNP_TRAINER, PSEUDO_KEY

    run, user = ipnp_run["run"], PartialDataset.load(ipnp_run["dataset"])
    fold = ipnp_run["fold"]
    assert fold.parent.name == f"{IPNP_TRAINER}__nnUNetPlans__{CONFIG}" and fold.parent.parent.name == _raw(run, 1).name
    saved = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert saved["trainer_name"] == IPNP_TRAINER
    record = json.loads((run / "nnunet.json").read_text())
    assert record["trainer"] == IPNP_TRAINER and record["nnunet_dataset"] == _raw(run, 1).name and record["round"] == 1
    assert json.loads((run / "ipnp" / "round_1.json").read_text())["initialised_from"].endswith("checkpoint_final.pth")

    raw = _raw(run, 1)
    dj = json.loads((raw / "dataset.json").read_text())
    space = user.label_space
    decisions = json.loads((run / "pseudo" / "round_1" / "decisions.json").read_text())
    n_pseudo = 0
    for case in user.cases:
        phi = set(space.names_of(case.annotated))
        pseudo = set(dj[PSEUDO_KEY][case.case_id])
        assert set(dj["annotated_classes"][case.case_id]) == phi | pseudo and not phi & pseudo
        # every unannotated organ got a decision; P: the accepted ones that kept voxels in the assembled map
        # (round 1 has no previous pseudo-label to keep; an overlap goes to the more probable class)
        unannotated = {n for n in space.names if n not in phi}
        assert set(decisions[case.case_id]) == unannotated
        assert pseudo <= {n for n, d in decisions[case.case_id].items() if d["status"] == "accepted"}
        n_pseudo += len(pseudo)
        img = raw / "imagesTr" / case.image.name
        assert img.is_symlink() and img.resolve() == case.image.resolve()
        mine = case.load_label(space).array
        theirs = np.asarray(__import__("nibabel").load(str(raw / "labelsTr" / case.label.name)).dataobj)
        assert np.array_equal(theirs[mine != 0], mine[mine != 0])  # annotations kept
        added = (mine == 0) & (theirs != 0)
        assert set(np.unique(theirs[added]).tolist()) <= {space.index(n) for n in pseudo}
        assert all((theirs == space.index(n)).any() for n in pseudo)
    assert n_pseudo > 0, "the round pseudo-labelled nothing: the test would not exercise VLS"
    assert (run / "pseudo_quality.md").is_file()  # the phantoms have reference labels


def test_pseudo_label_dataset_passes_nnunets_integrity_check(ipnp_run):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(_raw(ipnp_run["run"], 1)), num_processes=1)


def test_round_trainer_starts_from_all_weights_of_the_previous_round(ipnp_run, monkeypatch):
    from partialseg.engines.nnunet.ipnp import _fold_folder, round_dataset_name
    from partialseg.engines.nnunet.paths import nnunet_environment
    from partialseg.engines.nnunet.run import build_trainer
    from partialseg.engines.nnunet.vls import nnUNetTrainer_partialseg_ipnp

    run = ipnp_run["run"]
    round0 = Path(json.loads((run / "ipnp" / "round_0.json").read_text())["fold"]) / "checkpoint_final.pth"
    cls = type(nnUNetTrainer_partialseg_ipnp.__name__, (nnUNetTrainer_partialseg_ipnp,), {"partialseg_init_checkpoint": str(round0)})
    with nnunet_environment(run):
        t = build_trainer(round_dataset_name(1, "partial"), CONFIG, 0, cls, device="cpu")
        t.initialize()
    want = torch.load(round0, map_location="cpu", weights_only=False)["network_weights"]
    got = t.network.state_dict()
    assert set(got) == set(want) and any(".seg_layers." in k for k in want)  # nnU-Net's -pretrained_weights skips these
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert _fold_folder({"nnUNet_results": run / "nnUNet_results"}, round_dataset_name(1, "partial"), cls.__name__,
                        {"configuration": CONFIG, "fold": 0}) == ipnp_run["fold"]


def test_vls_trainer_loss_is_partialsegs_vls_loss_over_the_deep_supervision_scales(ipnp_run):
    from partialseg.engines.nnunet.ipnp import round_dataset_name
    from partialseg.engines.nnunet.paths import nnunet_environment
    from partialseg.engines.nnunet.run import build_trainer
    from partialseg.engines.nnunet.vls import IPNP_TRAINER, PSEUDO_KEY

    run = ipnp_run["run"]
    dj = json.loads((run / "nnUNet_preprocessed" / round_dataset_name(1, "partial") / "dataset.json").read_text())
    labels = dj["labels"]
    # hand-built P and Phi ∪ P for two named cases, so that the test holds whatever the round produced
    dj["annotated_classes"] = {"a": ["liver", "spleen", "stomach"], "b": ["spleen", "kidney_left"]}
    dj[PSEUDO_KEY] = {"a": ["spleen", "stomach"], "b": []}
    with nnunet_environment(run):
        t = build_trainer(round_dataset_name(1, "partial"), CONFIG, 0, IPNP_TRAINER, device="cpu")
        t = type(t)({**t.plans_manager.plans, "continue_training": False}, CONFIG, 0, dj, torch.device("cpu"))
        t.initialize()
    g = torch.Generator().manual_seed(0)
    c = len(labels)
    outputs = [torch.randn(2, c, s, s, s, generator=g) * 2 for s in (32, 16, 8)]
    names = {"a": ["background", "liver", "spleen", "stomach"], "b": ["background", "spleen", "kidney_left"]}
    targets = [torch.stack([torch.tensor([labels[n] for n in names[k]])[torch.randint(0, len(names[k]), (1, s, s, s), generator=g)]
                            for k in ("a", "b")]).float() for s in (32, 16, 8)]
    keys = np.array(["a", "b"])
    t._set_batch({"keys": keys})
    annotated = torch.zeros(2, c, dtype=torch.bool)
    pseudo = torch.zeros(2, c, dtype=torch.bool)
    annotated[:, 0] = True
    for b, k in enumerate(keys):
        for n in dj["annotated_classes"][k]:
            annotated[b, labels[n]] = True
        for n in dj[PSEUDO_KEY][k]:
            pseudo[b, labels[n]] = True
    assert torch.equal(t.loss.annotated, annotated) and torch.equal(t.loss.pseudo, pseudo)
    got = float(t.loss(outputs, targets))

    def vls(o, y):
        return L.marginal_loss(o, y, annotated, voxel_mask=L.vls_voxel_mask(y, o.argmax(1), pseudo))

    weights = t.loss.weights
    want = sum(w * vls(o, y[:, 0].long()) for w, o, y in zip(weights, outputs, targets))
    assert got == pytest.approx(float(want), rel=1e-6)
    # the mask matters: without it (all voxels kept) the loss is another number
    plain = sum(w * L.marginal_loss(o, y[:, 0].long(), annotated) for w, o, y in zip(weights, outputs, targets))
    assert got != pytest.approx(float(plain), rel=1e-3)


def test_resume_skips_the_finished_round_and_redoes_a_half_written_one(ipnp_run, monkeypatch):
    import partialseg.engines.nnunet.run as run_module
    from partialseg.engines.nnunet.ipnp import train_ipnp_run

    run, ds = ipnp_run["run"], ipnp_run["dataset"]
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    real, calls = run_module.train, []

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "train", counting)
    final = ipnp_run["fold"] / "checkpoint_final.pth"
    stamp = final.stat().st_mtime_ns
    assert train_ipnp_run(ds, run, "ipnp", resume=True) == ipnp_run["fold"]  # the saved settings, nothing redone
    assert calls == [] and final.stat().st_mtime_ns == stamp

    # a kill in round 1: its marker, its raw dataset (left as a temporary folder) and one case's pseudo-label gone
    (run / "ipnp" / "round_1.json").unlink()
    raw = _raw(run, 1)
    shutil.move(raw, raw.with_name(f".{raw.name}.999999.x.partial"))
    case = sorted(p.stem for p in (run / "pseudo" / "round_1").glob("*.npy"))[0]
    (run / "pseudo" / "round_1" / f"{case}.json").unlink()
    others = {p: p.stat().st_mtime_ns for p in (run / "pseudo" / "round_1").glob("*.json") if p.stem != "decisions"
              and p.stem != case}
    assert train_ipnp_run(ds, run, "ipnp", SMALL, resume=True) == ipnp_run["fold"]
    assert calls == [2]  # round 1 only (nnU-Net dataset 2), round 0 kept
    assert (run / "pseudo" / "round_1" / f"{case}.json").is_file() and (run / "ipnp" / "round_1.json").is_file()
    assert {p: p.stat().st_mtime_ns for p in others} == others  # the finished cases were not redone
    assert (raw / "dataset.json").is_file() and not raw.with_name(f".{raw.name}.999999.x.partial").exists()


def test_the_users_dataset_is_byte_identical_afterwards(ipnp_run):
    assert _files(ipnp_run["dataset"]) == ipnp_run["before"]


def test_cli_dispatches_ipnp_to_the_nnunet_procedure(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import partialseg.engines.nnunet.ipnp as ipnp
    from partialseg.cli import app

    seen = {}

    def fake(dataset, run, method, overrides, *, resume=False):
        seen.update(dataset=Path(dataset), run=Path(run), method=method, overrides=list(overrides), resume=resume)
        return tmp_path / "fold_0"

    monkeypatch.setattr(ipnp, "train_ipnp_run", fake)
    r = CliRunner().invoke(app, ["train", str(tmp_path / "ds"), "--out", str(tmp_path / "run"), "--engine", "nnunet",
                                 "--method", "ipnp_gated", "--set", "method.options.rounds=3"])
    assert r.exit_code == 0, r.output
    assert seen == {"dataset": tmp_path / "ds", "run": tmp_path / "run", "method": "ipnp_gated",
                    "overrides": ["method.options.rounds=3"], "resume": False}


def test_boxnet_generalist_trains_on_the_training_cases_image_grids(ipnp_run, tmp_path):
    from partialseg.data.dataset import PartialDataset
    from partialseg.engines.nnunet.paths import run_paths
    from partialseg.engines.nnunet.pseudo import _ras_case, build_generalist_for
    from partialseg.generalist.prompts import box_prompts_from_mask
    from partialseg.methods.base import get_method

    ds = PartialDataset.load(ipnp_run["dataset"])
    opts = get_method("ipnp").parse_options({"generalist": "boxnet", "generalist_training": {"steps": 3, "checkpoint_every": 3}})
    gen = build_generalist_for(opts, ds, tmp_path, run_paths(ipnp_run["run"]), {"fold": 0, "device": "cpu"}, False)
    log = (tmp_path / "generalist" / "log.csv").read_text().splitlines()
    assert len(log) == 1 + 3  # trained here, three steps
    case = ds.cases[0]
    _, hu, label, spacing, _ = _ras_case(case, ds)
    k = max(case.annotated, key=lambda c: int((label == c).sum()))
    mask = gen.segment(hu, spacing, box_prompts_from_mask(label == k, axes=(2, 0), padding=opts.padding))
    assert mask.shape == label.shape and mask.dtype == bool
    assert gen.spacing == pytest.approx(spacing)  # trained at the cases' own (RAS) spacing


def test_predict_uses_the_last_rounds_model(ipnp_run, tmp_path):
    import nibabel as nib

    from partialseg.engines.nnunet.predict import model_folder, predict_run

    run = ipnp_run["run"]
    folder, _ = model_folder(run)
    assert folder == ipnp_run["fold"].parent  # nnunet.json names the last finished round
    image = sorted((ipnp_run["dataset"] / "imagesTr").iterdir())[0]
    [out] = predict_run(run, image, tmp_path / "pred", device="cpu", progress=False)
    pred, img = nib.load(str(out)), nib.load(str(image))
    assert pred.shape == img.shape and np.allclose(pred.affine, img.affine)


def test_gated_ipnp_predicts_each_case_once_per_round(ipnp_run, tmp_path, monkeypatch):
    from partialseg.data.dataset import PartialDataset
    from partialseg.engines.nnunet import pseudo
    from partialseg.engines.nnunet.ipnp import train_ipnp_run

    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    real, calls = pseudo.NnunetSpecialist.probabilities, []

    def counting(self, image):
        calls.append(1)
        return real(self, image)

    monkeypatch.setattr(pseudo.NnunetSpecialist, "probabilities", counting)
    run = tmp_path / "gated"
    train_ipnp_run(ipnp_run["dataset"], run, "ipnp_gated", SMALL, edit_plans=_tiny_plan)
    n = len(PartialDataset.load(ipnp_run["dataset"]).cases)
    # the organ gate's pass also made the pseudo-labels: one prediction per case, not two
    assert len(calls) == n
    sources = json.loads((run / "pseudo" / "round_1" / "sources.json").read_text())
    assert all(v["source"] in ("generalist", "specialist", None) for v in sources.values())
    assert not (run / "pseudo" / "round_1" / "candidates").exists()
    assert len(json.loads((run / "pseudo" / "round_1" / "decisions.json").read_text())) == n
