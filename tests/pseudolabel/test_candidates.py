"""One pass per case: candidates from both sources give exactly the pseudo-labels a second pass would."""

import numpy as np
import pytest

from partialseg.errors import InputError
from partialseg.generalist.base import build_generalist
from partialseg.methods.ipnp import IPnPOptions
from partialseg.pseudolabel.candidates import (
    SOURCES,
    Crop,
    case_candidates,
    gate_case,
    load_candidates,
    load_evidence,
    pseudo_label_case,
    save_candidates,
    select_pseudo_labels,
)
from partialseg.pseudolabel.refine import assemble
from tests.methods.test_ipnp import _scene


def _three_organ_scene():
    """_scene's organs 1 (annotated) and 2, plus organ 3 overlapping organ 2's specialist region."""
    hu, gt, probs2 = _scene()
    probs = np.concatenate([probs2, np.full((1, *gt.shape), 0.02, np.float32)])
    box = (slice(26, 34), slice(10, 20), slice(8, 20))
    probs[:, box[0], box[1], box[2]] = np.array([0.1, 0.02, 0.4, 0.48], np.float32)[:, None, None, None]
    probs /= probs.sum(0, keepdims=True)
    return hu, gt, probs


def test_crop_round_trip_and_empty_mask():
    m = np.zeros((5, 6, 7), bool)
    m[1:3, 2, 4:7] = True
    c = Crop.of_mask(m)
    assert c.start == (1, 2, 4) and c.data.shape == (2, 1, 3) and c.box() == ((1, 2, 4), (3, 3, 7))
    np.testing.assert_array_equal(c.full(), m)
    e = Crop.of_mask(np.zeros((5, 6, 7), bool))
    assert e.data.size == 0 and not e.full().any() and e.full().shape == (5, 6, 7)


@pytest.mark.parametrize("source", SOURCES)
def test_one_pass_equals_a_pass_per_source(source):
    hu, gt, probs = _three_organ_scene()
    label = np.where(gt == 1, 1, 0).astype(np.int16)
    opts = IPnPOptions(padding=3, dilation=4, tau=0.3)
    gen = build_generalist("random_walker")
    annotated = frozenset({1})
    cands = case_candidates(probs, label, annotated, hu, (2.0, 2.0, 3.0), gen, opts,
                            wanted={2: SOURCES, 3: SOURCES}, gate=True)
    # the gate's evidence is gate_case's
    assert cands.evidence == gate_case(probs, label, annotated, hu, (2.0, 2.0, 3.0), gen, opts)
    chosen = {2: source, 3: source}
    masks, dec, ent = select_pseudo_labels(cands, chosen, round_index=1, opts=opts, classes=[2, 3])
    ref_masks, ref_dec, ref_ent = pseudo_label_case(probs, label, annotated, hu, (2.0, 2.0, 3.0), gen, opts,
                                                    round_index=1, sources=chosen)
    assert set(masks) == set(ref_masks) == {2, 3}
    for k in masks:
        np.testing.assert_array_equal(masks[k], ref_masks[k])
    assert ent == ref_ent and dec == ref_dec
    # the generalist's two masks overlap (the specialist's are disjoint argmax regions): assembling from the
    # crops of p_k gives the full softmax's answer
    assert (masks[2] & masks[3]).any() == (source == "generalist")
    a = assemble(label, masks, {k: cands.probability_of(k) for k in masks})
    np.testing.assert_array_equal(a, assemble(label, masks, probs))


def test_a_kept_previous_pseudo_label_outside_the_candidates_assembles_as_with_the_softmax():
    hu, gt, probs = _three_organ_scene()
    label = np.where(gt == 1, 1, 0).astype(np.int16)
    opts = IPnPOptions(padding=3, dilation=4, tau=0.3)
    gen = build_generalist("random_walker")
    prev3 = np.zeros(gt.shape, bool)
    prev3[20:36, 4:28, 2:26] = True  # larger than this round's candidate of organ 3, overlapping organ 2's
    previous = {3: (prev3, 0.0)}  # entropy 0: this round's candidate cannot beat it, the rule keeps it
    cands = case_candidates(probs, label, frozenset({1}), hu, (2.0, 2.0, 3.0), gen, opts,
                            wanted={2: ("generalist",), 3: ("generalist",)}, previous=previous)
    masks, dec, _ = select_pseudo_labels(cands, {2: "generalist", 3: "generalist"}, round_index=2, opts=opts,
                                         previous=previous, classes=[2, 3])
    assert dec[3].status == "rejected_entropy" and masks[3] is prev3
    a = assemble(label, masks, {k: cands.probability_of(k) for k in masks})
    np.testing.assert_array_equal(a, assemble(label, masks, probs))


def test_saved_candidates_read_back_equal(tmp_path):
    hu, gt, probs = _three_organ_scene()
    label = np.where(gt == 1, 1, 0).astype(np.int16)
    opts = IPnPOptions(padding=3, dilation=4, tau=0.3)
    cands = case_candidates(probs, label, frozenset({1}), hu, (2.0, 2.0, 3.0), build_generalist("random_walker"), opts,
                            wanted={2: SOURCES, 3: SOURCES}, gate=True, specialist_masks=True)
    save_candidates(tmp_path, "c1", cands)
    back = load_candidates(tmp_path, "c1")
    assert back.shape == cands.shape and back.no_prediction == cands.no_prediction
    assert back.evidence == cands.evidence == load_evidence(tmp_path, "c1")
    assert back.entropies == cands.entropies
    for got, want in ((back.masks, cands.masks), (back.specialist, cands.specialist), (back.probability, cands.probability)):
        assert set(got) == set(want)
        for key in want:
            np.testing.assert_array_equal(got[key].full(), want[key].full())
    assert load_candidates(tmp_path, "absent") is None and load_evidence(tmp_path, "absent") is None
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="bad.npz"):
        load_candidates(tmp_path, "bad")
