"""Bad datasets: each ends in a clear error naming the file (or a warning), and no input changes."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from partialseg.cli import app
from partialseg.data.dataset import PartialDataset
from partialseg.errors import InputError, PartialsegWarning
from partialseg.preprocessing import PreprocessConfig, prepare_dataset
from tests.faults.conftest import SPACING, checksums

CFG = PreprocessConfig(spacing=SPACING)


def _prepare_fails(ds, tmp_path, match):
    before = checksums(ds)
    with pytest.raises(InputError, match=match) as e:
        prepare_dataset(ds, tmp_path / "cache", CFG, progress=False)
    assert checksums(ds) == before
    assert not (tmp_path / "cache").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    return str(e.value)


def test_spacing_x1000_is_refused_before_allocating(broken_dataset, tmp_path):
    ds = broken_dataset("spacing_x1000")
    msg = _prepare_fails(ds, tmp_path, "over the limit")
    assert "case_001_0000.nii.gz" in msg and "GiB" in msg


def test_labels_as_a_list_is_an_error(broken_dataset, tmp_path):
    ds = broken_dataset("labels_list")
    before = checksums(ds)
    r = CliRunner().invoke(app, ["info", str(ds)])
    assert r.exit_code == 2 and "'labels' must be a mapping" in r.output and "dataset.json" in r.output
    assert "Traceback" not in r.output
    assert checksums(ds) == before


def test_no_qform_or_sform_is_an_error(broken_dataset, tmp_path):
    msg = _prepare_fails(broken_dataset("no_qform_sform"), tmp_path, "no qform or sform")
    assert "case_001_0000.nii.gz" in msg


def test_zero_pixdim_is_an_error(broken_dataset, tmp_path):
    msg = _prepare_fails(broken_dataset("zero_pixdim"), tmp_path, r"no qform or sform .*and pixdim \[0\.0, 0\.0, 0\.0\] has zeros")
    assert "case_001_0000.nii.gz" in msg


def test_uint8_image_warns_that_it_cannot_be_ct(broken_dataset, tmp_path):
    ds = broken_dataset("uint8_image")
    before = checksums(ds)
    with pytest.warns(PartialsegWarning, match=r"case_001_0000.nii.gz: intensities span \[0, \d+\] \(an 8-bit image\).*cannot be CT"):
        prepare_dataset(ds, tmp_path / "cache", CFG, progress=False)
    assert checksums(ds) == before


def test_good_ct_does_not_warn(good_dataset, tmp_path, recwarn):
    prepare_dataset(good_dataset, tmp_path / "cache", CFG, progress=False)
    assert not [w for w in recwarn if issubclass(w.category, PartialsegWarning)]


def test_stray_second_channel_file_is_an_error(broken_dataset):
    ds = broken_dataset("stray_channel")
    with pytest.raises(InputError, match="channel 0001, but the dataset has 1 channel") as e:
        PartialDataset.load(ds)
    assert "case_001_0001.nii.gz" in str(e.value)


def test_image_without_channel_suffix_is_an_error(broken_dataset):
    ds = broken_dataset("no_channel_suffix")
    with pytest.raises(InputError, match="channel suffix _0000") as e:
        PartialDataset.load(ds)
    assert "case_001.nii.gz" in str(e.value)


def test_resampled_size_limit_is_checked_on_the_plan(good_dataset):
    """The limit applies to the planned grid, so a big target is refused without touching voxels."""
    from partialseg.preprocessing import grid_for
    from partialseg.preprocessing.geometry import check_resampled_size

    meta = grid_for(np.diag([*SPACING, 1.0]), (512, 512, 400), (0.01, 0.01, 0.01))
    with pytest.raises(InputError, match="over the limit"):
        check_resampled_size(meta, "x.nii.gz")
