"""The weight-free default generalist (box-prompted random walker), the registry and the file command."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from partialseg.errors import InputError, OutputExistsError, PartialsegError
from partialseg.evaluation.metrics import dice
from partialseg.generalist import (
    DEFAULT_GENERALIST,
    GENERALISTS,
    box_prompts_from_mask,
    build_generalist,
    roi_from_prompts,
    segment_box_file,
)
from partialseg.generalist.random_walker import RandomWalkerGeneralist
from partialseg.io import load_volume, save_volume

SPACING = (2.0, 2.0, 3.0)


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    idx = np.indices(shape, dtype=np.float64)
    return sum(((idx[d] - centre[d]) / radii[d]) ** 2 for d in range(3)) <= 1.0


def blob_scene(seed: int = 0, shape=(56, 52, 40)) -> tuple[np.ndarray, np.ndarray]:
    """A soft-tissue blob (60 HU) in fat-like background (-20 HU), a touching neighbour of other
    intensity (120 HU), a same-intensity twin far away, and correlated noise (sd ~15 HU)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    target = _ellipsoid(shape, (24, 26, 20), (11, 9, 8))
    neighbour = _ellipsoid(shape, (24, 38, 20), (8, 6, 6)) & ~target
    twin = _ellipsoid(shape, (40, 12, 20), (4, 4, 4))  # inside the ROI, apart from the target
    img = np.full(shape, -20.0)
    img[target | twin] = 60.0
    img[neighbour] = 120.0
    img = ndimage.gaussian_filter(img, 0.7)  # partial volume at the edges
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 0.6)
    img += noise / noise.std() * 15.0
    return img.astype(np.float32), target


def test_registry_and_build():
    assert DEFAULT_GENERALIST == "random_walker" and set(GENERALISTS) >= {"random_walker", "nninteractive"}
    g = build_generalist()
    assert isinstance(g, RandomWalkerGeneralist) and g.name == "random_walker"
    assert build_generalist("random_walker", margin=3).margin == 3
    with pytest.raises(PartialsegError, match="nninteractive"):
        build_generalist("sam2")
    with pytest.raises(PartialsegError, match="margin"):
        build_generalist("random_walker", no_such_option=1)


def test_blob_from_gt_box_scores_high():
    img, target = blob_scene()
    g = build_generalist()
    prompts = box_prompts_from_mask(target, padding=5)
    t = time.perf_counter()
    mask = g.segment(img, SPACING, prompts)
    seconds = time.perf_counter() - t
    assert mask.dtype == np.bool_ and mask.shape == img.shape
    assert dice(mask, target) > 0.8
    assert seconds < 5.0


def test_respects_the_roi_and_ignores_the_twin():
    img, target = blob_scene(1)
    g = RandomWalkerGeneralist(margin=6)
    prompts = box_prompts_from_mask(target, padding=3)
    mask = g.segment(img, SPACING, prompts)
    roi = roi_from_prompts(prompts, img.shape, 6)
    inside = np.zeros(img.shape, bool)
    inside[roi] = True
    assert mask.any() and not (mask & ~inside).any()
    twin = _ellipsoid(img.shape, (40, 12, 20), (4, 4, 4))
    assert (twin & inside).sum() > 0.5 * twin.sum()  # most of the twin lies in the ROI ...
    assert not (mask & twin).any()  # ... but it is not the prompted object


def test_empty_prompts_give_an_empty_mask():
    img, _ = blob_scene()
    mask = build_generalist().segment(img, SPACING, [])
    assert mask.shape == img.shape and mask.dtype == np.bool_ and not mask.any()
    many = build_generalist().segment_many(img, SPACING, {3: [], 5: []})
    assert set(many) == {3, 5} and not any(m.any() for m in many.values())


def test_deterministic_and_segment_many_matches_segment():
    img, target = blob_scene(2)
    prompts = box_prompts_from_mask(target, padding=5)
    a = build_generalist().segment(img, SPACING, prompts)
    b = build_generalist().segment(img.copy(), SPACING, list(prompts))
    assert np.array_equal(a, b)
    many = build_generalist().segment_many(img, SPACING, {7: prompts})
    assert np.array_equal(many[7], a)


def test_rejects_boxes_outside_the_image_and_bad_arrays():
    img, target = blob_scene()
    prompts = box_prompts_from_mask(target, padding=5)
    g = build_generalist()
    with pytest.raises(ValueError, match="outside"):
        g.segment(img[:20], SPACING, prompts)
    with pytest.raises(ValueError, match="3D"):
        g.segment(img[0], SPACING, prompts)


