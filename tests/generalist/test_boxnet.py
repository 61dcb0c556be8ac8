"""The learned box-prompted generalist: input encoding, training (resume), inference contract, IPnP wiring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from partialseg import checkpoint as ckpt
from partialseg.cli import app
from partialseg.errors import InputError, PartialsegError
from partialseg.generalist.base import build_generalist
from partialseg.generalist.boxnet import (
    MODEL_FILE,
    BoxNetCase,
    BoxNetConfig,
    _sample,
    _window,
    boxnet_input,
    prompt_channels,
    train_boxnet,
)
from partialseg.generalist.prompts import BoxPrompt, box_prompts_from_mask
from partialseg.methods.ipnp import IPnPOptions
from tests.conftest import write_block_dataset

SPACING = (2.0, 2.5, 3.0)


def test_prompt_channels_rectangles_and_spanned_box():
    axial = BoxPrompt(2, 3, (1, 2, 3), (4, 5, 4))  # x 1..3, y 2..4 on z = 3
    sagittal = BoxPrompt(0, 2, (2, 1, 2), (3, 6, 6))  # y 1..5, z 2..5 on x = 2
    ch = prompt_channels((6, 7, 8), [axial, sagittal])
    assert ch.shape == (2, 6, 7, 8) and ch.dtype == np.float32
    expect_rect = np.zeros((6, 7, 8), bool)
    expect_rect[1:4, 2:5, 3] = True
    expect_rect[2, 1:6, 2:6] = True
    np.testing.assert_array_equal(ch[0] > 0, expect_rect)
    # spanned box: x from the axial box, z from the sagittal one, y the union of both
    expect_box = np.zeros((6, 7, 8), bool)
    expect_box[1:4, 1:6, 2:6] = True
    np.testing.assert_array_equal(ch[1] > 0, expect_box)
    assert not prompt_channels((3, 3, 3), []).any()
    # a window that misses the sagittal prompt's slice: its rectangle is gone, the 3D box is not
    ch = prompt_channels((4, 7, 8), [axial, sagittal], origin=(3, 0, 0))
    expect_rect = np.zeros((4, 7, 8), bool)
    expect_rect[0, 2:5, 3] = True  # the axial box's x = 3 column, in window coordinates x = 0
    np.testing.assert_array_equal(ch[0] > 0, expect_rect)
    expect_box = np.zeros((4, 7, 8), bool)
    expect_box[0:1, 1:6, 2:6] = True  # x 1..3 -> window 0..0; z 2..5 still from the sagittal prompt
    np.testing.assert_array_equal(ch[1] > 0, expect_box)


def test_window_is_centred_and_grows_to_a_multiple_of_16():
    origin, size = _window((10, 10, 10), (20, 20, 14), (48, 48, 32))
    assert size == [48, 48, 32]
    assert origin == [15 - 24, 15 - 24, 12 - 16]
    # a 40-voxel box plus the 4-voxel margin on each side needs 48; 60 needs 80 (> the 48 asked)
    _, size = _window((0, 0, 0), (60, 40, 10), (48, 48, 32))
    assert size == [80, 48, 32]


def test_training_window_is_centred_on_a_box_larger_than_the_crop():
    lab = np.zeros((20, 20, 80), np.uint8)
    lab[6:14, 6:14, 10:70] = 1  # 60 slices long, the crop is 32
    case = BoxNetCase(np.zeros(lab.shape, np.float32), lab, frozenset({0, 1}))
    cfg = BoxNetConfig(crop_size=(32, 32, 32), padding=0, box_jitter=0, shift=0)
    x, y = _sample([case], {1: [0]}, cfg, np.random.default_rng(0))
    assert x.shape == (3, 32, 32, 32) and y.shape == (32, 32, 32)
    # centred on z 10..69 (centre 40): the crop is z 24..55, the organ fills it end to end
    assert y[:, :, 0].any() and y[:, :, -1].any()
    assert x[2].any(axis=(0, 1)).all()  # the spanned box covers every slice of the crop


def test_input_pads_with_air_outside_the_image():
    img = np.full((8, 8, 8), 50.0, np.float32)
    p = BoxPrompt(2, 4, (2, 2, 4), (6, 6, 5))
    x = boxnet_input(img, [p], origin=(-4, 0, 0), size=(16, 16, 16), hu_window=(-250.0, 350.0))
    assert x.shape == (3, 16, 16, 16)
    assert np.allclose(x[0, :4], -1.0)  # outside the image: air, clipped to the window's low end
    assert np.allclose(x[0, 4:12, :8, :8], 0.0)  # 50 HU is the window's centre
    assert x[1].sum() == 16 and x[1, 6:10, 2:6, 4].all()  # the box moved by the window origin


def test_lazy_hounsfield_view_gives_the_same_input_as_a_hu_copy(tmp_path):
    from types import SimpleNamespace

    from partialseg.pseudolabel.loop import HounsfieldView, hounsfield

    rng = np.random.default_rng(1)
    prepared = rng.uniform(0, 1, (1, 10, 9, 8)).astype(np.float32)  # "tct" normalisation: HU clipped, scaled to [0, 1]
    cfg = SimpleNamespace(normalization="tct", clip=(-325.0, 325.0))
    view, hu = HounsfieldView(prepared, cfg, None), hounsfield(prepared, cfg, None)
    assert view.shape == (10, 9, 8) and np.array_equal(view[2:5, :, 3], hu[2:5, :, 3]) and np.array_equal(np.asarray(view), hu)
    p = BoxPrompt(2, 4, (2, 2, 4), (6, 6, 5))
    for origin in ((-4, 0, 0), (3, 2, 1)):
        np.testing.assert_array_equal(boxnet_input(view, [p], origin, (16, 8, 8), (-250.0, 350.0)),
                                      boxnet_input(hu, [p], origin, (16, 8, 8), (-250.0, 350.0)))
    # over the blosc2 cache's arrays too (the crop is read from the stored image directly)
    from partialseg.preprocessing.storage import Blosc2Array, save_array

    stored = HounsfieldView(Blosc2Array(save_array(tmp_path / "img", prepared, "blosc2")), cfg, None)
    np.testing.assert_array_equal(stored[2:5, :, 3], hu[2:5, :, 3])
    np.testing.assert_array_equal(boxnet_input(stored, [p], (3, 2, 1), (16, 8, 8), (-250.0, 350.0)),
                                  boxnet_input(hu, [p], (3, 2, 1), (16, 8, 8), (-250.0, 350.0)))


def _cube_cases(n: int = 3) -> list[BoxNetCase]:
    rng = np.random.default_rng(0)
    cases = []
    for i in range(n):
        lab = np.zeros((24, 24, 20), np.uint8)
        lab[5:12, 6:13, 4:10] = 1
        lab[14:20, 12:19, 10:16] = 2
        img = (rng.normal(0, 10, lab.shape) + 60.0 * lab - 50).astype(np.float32)
        cases.append(BoxNetCase(img, lab, frozenset({0, 1, 2} if i else {0, 1}), f"c{i}"))
    return cases


def _tiny(**kw) -> BoxNetConfig:
    return BoxNetConfig(steps=4, batch_size=2, crop_size=(32, 16, 16), base_channels=4, checkpoint_every=2, **kw)


def test_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    cases = _cube_cases()
    whole = train_boxnet(cases, tmp_path / "whole", SPACING, _tiny(), device="cpu", progress=False)
    assert (tmp_path / "whole" / "log.csv").exists() and (tmp_path / "whole" / "curves.png").exists()
    assert json.loads((tmp_path / "whole" / "training_data.json").read_text())["organs"] == {"1": 3, "2": 2}

    real_save = ckpt.save_atomic

    def killed_after_first_checkpoint(obj, path):
        real_save(obj, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_atomic", killed_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train_boxnet(cases, tmp_path / "killed", SPACING, _tiny(), device="cpu", progress=False)
    monkeypatch.setattr(ckpt, "save_atomic", real_save)
    assert torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)["step"] == 2
    resumed = train_boxnet(cases, tmp_path / "killed", SPACING, _tiny(), device="cpu", progress=False)
    a, b = ckpt.load(whole)["state_dict"], ckpt.load(resumed)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "killed" / "checkpoint.pt").exists()
    # other settings than the checkpoint's are refused rather than mixed
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(ckpt, "save_atomic", killed_after_first_checkpoint)
        train_boxnet(cases, tmp_path / "other", SPACING, _tiny(), device="cpu", progress=False)
    monkeypatch.setattr(ckpt, "save_atomic", real_save)
    with pytest.raises(InputError, match="other training settings"):
        train_boxnet(cases, tmp_path / "other", SPACING, _tiny(lr=1e-2), device="cpu", progress=False)


def test_no_annotated_organ_is_a_clear_error(tmp_path):
    cases = [BoxNetCase(np.zeros((8, 8, 8), np.float32), np.zeros((8, 8, 8), np.uint8), frozenset({0, 1}))]
    with pytest.raises(PartialsegError, match="no annotated organ"):
        train_boxnet(cases, tmp_path / "x", SPACING, _tiny(), device="cpu", progress=False)


def test_generalist_contract(tmp_path):
    torch.set_num_threads(1)
    model = train_boxnet(_cube_cases(), tmp_path / "m", SPACING, _tiny(), device="cpu", progress=False)
    g = build_generalist("boxnet", model_folder=model.parent, device="cpu", threshold=0.0)
    case = _cube_cases(1)[0]
    prompts = box_prompts_from_mask(case.label == 1, padding=1)
    mask = g.segment(case.image, SPACING, prompts)
    assert mask.shape == case.image.shape and mask.dtype == bool
    # threshold 0: every voxel of the window is "object" -> the window, clipped to the image (one component)
    assert mask.any() and mask[0, 0, 0] and not g.segment(case.image, SPACING, []).any()
    with pytest.raises(InputError, match="trained at spacing"):
        g.segment(case.image, (4.0, 2.5, 3.0), prompts)
    with pytest.raises(InputError, match=MODEL_FILE):
        build_generalist("boxnet", model_folder=tmp_path / "empty")
    # a model trained with other settings is refused, not silently reused
    with pytest.raises(InputError, match="other settings"):
        train_boxnet(_cube_cases(), tmp_path / "m", SPACING, _tiny(lr=1e-2), device="cpu", progress=False)
    with pytest.raises(InputError, match="other settings"):
        train_boxnet(_cube_cases(), tmp_path / "m", (1.0, 1.0, 1.0), _tiny(), device="cpu", progress=False)


class _BoxIsTheObject(torch.nn.Module):
    """A stand-in network whose object logit is the spanned-box channel: the mask must be that box."""

    def forward(self, x):
        return torch.stack([-x[:, 2], x[:, 2]], dim=1) * 10


def test_mask_is_pasted_back_where_the_window_was(tmp_path):
    model = train_boxnet(_cube_cases(), tmp_path / "m", SPACING, _tiny(), device="cpu", progress=False)
    g = build_generalist("boxnet", model_folder=model.parent, device="cpu")
    g.net = _BoxIsTheObject()
    img = np.zeros((40, 30, 20), np.float32)
    prompts = [BoxPrompt(2, 12, (25, 3, 12), (37, 11, 13)), BoxPrompt(0, 30, (30, 2, 9), (31, 12, 18))]
    mask = g.segment(img, SPACING, prompts)
    expect = np.zeros(img.shape, bool)
    expect[25:37, 2:12, 9:18] = True  # prompts_bbox, near the image's x border
    np.testing.assert_array_equal(mask, expect)


def test_training_options_are_checked_before_round_0(tmp_path):
    from partialseg.config import load_config
    from partialseg.pseudolabel.loop import check_generalist_options, run_ipnp

    check_generalist_options(IPnPOptions(generalist="boxnet", generalist_training={"steps": 10}))
    bad = IPnPOptions(generalist="boxnet", generalist_training={"stesp": 10})
    with pytest.raises(PartialsegError, match="unknown training option"):
        check_generalist_options(bad)
    with pytest.raises(PartialsegError, match="unknown training option"):  # before anything is written
        run_ipnp(tmp_path / "no_dataset", tmp_path / "run", load_config(None, ["method.name=ipnp"]), bad, resume=False,
                 progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(PartialsegError, match="boxnet"):
        IPnPOptions(generalist="random_walker", generalist_training={"steps": 10})
    with pytest.raises(PartialsegError, match="crop_size"):
        BoxNetConfig(crop_size=(40, 48, 32))


def test_ipnp_trains_its_boxnet_on_round_0_training_cases(tmp_path, small_space):
    ds = write_block_dataset(tmp_path / "blocks", small_space, n_cases=4, shape=(20, 18, 16),
                             annotated={"case_000": ["liver"], "case_001": ["spleen", "kidney_left"]})
    run = tmp_path / "run"
    args = ["train", str(ds), "--out", str(run), "--method", "ipnp"]
    for s in ["train.steps=2", "train.batch_size=1", "train.patch_size=[32,16,16]", "train.val_every=0",
              "network.options={base_channels: 4}", "data.spacing=[2.0,2.5,3.0]", "train.num_threads=1",
              "data.val_fraction=0.25", "method.options.rounds=1", "method.options.tau=0.0",
              "method.options.pseudo_source=generalist", "method.options.generalist=boxnet",
              "method.options.generalist_training={steps: 2, batch_size: 1, crop_size: [32, 16, 16], base_channels: 4}"]:
        args += ["--set", s]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (run / "generalist" / MODEL_FILE).exists() and (run / "round_1" / "model.pt").exists()
    split = json.loads((run / "round_0" / "split.json").read_text())
    trained_on = json.loads((run / "generalist" / "training_data.json").read_text())
    assert trained_on["cases"] == len(split["train"]) == 3  # the validation case is not a training case
    assert json.loads((run / "pseudo" / "round_1" / "decisions.json").read_text())["case_000"]
