"""Large grids (more than EXACT_MAX_VOXELS fine voxels): the shortcuts that make a 512x512x160 case take
seconds, and the guarantee that every smaller grid (the presets) still gives the arrays it always gave."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import scipy
from scipy import ndimage
from scipy.spatial import cKDTree

from partialseg.synthetic import PRESETS, PhantomConfig, make_phantom
from partialseg.synthetic import grid as grid_mod
from partialseg.synthetic.grid import Grid, SmoothField, is_large, smooth_field, upsample_linear
from partialseg.synthetic.shapes import make_tube, raster_tubes
from partialseg.synthetic.streaming import add_noise_large, filter_axis0_inplace, filter_shifted, half_kernel
from tests.synthetic import test_anatomy, test_intensities
from tests.synthetic.conftest import CPU

#: sha256 of the cpu preset's seed-0 image and labels, as the generator made them before the large-grid
#: shortcuts (and as docs/results.md's tables were made); float32 rounding can differ between numpy/scipy builds
CPU_SEED0_SHA256 = "658d539e18af3813d87141dfdb7ff6ebe50faf43b85414b10d93f9b0f70ccd5f"
RECORDED_WITH = ("2.4.6", "1.17.1")


def test_presets_stay_exact_and_big_cases_take_the_shortcuts() -> None:
    for cfg in PRESETS.values():
        assert not is_large(Grid(cfg).shape)
    assert is_large(Grid(PhantomConfig(shape=(512, 512, 160), spacing=(0.8, 0.8, 2.5), oversample=1)).shape)


@pytest.mark.skipif((np.__version__, scipy.__version__) != RECORDED_WITH, reason="checksum recorded with other numpy/scipy")
def test_cpu_preset_is_bit_identical_to_before() -> None:
    ph = make_phantom(0, CPU)
    h = hashlib.sha256()
    h.update(ph.image.tobytes())
    h.update(ph.labels.tobytes())
    assert h.hexdigest() == CPU_SEED0_SHA256


def test_upsample_linear_is_exact_on_linear_fields_and_wraps() -> None:
    coarse = np.arange(8, dtype=np.float32)[:, None, None] * np.ones((1, 3, 2), np.float32)
    fine = upsample_linear(coarse, (32, 3, 2), (4, 1, 1))
    x = (np.arange(32) + 0.5) / 4 - 0.5  # coarse coordinate of each fine voxel
    inner = (x >= 0) & (x <= 7)
    np.testing.assert_allclose(fine[inner, 0, 0], x[inner], atol=1e-6)
    # beyond the last sample the field wraps to the first: between 7 and 0
    assert fine[-1, 0, 0] == pytest.approx(7 + (x[-1] - 7) * (0 - 7), abs=1e-5)


def test_smooth_field_slabs_equal_the_whole_and_have_unit_sd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grid_mod, "EXACT_MAX_VOXELS", 0)
    g = Grid(PhantomConfig(shape=(96, 80, 40), spacing=(0.8, 0.8, 2.5), oversample=1))
    for sigma in (2.0, 12.0, 40.0):
        f = smooth_field(np.random.default_rng(1), g, sigma)
        assert f.factor >= 1 and f.shape == g.shape
        full = f.full()
        assert np.array_equal(np.concatenate([f[i : i + 7] for i in range(0, g.shape[0], 7)]), full)
        if sigma < 40:  # enough independent samples to pin the sd down
            assert abs(float(full.std()) - 1.0) < 0.1 and abs(float(full.mean())) < 0.1
    # correlation along x at one sd of the 2 mm kernel (2.5 voxels) as for a full-resolution field: exp(-1/4)
    f = smooth_field(np.random.default_rng(2), g, 2.0).full()
    lag = 3
    r = np.corrcoef(f[:-lag].ravel(), f[lag:].ravel())[0, 1]
    assert abs(r - np.exp(-((lag * 0.8 / 2.0) ** 2) / 4)) < 0.08
    # between its planes a lazy field is the linear interpolation of them, as upsample_linear makes it
    f = smooth_field(np.random.default_rng(4), g, 40.0)
    assert f.factor > 1
    np.testing.assert_allclose(f.full(), upsample_linear(f.planes, g.shape, (f.factor, 1, 1)), atol=1e-5)
    # a scaled field reads the same values times the gain
    base = smooth_field(np.random.default_rng(3), g, 40.0)
    again = smooth_field(np.random.default_rng(3), g, 40.0).scaled(2.5)
    np.testing.assert_allclose(again[10:20], 2.5 * base[10:20], rtol=1e-5, atol=1e-6)
    assert isinstance(again, SmoothField)


@pytest.mark.parametrize("mode", ["nearest", "wrap"])
def test_streaming_filters_match_scipy(mode: str) -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 5, 9, 20):
        x = rng.standard_normal((n, 6, 5), dtype=np.float32)
        for sigma, truncate in ((1.25, 3.0), (0.6, 2.0), (3.0, 3.0), (0.4, 3.0)):
            w = half_kernel(sigma, truncate)
            ref0 = ndimage.gaussian_filter1d(x, sigma, axis=0, mode=mode, truncate=truncate)
            got = x.copy()
            filter_axis0_inplace(got, w, mode)
            np.testing.assert_allclose(got, ref0, atol=2e-6)
            for ax in (1, 2):
                ref = ndimage.gaussian_filter1d(x, sigma, axis=ax, mode=mode, truncate=truncate)
                out = filter_shifted(x, w, ax, mode, np.empty_like(x), np.empty_like(x))
                np.testing.assert_allclose(out, ref, atol=2e-6)


def test_large_noise_has_the_requested_sd_and_correlation() -> None:
    img = np.zeros((64, 64, 32), np.float32)
    rng = np.random.default_rng(4)
    add_noise_large(img, 15.0, rng)
    sd = float(img.std())
    assert 15.0 * 0.75 * 0.97 < sd < 15.0 * 1.3 * 1.03
    # neighbours correlate as through scipy's sigma-0.6 kernel (about 0.44 for adjacent voxels)
    for ax in range(3):
        a, b = np.moveaxis(img, ax, 0)[:-1].ravel(), np.moveaxis(img, ax, 0)[1:].ravel()
        assert 0.38 < np.corrcoef(a, b)[0, 1] < 0.5


def test_tube_raster_on_a_large_grid_agrees_with_the_true_distance(monkeypatch: pytest.MonkeyPatch) -> None:
    g = Grid(PhantomConfig(shape=(160, 150, 40), spacing=(0.8, 0.8, 2.5), oversample=1))
    rng = np.random.default_rng(5)
    t = np.linspace(0, 1, 7)
    ctrl_a = np.stack([-40 + 80 * t, 25 * np.sin(3 * t), -30 + 60 * t], axis=1)
    ctrl_b = np.stack([30 * np.cos(4 * t), -40 + 70 * t, 20 * np.sin(2 * t)], axis=1)
    tubes = [make_tube(ctrl_a, [6, 9, 12, 9, 6, 5, 4], 0.4, rng, 0.1), make_tube(ctrl_b, [4] * 7, 0.4)]
    exact = raster_tubes(g, tubes, squash_y=1.25)
    monkeypatch.setattr(grid_mod, "EXACT_MAX_VOXELS", 0)
    fast = raster_tubes(g, tubes, squash_y=1.25)
    assert exact is not None and fast is not None and fast.sl == exact.sl
    a, b = fast.rho < 1, exact.rho < 1
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.97
    # against the true nearest centreline point (brute force), the coarse search is at least as good
    pts = np.concatenate([x.points for x in tubes])
    rad = np.concatenate([x.radius for x in tubes])
    ii, jj, kk = np.nonzero(a | b | (np.minimum(fast.rho, exact.rho) < 1.3))
    v = np.stack([g.axes[0][fast.sl[0]][ii], g.axes[1][fast.sl[1]][jj], g.axes[2][fast.sl[2]][kk]], 1).astype(np.float64)
    _, nid = cKDTree(pts).query(v)
    d = v - pts[nid]
    d[:, 1] *= 1.25
    truth = np.sqrt((d**2).sum(1)) / rad[nid] < 1
    wrong_fast = ((fast.rho[ii, jj, kk] < 1) != truth).mean()
    wrong_exact = ((exact.rho[ii, jj, kk] < 1) != truth).mean()
    assert wrong_fast < 0.01 and wrong_fast <= wrong_exact


@pytest.fixture(scope="module")
def large_path_phantoms() -> list:
    """cpu-preset phantoms made with every large-grid shortcut (the threshold lowered to 0)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(grid_mod, "EXACT_MAX_VOXELS", 0)
        return [make_phantom(s, CPU) for s in (0, 1, 2)]


