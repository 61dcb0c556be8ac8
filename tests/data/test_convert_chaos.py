"""The CHAOS converter (Kavur et al. 2021, Medical Image Analysis 69:101950) on tiny fake Train_Sets:
DICOM series written with pydicom in shuffled order, PNG masks with Pillow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from partialseg.cli import app
from partialseg.data.convert import convert
from partialseg.data.dataset import PartialDataset
from partialseg.errors import InputError, PartialsegError, PartialsegWarning
from partialseg.io import load_volume

pydicom = pytest.importorskip("pydicom")

ROWS, COLS = 6, 8
PIXEL_SPACING = (0.8, 0.7)  # DICOM order: between rows, between columns
STEP = 3.0
X0, Y0, TOP = -10.0, -20.0, 50.0  # LPS
AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
CORONAL = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]  # rows run towards the feet; slice normal +y (posterior)


def write_dicom(path: Path, pixels: np.ndarray, position, orientation=AXIAL, instance: int = 1, **tags) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.ImageOrientationPatient, ds.PixelSpacing, ds.InstanceNumber = orientation, list(PIXEL_SPACING), instance
    if position is not None:
        ds.ImagePositionPatient = list(position)
    for k, v in tags.items():
        setattr(ds, k, v)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_png(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8)).save(path)


def write_ct_patient(root: Path, pid: str, n: int = 4, with_position: bool = True) -> Path:
    """Like the real CT sets: file i0000 is the top slice, names run against the positions. Stored pixel
    1024 + 100 * file + column (HU 100 * file + column after the intercept); mask 0 marks (row 1, column 5)."""
    patient = root / "CT" / pid
    rng = np.random.default_rng(int(pid))
    for k in rng.permutation(n):  # written out of order, so nothing may rely on the directory listing
        pixels = 1024 + 100 * k + np.tile(np.arange(COLS), (ROWS, 1))
        position = (X0, Y0, TOP - STEP * k) if with_position else None
        write_dicom(patient / "DICOM_anon" / f"i{k:04d},0000b.dcm", pixels, position, instance=n - k,
                    RescaleIntercept=-1024, RescaleSlope=1, SliceThickness=STEP)
        mask = np.zeros((ROWS, COLS), np.uint8)
        mask[1, 5] = 255 if k == 0 else 0
        mask[3, 2] = 255
        write_png(patient / "Ground" / f"liver_GT_{k:03d}.png", mask)
    return patient


def write_mr_patient(root: Path, pid: str, n: int = 3, bad_value: int | None = None) -> Path:
    """Coronal slices, names in position order. T2SPIR mask 1: an organ per pixel; T1DUAL in/out phase differ."""
    patient = root / "MR" / pid
    organs = {(0, 0): 63, (1, 1): 60, (2, 3): 126, (4, 6): 189, (5, 7): 252}
    for k in np.random.default_rng(int(pid)).permutation(n):
        position = (X0, Y0 + STEP * k, TOP)
        write_dicom(patient / "T2SPIR" / "DICOM_anon" / f"IMG-0002-{k + 1:05d}.dcm", np.full((ROWS, COLS), 700 + k),
                    position, CORONAL)
        for phase, value, number in (("InPhase", 500, 2 * k + 2), ("OutPhase", 300, 2 * k + 1)):
            write_dicom(patient / "T1DUAL" / "DICOM_anon" / phase / f"IMG-0004-{number:05d}.dcm",
                        np.full((ROWS, COLS), value), position, CORONAL)
        mask = np.zeros((ROWS, COLS), np.uint8)
        if k == 1:
            for (r, c), v in organs.items():
                mask[r, c] = v
            if bad_value is not None:
                mask[3, 0] = bad_value
        write_png(patient / "T2SPIR" / "Ground" / f"IMG-0002-{k + 1:05d}.png", mask)
        write_png(patient / "T1DUAL" / "Ground" / f"IMG-0004-{2 * k + 2:05d}.png", mask)
    return patient


def test_ct_masks_pair_by_file_name_and_land_in_ras(tmp_path):
    src = tmp_path / "Train_Sets"
    write_ct_patient(src, "2")
    write_ct_patient(src, "10", n=2)
    out = convert("chaos", src, tmp_path / "ct")
    ds = PartialDataset.load(out)
    ds.validate()
    meta = json.loads((out / "dataset.json").read_text())
    assert sorted(meta["annotated_classes"]) == ["chaos_ct_02", "chaos_ct_10"] and ds.label_space.names == ("liver",)
    assert meta["annotated_classes"]["chaos_ct_02"] == ["liver"] and set(meta["case_groups"].values()) == {"chaos_ct"}
    assert meta["channel_names"] == {"0": "CT"}
    img = load_volume(out / "imagesTr" / "chaos_ct_02_0000.nii.gz")
    lab = load_volume(out / "labelsTr" / "chaos_ct_02.nii.gz")
    n = 4
    assert img.array.shape == (COLS, ROWS, n) and lab.array.shape == (COLS, ROWS, n)
    # slices ascend in z: file i0000 (the top) is the last voxel slice; columns run -x, rows -y in RAS
    expected = np.array([[-0.7, 0, 0, -X0], [0, -0.8, 0, -Y0], [0, 0, STEP, TOP - STEP * (n - 1)], [0, 0, 0, 1]])
    np.testing.assert_allclose(img.affine, expected, atol=1e-6)
    np.testing.assert_allclose(lab.affine, expected, atol=1e-6)
    assert img.array[5, 1, n - 1] == 5 and img.array[3, 2, 0] == 100 * (n - 1) + 3  # HU after the intercept
    # liver_GT_000's extra pixel (row 1, column 5) lies with i0000, the top slice, at its world position
    assert lab.array[5, 1, n - 1] == 1 and lab.array[5, 1, :n - 1].sum() == 0 and np.all(lab.array[2, 3, :] == 1)
    np.testing.assert_allclose(img.affine @ [5, 1, n - 1, 1], [-(X0 + 5 * 0.7), -(Y0 + 0.8), TOP, 1])
    assert lab.array.sum() == n + 1  # (3, 2) in every slice, (1, 5) in the top one


def test_mr_sequences_organ_values_and_coronal_geometry(tmp_path):
    src = tmp_path / "Train_Sets"
    write_ct_patient(src, "1")  # ignored: MR picks its own part
    write_mr_patient(src, "3")
    out = convert("chaos", src, tmp_path / "t2", modality="MR")
    ds = PartialDataset.load(out)
    assert ds.label_space.names == ("spleen", "kidney_right", "kidney_left", "liver") and ds.modality == "MR"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["annotated_classes"] == {"chaos_t2spir_03": ["spleen", "kidney_right", "kidney_left", "liver"]}
    assert meta["case_groups"] == {"chaos_t2spir_03": "chaos_mr"} and meta["partialseg"]["convert"]["sequence"] == "T2SPIR"
    lab = load_volume(out / "labelsTr" / "chaos_t2spir_03.nii.gz")
    # mask pixel (row r, column c) of the middle slice is voxel (c, r, 1)
    got = [ds.label_space.name(int(lab.array[c, r, 1])) for c, r in ((0, 0), (1, 1), (3, 2), (6, 4), (7, 5))]
    assert got == ["liver", "liver", "kidney_right", "kidney_left", "spleen"]
    assert lab.array[:, :, [0, 2]].sum() == 0 and (lab.array > 0).sum() == 5
    expected = np.array([[-0.7, 0, 0, -X0], [0, 0, -STEP, -Y0], [0, -0.8, 0, TOP], [0, 0, 0, 1]])
    np.testing.assert_allclose(lab.affine, expected, atol=1e-6)
    img = load_volume(out / "imagesTr" / "chaos_t2spir_03_0000.nii.gz").array
    assert np.all(img[:, :, 2] == 702)
    r = CliRunner().invoke(app, ["convert", "chaos", str(src / "MR"), str(tmp_path / "t1"), "--modality", "MR",
                                 "--sequence", "T1DUAL_out"])
    assert r.exit_code == 0, r.output
    t1 = PartialDataset.load(tmp_path / "t1")
    assert [c.case_id for c in t1.cases] == ["chaos_t1out_03"]
    assert np.all(load_volume(tmp_path / "t1" / "imagesTr" / "chaos_t1out_03_0000.nii.gz").array == 300)
    t1_lab = load_volume(tmp_path / "t1" / "labelsTr" / "chaos_t1out_03.nii.gz").array
    np.testing.assert_array_equal(t1_lab, lab.array)
    inphase = convert("chaos", src / "MR", tmp_path / "t1in", modality="MR", sequence="T1DUAL_in")
    assert np.all(load_volume(inphase / "imagesTr" / "chaos_t1in_03_0000.nii.gz").array == 500)


def test_instance_number_when_no_slice_has_a_position(tmp_path):
    write_ct_patient(tmp_path / "ts", "1", n=3, with_position=False)
    with pytest.warns(PartialsegWarning, match="InstanceNumber"):
        out = convert("chaos", tmp_path / "ts", tmp_path / "out")
    lab = load_volume(out / "labelsTr" / "chaos_ct_01.nii.gz")
    assert lab.array[5, 1, 2] == 1  # i0000 has the highest InstanceNumber
    np.testing.assert_allclose(lab.affine[:3, 2], [0, 0, STEP])


def _broken(tmp_path: Path, name: str) -> Path:
    src = tmp_path / name
    write_ct_patient(src, "1")
    return src / "CT" / "1"


def test_bad_input_names_the_file(tmp_path):
    patient = _broken(tmp_path, "no_ground")
    shutil.rmtree(patient / "Ground")
    with pytest.raises(InputError, match=r"1/Ground: no Ground folder"):
        convert("chaos", tmp_path / "no_ground", tmp_path / "o1")
    assert not (tmp_path / "o1").exists()
    patient = _broken(tmp_path, "count")
    (patient / "Ground" / "liver_GT_003.png").unlink()
    with pytest.raises(InputError, match=r"Ground: 3 PNG masks for 4 DICOM slices"):
        convert("chaos", tmp_path / "count", tmp_path / "o2")
    patient = _broken(tmp_path, "shape")
    write_png(patient / "Ground" / "liver_GT_002.png", np.zeros((5, 5)))
    with pytest.raises(InputError, match=r"liver_GT_002\.png: mask is 5x5 pixels, its DICOM slice i0002,0000b\.dcm is 6x8"):
        convert("chaos", tmp_path / "shape", tmp_path / "o3")
    write_mr_patient(tmp_path / "value", "1", bad_value=100)
    with pytest.raises(InputError, match=r"IMG-0002-00002\.png: mask value\(s\) \[100\] are in no CHAOS MR organ range"):
        convert("chaos", tmp_path / "value", tmp_path / "o4", modality="MR")
    with pytest.raises(InputError, match="sequence must be one of"):
        convert("chaos", tmp_path / "value", tmp_path / "o5", modality="MR", sequence="T1")


@pytest.mark.parametrize(("change", "message"), [
    ({"ImagePositionPatient": [X0, Y0, TOP - 2 * STEP + 1.0]}, r"i0002,0000b\.dcm: slice position .* off the evenly spaced"),
    ({"ImagePositionPatient": [X0, Y0, TOP - STEP]}, r"i0002,0000b\.dcm: same slice position as i0001,0000b\.dcm"),
    ({"ImageOrientationPatient": CORONAL}, r"i0002,0000b\.dcm: ImageOrientationPatient .* differs from i0000,0000b\.dcm"),
    ({"PixelSpacing": [0.8, 0.8]}, r"i0002,0000b\.dcm: PixelSpacing .* not one series"),
])
def test_inconsistent_geometry_names_the_slice(tmp_path, change, message):
    patient = _broken(tmp_path, "geometry")
    f = patient / "DICOM_anon" / "i0002,0000b.dcm"
    ds = pydicom.dcmread(f)
    for k, v in change.items():
        setattr(ds, k, v)
    ds.save_as(f, enforce_file_format=True)
    with pytest.raises(InputError, match=message):
        convert("chaos", tmp_path / "geometry", tmp_path / "out")


def test_cli_options_apply_to_their_formats(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["convert", "msd", str(tmp_path), str(tmp_path / "o"), "--sequence", "T2SPIR"])
    assert r.exit_code != 0 and "--sequence applies to chaos only" in r.output
    write_ct_patient(tmp_path / "ts", "1", n=2)
    with pytest.raises(PartialsegError, match="applies to CHAOS's MR part only"):
        convert("chaos", tmp_path / "ts", tmp_path / "o2", sequence="T2SPIR")
