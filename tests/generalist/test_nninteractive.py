"""The nnInteractive adapter: model-folder errors (no nnInteractive needed) and the real session on CPU.

The session tests need the optional extra (``pip install -c constraints.txt "partialseg[nninteractive]"``)
and are skipped without it. They run nnInteractive's real inference session on a tiny, randomly
initialised model written to a temporary folder in the layout nnInteractive loads (plans.json with
a small PlainConvUNet configuration, dataset.json, inference_info.json, fold_0/checkpoint_final.pth):
the masks mean nothing, but every call path of the adapter is real.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from partialseg.errors import InputError, PartialsegError
from partialseg.generalist import BoxPrompt, box_prompts_from_mask, build_generalist
from partialseg.generalist.nninteractive import WEIGHTS_HINT, check_model_folder


def _has_nninteractive() -> bool:
    try:
        return importlib.util.find_spec("nnInteractive.inference.inference_session") is not None
    except (ImportError, ValueError):
        return False


HAS_NNI = _has_nninteractive()
needs_nni = pytest.mark.skipif(
    not HAS_NNI, reason='nnInteractive not installed (pip install -c constraints.txt "partialseg[nninteractive]")'
)

# ---- model-folder errors: no nnInteractive needed ---------------------------------------------


def _fake_folder(root: Path, *, files=("plans.json", "dataset.json", "inference_info.json"), folds=("fold_0",)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for f in files:
        (root / f).write_text("{}")
    for f in folds:
        (root / f).mkdir()
        (root / f / "checkpoint_final.pth").write_bytes(b"")
    return root


def test_missing_folder_names_it_and_says_how_to_get_the_weights(tmp_path: Path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(InputError) as e:
        check_model_folder(missing)
    msg = str(e.value)
    assert str(missing) in msg and "MIC-DKFZ/nnInteractive" in msg and "CC BY-NC-SA 4.0" in msg
    with pytest.raises(InputError, match="does not exist"):
        build_generalist("nninteractive", model_folder=missing)


def test_incomplete_folders_list_what_is_missing(tmp_path: Path):
    f = _fake_folder(tmp_path / "a", files=("plans.json",), folds=())
    with pytest.raises(InputError) as e:
        check_model_folder(f)
    msg = str(e.value)
    for part in ("dataset.json", "inference_info.json", "fold_<k>/checkpoint_final.pth", str(f), "Hugging Face"):
        assert part in msg
    # the legacy capability file name is accepted
    legacy = _fake_folder(tmp_path / "b", files=("plans.json", "dataset.json", "inference_session_class.json"))
    assert check_model_folder(legacy) == (legacy, "fold_0")
    # a parent of the model folder gets a hint
    parent = tmp_path / "c"
    _fake_folder(parent / "nnInteractive_v1.0")
    with pytest.raises(InputError, match="one level down: nnInteractive_v1.0"):
        check_model_folder(parent)
    # several folds need a choice; a chosen fold must exist
    multi = _fake_folder(tmp_path / "d", folds=("fold_0", "fold_1"))
    with pytest.raises(InputError, match="several folds"):
        check_model_folder(multi)
    assert check_model_folder(multi, fold=1) == (multi, "fold_1")
    with pytest.raises(InputError, match="fold_3/checkpoint_final.pth"):
        check_model_folder(multi, fold=3)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        check_model_folder(tmp_path / "file")


def test_needs_a_model_folder_option():
    with pytest.raises(PartialsegError, match="model_folder"):
        build_generalist("nninteractive")


@pytest.mark.skipif(HAS_NNI, reason="nnInteractive is installed here")
def test_missing_package_says_how_to_install(tmp_path: Path):
    f = _fake_folder(tmp_path / "m")
    with pytest.raises(PartialsegError, match=r'pip install -c constraints.txt "partialseg\[nninteractive\]"'):
        build_generalist("nninteractive", model_folder=f)


def test_weights_hint_is_explicit():
    assert "not ship or download" in WEIGHTS_HINT and "400 MB" in WEIGHTS_HINT


# ---- the real session on a tiny random model ---------------------------------------------------

# nnInteractive plans refinement patches with a fixed 24-voxel margin, so the patch must exceed 48
PATCH = [64, 64, 64]
CAPABILITY = {  # nnInteractive's legacy defaults, written out
    "supported_interactions": {"scribble": True, "lasso": True, "points": True, "bbox2d": True, "bbox3d": False},
    "interaction_channels": 6,
    "channel_mapping": {"prev_seg": 0, "bbox2d": [1, 2], "bbox3d": [1, 2], "lasso": [1, 2], "points": [3, 4], "scribble": [5, 6]},
    "point_radius": 4,
    "interaction_decay": 0.98,
}
N_INPUT = 1 + 7  # one image channel + prev_seg + 3 positive/negative pairs
BBOX_POS_INPUT_CHANNEL = 1 + 1  # image channel, then interaction channel 1 (bbox2d positive)


def write_tiny_model(root: Path, seed: int = 0) -> Path:
    """A randomly initialised nnInteractive model folder with a 3-stage PlainConvUNet."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    config = "3d_tiny"
    plans = {
        "dataset_name": "Dataset999_PartialsegTiny",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": PATCH,
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            config: {
                "data_identifier": "tiny",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 1,
                "patch_size": PATCH,
                "median_image_size_in_voxels": PATCH,
                "spacing": [1.0, 1.0, 1.0],
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": {
                        "n_stages": 3,
                        "features_per_stage": [4, 8, 16],
                        "conv_op": "torch.nn.modules.conv.Conv3d",
                        "kernel_sizes": [[3, 3, 3]] * 3,
                        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                        "n_conv_per_stage": [1, 1, 1],
                        "n_conv_per_stage_decoder": [1, 1],
                        "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                        "dropout_op": None,
                        "dropout_op_kwargs": None,
                        "nonlin": "torch.nn.LeakyReLU",
                        "nonlin_kwargs": {"inplace": True},
                    },
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 1000.0, "mean": 0.0, "median": 0.0, "min": -1000.0, "percentile_00_5": -1000.0,
                  "percentile_99_5": 1000.0, "std": 100.0}
        },
    }
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "object": 1}, "numTraining": 0, "file_ending": ".nii.gz"}
    root.mkdir(parents=True)
    (root / "plans.json").write_text(json.dumps(plans, indent=1))
    (root / "dataset.json").write_text(json.dumps(dataset, indent=1))
    (root / "inference_info.json").write_text(json.dumps(CAPABILITY, indent=1))
    pm = PlansManager(plans)
    torch.manual_seed(seed)
    net = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration(config), N_INPUT, 2, enable_deep_supervision=False)
    (root / "fold_0").mkdir()
    torch.save(
        {"trainer_name": "nnInteractiveTrainer_stub", "init_args": {"configuration": config}, "network_weights": net.state_dict()},
        root / "fold_0" / "checkpoint_final.pth",
    )
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAS_NNI:
        pytest.skip("nnInteractive not installed")
    return write_tiny_model(tmp_path_factory.mktemp("nni") / "tiny_model")


@pytest.fixture(scope="module")
def small_case() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A small CT-like volume (X, Y, Z) = (40, 36, 30) with an ellipsoid object."""
    rng = np.random.default_rng(0)
    shape = (40, 36, 30)
    idx = np.indices(shape, dtype=np.float64)
    obj = ((idx[0] - 20) / 7) ** 2 + ((idx[1] - 17) / 5) ** 2 + ((idx[2] - 14) / 6) ** 2 <= 1
    img = np.where(obj, 60.0, -100.0) + rng.normal(0, 10, shape)
    return img.astype(np.float32), obj, (2.0, 2.0, 3.0)


class _Spy:
    """Wraps a session method, recording the calls and passing them on."""

    def __init__(self, session, name: str) -> None:
        self.calls: list[tuple[tuple, dict]] = []
        self._orig = getattr(session, name)
        setattr(session, name, self)

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self._orig(*args, **kwargs)


@pytest.mark.nninteractive
@needs_nni
def test_real_session_two_boxes_axis_order(tiny_model: Path, small_case):
    img, obj, spacing = small_case
    g = build_generalist("nninteractive", model_folder=tiny_model, device="cpu", do_autozoom=False)
    prompts = box_prompts_from_mask(obj, padding=2)
    sess = g.session
    boxes = _Spy(sess, "add_bbox_interaction")
    images = _Spy(sess, "set_image")
    mask = g.segment(img, spacing, prompts)
    assert mask.dtype == np.bool_ and mask.shape == img.shape
    # the session saw the (z, y, x) array and (z, y, x) boxes; only the last box predicted
    (args, _), = images.calls
    assert args[0].shape == (1, 30, 36, 40) and np.array_equal(args[0][0], img.transpose(2, 1, 0))
    assert len(boxes.calls) == 2
    for (args, kw), p in zip(boxes.calls, prompts):
        assert args[0] == [[p.lo[2], p.hi[2]], [p.lo[1], p.hi[1]], [p.lo[0], p.hi[0]]]
        assert kw["include_interaction"] is True
    assert [kw["run_prediction"] for _, kw in boxes.calls] == [False, True]
    ax = boxes.calls[0][0][0]
    assert ax[0][1] - ax[0][0] == 1  # the axial box is one z slice thick in session order


@pytest.mark.nninteractive
@needs_nni
def test_real_session_mask_maps_back_to_our_axes(tiny_model: Path, small_case):
    """With a network that answers 'foreground = where the positive box channel is set', the mask must
    be exactly the two boxes in *our* (X, Y, Z) coordinates: checks the transposes end to end."""
    import torch

    img, obj, spacing = small_case
    g = build_generalist("nninteractive", model_folder=tiny_model, device="cpu", do_autozoom=False)

    class BoxEcho(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            fg = (x[:, BBOX_POS_INPUT_CHANNEL] > 0.5).float()
            return torch.stack([1 - fg, fg], dim=1)

    g.session.network = BoxEcho()
    prompts = [BoxPrompt(2, 14, (15, 13, 14), (26, 22, 15)), BoxPrompt(0, 20, (20, 12, 9), (21, 23, 20))]
    mask = g.segment(img, spacing, prompts)
    expected = np.zeros(img.shape, bool)
    for p in prompts:
        expected[p.slices] = True
    assert np.array_equal(mask, expected)


@pytest.mark.nninteractive
@needs_nni
def test_real_session_several_objects_one_image(tiny_model: Path, small_case):
    img, obj, spacing = small_case
    g = build_generalist("nninteractive", model_folder=tiny_model, device="cpu", do_autozoom=False)
    sess = g.session
    images = _Spy(sess, "set_image")
    resets = _Spy(sess, "reset_interactions")
    boxes = _Spy(sess, "add_bbox_interaction")
    other = np.zeros_like(obj)
    other[5:12, 5:12, 20:26] = True
    out = g.segment_many(img, spacing, {3: box_prompts_from_mask(obj), 8: box_prompts_from_mask(other), 9: []})
    assert set(out) == {3, 8, 9} and not out[9].any()
    assert all(m.shape == img.shape and m.dtype == np.bool_ for m in out.values())
    assert len(images.calls) == 1 and len(resets.calls) == 1 and len(boxes.calls) == 4


@pytest.mark.nninteractive
@needs_nni
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path):
    import torch

    from tests.test_checkpoint import _Payload

    root = write_tiny_model(tmp_path / "model")
    weights = root / "fold_0" / "checkpoint_final.pth"
    marker = tmp_path / "pwned"
    torch.save(torch.load(weights, weights_only=True) | {"extra": _Payload(marker)}, weights)
    g = build_generalist("nninteractive", model_folder=root, device="cpu", do_autozoom=False)
    with pytest.raises(InputError, match="refused") as e:
        g.session  # noqa: B018 - loading the session reads the checkpoint
    assert str(weights) in str(e.value) and not marker.exists()
