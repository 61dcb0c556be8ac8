"""Anatomy of the phantom: every organ present, one label per voxel, left/right and relative positions in world coordinates, organ sizes, the sex and thin-organ knobs, the field of view."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from partialseg.errors import PartialsegError
from partialseg.registry import AMOS15, SMALL_ORGANS
from partialseg.synthetic import PRESETS, Phantom, PhantomConfig, make_phantom
from tests.synthetic.conftest import CPU, SPACE, centroid_world


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


def test_too_small_field_of_view_is_an_error() -> None:
    cfg = dataclasses.replace(CPU, shape=(32, 32, 16), spacing=(4.0, 4.0, 4.0))
    with pytest.raises(PartialsegError, match="field of view"):
        make_phantom(0, cfg)
