"""Fine-tuning on another label space: the by-name transfer on hand-built tensors, and the CLI end to end."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from partialseg.cli import app
from partialseg.labels import LabelSpace
from partialseg.training.finetune import transfer_state
from tests.conftest import write_block_dataset
from tests.methods.test_tct import TINY


def test_rows_move_by_class_name_and_the_rest_by_shape():
    src = {"head.weight": torch.tensor([[0.0], [1.0], [2.0]]),  # background, liver, spleen
           "enc.weight": torch.full((2, 2), 5.0), "other": torch.ones(3)}
    tgt = {"head.weight": torch.tensor([[-1.0], [-1.0], [-1.0]]),  # background, spleen, pancreas
           "enc.weight": torch.zeros(2, 2), "other": torch.zeros(4)}
    out, rep = transfer_state(src, ("liver", "spleen"), tgt, ("spleen", "pancreas"), ("head.weight",))
    torch.testing.assert_close(out["head.weight"], torch.tensor([[0.0], [2.0], [-1.0]]))  # pancreas keeps its fresh row
    torch.testing.assert_close(out["enc.weight"], torch.full((2, 2), 5.0))
    torch.testing.assert_close(out["other"], torch.zeros(4))  # shape differs: fresh
    assert rep["matched_classes"] == ["spleen"] and rep["new_classes"] == ["pancreas"]
    assert rep["source_only_classes"] == ["liver"] and rep["fresh_tensors"] == ["other"] and rep["loaded_tensors"] == 2
    assert torch.equal(tgt["head.weight"], torch.full((3, 1), -1.0))  # the target's own dict is not modified


def test_rows_without_a_background_row():
    src = {"queries": torch.tensor([[1.0, 1.0], [2.0, 2.0]])}  # liver, spleen (one row per class)
    tgt = {"queries": torch.zeros(3, 2)}  # spleen, kidney, liver
    out, _ = transfer_state(src, ("liver", "spleen"), tgt, ("spleen", "kidney", "liver"), ("queries",))
    torch.testing.assert_close(out["queries"], torch.tensor([[2.0, 2.0], [0.0, 0.0], [1.0, 1.0]]))


def test_cli_pretrain_then_finetune_on_another_label_space(tmp_path, small_space):
    src_ds = write_block_dataset(tmp_path / "src", small_space, n_cases=3,
                                 annotated={"case_000": ["liver"], "case_001": ["spleen", "kidney_left"]})
    target_space = LabelSpace(("spleen", "liver", "pancreas"))
    tgt_ds = write_block_dataset(tmp_path / "tgt", target_space, n_cases=3, seed=1)
    runner = CliRunner()
    args = ["train", str(src_ds), "--out", str(tmp_path / "pre"), "--method", "marginal"]
    for s in TINY:
        args += ["--set", s]
    assert runner.invoke(app, args).exit_code == 0
    ft = tmp_path / "ft"
    # lr ~ 0: the fine-tuned weights are the transferred ones, which the test can check
    r = runner.invoke(app, ["finetune", str(tmp_path / "pre"), str(tgt_ds), "--out", str(ft), "--set", "optim.lr=1.0e-12"])
    assert r.exit_code == 0, r.output
    rec = json.loads((ft / "finetune.json").read_text())
    assert rec["matched_classes"] == ["spleen", "liver"] and rec["new_classes"] == ["pancreas"]
    assert rec["source_only_classes"] == ["kidney_right", "kidney_left"] and rec["method"] == "full"
    pre = torch.load(tmp_path / "pre" / "model.pt", weights_only=True)
    got = torch.load(ft / "model.pt", weights_only=True)
    assert got["label_space"] == ["spleen", "liver", "pancreas"] and got["method"]["name"] == "full"
    a, b = pre["state_dict"], got["state_dict"]
    torch.testing.assert_close(b["encoder.0.0.0.weight"], a["encoder.0.0.0.weight"], atol=1e-6, rtol=0)
    torch.testing.assert_close(b["head.weight"][[0, 1, 2]], a["head.weight"][[0, 2, 1]], atol=1e-6, rtol=0)  # by name
    # resuming a finished run gives the same model; a new run over it is refused; a multi-stage method is refused
    r = runner.invoke(app, ["finetune", str(tmp_path / "pre"), str(tgt_ds), "--out", str(ft), "--resume"])
    assert r.exit_code == 0, r.output
    again = torch.load(ft / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(again[k], b[k]) for k in b)
    r = runner.invoke(app, ["finetune", str(tmp_path / "pre"), str(tgt_ds), "--out", str(ft)])
    assert r.exit_code != 0 and "exists" in r.output.lower()
    r = runner.invoke(app, ["finetune", str(tmp_path / "pre"), str(tgt_ds), "--out", str(tmp_path / "x"), "--method", "pfl"])
    assert r.exit_code != 0 and "stages" in r.output
    r = runner.invoke(app, ["finetune", str(tmp_path / "pre"), str(tgt_ds), "--out", str(tmp_path / "y"),
                            "--set", "network.options={base_channels: 8}"])
    assert r.exit_code != 0 and "keeps the trained network" in r.output


@pytest.mark.parametrize("missing", ["model"])
def test_a_folder_without_a_model_is_refused(tmp_path, missing, small_space):
    ds = write_block_dataset(tmp_path / "d", small_space, n_cases=2)
    r = CliRunner().invoke(app, ["finetune", str(tmp_path), str(ds), "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "model.pt" in r.output


def test_a_wrapped_backbone_and_a_plain_one_match():
    wrapped = {"backbone.enc.w": torch.ones(2), "controller.weight": torch.ones(3)}
    out, rep = transfer_state(wrapped, ("a",), {"enc.w": torch.zeros(2), "head.weight": torch.zeros(2, 1)}, ("a",),
                              ("head.weight",))
    torch.testing.assert_close(out["enc.w"], torch.ones(2))
    assert rep["fresh_tensors"] == ["head.weight"]  # a sigmoid method's heads are not a softmax head
    out, _ = transfer_state({"enc.w": torch.ones(2)}, ("a",), {"backbone.enc.w": torch.zeros(2)}, ("a",), ())
    torch.testing.assert_close(out["backbone.enc.w"], torch.ones(2))
