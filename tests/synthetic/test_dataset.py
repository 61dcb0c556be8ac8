"""Writing a synthetic dataset: synthesize_dataset and `partialseg synth`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from partialseg.cli import app
from partialseg.data.dataset import PartialDataset
from partialseg.errors import OutputExistsError
from partialseg.io import load_volume
from partialseg.synthetic import case_seed, make_phantom, synthesize_dataset
from tests.synthetic.conftest import CPU, SPACE


def test_synthesize_dataset(tmp_path: Path) -> None:
    out = synthesize_dataset(tmp_path / "ds", cases=2, seed=5, config=CPU)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["synth_0000_0000.nii.gz", "synth_0001_0000.nii.gz"]
    ds = PartialDataset.load(out)
    ds.validate()
    assert ds.label_space == SPACE and not ds.is_partial and len(ds.cases) == 2
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["partialseg"]["generator"] == "phantom" and meta["partialseg"]["seed"] == 5
    assert tuple(meta["partialseg"]["config"]["shape"]) == CPU.shape
    img = load_volume(out / "imagesTr" / "synth_0001_0000.nii.gz")
    lab = load_volume(out / "labelsTr" / "synth_0001.nii.gz")
    assert img.orientation == "RAS" and np.allclose(img.spacing, CPU.spacing)
    ref = make_phantom(case_seed(5, 1), CPU)
    assert np.array_equal(img.array, ref.image) and np.array_equal(lab.array, ref.labels)
    with pytest.raises(OutputExistsError):
        synthesize_dataset(out, cases=1, seed=5, config=CPU)
    # case 0 is the same whether one or two cases are generated
    one = synthesize_dataset(tmp_path / "one", cases=1, seed=5, config=CPU)
    a = load_volume(one / "labelsTr" / "synth_0000.nii.gz").array
    b = load_volume(out / "labelsTr" / "synth_0000.nii.gz").array
    assert np.array_equal(a, b)


def test_cli_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["synth", str(out), "--cases", "2", "--seed", "1"])
    assert res.exit_code == 0, res.output
    ds = PartialDataset.load(out)
    ds.validate()
    assert [c.case_id for c in ds.cases] == ["synth_0000", "synth_0001"]
    res = CliRunner().invoke(app, ["synth", str(out), "--cases", "1"])
    assert res.exit_code != 0 and "already exists" in res.output
    res = CliRunner().invoke(app, ["synth", str(tmp_path / "tiny"), "--cases", "1", "--shape", "16,16,8"])
    assert res.exit_code != 0 and "field of view" in res.output
    assert not (tmp_path / "tiny").exists()


def test_synth_paints_fine_grids_without_sub_voxels(tmp_path: Path, monkeypatch) -> None:
    import partialseg.synthetic as synthetic

    seen = []
    monkeypatch.setattr(synthetic, "synthesize_dataset", lambda out, *, config, **kw: seen.append(config) or out)
    for spacing in ("0.8,0.8,2.5", "6,5.5,7"):
        res = CliRunner().invoke(app, ["synth", str(tmp_path / spacing), "--cases", "1", "--shape", "512,512,160", "--spacing", spacing])
        assert res.exit_code == 0, res.output
    assert [c.oversample for c in seen] == [1, 2] and seen[0].spacing == (0.8, 0.8, 2.5)
