import numpy as np
import pytest

from partialseg.errors import InputError, OutputExistsError
from partialseg.io import atomic_output_dir, check_same_grid, load_volume, save_volume


def test_save_load_round_trip(tmp_path):
    arr = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    aff = np.diag([-1.5, -2.0, 3.0, 1.0])
    p = save_volume(arr, aff, tmp_path / "a.nii.gz")
    v = load_volume(p)
    np.testing.assert_array_equal(v.array, arr)
    np.testing.assert_allclose(v.affine, aff)
    assert v.spacing == pytest.approx((1.5, 2.0, 3.0))
    assert v.orientation == "LPS"
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file left behind"


def test_save_refuses_overwrite(tmp_path):
    p = save_volume(np.zeros((2, 2, 2)), np.eye(4), tmp_path / "a.nii.gz")
    with pytest.raises(OutputExistsError):
        save_volume(np.ones((2, 2, 2)), np.eye(4), p)
    save_volume(np.ones((2, 2, 2)), np.eye(4), p, overwrite=True)
    assert load_volume(p).array.max() == 1


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_volume(tmp_path / "missing.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(InputError, match="cannot read") as e:
        load_volume(bad)
    assert str(bad) in str(e.value)
    nan = np.zeros((3, 3, 3), np.float32)
    nan[1, 1, 1] = np.nan
    p = save_volume(nan, np.eye(4), tmp_path / "nan.nii.gz")
    with pytest.raises(InputError, match="1 NaN"):
        load_volume(p)
    p4 = save_volume(np.zeros((2, 2, 2, 2)), np.eye(4), tmp_path / "4d.nii.gz")
    with pytest.raises(InputError, match="3D"):
        load_volume(p4)


def test_check_same_grid(tmp_path):
    a = load_volume(save_volume(np.zeros((3, 3, 3)), np.eye(4), tmp_path / "a.nii.gz"))
    b = load_volume(save_volume(np.zeros((3, 3, 4)), np.eye(4), tmp_path / "b.nii.gz"))
    c = load_volume(save_volume(np.zeros((3, 3, 3)), np.diag([2, 1, 1, 1]), tmp_path / "c.nii.gz"))
    with pytest.raises(InputError, match="shape"):
        check_same_grid(a, b)
    with pytest.raises(InputError, match="affine"):
        check_same_grid(a, c)


def test_atomic_output_dir(tmp_path):
    with atomic_output_dir(tmp_path / "out") as d:
        (d / "f.txt").write_text("x")
        assert not (tmp_path / "out").exists()
    assert (tmp_path / "out" / "f.txt").read_text() == "x"
    with pytest.raises(OutputExistsError):
        with atomic_output_dir(tmp_path / "out"):
            pass
    with pytest.raises(RuntimeError):
        with atomic_output_dir(tmp_path / "failed") as d:
            (d / "f.txt").write_text("x")
            raise RuntimeError("killed")
    assert not (tmp_path / "failed").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
