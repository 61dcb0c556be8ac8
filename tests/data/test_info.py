import json

import numpy as np
import pytest
from typer.testing import CliRunner

from partialseg.cli import app
from partialseg.data.info import dataset_info, format_info
from partialseg.data.simulate import simulate_partial_labels
from partialseg.errors import InputError
from partialseg.io import save_volume
from tests.conftest import write_block_dataset


def test_info_full_dataset(block_dataset):
    s = dataset_info(block_dataset)
    json.dumps(s)  # serialisable
    assert s["num_cases"] == 3
    assert s["labels"] == {"0": "background", "1": "liver", "2": "spleen", "3": "kidney_right", "4": "kidney_left"}
    assert s["annotation_counts"]["spleen"] == {"cases": 3, "percent": 100.0}
    assert not s["partial"] and s["groups"] == {} and s["reference_labels"] is None
    assert s["spacing"]["median"] == [2.0, 2.5, 3.0]
    assert s["shape"] == {"min": [20, 18, 16], "median": [20, 18, 16], "max": [20, 18, 16]}
    assert s["orientation"] == {"RAS": 3}
    assert s["check"] is None
    text = format_info(s)
    for fact in ("cases        3", "kidney_left", "RAS: 3", "2 x 2.5 x 3", "20 x 18 x 16", "not run"):
        assert fact in text


def test_info_partial_groups_orientation_and_check(tmp_path, small_space):
    src = write_block_dataset(tmp_path / "s", small_space, n_cases=4)
    # one case in LPS orientation with a different shape and spacing (labels follow the image)
    lps = np.diag([-1.0, -1.5, 4.0, 1.0])
    save_volume(np.zeros((10, 12, 8), np.float32), lps, src / "imagesTr" / "case_003_0000.nii.gz", overwrite=True)
    save_volume(np.ones((10, 12, 8), np.uint8), lps, src / "labelsTr" / "case_003.nii.gz", overwrite=True)
    gf = tmp_path / "g.yaml"
    gf.write_text("left: [kidney_left]\nrest: [liver, spleen, kidney_right]\n")
    out = simulate_partial_labels(src, tmp_path / "o", keep=0.5, seed=0, mode="groups", groups_file=gf)
    s = dataset_info(out, check=True)
    assert s["partial"] and s["reference_labels"] == "labelsRef" and s["check"] == "passed"
    assert s["groups"]["left"] == {"cases": 2, "classes": ["kidney_left"], "uniform": True}
    assert s["annotation_counts"]["kidney_left"] == {"cases": 2, "percent": 50.0}
    assert s["annotation_counts"]["liver"]["cases"] == 2
    assert s["orientation"] == {"RAS": 3, "LPS": 1}
    assert s["spacing"]["min"] == [1.0, 1.5, 3.0] and s["spacing"]["max"] == [2.0, 2.5, 4.0]
    assert s["shape"]["min"] == [10, 12, 8]
    text = format_info(s)
    for fact in ("partial      yes", "labelsRef", "left (2 cases): kidney_left", "LPS: 1", "50.0%", "passed", "simulate (mode groups"):
        assert fact in text
    # check=True loads the voxels and names the broken file
    bad = out / "labelsTr" / "case_001.nii.gz"
    save_volume(np.full((20, 18, 16), 9, np.uint8), np.diag([2.0, 2.5, 3.0, 1.0]), bad, overwrite=True)
    dataset_info(out)  # headers only: not noticed
    with pytest.raises(InputError, match="outside the label space") as e:
        dataset_info(out, check=True)
    assert str(bad) in str(e.value)


def test_cli_info(block_dataset, tmp_path):
    r = CliRunner().invoke(app, ["info", str(block_dataset), "--check"])
    assert r.exit_code == 0, r.output
    assert "liver" in r.output and "passed" in r.output
    r = CliRunner().invoke(app, ["info", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "does not exist" in r.output
