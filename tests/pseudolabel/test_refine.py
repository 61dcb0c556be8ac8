import numpy as np
import pytest

from partialseg.pseudolabel.refine import assemble, entropy, entropy_rule, largest_component, prompt_mask, refine


def _probs(shape, hot: dict[int, tuple], value=0.9, n=3):
    """(n, *shape) probabilities: background everywhere except boxes where class k has ``value``."""
    p = np.zeros((n, *shape), np.float32)
    p[0] = 1.0
    for k, sl in hot.items():
        p[:, sl[0], sl[1], sl[2]] = (1 - value) / (n - 1)
        p[k, sl[0], sl[1], sl[2]] = value
    return p


def test_largest_component_and_prompt_mask():
    m = np.zeros((10, 10, 10), bool)
    m[0:2, 0:2, 0:2] = True  # 8 voxels
    m[5:8, 5:8, 5:8] = True  # 27 voxels
    lc = largest_component(m)
    assert lc.sum() == 27 and lc[6, 6, 6] and not lc[0, 0, 0]
    assert not largest_component(np.zeros((3, 3, 3), bool)).any()
    p = _probs((10, 10, 10), {1: (slice(0, 2), slice(0, 2), slice(0, 2))}, value=0.6)
    p[:, 5:8, 5:8, 5:8] = 0.05
    p[1, 5:8, 5:8, 5:8] = 0.9
    assert prompt_mask(p, 1, tau=None, keep_largest=True).sum() == 27
    assert prompt_mask(p, 1, tau=None, keep_largest=False).sum() == 35
    # the high-confidence variant drops the 0.6 blob even without the component rule
    assert prompt_mask(p, 1, tau=0.7, keep_largest=False).sum() == 27


def test_refine_is_the_intersection_of_the_three_rules():
    shape = (6, 6, 6)
    g = np.zeros(shape, bool)
    g[1:5, 1:5, 1:5] = True  # generalist: 64 voxels
    p = np.zeros((3, *shape), np.float32)
    p[0] = 1.0
    p[0, :, :, 2:] = 0.3
    p[2, :, :, 2:] = 0.7  # specialist confident only for z ≥ 2
    roi = (slice(0, 6), slice(0, 6), slice(0, 4))  # ROI stops at z = 4
    protected = np.zeros(shape, bool)
    protected[1, 1, 2] = True  # an annotated voxel is never pseudo-labelled
    out = refine(g, roi, p, 2, tau=0.5, protected=protected)
    expected = g.copy()
    expected[:, :, :2] = False
    expected[:, :, 4:] = False
    expected[1, 1, 2] = False
    np.testing.assert_array_equal(out, expected)
    assert out.sum() == 4 * 4 * 2 - 1


def test_entropy_values_and_rule():
    p = np.zeros((2, 1, 1, 2), np.float32)
    p[:, 0, 0, 0] = [0.5, 0.5]
    p[:, 0, 0, 1] = [1.0, 0.0]
    h = entropy(p)
    assert h[0, 0, 0] == pytest.approx(np.log(2), rel=1e-5)
    assert h[0, 0, 1] == pytest.approx(0.0, abs=1e-6)
    assert entropy_rule(0.2, None)  # nothing before: accept
    assert entropy_rule(0.2, 0.3)
    assert not entropy_rule(0.3, 0.3)  # must strictly decrease
    assert not entropy_rule(0.4, 0.3)


def test_assemble_never_overwrites_annotations_and_resolves_overlaps():
    label = np.zeros((4, 1, 1), np.int16)
    label[0] = 1  # annotated organ
    m2 = np.array([True, True, True, False]).reshape(4, 1, 1)
    m3 = np.array([False, False, True, True]).reshape(4, 1, 1)
    p = np.zeros((4, 4, 1, 1), np.float32)
    p[2, 2], p[3, 2] = 0.4, 0.6  # overlap voxel 2: class 3 more probable
    out = assemble(label, {2: m2, 3: m3}, p)
    assert out[:, 0, 0].tolist() == [1, 2, 3, 3]
    assert label[:, 0, 0].tolist() == [1, 0, 0, 0]  # input untouched


def test_a_class_that_loses_every_voxel_in_the_overlap_is_not_pseudo_labelled():
    from partialseg.pseudolabel.refine import pseudo_labelled

    label = np.zeros((4, 1, 1), np.int16)
    m2 = np.array([True, True, True, False]).reshape(4, 1, 1)
    m3 = np.array([False, True, True, False]).reshape(4, 1, 1)  # inside m2, where class 2 is more probable
    p = np.zeros((4, 4, 1, 1), np.float32)
    p[2], p[3] = 0.7, 0.2
    out = assemble(label, {2: m2, 3: m3}, p)
    assert out[:, 0, 0].tolist() == [2, 2, 2, 0]
    assert pseudo_labelled(out, {2: m2, 3: m3}) == {2}
    assert pseudo_labelled(out, {2: m2, 3: np.zeros_like(m3)}) == {2}
