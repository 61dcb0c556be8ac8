import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from partialseg.evaluation import dice, hd95
from partialseg.evaluation import metrics as M

ANISO = (0.8, 1.3, 3.0)


def _vox(shape, *points):
    m = np.zeros(shape, bool)
    for p in points:
        m[p] = True
    return m


def _cube(shape, lo, size):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, a + size) for a in lo)] = True
    return m


def _blob(rng, shape, sigma, level):
    f = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return f > level * f.std()


def _monai_hd(pred, ref, spacing, percentile=95.0):
    from monai.metrics import HausdorffDistanceMetric

    metric = HausdorffDistanceMetric(include_background=True, percentile=percentile, reduction="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = lambda a: torch.from_numpy(a[None, None].astype(np.float32))  # noqa: E731
        return float(metric(t(pred), t(ref), spacing=list(spacing))[0, 0])


def _monai_dice(pred, ref):
    from monai.metrics import DiceMetric

    t = lambda a: torch.from_numpy(a[None, None].astype(np.float32))  # noqa: E731
    return float(DiceMetric(include_background=True, reduction="none")(t(pred), t(ref))[0, 0])


# ---- hand-computed ------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_single_voxels_three_apart(axis):
    a, b = [4, 4, 4], [4, 4, 4]
    b[axis] += 3
    spacing = [1.0, 1.0, 1.0]
    spacing[axis] = 2.0
    pred, ref = _vox((10, 10, 10), tuple(a)), _vox((10, 10, 10), tuple(b))
    assert hd95(pred, ref, spacing) == pytest.approx(6.0)
    assert hd95(pred, ref) == pytest.approx(3.0)  # unit spacing by default
    assert dice(pred, ref) == 0.0


def test_single_voxels_diagonal():
    pred, ref = _vox((8, 8, 8), (1, 1, 1)), _vox((8, 8, 8), (2, 3, 4))
    assert hd95(pred, ref, (2.0, 1.0, 0.5)) == pytest.approx(math.sqrt(2.0**2 + 2.0**2 + 1.5**2))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0), (0.7, 3.0, 1.5)])
def test_cubes_offset_by_one_voxel(spacing):
    # 3x3x3 cubes shifted by one voxel along axis 0; each surface has 26 voxels (all but the
    # centre). pred -> ref: 16 voxels lie on both surfaces (0), the pred voxel at the ref's centre
    # is at most spacing[0] from a ref face, and the 9 voxels of pred's far face are exactly
    # spacing[0] away. Ranks 23 and 24 of 26 sorted values fall among those 9: HD95 = spacing[0].
    pred, ref = _cube((7, 7, 7), (1, 2, 2), 3), _cube((7, 7, 7), (2, 2, 2), 3)
    assert hd95(pred, ref, spacing) == pytest.approx(spacing[0])
    assert dice(pred, ref) == pytest.approx(2 * 18 / 54)
    d_pred, d_ref = M.surface_distances(pred, ref, spacing)
    assert len(d_pred) == len(d_ref) == 26
    assert sorted(d_pred)[:16] == [0.0] * 16
    assert np.count_nonzero(np.isclose(d_pred, spacing[0])) >= 9


def test_identical_masks():
    m = _cube((6, 6, 6), (1, 1, 1), 3)
    assert dice(m, m) == 1.0
    assert hd95(m, m, ANISO) == 0.0


def test_empty_conventions():
    # both empty: undefined (nan); one empty: DSC 0 and the field-of-view diagonal as HD95 penalty
    empty = np.zeros((5, 5, 5), bool)
    full = _cube((5, 5, 5), (1, 1, 1), 2)
    diagonal = math.sqrt(sum((5 * s) ** 2 for s in ANISO))
    assert M.fov_diagonal((5, 5, 5), ANISO) == pytest.approx(diagonal)
    assert math.isnan(dice(empty, empty))
    assert math.isnan(hd95(empty, empty, ANISO))
    for pred, ref in ((empty, full), (full, empty)):
        assert dice(pred, ref) == 0.0
        assert hd95(pred, ref, ANISO) == pytest.approx(diagonal)
    m = M.compare_masks(empty, full, ANISO)
    assert (m.dsc, m.pred_empty, m.ref_empty, m.penalised) == (0.0, True, False, True)
    assert m.hd95 == pytest.approx(diagonal)
    m = M.compare_masks(full, empty, ANISO)
    assert (m.dsc, m.pred_empty, m.ref_empty, m.penalised) == (0.0, False, True, True)
    m = M.compare_masks(empty, empty)
    assert math.isnan(m.dsc) and math.isnan(m.hd95) and m.pred_empty and m.ref_empty and not m.penalised
    assert not M.compare_masks(full, full, ANISO).penalised
    # unit spacing: the diagonal of a 5x5x5 grid is 5*sqrt(3)
    assert M.compare_masks(full, empty).hd95 == pytest.approx(5 * math.sqrt(3))


def test_surface_voxels_match_scipy_erosion():
    rng = np.random.default_rng(3)
    for _ in range(5):
        m = rng.random((9, 7, 6)) < 0.6  # touches the border everywhere
        assert np.array_equal(M.surface_voxels(m), m ^ ndimage.binary_erosion(m))
    single = _vox((3, 3, 3), (1, 1, 1))
    assert np.array_equal(M.surface_voxels(single), single)