def test_large_path_gives_the_same_anatomy_and_intensities(large_path_phantoms: list) -> None:
    test_anatomy.test_arrays_and_all_organs_present(large_path_phantoms)
    test_anatomy.test_left_right_in_world_coordinates(large_path_phantoms)
    test_anatomy.test_relative_positions(large_path_phantoms)
    test_intensities.test_hu_plausible(large_path_phantoms)
    test_intensities.test_noise_is_present(large_path_phantoms)


def test_large_path_is_deterministic(large_path_phantoms: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grid_mod, "EXACT_MAX_VOXELS", 0)
    again = make_phantom(1, CPU)
    assert np.array_equal(again.image, large_path_phantoms[1].image)
    assert np.array_equal(again.labels, large_path_phantoms[1].labels)
    monkeypatch.undo()
    assert not np.array_equal(make_phantom(1, CPU).image, again.image)  # the shortcuts did run


@pytest.mark.slow
def test_a_512x512x160_case() -> None:
    cfg = PhantomConfig(shape=(512, 512, 160), spacing=(0.8, 0.8, 2.5), oversample=1, blur_mm=1.0)
    ph = make_phantom(0, cfg)
    assert ph.image.shape == cfg.shape and ph.labels.dtype == np.uint8
    test_anatomy.test_relative_positions([ph])
    test_intensities.test_hu_plausible([ph])
