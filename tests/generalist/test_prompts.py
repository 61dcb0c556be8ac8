"""Box prompts: median slices, padding, clipping, ROI, and the CLI box syntax."""

from __future__ import annotations

import numpy as np
import pytest

from partialseg.errors import PartialsegError
from partialseg.generalist import BoxPrompt, box_prompts_from_mask, parse_box, prompts_bbox, roi_from_prompts


def _mask(shape=(20, 18, 16)) -> np.ndarray:
    return np.zeros(shape, bool)


def test_box_prompt_validates_its_slice():
    p = BoxPrompt(2, 4, (1, 2, 4), (5, 6, 5))
    assert p.slices == (slice(1, 5), slice(2, 6), slice(4, 5))
    assert p.fits((5, 6, 5)) and not p.fits((5, 6, 4))
    with pytest.raises(ValueError, match="exactly that slice"):
        BoxPrompt(2, 4, (1, 2, 4), (5, 6, 6))  # two slices thick
    with pytest.raises(ValueError, match="exactly that slice"):
        BoxPrompt(2, 3, (1, 2, 4), (5, 6, 5))  # index is not the slice
    with pytest.raises(ValueError, match="hi > lo"):
        BoxPrompt(0, 1, (1, 3, 4), (2, 3, 6))  # empty along y
    with pytest.raises(ValueError, match="axis"):
        BoxPrompt(3, 1, (1, 3, 4), (2, 5, 6))


def test_median_slice_odd_count():
    m = _mask()
    m[5:9, 6:10, 3:6] = True  # z slices 3, 4, 5 -> 4; x slices 5..8 -> lower middle 6
    ax, sag = box_prompts_from_mask(m, padding=0)
    assert (ax.axis, ax.index) == (2, 4)
    assert (sag.axis, sag.index) == (0, 6)
    assert ax.lo == (5, 6, 4) and ax.hi == (9, 10, 5)
    assert sag.lo == (6, 6, 3) and sag.hi == (7, 10, 6)


def test_median_slice_even_count_takes_lower_middle():
    m = _mask()
    m[4:6, 4:6, 2:6] = True  # z slices 2, 3, 4, 5 -> 3
    (ax,) = box_prompts_from_mask(m, axes=(2,), padding=0)
    assert ax.index == 3


def test_median_over_non_contiguous_slices():
    m = _mask()
    for z in (1, 5, 6, 9):
        m[3, 3, z] = True
    m[3:8, 2:4, 6] = True  # the box on the median slice is that slice's own bounding box
    (ax,) = box_prompts_from_mask(m, axes=(2,), padding=0)
    assert ax.index == 5  # sorted {1, 5, 6, 9}: lower middle
    assert ax.lo == (3, 3, 5) and ax.hi == (4, 4, 6)


def test_box_is_the_bounding_box_on_that_slice_only():
    m = _mask()
    m[2:12, 2:12, 0] = True  # a big blob on slice 0
    m[6:8, 7:9, 1:4] = True  # a small one on slices 1..3
    (ax,) = box_prompts_from_mask(m, axes=(2,), padding=0)
    assert ax.index == 1  # slices {0, 1, 2, 3}: lower middle
    assert ax.lo == (6, 7, 1) and ax.hi == (8, 9, 2)  # not the big blob's box


def test_padding_and_clipping_at_the_borders():
    shape = (20, 18, 16)
    m = _mask(shape)
    m[0:3, 15:18, 7:10] = True  # touches x = 0 and y = 17
    ax, sag = box_prompts_from_mask(m, padding=5)
    assert ax.index == 8 and sag.index == 1
    assert ax.lo == (0, 10, 8) and ax.hi == (8, 18, 9)
    assert sag.lo == (1, 10, 2) and sag.hi == (2, 18, 15)
    for p in (ax, sag):
        assert p.fits(shape)


def test_empty_mask_gives_no_prompt():
    assert box_prompts_from_mask(_mask()) == []
    with pytest.raises(ValueError):
        box_prompts_from_mask(np.zeros((4, 4), bool))
    with pytest.raises(ValueError):
        box_prompts_from_mask(_mask(), padding=-1)


def test_roi_spans_both_boxes_and_is_dilated_and_clipped():
    ax = BoxPrompt(2, 5, (2, 3, 5), (10, 8, 6))  # x 2:10, y 3:8 on z = 5
    sag = BoxPrompt(0, 6, (6, 1, 4), (7, 7, 12))  # y 1:7, z 4:12 on x = 6
    assert prompts_bbox([ax, sag]) == ((2, 1, 4), (10, 8, 12))
    assert roi_from_prompts([ax, sag], (20, 18, 16), 0) == (slice(2, 10), slice(1, 8), slice(4, 12))
    assert roi_from_prompts([ax, sag], (20, 18, 16), 3) == (slice(0, 13), slice(0, 11), slice(1, 15))
    assert roi_from_prompts([ax, sag], (11, 9, 13), 3) == (slice(0, 11), slice(0, 9), slice(1, 13))
    # one box alone: along its own axis it covers its slice
    assert roi_from_prompts([ax], (20, 18, 16), 1) == (slice(1, 11), slice(2, 9), slice(4, 7))
    with pytest.raises(ValueError):
        roi_from_prompts([], (20, 18, 16), 1)


def test_roi_from_mask_prompts_contains_a_convex_mask():
    m = _mask()
    zz, yy, xx = np.meshgrid(np.arange(16), np.arange(18), np.arange(20), indexing="ij")
    m = ((xx - 9) ** 2 / 16 + (yy - 8) ** 2 / 9 + (zz - 7) ** 2 / 12 <= 1).transpose(2, 1, 0)
    prompts = box_prompts_from_mask(m, padding=1)
    roi = roi_from_prompts(prompts, m.shape, 0)
    assert m[roi].sum() == m.sum()


def test_parse_box_round_trip_and_errors():
    p = parse_box("z=40, x=10:51, y=20:61")
    assert (p.axis, p.index, p.lo, p.hi) == (2, 40, (10, 20, 40), (51, 61, 41))
    assert parse_box(str(p)) == p
    assert parse_box("x=3,y=1:5,z=2:9") == BoxPrompt(0, 3, (3, 1, 2), (4, 5, 9))
    for bad in ("z=4,x=1:5", "z=4,x=1:5,y=2", "z=4,x=5:1,y=2:3", "z=4,x=1:5,x=2:3", "axial=4", "z=4;x=1-5;y=2:3"):
        with pytest.raises(PartialsegError):
            parse_box(bad)
    with pytest.raises(PartialsegError, match="outside"):
        parse_box("z=4,x=1:50,y=2:3", shape=(20, 20, 20))


def test_roi_holds_every_prompt_slice_for_a_mask_in_pieces():
    from partialseg.generalist.prompts import box_prompts_from_mask, roi_from_prompts

    m = np.zeros((20, 10, 20), bool)
    m[2:4, 2:4, 2:4] = True  # small piece low in z
    m[14:17, 5:7, 12:18] = True  # bigger piece high in z: the axial median slice lies in it
    axial, sagittal = box_prompts_from_mask(m, axes=(2, 0), padding=0)
    roi = roi_from_prompts([axial, sagittal], m.shape, 0)
    assert roi[0].start <= sagittal.index < roi[0].stop and roi[2].start <= axial.index < roi[2].stop
