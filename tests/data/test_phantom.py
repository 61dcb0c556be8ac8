"""The synthetic abdomen phantom: organs, HU, anatomy in world coordinates, determinism, writer, CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from partialseg.cli import app
from partialseg.data.dataset import PartialDataset
from partialseg.data.phantom import PRESETS, Phantom, PhantomConfig, case_seed, make_phantom, synthesize_dataset
from partialseg.errors import OutputExistsError, PartialsegError
from partialseg.io import load_volume
from partialseg.labels import LabelSpace
from partialseg.registry import AMOS15, SMALL_ORGANS

SPACE = LabelSpace.named("amos15")
CPU = PRESETS["cpu"]
SEEDS = (0, 1, 2, 3, 4, 5)


@pytest.fixture(scope="module")
def phantoms() -> list[Phantom]:
    return [make_phantom(s, CPU) for s in SEEDS]


def centroid_world(ph: Phantom, name: str) -> np.ndarray:
    """Centroid of an organ in world RAS mm, through the affine (not array indices)."""
    idx = np.argwhere(ph.labels == SPACE.index(name)).mean(axis=0)
    return ph.affine[:3, :3] @ idx + ph.affine[:3, 3]


def median_hu(ph: Phantom, name: str) -> float:
    """Median HU inside an organ (robust to the partial-volume rim of 6 mm voxels)."""
    return float(np.median(ph.image[ph.labels == SPACE.index(name)]))


def test_arrays_and_all_organs_present(phantoms: list[Phantom]) -> None:
    for ph in phantoms:
        assert ph.image.shape == CPU.shape and ph.image.dtype == np.float32
        # one label map: exactly one label per voxel, so organs cannot overlap
        assert ph.labels.shape == CPU.shape and ph.labels.dtype == np.uint8
        assert np.all(np.isfinite(ph.image))
        SPACE.check_label_map(ph.labels)
        counts = np.bincount(ph.labels.ravel(), minlength=16)
        missing = [AMOS15[k - 1] for k in range(1, 16) if counts[k] == 0]
        assert not missing, f"seed {ph.info['seed']}: {missing}"
        assert ph.affine.shape == (4, 4)
        assert np.allclose(np.diag(ph.affine)[:3], CPU.spacing)
        # the volume is centred on world 0; the body centre is near it
        body = np.argwhere(ph.image > -500).mean(axis=0)
        assert np.all(np.abs(ph.affine[:3, :3] @ body + ph.affine[:3, 3]) < 40.0)


def test_left_right_in_world_coordinates(phantoms: list[Phantom]) -> None:
    # RAS+: +x is the patient's right
    for ph in phantoms:
        x = {n: centroid_world(ph, n)[0] for n in AMOS15}
        assert x["liver"] > x["spleen"]
        assert x["liver"] > 0 > x["spleen"]
        assert x["kidney_right"] > x["kidney_left"]
        assert x["adrenal_gland_right"] > x["adrenal_gland_left"]
        assert x["inferior_vena_cava"] > x["aorta"]
        assert x["gallbladder"] > 0 and x["stomach"] < x["liver"]
        assert x["duodenum"] > x["pancreas"]  # the C-loop wraps the head on the right; the tail goes left


def test_relative_positions(phantoms: list[Phantom]) -> None:
    for ph in phantoms:
        c = {n: centroid_world(ph, n) for n in AMOS15}
        x, y, z = ({n: v[a] for n, v in c.items()} for a in range(3))
        assert z["liver"] > z["kidney_right"] > z["urinary_bladder"]
        assert z["spleen"] > z["kidney_left"]
        assert z["adrenal_gland_right"] > z["kidney_right"] and z["adrenal_gland_left"] > z["kidney_left"]
        assert z["esophagus"] > z["stomach"]
        assert z["urinary_bladder"] < z["aorta"] and z["prostate_uterus"] < z["kidney_left"] - 100
        # kidneys lie posterior to the aorta, the pancreas anterior to it, the aorta anterior to the spine
        assert y["kidney_right"] < y["aorta"] and y["kidney_left"] < y["aorta"]
        assert y["pancreas"] > y["aorta"]
        assert y["spleen"] < y["stomach"]
        assert y["gallbladder"] > y["kidney_right"]
        # prostate and uterus lie posterior to the bladder; the prostate also below it
        assert y["prostate_uterus"] < y["urinary_bladder"]
        if ph.info["sex"] == "male":
            assert z["prostate_uterus"] < z["urinary_bladder"]
        # the adrenals sit medial to their kidneys
        assert abs(x["adrenal_gland_right"]) < abs(x["kidney_right"]) + 5
        assert abs(x["adrenal_gland_left"]) < abs(x["kidney_left"]) + 5


def test_hu_plausible(phantoms: list[Phantom]) -> None:
    phases = {ph.info["phase"] for ph in phantoms}
    assert phases <= {"non-contrast", "portal-venous"}
    for ph in phantoms:
        img = ph.image
        assert img[:4, -4:].mean() < -900 and img[-4:, -4:].mean() < -900  # air in front of the flanks
        air = img[img < -500]
        assert -1030 < air.mean() < -850
        body = img[(img > -500)]
        fat = ((body > -160) & (body < -40)).mean()
        assert 0.1 < fat < 0.7  # subcutaneous and visceral fat are a large share of the abdomen
        assert (img > 400).sum() > 50  # cortical bone of spine, ribs, pelvis
        liver = median_hu(ph, "liver")
        assert -20 < median_hu(ph, "urinary_bladder") < 35
        assert -50 < median_hu(ph, "gallbladder") < min(40, liver)  # bile is darker than liver
        if ph.info["phase"] == "non-contrast":
            assert 0 < liver < 80  # fatty livers go low
            assert 15 < median_hu(ph, "spleen") < 75
            assert -10 < median_hu(ph, "aorta") < 75
            assert -10 < median_hu(ph, "kidney_right") < 60 and -10 < median_hu(ph, "kidney_left") < 60
        else:
            assert 30 < liver < 140  # a fatty liver enhances from a low baseline
            assert 80 < median_hu(ph, "aorta") < 230
            assert median_hu(ph, "kidney_right") > liver and median_hu(ph, "kidney_left") > liver


def test_contrast_phase_and_sex_knobs() -> None:
    cfg = dataclasses.replace(CPU, contrast_fraction=1.0, female_fraction=1.0)
    ph = make_phantom(21, cfg)
    assert ph.info["phase"] == "portal-venous" and ph.info["sex"] == "female"
    test_hu_plausible([ph])
    test_relative_positions([ph])
    male = make_phantom(21, dataclasses.replace(CPU, female_fraction=0.0))
    assert male.info["sex"] == "male"
    # the uterus is larger than the prostate and sits higher relative to the bladder
    f, m = centroid_world(ph, "prostate_uterus"), centroid_world(male, "prostate_uterus")
    fb, mb = centroid_world(ph, "urinary_bladder"), centroid_world(male, "urinary_bladder")
    assert f[2] - fb[2] > m[2] - mb[2]


def test_noise_is_present(phantoms: list[Phantom]) -> None:
    ph = phantoms[0]
    liver = ph.image[ph.labels == SPACE.index("liver")]
    assert 10.0 < liver.std() < 60.0


def test_small_organs_are_small(phantoms: list[Phantom]) -> None:
    for ph in phantoms:
        counts = np.bincount(ph.labels.ravel(), minlength=16)
        liver = counts[SPACE.index("liver")]
        for name in SMALL_ORGANS:
            n = counts[SPACE.index(name)]
            assert 0 < n < 0.2 * liver, name
        for name in ("adrenal_gland_right", "adrenal_gland_left"):
            assert counts[SPACE.index(name)] < 120
        assert counts[SPACE.index("liver")] > counts[SPACE.index("spleen")] > counts[SPACE.index("adrenal_gland_left")]


def test_thin_organ_scale_thickens_only_the_thin_organs() -> None:
    base = dataclasses.replace(PRESETS["cpu"], thin_organ_scale=1.0)
    thick = dataclasses.replace(PRESETS["cpu"], thin_organ_scale=1.6)
    a = np.bincount(make_phantom(3, base).labels.ravel(), minlength=16)
    b = np.bincount(make_phantom(3, thick).labels.ravel(), minlength=16)
    for name in ("esophagus", "adrenal_gland_right", "adrenal_gland_left"):
        i = SPACE.index(name)
        assert b[i] > 1.5 * a[i], name
    for name in ("liver", "spleen", "kidney_left", "urinary_bladder"):
        i = SPACE.index(name)
        assert abs(int(b[i]) - int(a[i])) <= 0.05 * a[i], name
    with pytest.raises(PartialsegError, match="thin_organ_scale"):
        PhantomConfig(thin_organ_scale=5.0)


def test_deterministic_and_cases_differ(phantoms: list[Phantom]) -> None:
    again = make_phantom(SEEDS[2], CPU)
    assert np.array_equal(again.image, phantoms[2].image)
    assert np.array_equal(again.labels, phantoms[2].labels)
    assert np.array_equal(again.affine, phantoms[2].affine)
    a, b = phantoms[0], phantoms[1]
    assert not np.array_equal(a.labels, b.labels)
    dice = 2 * ((a.labels == 6) & (b.labels == 6)).sum() / ((a.labels == 6).sum() + (b.labels == 6).sum())
    assert dice < 0.95  # shape and position vary, not just noise


def test_case_seed_is_independent_of_count() -> None:
    assert case_seed(3, 0) == case_seed(3, 0)
    assert len({case_seed(3, i) for i in range(50)}) == 50
    assert case_seed(3, 1) != case_seed(4, 1)


def test_oversample_one_path_and_knobs() -> None:
    cfg = dataclasses.replace(CPU, oversample=1, noise_std=0.0, blur_mm=0.0, deformation_mm=0.0)
    ph = make_phantom(11, cfg)
    assert all(np.any(ph.labels == k) for k in range(1, 16))
    # without noise or blur the image is piecewise smooth: bladder urine sits near its tissue HU
    urine = ph.info["tissue_hu"]["urine"]
    inner = ph.image[ph.labels == SPACE.index("urinary_bladder")]
    assert abs(np.median(inner) - urine) < 15


def test_config_validation() -> None:
    with pytest.raises(PartialsegError):
        PhantomConfig(oversample=0)
    with pytest.raises(PartialsegError):
        PhantomConfig(spacing=(1.0, 0.0, 1.0))
    with pytest.raises(PartialsegError):
        PhantomConfig(female_fraction=1.5)
    assert PRESETS["gpu"].shape[0] > CPU.shape[0] and max(PRESETS["gpu"].spacing) <= 3.0
    cpu_fov = np.array(CPU.shape) * np.array(CPU.spacing)
    assert np.all(cpu_fov >= (360, 300, 340))


def test_too_small_field_of_view_is_an_error() -> None:
    cfg = dataclasses.replace(CPU, shape=(32, 32, 16), spacing=(4.0, 4.0, 4.0))
    with pytest.raises(PartialsegError, match="field of view"):
        make_phantom(0, cfg)


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
