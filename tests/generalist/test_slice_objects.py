"""The object on a prompt slice: hand-computed box scores on tiny 2D masks."""

import numpy as np
import pytest

from partialseg.generalist.slice_objects import SliceBox, best_object_in_box, find_object_on_slices

TIGHT = (slice(2, 6), slice(2, 6))  # a 4 x 4 tight box, area 16


def test_the_component_that_fills_the_tight_box_wins():
    cand = np.zeros((10, 10), bool)
    cand[2:6, 2:6] = True  # the object: exactly the tight box
    cand[8:10, 0:10] = True  # a neighbour of the same intensity outside it
    score, mask = best_object_in_box(cand, TIGHT, coverage_power=0.5)
    assert score == pytest.approx(1.0)  # IoU 1 x all inside x (16/16)^0.5
    assert mask.sum() == 16 and mask[2:6, 2:6].all()


def test_a_part_of_the_object_scores_its_iou_and_coverage():
    cand = np.zeros((10, 10), bool)
    cand[2:4, 2:6] = True  # half the object: bbox 2 x 4 inside the 4 x 4 tight box
    score, _ = best_object_in_box(cand, TIGHT, coverage_power=1.0)
    assert score == pytest.approx((8 / 16) * 1.0 * (8 / 16))


def test_a_leaking_component_is_penalised_for_what_lies_outside():
    cand = np.zeros((10, 10), bool)
    cand[2:6, 2:8] = True  # 24 voxels, 16 inside; bbox 4 x 6 -> IoU 16/24
    score, _ = best_object_in_box(cand, TIGHT, coverage_power=0.0)
    assert score == pytest.approx((16 / 24) * (16 / 24))


def test_pieces_inside_the_box_are_taken_together():
    cand = np.zeros((10, 10), bool)
    cand[2:6, 2:3] = True  # two columns of one organ crossing the slice in two pieces
    cand[2:6, 5:6] = True
    score, mask = best_object_in_box(cand, TIGHT, coverage_power=0.0)
    assert score == pytest.approx(1.0)  # their union's bbox is the tight box, all inside
    assert mask.sum() == 8


def test_empty_candidate():
    score, mask = best_object_in_box(np.zeros((5, 5), bool), (slice(1, 3), slice(1, 3)))
    assert score == 0.0 and not mask.any()


def test_one_band_finds_the_object_on_both_prompt_slices():
    img = np.zeros((12, 12, 12))
    img[3:7, 3:7, 3:7] = 100.0  # the object, on a 0-HU background
    boxes = [SliceBox(axis=0, k=5, box=(slice(1, 9), slice(1, 9)), tight=(slice(2, 6), slice(2, 6))),
             SliceBox(axis=2, k=4, box=(slice(1, 9), slice(1, 9)), tight=(slice(2, 6), slice(2, 6)))]
    masks, score = find_object_on_slices(img, boxes, noise=5.0)
    assert score == pytest.approx(1.0)  # coverage_power 0: IoU x inside = 1 on both
    for m in masks:
        assert m.shape == (8, 8) and m.sum() == 16 and m[2:6, 2:6].all()
