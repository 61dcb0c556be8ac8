"""Preprocessing: reorientation, resampling geometry, normalisation, the prepared cache, the CLI.

Geometry is checked in world coordinates (mm) through the affines, never by array index alone.
"""

from __future__ import annotations

import json
import pickle
import shutil

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import axcodes2ornt, ornt_transform
from scipy import ndimage
from typer.testing import CliRunner

from partialseg.cli import app
from partialseg.data.dataset import PartialDataset, dataset_json, write_dataset_json
from partialseg.errors import InputError, OutputExistsError, PartialsegError
from partialseg.io import Volume, load_volume, save_volume
from partialseg.labels import LabelSpace
from partialseg.preprocessing import (
    GridMeta,
    NormalizationStats,
    PreparedDataset,
    PreprocessConfig,
    compute_normalization_stats,
    prepare_dataset,
    preprocess_image,
    preprocess_label,
    restore_labels_from_probabilities,
    restore_to_original,
)
from partialseg.preprocessing.normalisation import normalize_intensities
from partialseg.preprocessing.resampling import resample

ORIENTATIONS = ["RAS", "LPS", "LAS", "PSL", "IRA", "ASR"]


def _oriented(
    ras_array: np.ndarray, spacing: tuple[float, float, float], codes: str, origin=(-30.0, 12.0, 7.5)
) -> Volume:
    """The same physical volume stored with axis codes ``codes`` (a RAS array given at ``spacing``)."""
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = origin
    img = nib.Nifti1Image(ras_array, aff).as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(codes)))
    assert "".join(nib.aff2axcodes(img.affine)) == codes
    return Volume(np.asarray(img.dataobj), img.affine.copy())


def _world(affine: np.ndarray, ijk) -> np.ndarray:
    return (affine @ np.r_[np.asarray(ijk, float), 1.0])[:3]


def _ball(shape, centre, radius, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing)], indexing="ij")
    return sum(g**2 for g in grids) <= radius**2


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# ---- configuration --------------------------------------------------------------------------


def test_config_validation_and_round_trip():
    cfg = PreprocessConfig(spacing=[1, 1, 3], normalization="nnunet", image_order=1, label_resampling="onehot")
    assert cfg.spacing == (1.0, 1.0, 3.0)
    assert PreprocessConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert PreprocessConfig.from_dict(PreprocessConfig().to_dict()) == PreprocessConfig()
    for bad in (
        dict(normalization="minmax"),  # (zscore is the MR rule now)
        dict(label_resampling="linear"),
        dict(image_order=0),
        dict(image_order=6),
        dict(spacing=(1.0, -1.0, 2.0)),
        dict(spacing=(1.0, 2.0)),
        dict(clip=(100.0, -100.0)),
    ):
        with pytest.raises(PartialsegError):
            PreprocessConfig(**bad)
    with pytest.raises(PartialsegError, match="minmax"):
        PreprocessConfig(normalization="minmax")
    with pytest.raises(PartialsegError, match="bogus"):
        PreprocessConfig.from_dict({"bogus": 1})


def test_separable_resampling_matches_scipy_zoom():
    rng = np.random.default_rng(0)
    a = ndimage.gaussian_filter(rng.normal(size=(21, 17, 12)), 1.5).astype(np.float32)
    shape = (13, 30, 12)
    zoom = [n / s for n, s in zip(shape, a.shape)]
    for order in (1, 3):
        ref = ndimage.zoom(a.astype(np.float64), zoom, order=order, mode="reflect", grid_mode=True)
        np.testing.assert_allclose(resample(a, shape, order), ref, atol=1e-5)
    lab = rng.integers(0, 5, a.shape).astype(np.int16)
    ref = ndimage.zoom(lab, zoom, order=0, mode="nearest", grid_mode=True)
    np.testing.assert_array_equal(resample(lab, shape, 0), ref)


# ---- geometry -------------------------------------------------------------------------------


