"""partialseg.checkpoint.load: plain data only, numpy numbers only when asked (nnU-Net's checkpoints)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from partialseg import checkpoint as ckpt
from partialseg.errors import InputError


class _Payload:
    """Unpickling this creates the marker file: proof that loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_numpy_numbers_load_only_when_asked(tmp_path):
    f = tmp_path / "checkpoint_final.pth"  # what nnU-Net keeps in its logs and _best_ema
    torch.save({"_best_ema": np.float32(0.5), "epoch": np.int64(3), "w": torch.ones(2), "ok": np.bool_(True)}, f)
    with pytest.raises(InputError, match="refused"):
        ckpt.load(f)
    got = ckpt.load(f, numpy_scalars=True)
    assert got["_best_ema"] == np.float32(0.5) and got["epoch"] == 3 and bool(got["ok"]) and torch.equal(got["w"], torch.ones(2))


@pytest.mark.parametrize("bad", ["payload", "object array"])
def test_code_and_object_arrays_stay_refused_with_numpy_numbers(tmp_path, bad):
    marker = tmp_path / "pwned"
    f = tmp_path / "checkpoint_final.pth"
    value = _Payload(marker) if bad == "payload" else np.array([1, "x"], dtype=object)
    torch.save({"network_weights": {}, "logging": value}, f)
    with pytest.raises(InputError, match="refused"):
        ckpt.load(f, numpy_scalars=True)
    assert not marker.exists()


def test_plain_data_loads_makes_a_weights_only_false_caller_safe(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    evil, good = tmp_path / "evil.pth", tmp_path / "good.pth"
    torch.save({"w": torch.ones(2), "log": _Payload(marker)}, evil)
    torch.save({"w": torch.ones(2), "ema": np.float64(0.5)}, good)  # nnU-Net keeps numpy numbers in its logs
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # a user's setting must not open the door
    with pytest.raises(InputError, match="refused") as e, ckpt.plain_data_loads(evil):
        torch.load(evil, weights_only=False)  # what nnU-Net's loaders call
    assert str(evil) in str(e.value) and not marker.exists()
    with ckpt.plain_data_loads(good):
        ckpt.load(good, numpy_scalars=True)  # a nested load (nnU-Net's initialize reads weights) ...
        assert float(torch.load(good, weights_only=False)["ema"]) == 0.5  # ... leaves numpy numbers allowed
    import os

    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") == "1" and "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ
