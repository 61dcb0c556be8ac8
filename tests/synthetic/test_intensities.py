"""Intensities of the phantom: plausible HU per tissue and phase, noise, the noiseless path, the MR-like mode."""

from __future__ import annotations

import dataclasses

import numpy as np

from partialseg.synthetic import Phantom, make_phantom, mr_intensities
from tests.synthetic import test_anatomy
from tests.synthetic.conftest import CPU, SPACE, centroid_world, median_hu


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
    test_anatomy.test_relative_positions([ph])
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


def test_oversample_one_path_and_knobs() -> None:
    cfg = dataclasses.replace(CPU, oversample=1, noise_std=0.0, blur_mm=0.0, deformation_mm=0.0)
    ph = make_phantom(11, cfg)
    assert all(np.any(ph.labels == k) for k in range(1, 16))
    # without noise or blur the image is piecewise smooth: bladder urine sits near its tissue HU
    urine = ph.info["tissue_hu"]["urine"]
    inner = ph.image[ph.labels == SPACE.index("urinary_bladder")]
    assert abs(np.median(inner) - urine) < 15


def test_mr_contrast_is_not_ct():
    hu = np.array([[[-1000.0, -100.0, 0.0, 60.0, 1000.0]]])
    mr = mr_intensities(hu, seed=0)
    assert mr.min() >= 0 and mr[0, 0, 0] == 0.0
    assert mr[0, 0, 1] > mr[0, 0, 3] > mr[0, 0, 2]  # fat brightest, water darkest: not a monotone map of HU
    assert mr[0, 0, 4] < mr[0, 0, 3]  # bone dark
