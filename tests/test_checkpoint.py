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
