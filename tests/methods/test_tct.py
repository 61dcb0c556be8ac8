"""The ``tct`` method: options, training-only extras, the loss as the paper combines it, a CLI
run with ``predict``, and parameter parity of the saved model with the ``marginal`` baseline.

Hand values are composed from the loss functions of ``partialseg.losses`` (tested on
their own, by hand, in tests/losses/test_losses.py) applied to the same head outputs.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from partialseg import losses as L
from partialseg.cli import app
from partialseg.errors import PartialsegError
from partialseg.labels import LabelSpace
from partialseg.losses import tct as T
from partialseg.methods import Batch, StepContext, get_method
from partialseg.methods.base import TrainingModel
from partialseg.methods.tct import TCT, TCTOptions
from partialseg.networks import build_network
from partialseg.registry import METHODS
from tests.conftest import write_block_dataset

SPACE = LabelSpace(("liver", "spleen", "kidney_right", "kidney_left"))  # N = 4
N = SPACE.num_classes


def make_model(options: dict | None = None, seed: int = 0) -> TrainingModel:
    method = get_method("tct")(SPACE, options)
    torch.manual_seed(seed)
    net = build_network("unet_tct", 1, method.output_channels(), base_channels=4)
    return TrainingModel(net, method)


def make_batch(annotated: list[set[int]] | None = None, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, N + 1, (2, 32, 32, 16), generator=g)
    sets = annotated if annotated is not None else [{1, 2}, {3}]
    ann = L.annotated_channel_mask([frozenset(s) for s in sets], N + 1)
    keep = torch.gather(ann, 1, target.reshape(2, -1)).reshape(target.shape)
    target = torch.where(keep, target, torch.zeros_like(target))  # unannotated organs carry 0
    image = torch.randn(2, 1, 32, 32, 16, generator=g) + target.unsqueeze(1).float()
    return Batch(image, target, ann)


def outputs(model: TrainingModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """MSH and ATH logits through the plain modules (no fused convolution)."""
    f = model.net.features(batch.image)
    return model.net.head(f), model.extras.aux_logits(f)


# ---- options ---------------------------------------------------------------------------------
def test_registered_with_the_papers_defaults():
    assert "tct" in METHODS and get_method("tct") is TCT
    o = TCT(SPACE).options
    assert (o.lam, o.rampup_fraction, o.threshold, o.consistency_classes) == (1.0, 0.4, "median", "all")
    assert (o.stop_grad_aux, o.weighting, o.filtering, o.consistency) == (False, "uauwl", True, True)
    assert TCT(SPACE).output_channels() == N + 1


@pytest.mark.parametrize(
    "options",
    [
        {"lam": -1.0}, {"lam": "big"}, {"lam": float("nan")}, {"rampup_fraction": 1.5}, {"threshold": "max"},
        {"threshold": 1.5}, {"threshold": True}, {"consistency_classes": "some"}, {"weighting": "uw"},
        {"filtering": "yes"}, {"consistency": 1}, {"stop_grad_aux": None}, {"lambda": 0.5},
    ],
)
def test_bad_options_raise_a_clear_error(options):
    with pytest.raises(PartialsegError, match="tct"):
        TCT(SPACE, options)


def test_threshold_accepts_modes_and_numbers():
    for mode in ("median", "mean", "batch-mean"):
        assert TCTOptions(threshold=mode).threshold == mode
    assert TCTOptions(threshold=0.5).threshold == 0.5
    assert TCTOptions(threshold="0.5").threshold == 0.5  # e.g. a quoted YAML value
    assert TCTOptions(threshold=1).threshold == 1.0


# ---- extras ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("weighting", "n_vars"), [("uauwl", 2), ("uwl", N + 1), ("none", 0)])
def test_extras_are_one_conv_with_2n_outputs_and_the_log_variances(weighting, n_vars):
    model = make_model({"weighting": weighting})
    ex = model.extras
    convs = [m for m in ex.modules() if isinstance(m, nn.Conv3d)]
    assert convs == [ex.aux_head]
    head = model.net.head
    assert ex.aux_head.out_channels == 2 * N and ex.aux_head.in_channels == model.net.feature_channels
    assert ex.aux_head.kernel_size == head.kernel_size
    if n_vars:
        assert ex.log_vars.shape == (n_vars,) and torch.all(ex.log_vars == 0)
    else:
        assert ex.log_vars is None
    n_extra = sum(p.numel() for p in ex.parameters())
    assert n_extra == ex.aux_head.weight.numel() + 2 * N + n_vars
    batch = make_batch()
    logits, aux = outputs(model, batch)
    assert logits.shape == (2, N + 1, 32, 32, 16) and aux.shape == (2, N, 2, 32, 32, 16)
    # the fused MSH + ATH-difference convolution: same MSH logits, ATH logit differences
    f = model.net.features(batch.image)
    fused_logits, fused_diff = model.method.heads(model.net, ex, f)
    torch.testing.assert_close(fused_logits, logits, atol=1e-5, rtol=1e-5)
    assert fused_diff.shape == (2, N, 1, 32, 32, 16)
    torch.testing.assert_close(fused_diff[:, :, 0], aux[:, :, 1] - aux[:, :, 0], atol=1e-5, rtol=1e-5)


class PlainTCT(TCT):
    """TCT through the plain modules: ``net.head(f)`` and the reshaped ``make_head(2N)`` output."""

    def heads(self, net, extras, f):
        return net.head(f), extras.aux_logits(f)


@pytest.mark.parametrize("options", [{}, {"weighting": "uwl", "filtering": False}, {"aux_kernel_size": 1}])
def test_fused_heads_give_the_plain_heads_loss_and_gradients(options):
    batch = make_batch()
    fused = make_model(options)
    plain = TrainingModel(fused.net, PlainTCT(SPACE, options))
    plain.extras = fused.extras  # the very same parameters
    grads = []
    for model in (fused, plain):
        model.zero_grad()
        loss, logs = model(batch, StepContext(7, 10))
        loss.backward()
        grads.append((loss.item(), logs, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (l1, logs1, g1), (l2, logs2, g2) = grads
    assert l1 == pytest.approx(l2, abs=1e-5)
    assert logs1["con_kept"] == logs2["con_kept"]
    assert g1.keys() == g2.keys()
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], atol=1e-5, rtol=1e-4, msg=name)


# ---- loss ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [{}, {"weighting": "uwl"}, {"weighting": "none"}, {"filtering": False}, {"stop_grad_aux": True},
     {"consistency_classes": "unlabelled", "threshold": "batch-mean"}, {"threshold": 0.5},
     {"absent_classes": "drop"}, {"absent_classes": "in_median"}],
)
def test_loss_finite_and_every_trainable_parameter_gets_a_gradient(options):
    model = make_model(options)
    loss, logs = model(make_batch(), StepContext(5, 10))
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert {"loss", "l_main", "l_aux", "l_con", "w", "con_kept"} <= set(logs)
    assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
    assert 0.0 <= logs["con_kept"] <= 1.0
    assert 0 <= logs["con_present_kept"] <= logs["con_present"]
    assert ("con_present_kept_literal" in logs) == options.get("filtering", True)
    if options.get("weighting", "uauwl") == "uauwl":
        assert {"s_main", "s_aux"} <= set(logs)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert model.extras.aux_head.weight.grad.abs().sum() > 0


def test_pointwise_aux_heads_option():
    model = make_model({"aux_kernel_size": 1})
    assert model.extras.aux_head.kernel_size == (1, 1, 1) and model.extras.aux_head.out_channels == 2 * N
    assert make_model({}).extras.aux_head.kernel_size == model.net.head.kernel_size  # default: as the MSH
    with pytest.raises(PartialsegError, match="aux_kernel_size"):
        TCT(SPACE, {"aux_kernel_size": 2})


def test_without_consistency_and_weighting_the_loss_is_main_plus_aux_dice():
    model = make_model({"consistency": False, "weighting": "none"})
    batch = make_batch()
    loss, logs = model(batch, StepContext(0, 10))
    logits, aux = outputs(model, batch)
    l_main = L.marginal_dice_loss(logits, batch.target, batch.annotated)
    l_aux = T.aux_dice_loss(aux, batch.target, batch.annotated)
    assert loss.item() == pytest.approx((l_main + l_aux).item(), abs=1e-5)
    assert logs["l_main"] == pytest.approx(l_main.item(), abs=1e-5) and logs["l_aux"] == pytest.approx(l_aux.item(), abs=1e-5)
    assert "l_con" not in logs


def test_main_ce_weight_adds_the_marginal_cross_entropy_to_l_main():
    model = make_model({"consistency": False, "weighting": "none", "main_ce_weight": 0.5})
    batch = make_batch()
    loss, logs = model(batch, StepContext(0, 10))
    logits, aux = outputs(model, batch)
    dice_only = L.marginal_dice_loss(logits, batch.target, batch.annotated)
    ce = L.marginal_loss(logits, batch.target, batch.annotated, ce_weight=1.0, dice_weight=0.0)
    assert logs["l_main"] == pytest.approx((dice_only + 0.5 * ce).item(), abs=1e-5)
    assert loss.item() == pytest.approx(logs["l_main"] + T.aux_dice_loss(aux, batch.target, batch.annotated).item(), abs=1e-5)
    with pytest.raises(PartialsegError, match="main_ce_weight"):
        TCTOptions(main_ce_weight=-1.0)


def test_consistency_weight_ramps_up():
    model = make_model({"lam": 0.5, "rampup_fraction": 0.4})
    batch = make_batch()
    w = [model(batch, StepContext(step, 100))[1]["w"] for step in (0, 20, 40, 99)]
    assert w[0] == pytest.approx(0.5 * math.exp(-5.0), rel=1e-6)
    assert w[1] == pytest.approx(0.5 * math.exp(-5.0 * 0.25), rel=1e-6)
    assert w[2] == w[3] == pytest.approx(0.5)


def test_uauwl_combination_by_hand():
    model = make_model({"lam": 0.7})
    with torch.no_grad():
        model.extras.log_vars.copy_(torch.tensor([0.3, -0.2]))
    batch = make_batch()
    ctx = StepContext(10, 40)
    loss, logs = model(batch, ctx)
    logits, aux = outputs(model, batch)
    l_main = L.marginal_dice_loss(logits, batch.target, batch.annotated).item()
    l_aux = T.aux_dice_loss(aux, batch.target, batch.annotated).item()
    l_con = T.consistency_loss(logits, aux, batch.annotated, threshold="median").item()
    w = 0.7 * math.exp(-5.0 * (1 - 10 / 16) ** 2)
    s1, s2 = 0.3, -0.2
    expected = l_main * math.exp(-s1) + l_aux * math.exp(-s2) + 0.5 * (s1 + s2) + w * l_con
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert logs["l_con"] == pytest.approx(l_con, abs=1e-6) and logs["w"] == pytest.approx(w, rel=1e-6)
    assert (logs["s_main"], logs["s_aux"]) == pytest.approx((s1, s2))
    _, iou = T.consistency_terms(logits, aux)
    kept = T.consistency_keep_mask(iou, torch.ones_like(iou, dtype=torch.bool), "median")
    assert logs["con_kept"] == pytest.approx(kept.float().mean().item())


def test_without_filtering_every_consistency_term_is_kept():
    model = make_model({"filtering": False, "weighting": "none"})
    batch = make_batch()
    _, logs = model(batch, StepContext(10, 10))
    logits, aux = outputs(model, batch)
    terms, _ = T.consistency_terms(logits, aux)
    assert logs["con_kept"] == 1.0
    assert logs["l_con"] == pytest.approx(terms.sum(1).mean().item(), abs=1e-6)
    assert logs["loss"] == pytest.approx(logs["l_main"] + logs["l_aux"] + logs["w"] * logs["l_con"], abs=1e-5)


def test_uwl_one_weight_per_ath_and_unsupervised_aths_left_out():
    model = make_model({"weighting": "uwl", "consistency": False})
    s = torch.tensor([0.1, 0.2, -0.3, 0.4, 0.5])
    with torch.no_grad():
        model.extras.log_vars.copy_(s)
    batch = make_batch([{1, 2}, {2}])  # classes 3 and 4 have no supervision in this batch
    loss, _ = model(batch, StepContext(0, 10))
    logits, aux = outputs(model, batch)
    expected = L.marginal_dice_loss(logits, batch.target, batch.annotated).item() * math.exp(-0.1) + 0.05
    for j in (1, 2):
        only_j = batch.annotated.clone()
        only_j[:, 1:] = False
        only_j[:, j] = batch.annotated[:, j]
        l_j = T.aux_dice_loss(aux, batch.target, only_j).item()
        expected += l_j * math.exp(-s[j].item()) + 0.5 * s[j].item()
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    loss.backward()
    g = model.extras.log_vars.grad
    assert torch.all(g[:3] != 0) and torch.all(g[3:] == 0)


def test_uauwl_leaves_s_aux_alone_when_no_organ_is_annotated():
    model = make_model({"consistency": False})
    loss, logs = model(make_batch([set(), set()]), StepContext(0, 10))
    assert logs["l_aux"] == 0.0
    assert loss.item() == pytest.approx(logs["l_main"])  # s = 0: L_main e^0 + 0
    loss.backward()
    assert model.extras.log_vars.grad[0] != 0 and model.extras.log_vars.grad[1] == 0


# ---- CLI training, predict, and the inference model ------------------------------------------
TINY = [
    "train.steps=2",
    "train.batch_size=2",
    "train.patch_size=[32,16,16]",
    "train.val_every=0",
    "train.checkpoint_every=2",
    "network.options={base_channels: 4}",
    "data.spacing=[2.0,2.5,3.0]",
    "train.num_threads=1",
]


def test_cli_train_predict_and_parameter_parity_with_marginal(tmp_path, small_space):
    data = write_block_dataset(
        tmp_path / "blocks", small_space, n_cases=3,
        annotated={"case_000": ["liver"], "case_001": ["spleen", "kidney_left"]},
    )
    runner = CliRunner()
    runs = {}
    for method, extra in (("tct", ["method.options.threshold=0.5"]), ("marginal", [])):
        runs[method] = tmp_path / method
        args = ["train", str(data), "--out", str(runs[method]), "--method", method]
        for s in TINY + extra:
            args += ["--set", s]
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
    import csv

    rows = list(csv.DictReader((runs["tct"] / "log.csv").open()))
    assert len(rows) == 2 and {"l_main", "l_aux", "l_con", "w", "s_main", "s_aux", "con_kept"} <= set(rows[0])
    # the checkpoint holds the extras (to resume); model.pt holds exactly the baseline's network
    ck = torch.load(runs["tct"] / "checkpoints" / "last.pt", weights_only=False)
    assert any(k.startswith("extras.aux_head") for k in ck["model"]) and "extras.log_vars" in ck["model"]
    tct_sd = torch.load(runs["tct"] / "model.pt", weights_only=False)["state_dict"]
    marg_sd = torch.load(runs["marginal"] / "model.pt", weights_only=False)["state_dict"]
    assert list(tct_sd) == list(marg_sd)
    assert {k: v.shape for k, v in tct_sd.items()} == {k: v.shape for k, v in marg_sd.items()}
    assert sum(v.numel() for v in tct_sd.values()) == sum(v.numel() for v in marg_sd.values())
    net = build_network("unet_tct", 1, TCT(small_space).output_channels(), base_channels=4)
    assert list(net.state_dict()) == list(tct_sd)
    pred = tmp_path / "pred"
    r = runner.invoke(app, ["predict", str(runs["tct"]), str(data / "imagesTr"), str(pred)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in pred.glob("*.nii.gz")) == [f"case_{i:03d}.nii.gz" for i in range(3)]


def test_train_step_benchmark_runs(capsys, monkeypatch):
    """benchmarks/train_step.py on a tiny config (a smoke test: the script must not rot)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "train_step.py"
    spec = importlib.util.spec_from_file_location("train_step_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    module.main(["--patch", "32", "32", "32", "--base-channels", "4", "--organs", "4", "--steps", "1", "--warmup", "0",
                 "--methods", "full", "marginal", "tct", "--naive", "--quiet", "--threads", "1", "--clock", "cpu"])
    out = capsys.readouterr().out
    for name in ("full", "marginal", "tct", "tct-2conv", "tct-naive"):
        assert f"\n{name} " in out