@pytest.mark.parametrize("codes", ["LPS", "PSL"])
def test_reorientation_to_ras_keeps_world_position(codes):
    spacing = (1.5, 2.0, 3.0)
    ras = np.zeros((12, 10, 8), np.float32)
    ras[3, 7, 5] = 1000.0  # a marker at a known world position
    marker_world = _world(np.diag([*spacing, 1.0]), (3, 7, 5)) + np.array([-30.0, 12.0, 7.5])
    vol = _oriented(ras, spacing, codes)
    img, meta = preprocess_image(vol, PreprocessConfig())
    assert "".join(nib.aff2axcodes(meta.affine)) == "RAS"
    assert img.shape == (1, 12, 10, 8) and img.dtype == np.float32
    assert meta.spacing == pytest.approx(spacing)
    ijk = np.unravel_index(np.argmax(img[0]), img.shape[1:])
    np.testing.assert_allclose(_world(meta.affine, ijk), marker_world, atol=1e-6)
    np.testing.assert_array_equal(img[0], normalize_intensities(ras, PreprocessConfig(), None)[0])


def test_coarser_spacing_preserves_extent_and_blob_centroid():
    spacing = (1.5, 2.0, 3.0)
    shape = (40, 31, 22)
    ras_label = _ball(shape, (17.3, 14.1, 9.6), 15.0, spacing).astype(np.int16)
    vol = _oriented(ras_label.astype(np.float32) * 500.0, spacing, "LPS")
    lab = _oriented(ras_label, spacing, "LPS")
    cfg = PreprocessConfig(spacing=(4.0, 4.0, 4.0))
    img, meta = preprocess_image(vol, cfg)
    assert meta.shape == (15, 16, 17)  # round(40*1.5/4), round(31*2/4), round(22*3/4)
    # same physical box: the outer voxel corners map to the same world points
    for corner in ([-0.5] * 3, [s - 0.5 for s in meta.shape]):
        ras_corner = [-0.5] * 3 if corner[0] < 0 else [s - 0.5 for s in meta.ras_shape]
        np.testing.assert_allclose(_world(meta.affine, corner), _world(meta.ras_affine, ras_corner), atol=1e-9)
    np.testing.assert_allclose(np.array(meta.shape) * meta.spacing, np.array(shape) * spacing)
    orig_centroid = _world(lab.affine, np.argwhere(lab.array > 0).mean(axis=0))
    for mode in ("nearest", "onehot"):
        out = preprocess_label(lab, meta, PreprocessConfig(spacing=(4.0, 4.0, 4.0), label_resampling=mode))
        assert out.dtype == np.int16 and out.shape == meta.shape
        centroid = _world(meta.affine, np.argwhere(out > 0).mean(axis=0))
        assert np.all(np.abs(centroid - orig_centroid) < np.array(meta.spacing) / 2), (mode, centroid, orig_centroid)
    w = np.clip(img[0] - 0.5, 0.0, None)  # 0 HU background normalises to 0.5
    w /= w.sum()
    img_centroid = _world(meta.affine, [(w * g).sum() for g in np.indices(meta.shape)])
    assert np.all(np.abs(img_centroid - orig_centroid) < np.array(meta.spacing) / 2)


