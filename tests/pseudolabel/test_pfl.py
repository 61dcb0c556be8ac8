"""PFL: teacher groups, a teacher's prediction of its organs, the ground-truth-first merge (hand-built
arrays), and a CLI run through teachers, pseudo-full labels, student, predict and export."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from partialseg.cli import app
from partialseg.data.dataset import PartialDataset
from partialseg.errors import PartialsegError
from partialseg.methods.pfl import PFLOptions
from partialseg.pseudolabel.pfl import merge_pseudo_full, organ_teachers, teacher_candidates, teacher_groups
from tests.conftest import write_block_dataset
from tests.methods.test_tct import TINY


def test_teacher_groups_by_source_and_by_organ():
    ann = {"a": frozenset({0, 1}), "b": frozenset({0, 1}), "c": frozenset({0, 2, 3}), "d": frozenset({0})}
    src = teacher_groups(ann, "source", 3)
    assert [(t.organs, t.cases) for t in src] == [((1,), ("a", "b")), ((2, 3), ("c",))]
    org = teacher_groups(ann, "organ", 3)
    assert [(t.organs, t.cases) for t in org] == [((1,), ("a", "b")), ((2,), ("c",)), ((3,), ("c",))]
    assert [t.organs for t in teacher_groups(ann, "auto", 3)] == [(1,), (2, 3)]  # 2 sets <= 3 classes: sources
    many = {str(i): frozenset({0, *s}) for i, s in enumerate([{1}, {2}, {1, 2}, {2, 3}, {1, 3}])}
    assert [t.organs for t in teacher_groups(many, "auto", 3)] == [(1,), (2,), (3,)]  # 5 sets > 3: per organ
    with pytest.raises(PartialsegError, match="grouping"):
        teacher_groups(ann, "dataset", 3)


def test_the_teacher_with_most_cases_labels_a_shared_organ():
    ann = {"a": frozenset({1}), "b": frozenset({1}), "c": frozenset({1, 2})}
    teachers = teacher_groups(ann, "source", 2)
    chosen = organ_teachers(teachers)
    assert chosen[1].cases == ("a", "b") and chosen[2].cases == ("c",)


def test_a_teacher_predicts_its_organs_with_every_other_channel_as_background():
    # 4 channels (background + 3 organs) at 3 voxels; the teacher learnt organ 1 only
    probs = np.array([[0.5, 0.1, 0.2], [0.4, 0.3, 0.7], [0.1, 0.1, 0.05], [0.0, 0.5, 0.05]])
    cand = teacher_candidates(probs, (1,))
    mask, p = cand[1]
    # merged background = 1 - p_1 = 0.6, 0.7, 0.3: organ 1 only at the last voxel (at voxel 1 the plain
    # argmax would be organ 3, a channel this teacher never learnt)
    np.testing.assert_array_equal(mask, [False, False, True])
    np.testing.assert_allclose(p, [0.4, 0.3, 0.7])
    both = teacher_candidates(probs, (1, 3))
    np.testing.assert_array_equal(both[3][0], [False, True, False])  # 0.5 > background 0.1 + 0.1 and > p_1


def test_merge_keeps_the_ground_truth_and_resolves_conflicts_by_probability():
    label = np.array([1, 0, 0, 0, 0])  # organ 1 annotated at voxel 0
    m2 = np.array([True, True, True, False, False])
    p2 = np.array([0.9, 0.6, 0.4, 0.1, 0.0])
    m3 = np.array([False, False, True, True, False])
    p3 = np.array([0.0, 0.1, 0.5, 0.8, 0.0])
    m1 = np.ones(5, bool)  # a candidate for an annotated organ: ignored
    out, pseudo = merge_pseudo_full(label, frozenset({0, 1}), {1: (m1, np.ones(5)), 2: (m2, p2), 3: (m3, p3)})
    np.testing.assert_array_equal(out, [1, 2, 3, 3, 0])  # voxel 0: ground truth; voxel 2: p3 0.5 > p2 0.4
    assert pseudo == {2, 3}
    same, none = merge_pseudo_full(label, frozenset({0, 1, 2, 3}), {2: (m2, p2)})
    np.testing.assert_array_equal(same, label) and not none


def test_options():
    assert PFLOptions().vls is False and PFLOptions().grouping == "auto"
    with pytest.raises(PartialsegError, match="grouping"):
        PFLOptions(grouping="x")


def test_cli_run_resumes_predicts_and_exports_pseudo_full_labels(tmp_path, small_space):
    ann = {"case_000": ["liver"], "case_001": ["liver"], "case_002": ["spleen", "kidney_left"],
           "case_003": ["spleen", "kidney_left"]}
    ds = write_block_dataset(tmp_path / "blocks", small_space, n_cases=5, annotated=ann)
    run = tmp_path / "pfl"
    args = ["train", str(ds), "--out", str(run), "--method", "pfl"]
    for s in TINY + ["method.options.teacher_steps=1"]:
        args += ["--set", s]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    teachers = json.loads((run / "teachers.json").read_text())
    split = json.loads((run / "student" / "split.json").read_text())
    sets = {frozenset(t["organ_names"]) for t in teachers}
    # the fully annotated case (if it trains) is its own source: every distinct annotated set has a teacher
    assert {frozenset({"liver"}), frozenset({"spleen", "kidney_left"})} <= sets
    for t in teachers:
        assert (run / "teachers" / t["name"] / "model.pt").exists()  # an ordinary run folder each
        assert set(t["cases"]) <= set(split["train"])
    assert set(p.stem for p in (run / "pseudo" / "round_1").glob("*.json") if p.stem != "summary") == set(split["train"])
    mtime = (run / "model.pt").stat().st_mtime_ns
    r = CliRunner().invoke(app, ["train", str(ds), "--out", str(run), "--resume"])
    assert r.exit_code == 0, r.output
    assert (run / "model.pt").stat().st_mtime_ns == mtime  # every stage was finished: nothing re-trained
    r = CliRunner().invoke(app, ["predict", str(run), str(ds / "imagesTr"), str(tmp_path / "pred")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["pseudolabel", str(run), str(ds), str(tmp_path / "full")])
    assert r.exit_code == 0, r.output
    exported = PartialDataset.load(tmp_path / "full")
    orig = PartialDataset.load(ds)
    for c in orig.cases:
        a = c.load_label(orig.label_space).array
        b = exported.case(c.case_id).load_label(exported.label_space).array
        keep = np.isin(a, sorted(c.annotated)) & (a > 0)
        np.testing.assert_array_equal(a[keep], b[keep])  # the ground truth has priority