def test_bounding_box_matches_find_objects():
    rng = np.random.default_rng(4)
    for _ in range(50):
        shape = tuple(int(s) for s in rng.integers(1, 8, size=int(rng.integers(1, 4))))
        m = rng.random(shape) < 0.1
        assert M._bounding_box(m) == ndimage.find_objects(m.view(np.uint8), max_label=1)[0]


def test_input_validation():
    a = np.zeros((4, 4, 4), bool)
    with pytest.raises(ValueError, match="shapes differ"):
        hd95(a, np.zeros((4, 4, 5), bool))
    with pytest.raises(ValueError, match="one value per array axis"):
        hd95(a, a, (1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        hd95(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="percentile"):
        M.hausdorff_distance(a, a, percentile=101)
    with pytest.raises(ValueError, match="integer label map"):
        M.label_map_metrics(a.astype(float), a.astype(float), [1])


# ---- agreement with MONAI ----------------------------------------------------------------------
def _random_cases(seed, n):
    rng = np.random.default_rng(seed)
    spacings = [ANISO, (1.0, 1.0, 1.0), (2.0, 0.7, 0.7), (3.0, 0.5, 1.1)]
    out = []
    while len(out) < n:
        shape = tuple(int(s) for s in rng.integers(12, 56, 3))
        ref = _blob(rng, shape, rng.uniform(1.0, 4.0), rng.uniform(-0.3, 1.5))
        kind = len(out) % 3
        if kind == 0:  # an independent blob
            pred = _blob(rng, shape, rng.uniform(1.0, 4.0), rng.uniform(-0.3, 1.5))
        elif kind == 1:  # a plausible prediction: dilated or shifted, with stray speckles
            pred = ndimage.binary_dilation(ref, iterations=int(rng.integers(1, 3)))
            pred = np.roll(pred, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 3)))
            pred ^= rng.random(shape) < 0.003
        else:
            pred = ndimage.binary_erosion(ref)
        if pred.any() and ref.any():
            out.append((pred, ref, spacings[len(out) % len(spacings)]))
    return out


@pytest.mark.parametrize("pred,ref,spacing", _random_cases(0, 9))
def test_hd95_and_dice_match_monai(pred, ref, spacing):
    assert hd95(pred, ref, spacing) == pytest.approx(_monai_hd(pred, ref, spacing), rel=2e-5, abs=1e-4)
    assert dice(pred, ref) == pytest.approx(_monai_dice(pred, ref), rel=1e-6)


@pytest.mark.parametrize("min_points,offsets", [(0, 500), (0, 30), (0, 1)])
def test_stencil_paths_match_monai(monkeypatch, min_points, offsets):
    # force the offset-ball search (and, with tiny balls, its KD-tree fallback) on every case
    monkeypatch.setattr(M, "_STENCIL_MIN_POINTS", min_points)
    monkeypatch.setattr(M, "_STENCIL_OFFSETS", offsets)
    for pred, ref, spacing in _random_cases(1, 4):
        expected = _monai_hd(pred, ref, spacing)
        assert hd95(pred, ref, spacing) == pytest.approx(expected, rel=2e-5, abs=1e-4)
        d1, d2 = M.surface_distances(pred, ref, spacing)
        assert hd95(pred, ref, spacing) == pytest.approx(max(np.percentile(d1, 95), np.percentile(d2, 95)))
        for q in (0, 50, 99, 100):
            assert M.hausdorff_distance(pred, ref, spacing, percentile=q) == pytest.approx(
                max(np.percentile(d1, q), np.percentile(d2, q))
            )


def test_max_hausdorff_matches_monai():
    pred, ref, spacing = _random_cases(2, 1)[0]
    assert M.hausdorff_distance(pred, ref, spacing) == pytest.approx(_monai_hd(pred, ref, spacing, None), rel=2e-5)


def test_mask_touching_border_matches_monai():
    ref = np.zeros((10, 12, 8), bool)
    ref[:4, 3:9, :] = True
    pred = np.zeros_like(ref)
    pred[:6, 2:8, 1:] = True
    assert hd95(pred, ref, ANISO) == pytest.approx(_monai_hd(pred, ref, ANISO), rel=2e-5)


def test_label_map_metrics_per_class():
    rng = np.random.default_rng(5)
    ref = np.zeros((30, 28, 20), np.int16)
    pred = np.zeros_like(ref)
    for c in (1, 2, 3):
        m = _blob(rng, ref.shape, 2.0, 1.5)
        ref[m] = c
        pred[ndimage.binary_dilation(m)] = c
    pred[pred == 3] = 0  # class 3 missed; class 4 absent from both
    out = M.label_map_metrics(pred, ref, [1, 2, 3, 4], ANISO)
    for c in (1, 2):
        expected = M.compare_masks(pred == c, ref == c, ANISO)
        assert out[c].dsc == pytest.approx(expected.dsc) and out[c].hd95 == pytest.approx(expected.hd95)
        assert out[c].hd95 == pytest.approx(_monai_hd(pred == c, ref == c, ANISO), rel=2e-5)
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(ref.shape, ANISO)))
    assert out[3].pred_empty and not out[3].ref_empty and out[3].dsc == 0.0
    assert out[3].penalised and out[3].hd95 == pytest.approx(diagonal)
    assert math.isnan(out[4].dsc) and math.isnan(out[4].hd95) and out[4].pred_empty and out[4].ref_empty
    assert list(out) == [1, 2, 3, 4]
