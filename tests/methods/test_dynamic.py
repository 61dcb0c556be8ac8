"""DoDNet, CLIP-Driven, TransDoDNet, Hermes and AAL as registered methods: options, embedding files, train -> predict end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from partialseg.cli import app
from partialseg.errors import InputError
from partialseg.methods import Batch, StepContext, get_method
from partialseg.methods.dynamic import load_class_embeddings
from partialseg.networks import build_network
from tests.conftest import write_block_dataset
from tests.methods.test_tct import TINY


def test_registered_and_listed():
    r = CliRunner().invoke(app, ["methods"])
    assert r.exit_code == 0
    for name in ("dodnet", "clip_driven", "transdodnet", "hermes", "aal"):
        assert name in r.output
        get_method(name)


@pytest.mark.parametrize("name", ["dodnet", "clip_driven", "transdodnet", "hermes"])
def test_loss_touches_only_the_annotated_organs_heads(name, small_space):
    method = get_method(name)(small_space, {})
    net = method.wrap_network(build_network("unet_tct", 1, method.output_channels(), base_channels=4))
    x = torch.randn(1, 1, 32, 32, 32)
    target = torch.zeros(1, 32, 32, 32, dtype=torch.long)
    target[0, 4:12, 4:12, 4:12] = 1
    annotated = torch.tensor([[True, True, False, False, False]])
    logits = net(x)
    logits.retain_grad()
    loss, _ = method.loss(_Cached(net, logits), None, Batch(x, target, annotated), StepContext(0, 1))
    loss.backward()
    grad = logits.grad.abs().sum(dim=(0, 2, 3, 4))
    assert grad[0] > 0 and torch.all(grad[1:] == 0)


class _Cached(torch.nn.Module):
    """Returns precomputed logits, so the test can read their gradient."""

    def __init__(self, net, logits):
        super().__init__()
        self.net, self.logits = net, logits

    def forward(self, x):
        return self.logits


def test_embedding_files(tmp_path):
    names = ("liver", "spleen")
    np.savez(tmp_path / "e.npz", liver=np.ones(4), spleen=np.zeros(4), extra=np.ones(4))
    torch.testing.assert_close(load_class_embeddings(tmp_path / "e.npz", names, 4), torch.tensor([[1.0] * 4, [0.0] * 4]))
    (tmp_path / "e.json").write_text(json.dumps({"spleen": [2, 2], "liver": [1, 1]}))
    torch.testing.assert_close(load_class_embeddings(tmp_path / "e.json", names, 2), torch.tensor([[1.0, 1.0], [2.0, 2.0]]))
    with pytest.raises(InputError, match=r"e\.json.*embedding_dim=4"):
        load_class_embeddings(tmp_path / "e.json", names, 4)
    np.savez(tmp_path / "partial.npz", liver=np.ones(4))
    with pytest.raises(InputError, match=r"partial\.npz.*'spleen'"):
        load_class_embeddings(tmp_path / "partial.npz", names, 4)
    with pytest.raises(InputError, match="not found"):
        load_class_embeddings(tmp_path / "missing.npz", names, 4)
    (tmp_path / "e.txt").write_text("1 2 3")
    with pytest.raises(InputError, match=r"\.npz.*\.json"):
        load_class_embeddings(tmp_path / "e.txt", names, 4)


@pytest.mark.parametrize("method", ["dodnet", "clip_driven", "transdodnet", "hermes", "aal"])
def test_cli_train_then_predict(tmp_path, small_space, method):
    data = write_block_dataset(tmp_path / "blocks", small_space, n_cases=3,
                               annotated={"case_000": ["liver"], "case_001": ["spleen", "kidney_left"]})
    extra = []
    emb = tmp_path / "clip.npz"
    if method == "clip_driven":
        np.savez(emb, **{n: np.full(8, i, np.float32) for i, n in enumerate(small_space.names)})
        extra = [f"method.options={{embedding_file: {emb}, embedding_dim: 8, projection_dim: 4}}"]
    run = tmp_path / method
    args = ["train", str(data), "--out", str(run), "--method", method]
    for s in TINY + extra:
        args += ["--set", s]
    runner = CliRunner()
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    if method == "clip_driven":
        sd = torch.load(run / "model.pt", weights_only=True)["state_dict"]
        torch.testing.assert_close(sd["embeddings"][2], torch.full((8,), 2.0))
        emb.unlink()  # the model file carries the embeddings
    pred = tmp_path / "pred"
    r = runner.invoke(app, ["predict", str(run), str(data / "imagesTr"), str(pred)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in pred.glob("*.nii.gz")) == [f"case_{i:03d}.nii.gz" for i in range(3)]