def test_segment_box_file_writes_the_mask_in_the_image_geometry(tmp_path: Path):
    img, target = blob_scene()
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = (-50.0, 20.0, 7.5)
    save_volume(img, affine, tmp_path / "ct.nii.gz")
    save_volume(target.astype(np.uint8) * 4, affine, tmp_path / "ref.nii.gz")
    boxes = [str(p) for p in box_prompts_from_mask(target, padding=5)]
    res = segment_box_file(tmp_path / "ct.nii.gz", boxes, tmp_path / "out" / "mask.nii.gz")
    out = load_volume(res.path)
    assert np.allclose(out.affine, affine) and out.array.dtype == np.uint8
    assert set(np.unique(out.array)) <= {0, 1} and res.voxels == int(out.array.sum())
    assert dice(out.array > 0, target) > 0.8
    with pytest.raises(OutputExistsError):
        segment_box_file(tmp_path / "ct.nii.gz", boxes, res.path)
    # prompts made from a label map instead of boxes
    res2 = segment_box_file(tmp_path / "ct.nii.gz", None, tmp_path / "m2.nii.gz", prompt_mask=tmp_path / "ref.nii.gz", label=4)
    assert np.array_equal(load_volume(res2.path).array, out.array)
    with pytest.raises(InputError, match="outside"):
        segment_box_file(tmp_path / "ct.nii.gz", ["z=3,x=0:99,y=0:5"], tmp_path / "m3.nii.gz")
    with pytest.raises(InputError, match="label 9"):
        segment_box_file(tmp_path / "ct.nii.gz", None, tmp_path / "m3.nii.gz", prompt_mask=tmp_path / "ref.nii.gz", label=9)
    with pytest.raises(PartialsegError, match="no prompt"):
        segment_box_file(tmp_path / "ct.nii.gz", [], tmp_path / "m3.nii.gz")
    assert not (tmp_path / "m3.nii.gz").exists()


@pytest.mark.realdata
def test_real_ct_large_organs(shared_ct: Path):
    ct = load_volume(shared_ct / "ct.nii.gz", dtype=np.float32)
    lab = load_volume(shared_ct / "labels.nii.gz").array
    g = build_generalist()
    for k in (1, 2, 14):  # spleen, right kidney, bladder
        gt = lab == k
        mask = g.segment(ct.array, ct.spacing, box_prompts_from_mask(gt, padding=5))
        assert dice(mask, gt) > 0.8, k


def test_single_boxes_and_boxes_on_the_volume_border_work():
    img, target = blob_scene()
    g = build_generalist()
    for axes in ((2,), (1,), (0, 2)):
        mask = g.segment(img, SPACING, box_prompts_from_mask(target, axes=axes, padding=5))
        assert dice(mask, target) > 0.5, axes
    edge = np.zeros(img.shape, bool)
    edge[:6, :5, -4:] = True  # in a corner of the volume: boxes clipped at the border
    img2 = np.where(edge, 80.0, img).astype(np.float32)
    for margin in (0, 4):
        mask = build_generalist(margin=margin).segment(img2, SPACING, box_prompts_from_mask(edge, padding=5))
        assert dice(mask, edge) > 0.5, margin


def test_a_large_roi_is_solved_coarse_within_max_voxels(monkeypatch):
    from scipy import ndimage

    import partialseg.generalist.random_walker as rw

    img, target = blob_scene(2)
    img = ndimage.zoom(img, (2, 2, 1), order=1)  # the same scene at 1 x 1 x 3 mm
    target = ndimage.zoom(target.astype(np.uint8), (2, 2, 1), order=0).astype(bool)
    spacing = (1.0, 1.0, 3.0)
    prompts = box_prompts_from_mask(target, padding=10)
    solved: list[int] = []
    real = rw.random_walker_with_prior
    monkeypatch.setattr(rw, "random_walker_with_prior", lambda w, prior, *a, **k: solved.append(prior.size) or real(w, prior, *a, **k))

    fine = RandomWalkerGeneralist(box_padding=10).segment(img, spacing, prompts)
    roi = roi_from_prompts(prompts, img.shape, 8)
    roi_voxels = int(np.prod([r.stop - r.start for r in roi]))
    assert solved == [roi_voxels]
    limit = roi_voxels // 3
    coarse_g = RandomWalkerGeneralist(box_padding=10, max_voxels=limit)
    assert coarse_g._coarse_factors([r.stop - r.start for r in roi], spacing) == (2, 2, 1)
    coarse = coarse_g.segment(img, spacing, prompts)
    assert coarse.shape == img.shape and solved[-1] <= limit and len(solved) == 2
    assert dice(fine, target) > 0.8 and dice(coarse, target) > 0.8 and dice(coarse, fine) > 0.85
    inside = np.zeros(img.shape, bool)
    inside[roi_from_prompts(prompts, img.shape, 8 * 2 + 2)] = True
    assert not (coarse & ~inside).any()
    with pytest.raises(ValueError, match="max_voxels"):
        RandomWalkerGeneralist(max_voxels=10)