def test_oblique_affine_keeps_world_centroid():
    # 20 degrees about z: io_orientation picks the nearest axes, the rotation stays in the affine
    t = np.deg2rad(20.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([-1.2, 1.0, 2.0])  # also flipped along the first axis
    aff[:3, 3] = [40.0, -20.0, 5.0]
    lab = Volume(_ball((30, 34, 16), (14.2, 17.5, 7.1), 11.0, (1.2, 1.0, 2.0)).astype(np.int16), aff)
    cfg = PreprocessConfig(spacing=(2.5, 2.5, 2.5), label_resampling="onehot")
    _, meta = preprocess_image(Volume(lab.array.astype(np.float32), aff), cfg)
    pre = preprocess_label(lab, meta, cfg)
    want = _world(aff, np.argwhere(lab.array > 0).mean(axis=0))
    got = _world(meta.affine, np.argwhere(pre > 0).mean(axis=0))
    assert np.linalg.norm(got - want) < min(meta.spacing) / 2
    back = restore_to_original(pre, meta, is_label=True)
    assert _dice(back > 0, lab.array > 0) > 0.9


@pytest.mark.parametrize("codes", ORIENTATIONS)
def test_label_round_trip_exact_at_unchanged_spacing(codes):
    rng = np.random.default_rng(1)
    ras = rng.integers(0, 6, (9, 7, 5)).astype(np.int16)
    lab = _oriented(ras, (0.8, 1.2, 2.5), codes)
    for mode in ("nearest", "onehot"):
        cfg = PreprocessConfig(label_resampling=mode)
        _, meta = preprocess_image(Volume(lab.array.astype(np.float32), lab.affine), cfg)
        assert meta.shape == (9, 7, 5)
        pre = preprocess_label(lab, meta, cfg)
        np.testing.assert_array_equal(pre, ras)  # reorientation alone, no interpolation
        for restore_mode in ("nearest", "onehot"):
            back = restore_to_original(pre, meta, is_label=True, label_resampling=restore_mode)
            assert back.shape == lab.array.shape
            np.testing.assert_array_equal(back, lab.array)
    probs = rng.random((3, *meta.shape)).astype(np.float32)
    back = restore_to_original(probs, meta, is_label=False)
    np.testing.assert_array_equal(back[1], _oriented(probs[1], (0.8, 1.2, 2.5), codes).array)
    meta2 = GridMeta.from_dict(json.loads(json.dumps(meta.to_dict())))
    assert meta2 == meta


def test_round_trip_at_changed_spacing_keeps_dice():
    spacing = (1.0, 1.2, 2.5)
    shape = (48, 40, 20)
    ras = _ball(shape, (23.0, 19.5, 9.0), 14.0, spacing).astype(np.int16)
    ras[_ball(shape, (30.0, 22.0, 11.0), 5.0, spacing)] = 2
    lab = _oriented(ras, spacing, "LPS")
    cfg = PreprocessConfig(spacing=(3.0, 3.0, 3.0))
    _, meta = preprocess_image(Volume(lab.array.astype(np.float32), lab.affine), cfg)
    pre = preprocess_label(lab, meta, cfg)
    for mode in ("nearest", "onehot"):
        back = restore_to_original(pre, meta, is_label=True, label_resampling=mode)
        assert back.shape == lab.array.shape and back.dtype == np.int16
        assert _dice(back == 1, lab.array == 1) > 0.9
        assert _dice(back > 0, lab.array > 0) > 0.9
    # probabilities restore linearly, still summing to one; their argmax matches the label path
    onehot = np.stack([pre == c for c in range(3)]).astype(np.float32)
    probs = restore_to_original(onehot, meta, is_label=False)
    assert probs.shape == (3, *lab.array.shape)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(
        restore_labels_from_probabilities(onehot, meta), restore_to_original(pre, meta, is_label=True)
    )


# ---- normalisation --------------------------------------------------------------------------


def test_tct_normalisation_values():
    arr = np.zeros((6, 4, 4), np.float32)
    arr[:, 0, 0] = [-3000, -1024, -512, 0, 1024, 2500]
    img, _ = preprocess_image(Volume(arr, np.diag([2.0, 2.0, 2.0, 1.0])), PreprocessConfig())
    np.testing.assert_allclose(img[0, :, 0, 0], [0.0, 0.0, 0.25, 0.5, 1.0, 1.0], atol=1e-7)
    # spline overshoot at sharp edges is clipped back into [0, 1]
    big = np.where(np.indices((20, 20, 20)).sum(axis=0) % 2 == 0, -1024.0, 1024.0).astype(np.float32)
    img, _ = preprocess_image(Volume(big, np.eye(4)), PreprocessConfig(spacing=(1.7, 1.3, 0.7)))
    assert img.min() >= 0.0 and img.max() <= 1.0


def test_nnunet_stats_from_annotated_foreground(block_dataset, small_space):
    d = json.loads((block_dataset / "dataset.json").read_text())
    d["annotated_classes"] = {"case_001": ["liver", "kidney_left"]}
    (block_dataset / "dataset.json").write_text(json.dumps(d))
    ds = PartialDataset.load(block_dataset)
    stats = compute_normalization_stats(ds)
    values = []
    for case in ds.cases:  # every case has < 10000 foreground voxels, so nothing is subsampled
        img, lab = load_volume(case.image).array, load_volume(case.label).array
        values.append(img[np.isin(lab, list(case.annotated))])
    v = np.concatenate(values).astype(np.float64)
    assert stats.num_samples == v.size
    assert stats.mean == pytest.approx(v.mean())
    assert stats.std == pytest.approx(v.std())
    assert stats.percentile_00_5 == pytest.approx(np.percentile(v, 0.5))
    assert stats.percentile_99_5 == pytest.approx(np.percentile(v, 99.5))
    assert NormalizationStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats
    x = np.array([stats.percentile_00_5 - 500, stats.mean, stats.percentile_99_5 + 500], np.float32)
    out, (lo, hi) = normalize_intensities(x, PreprocessConfig(normalization="nnunet"), stats)
    np.testing.assert_allclose(out, [lo, 0.0, hi], atol=1e-5)
    assert lo == pytest.approx((stats.percentile_00_5 - stats.mean) / stats.std)
    with pytest.raises(PartialsegError, match="NormalizationStats"):
        normalize_intensities(x, PreprocessConfig(normalization="nnunet"), None)


# ---- the prepared cache ---------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["blosc2", "npy"])
def test_prepare_dataset_and_load(block_dataset, small_space, tmp_path, storage):
    from partialseg.preprocessing.storage import Blosc2Array

    d = json.loads((block_dataset / "dataset.json").read_text())
    d["annotated_classes"] = {"case_001": ["spleen", "kidney_left"]}
    d["case_groups"] = {"case_001": "src_b"}
    (block_dataset / "dataset.json").write_text(json.dumps(d))
    out = prepare_dataset(block_dataset, tmp_path / "prep", PreprocessConfig(spacing=(4, 4, 4)), progress=False, storage=storage)
    names = {p.name for p in out.iterdir()}
    ext = {"blosc2": "b2nd", "npy": "npy"}[storage]
    for cid in ("case_000", "case_001", "case_002"):
        assert {f"{cid}_image.{ext}", f"{cid}_label.{ext}", f"{cid}_locs.npz"} <= names
    assert "prepared.json" in names and not any("_ref." in n for n in names)
    prep = PreparedDataset.load(out)
    assert prep.label_space == small_space
    assert prep.config.spacing == (4.0, 4.0, 4.0) and prep.stats is None
    assert prep.source == block_dataset.resolve()
    c1 = prep.case("case_001")
    assert c1.annotated == frozenset({2, 4}) and c1.group == "src_b"
    assert prep.case("case_000").annotated == small_space.all_indices
    kind = np.memmap if storage == "npy" else Blosc2Array
    assert isinstance(c1.image, kind) and isinstance(c1.label, kind)
    assert c1.image.shape == (1, 10, 11, 12) and c1.image.dtype == np.float32  # 20*2/4, 18*2.5/4, 16*3/4
    assert c1.label.shape == (10, 11, 12) and c1.label.dtype == np.int16 and c1.reference is None
    # the fixture's file still holds organs 1 and 3: Phi wins, they are zeroed in the cache
    assert set(np.unique(c1.label)) <= {0, 2, 4}
    recs = {r["id"]: r for r in json.loads((out / "prepared.json").read_text())["cases"]}
    assert recs["case_001"]["unannotated_voxels_zeroed"] > 0 and recs["case_000"]["unannotated_voxels_zeroed"] == 0
    assert set(c1.class_locations) == {2, 4}
    for c, locs in c1.class_locations.items():
        assert locs.shape[1] == 3 and len(locs) == min(2000, int((c1.label == c).sum()))
        assert np.all(c1.label[tuple(locs.T)] == c)
    # pickling (DataLoader workers) carries paths, not open maps
    c1b = pickle.loads(pickle.dumps(c1))
    np.testing.assert_array_equal(c1b.label, c1.label)
    with pytest.raises(OutputExistsError):
        prepare_dataset(block_dataset, out, PreprocessConfig(spacing=(4, 4, 4)), progress=False)


def test_prepare_median_spacing_reference_and_nnunet(tmp_path, small_space):
    from tests.conftest import write_block_dataset

    root = write_block_dataset(tmp_path / "ds", small_space, n_cases=2)
    shutil.copytree(root / "labelsTr", root / "labelsRef")
    d = json.loads((root / "dataset.json").read_text())
    d["reference_labels"] = "labelsRef"
    (root / "dataset.json").write_text(json.dumps(d))
    out = prepare_dataset(root, tmp_path / "prep", PreprocessConfig(normalization="nnunet"), progress=False)
    prep = PreparedDataset.load(out)
    assert prep.config.spacing == (2.0, 2.5, 3.0)  # the dataset's median spacing
    assert prep.stats is not None and prep.stats.std > 0
    case = prep.cases[0]
    lab = load_volume(root / "labelsTr" / "case_000.nii.gz").array
    np.testing.assert_array_equal(case.label, lab)
    np.testing.assert_array_equal(case.reference, lab)
    np.testing.assert_array_equal(restore_to_original(case.label, case.meta, is_label=True), lab)


@pytest.mark.parametrize("problem,workers", [("nan", 1), ("grid", 1), ("value", 1), ("value", 2)])
def test_prepare_rejects_bad_case_naming_file(block_dataset, small_space, tmp_path, problem, workers):
    aff = np.diag([2.0, 2.5, 3.0, 1.0])
    if problem == "nan":
        bad = block_dataset / "imagesTr" / "case_001_0000.nii.gz"
        arr = load_volume(bad).array.astype(np.float32)
        arr[3, 3, 3] = np.nan
    elif problem == "grid":
        bad = block_dataset / "labelsTr" / "case_001.nii.gz"
        arr = np.zeros((20, 18, 15), np.uint8)
    else:
        bad = block_dataset / "labelsTr" / "case_001.nii.gz"
        arr = load_volume(bad).array.astype(np.uint8)
        arr[0, 0, 0] = 9
    save_volume(arr, aff, bad, overwrite=True)
    out = tmp_path / "prep"
    with pytest.raises(InputError) as e:  # with workers: raised in a worker process, re-raised here
        prepare_dataset(block_dataset, out, PreprocessConfig(spacing=(4, 4, 4)), progress=False, workers=workers)
    assert e.value.path == bad and str(bad) in str(e.value)
    assert not out.exists() and not list(tmp_path.glob(".prep.*"))  # nothing half-written is left


@pytest.mark.parametrize("storage", ["blosc2", "npy"])
def test_corrupt_cache_errors_name_the_file(block_dataset, tmp_path, storage):
    out = prepare_dataset(block_dataset, tmp_path / "prep", PreprocessConfig(spacing=(4, 4, 4)), progress=False, storage=storage)
    with pytest.raises(InputError, match="does not exist"):
        PreparedDataset.load(tmp_path / "nowhere")
    bad = out / f"case_002_label.{'npy' if storage == 'npy' else 'b2nd'}"
    bad.write_bytes(b"not an array")
    with pytest.raises(InputError, match="cannot read the cached array") as e:
        PreparedDataset.load(out)
    assert e.value.path == bad
    bad.unlink()
    with pytest.raises(InputError, match="missing") as e:
        PreparedDataset.load(out)
    assert e.value.path == bad
    (out / "prepared.json").write_text("{ truncated")
    with pytest.raises(InputError) as e:
        PreparedDataset.load(out)
    assert e.value.path == out / "prepared.json"
    (out / "prepared.json").write_text(json.dumps({"format": "partialseg-prepared", "version": 1}))
    with pytest.raises(InputError, match="corrupt") as e:
        PreparedDataset.load(out)
    assert e.value.path == out / "prepared.json"


def test_cli_prepare_round_trip(block_dataset, tmp_path):
    runner = CliRunner()
    out = tmp_path / "prep"
    res = runner.invoke(app, ["prepare", str(block_dataset), str(out), "--spacing", "4,4,4"])
    assert res.exit_code == 0, res.output
    prep = PreparedDataset.load(out)
    assert prep.config.spacing == (4.0, 4.0, 4.0) and len(prep.cases) == 3
    assert prep.cases[0].image.shape == (1, 10, 11, 12)
    res = runner.invoke(app, ["prepare", str(block_dataset), str(out), "--spacing", "4,4,4"])
    assert res.exit_code == 2 and "already exists" in res.output
    res = runner.invoke(app, ["prepare", str(block_dataset), str(tmp_path / "p2"), "--normalization", "minmax"])
    assert res.exit_code == 2 and "minmax" in res.output and not (tmp_path / "p2").exists()


# ---- the real CT ----------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_ct_round_trip_at_5mm(shared_ct):
    image = load_volume(shared_ct / "ct.nii.gz", dtype=np.float32)
    label = load_volume(shared_ct / "labels.nii.gz")
    cfg = PreprocessConfig(spacing=(5.0, 5.0, 5.0))
    img, meta = preprocess_image(image, cfg)
    assert img.shape == (1, 73, 61, 67) and 0.0 <= img.min() and img.max() <= 1.0
    pre = preprocess_label(Volume(label.array.astype(np.int16), label.affine, label.path), meta, cfg)
    back = restore_to_original(pre, meta, is_label=True)
    assert back.shape == label.array.shape
    np.testing.assert_allclose(meta.original_affine, label.affine)
    space = LabelSpace.named("amos15")
    for organ in ("liver", "spleen", "urinary_bladder"):
        c = space.index(organ)
        assert _dice(back == c, label.array == c) > 0.9, organ


@pytest.mark.realdata
def test_real_ct_lps_copy_prepare_and_restore_exact(shared_ct, tmp_path):
    root = tmp_path / "lps"
    to_lps = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt("LPS"))
    ct = nib.load(shared_ct / "ct.nii.gz").as_reoriented(to_lps)
    lab = nib.load(shared_ct / "labels.nii.gz").as_reoriented(to_lps)
    assert "".join(nib.aff2axcodes(ct.affine)) == "LPS"
    save_volume(np.asarray(ct.dataobj), ct.affine, root / "imagesTr" / "ct_0000.nii.gz")
    save_volume(np.asarray(lab.dataobj), lab.affine, root / "labelsTr" / "ct.nii.gz")
    write_dataset_json(root, dataset_json(LabelSpace.named("amos15"), 1))
    out = prepare_dataset(root, tmp_path / "prep", PreprocessConfig(), progress=False)
    case = PreparedDataset.load(out).case("ct")
    assert "".join(nib.aff2axcodes(case.meta.affine)) == "RAS" and case.meta.spacing == pytest.approx((3.0, 3.0, 3.0))
    back = restore_to_original(np.asarray(case.label), case.meta, is_label=True)
    saved = load_volume(save_volume(back, case.meta.original_affine, tmp_path / "back.nii.gz"))
    original = load_volume(root / "labelsTr" / "ct.nii.gz")
    np.testing.assert_array_equal(saved.array, original.array)
    np.testing.assert_allclose(saved.affine, original.affine, atol=1e-5)


