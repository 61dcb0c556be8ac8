"""Planning: nnU-Net v2's spacing rule by hand, patch and batch against the memory budget, the trainer
filling only what the user left unset, `partialseg plan` and `info RUN`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from partialseg.cli import app
from partialseg.config import ExperimentConfig, PlanConfig, load_config
from partialseg.data.dataset import PartialDataset
from partialseg.labels import LabelSpace
from partialseg.methods.resolve import config_differences
from partialseg.preprocessing.fingerprint import DatasetFingerprint, fingerprint_dataset
from partialseg.preprocessing.plan import (
    ACTIVATION_BYTES,
    Plan,
    activation_elements,
    apply_plan,
    make_plan,
    target_spacing,
)
from tests.conftest import write_block_dataset

SPACE = LabelSpace(("liver", "spleen", "kidney_right", "kidney_left"))


def _fp(spacings, shapes) -> DatasetFingerprint:
    return DatasetFingerprint(tuple(f"c{i}" for i in range(len(spacings))), tuple(map(tuple, spacings)), tuple(map(tuple, shapes)))


def test_target_spacing_is_the_median_without_anisotropy():
    fp = _fp([(1.0, 1.0, 2.0), (0.8, 0.8, 1.0), (0.6, 0.6, 3.0)], [(100, 100, 60)] * 3)
    assert target_spacing(fp) == ((0.8, 0.8, 2.0), False)


def test_target_spacing_takes_the_10th_percentile_of_an_anisotropic_axis():
    # z: 5 mm on 3 cases, 1.25 mm on 2 (median 5 > 3 * 0.8), 60 slices against 512 in-plane
    zs = [5.0, 5.0, 5.0, 1.25, 1.25]
    fp = _fp([(0.8, 0.8, z) for z in zs], [(512, 512, 60)] * 5)
    spacing, aniso = target_spacing(fp)
    assert aniso and spacing[:2] == (0.8, 0.8)
    assert spacing[2] == pytest.approx(np.percentile(zs, 10))  # 1.25: numpy's linear percentile by hand
    # never finer than the in-plane axes: 10th percentile 0.5 mm becomes 0.8 mm (+1e-5)
    fp = _fp([(0.8, 0.8, z) for z in [5.0, 5.0, 5.0, 0.5, 0.5]], [(512, 512, 60)] * 5)
    assert target_spacing(fp)[0][2] == pytest.approx(0.8 + 1e-5)


def test_anisotropic_spacing_with_many_slices_keeps_the_median():
    fp = _fp([(0.8, 0.8, 5.0)] * 3, [(512, 512, 400)] * 3)  # 400 * 3 > 512: not anisotropic in voxels
    assert target_spacing(fp) == ((0.8, 0.8, 5.0), False)


def test_activation_count_is_linear_in_the_patch_for_the_fixed_unet():
    a = activation_elements("marginal", {}, "unet_tct", {"base_channels": 4}, SPACE, (32, 32, 32))
    b = activation_elements("marginal", {}, "unet_tct", {"base_channels": 4}, SPACE, (64, 32, 32))
    assert b == 2 * a > 0


def test_plan_fits_the_budget_and_shrinks_the_axis_largest_against_the_median_shape():
    fp = _fp([(0.8, 0.8, 2.5)] * 10, [(512, 512, 160)] * 10)
    small = make_plan(fp, SPACE, rules=PlanConfig(memory_gb=2.0))
    assert small.estimated_gb <= 2.0 and small.batch_size == 2
    assert all(p % d == 0 for p, d in zip(small.patch_size, small.size_divisor))
    per_patch = activation_elements("marginal", {}, "unet_tct", {}, SPACE, small.patch_size) * ACTIVATION_BYTES
    assert small.estimated_gb == pytest.approx(2 * per_patch / 2**30)
    big = make_plan(fp, SPACE, rules=PlanConfig(memory_gb=16.0))
    assert np.prod(big.patch_size) > np.prod(small.patch_size)
    # millimetre-isotropic start: in-plane 0.8 mm axes keep about 3x the voxels of the 2.5 mm axis
    assert big.patch_size[0] / big.patch_size[2] > 2


def test_batch_is_capped_by_dataset_coverage_and_grows_with_the_budget():
    fp = _fp([(2.0, 2.0, 2.0)] * 200, [(64, 64, 64)] * 200)  # the whole median volume fits
    plan = make_plan(fp, SPACE, rules=PlanConfig(memory_gb=64.0))
    assert plan.patch_size == (64, 64, 64)
    assert plan.batch_size == round(0.05 * 200 * 64**3 / 64**3) == 10 and plan.notes
    few = make_plan(_fp([(2.0, 2.0, 2.0)] * 4, [(64, 64, 64)] * 4), SPACE, rules=PlanConfig(memory_gb=64.0))
    assert few.batch_size == 2  # the minimum wins over 5 % of 4 cases


def test_dynunet_plan_carries_its_patch_and_spacing_and_pools_anisotropically():
    fp = _fp([(0.8, 0.8, 2.5)] * 10, [(512, 512, 160)] * 10)
    plan = make_plan(fp, SPACE, network="dynunet", rules=PlanConfig(memory_gb=4.0))
    assert plan.network_options["patch_size"] == list(plan.patch_size)
    assert plan.network_options["spacing"] == list(plan.spacing)
    assert plan.size_divisor[2] < plan.size_divisor[0]  # fewer poolings across the 2.5 mm axis
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_apply_plan_fills_only_what_is_unset():
    fp = _fp([(2.0, 2.5, 3.0)] * 3, [(20, 18, 16)] * 3)
    cfg = load_config(None, ["train.batch_size=3"])
    planned, plan = apply_plan(cfg, fp, SPACE)
    assert plan is not None and planned.train.batch_size == 3
    assert planned.data.spacing == (2.0, 2.5, 3.0) and planned.train.patch_size == plan.patch_size
    again, none = apply_plan(planned, fp, SPACE)
    assert none is None and again == planned
    assert config_differences(cfg, planned) == []  # unset planned keys are not differences
    assert config_differences(planned, cfg) == ['data.spacing', 'train.patch_size']


def test_fingerprint_reads_ras_spacing_and_shape_from_headers(tmp_path):
    root = write_block_dataset(tmp_path / "d", SPACE, n_cases=2, shape=(20, 18, 16), spacing=(2.0, 2.5, 3.0))
    fp = fingerprint_dataset(PartialDataset.load(root))
    assert fp.spacings == ((2.0, 2.5, 3.0),) * 2 and fp.shapes == ((20, 18, 16),) * 2
    assert DatasetFingerprint.from_dict(fp.to_dict()) == fp


def test_training_plans_unset_fields_writes_plan_json_and_resumes_with_the_same_config(tmp_path):
    from partialseg.training.trainer import train

    root = write_block_dataset(tmp_path / "d", SPACE, n_cases=3, shape=(20, 18, 16))
    cfg = load_config(None, ["train.steps=2", "train.val_every=0", "network.options={base_channels: 4}",
                             "train.checkpoint_every=1", "data.val_fraction=0.34"])
    assert cfg.train.patch_size is None and cfg.train.batch_size is None
    run = tmp_path / "run"
    train(root, run, cfg, progress=False)
    saved = load_config(run / "config.yaml")
    plan = json.loads((run / "plan.json").read_text())
    assert list(saved.train.patch_size) == plan["patch_size"] == [32, 32, 16]  # 20x18x16 padded up to 16s
    assert saved.train.batch_size == plan["batch_size"] == 2 and list(saved.data.spacing) == plan["spacing"]
    cfg.train.steps = 3
    train(root, run, cfg, resume=True, progress=False)  # the unplanned config is not "a different config"
    assert load_config(run / "config.yaml").train.steps == 3
    out = CliRunner().invoke(app, ["info", str(run)])
    assert out.exit_code == 0 and "planned: spacing 2 × 2.5 × 3 mm" in out.output and "patch 32×32×16" in out.output


def test_plan_command_prints_and_writes_the_plan_without_overwriting(tmp_path):
    root = write_block_dataset(tmp_path / "d", SPACE, n_cases=2)
    out = tmp_path / "plan.json"
    r = CliRunner().invoke(app, ["plan", str(root), "--set", "network.name=dynunet", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "train would use: data.spacing=[2.0, 2.5, 3.0]" in r.output
    d = json.loads(out.read_text())
    assert d["plan"]["network"] == "dynunet" and d["fingerprint"]["num_cases"] == 2
    r = CliRunner().invoke(app, ["plan", str(root), "--out", str(out)])
    assert r.exit_code == 2 and "exists" in r.output


def test_default_config_leaves_the_planned_fields_unset():
    cfg = ExperimentConfig()
    assert cfg.data.spacing is None and cfg.train.patch_size is None and cfg.train.batch_size is None