def test_blosc2_and_npy_caches_hold_the_same_arrays_and_workers_change_nothing(block_dataset, tmp_path):
    from partialseg.preprocessing.cache import PREPARED_JSON

    cfg = PreprocessConfig(spacing=(3, 3, 3))
    a = PreparedDataset.load(prepare_dataset(block_dataset, tmp_path / "npy", cfg, progress=False, storage="npy", workers=1))
    b = PreparedDataset.load(prepare_dataset(block_dataset, tmp_path / "b2", cfg, progress=False, storage="blosc2", workers=2))
    assert [c.case_id for c in a.cases] == [c.case_id for c in b.cases]
    for ca, cb in zip(a.cases, b.cases):
        np.testing.assert_array_equal(np.asarray(cb.image), ca.image)
        np.testing.assert_array_equal(np.asarray(cb.label), ca.label)
        # a crop with an ellipsis, as the sampler takes it, decompresses to the same voxels
        sl = (..., slice(1, 6), slice(0, 4), slice(2, 5))
        np.testing.assert_array_equal(cb.image[sl], ca.image[sl])
        np.testing.assert_array_equal(cb.label[sl], ca.label[sl])
        assert np.array_equal(cb.label == 2, ca.label == 2) and int((cb.label > 0).sum()) == int((ca.label > 0).sum())
        assert {k: v.tolist() for k, v in cb.class_locations.items()} == {k: v.tolist() for k, v in ca.class_locations.items()}
        back = pickle.loads(pickle.dumps(cb))  # a DataLoader worker reopens the file
        np.testing.assert_array_equal(back.image[0, :, :, 1], ca.image[0, :, :, 1])
    # the descriptions differ only in the storage
    ja, jb = (json.loads((p / PREPARED_JSON).read_text()) for p in (tmp_path / "npy", tmp_path / "b2"))
    assert ja.pop("storage") == "npy" and jb.pop("storage") == "blosc2" and ja == jb


def test_a_cache_from_before_blosc2_is_read_as_npy(block_dataset, tmp_path):
    from partialseg.preprocessing.cache import PREPARED_JSON

    out = prepare_dataset(block_dataset, tmp_path / "old", PreprocessConfig(spacing=(4, 4, 4)), progress=False, storage="npy")
    info = json.loads((out / PREPARED_JSON).read_text())
    del info["storage"]
    (out / PREPARED_JSON).write_text(json.dumps(info))
    prep = PreparedDataset.load(out)
    assert all(c.storage == "npy" and isinstance(c.label, np.memmap) for c in prep.cases)
    with pytest.raises(PartialsegError, match="unknown cache storage"):
        prepare_dataset(block_dataset, tmp_path / "x", PreprocessConfig(spacing=(4, 4, 4)), progress=False, storage="zarr")
