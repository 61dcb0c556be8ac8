import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from partialseg.cli import app
from partialseg.data.dataset import PartialDataset
from partialseg.data.simulate import (
    TCT_GROUP_CASES,
    TCT_GROUPS,
    assign_groups,
    cases_for_min_group,
    group_sizes,
    simulate_partial_labels,
)
from partialseg.errors import InputError, OutputExistsError, PartialsegError
from partialseg.io import load_volume
from partialseg.labels import LabelSpace
from tests.conftest import write_block_dataset

TCT5_PLUS = LabelSpace(("liver", "spleen", "kidney_right", "kidney_left", "pancreas", "stomach"))


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _values(path: Path) -> set[int]:
    return {int(v) for v in np.unique(load_volume(path).array)}


@pytest.fixture
def six_class(tmp_path):
    return write_block_dataset(tmp_path / "six", TCT5_PLUS, n_cases=10, shape=(14, 12, 10))


def test_random_mode(six_class, tmp_path):
    before = _hashes(six_class)
    out = simulate_partial_labels(six_class, tmp_path / "p", keep=0.5, seed=3)
    assert _hashes(six_class) == before  # input untouched
    ds = PartialDataset.load(out)
    ds.validate()
    assert ds.is_partial and ds.label_space == TCT5_PLUS
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["reference_labels"] == "labelsRef"
    assert meta["partialseg"]["simulate"]["mode"] == "random"
    assert meta["partialseg"]["simulate"]["seed"] == 3
    assert set(meta["annotated_classes"]) == {c.case_id for c in ds.cases}
    for case in ds.cases:
        assert len(case.annotated) == 3  # round(0.5 * 6)
        src_img = six_class / "imagesTr" / case.image.name
        assert case.image.read_bytes() == src_img.read_bytes()
        src_lab = six_class / "labelsTr" / case.label.name
        assert case.reference.read_bytes() == src_lab.read_bytes()
        full = load_volume(src_lab).array
        part = load_volume(case.label).array
        for c in range(1, 7):
            if c in case.annotated:
                assert np.array_equal(part == c, full == c)
            else:
                assert not (part == c).any()
        assert np.all((part == 0) | (part == full))


def test_random_mode_seed_and_minimum(six_class, tmp_path):
    a = PartialDataset.load(simulate_partial_labels(six_class, tmp_path / "a", keep=0.4, seed=7))
    b = PartialDataset.load(simulate_partial_labels(six_class, tmp_path / "b", keep=0.4, seed=7))
    c = PartialDataset.load(simulate_partial_labels(six_class, tmp_path / "c", keep=0.4, seed=8))
    sets = lambda d: [x.annotated for x in d.cases]  # noqa: E731
    assert sets(a) == sets(b)
    assert sets(a) != sets(c)
    assert all(len(s) == 2 for s in sets(a))  # round(0.4 * 6) = 2
    # per-case draws do not depend on which other cases exist
    for p in (six_class / "imagesTr").glob("case_00[5-9]*"):
        p.unlink()
    for p in (six_class / "labelsTr").glob("case_00[5-9]*"):
        p.unlink()
    d = PartialDataset.load(simulate_partial_labels(six_class, tmp_path / "d", keep=0.4, seed=7))
    assert sets(d) == sets(a)[:5]
    tiny = PartialDataset.load(simulate_partial_labels(six_class, tmp_path / "e", keep=0.01, seed=0))
    assert all(len(s) == 1 for s in sets(tiny))  # at least one organ is kept


def test_already_partial_case_only_loses_its_own_classes(tmp_path, small_space):
    src = write_block_dataset(tmp_path / "s", small_space, n_cases=2, annotated={"case_001": ["liver", "spleen"]})
    out = PartialDataset.load(simulate_partial_labels(src, tmp_path / "o", keep=1.0, seed=0))
    assert out.case("case_001").annotated == frozenset({1, 2})
    assert out.case("case_000").annotated == small_space.all_indices


@pytest.mark.parametrize("keep", [0.0, -0.1, 1.5, float("nan")])
def test_bad_keep(block_dataset, tmp_path, keep):
    with pytest.raises(PartialsegError, match="keep"):
        simulate_partial_labels(block_dataset, tmp_path / "o", keep=keep, seed=0)
    assert not (tmp_path / "o").exists()


def test_refuses_existing_output_and_bad_mode(block_dataset, tmp_path):
    (tmp_path / "o").mkdir()
    with pytest.raises(OutputExistsError):
        simulate_partial_labels(block_dataset, tmp_path / "o", keep=0.5, seed=0)
    with pytest.raises(PartialsegError, match="mode"):
        simulate_partial_labels(block_dataset, tmp_path / "x", keep=0.5, seed=0, mode="nope")
    with pytest.raises(PartialsegError, match="inside"):
        simulate_partial_labels(block_dataset, block_dataset / "sub", keep=0.5, seed=0)


def test_group_sizes_follow_the_papers_imbalance():
    w = [TCT_GROUP_CASES[g] for g in TCT_GROUPS]  # 168, 104, 224, 32, 16 of 544
    # 10 cases: quotas 3.09, 1.91, 4.12, 0.59, 0.29 -> floors 3, 1, 4, 0, 0, remainders to liver, spleen
    assert group_sizes(10, w) == [3, 2, 4, 1, 0]
    assert sum(group_sizes(37, w)) == 37
    # CHAOS (16 of 544) needs 102 cases for 3: quotas 31.5, 19.5, 42, 6, 3; the tie of .5 goes to KiTS (first)
    assert cases_for_min_group(w, 3) == 102 and group_sizes(102, w) == [32, 19, 42, 6, 3]
    assert cases_for_min_group(w[:4], 3) == 50  # the four CT sources alone
    order = assign_groups([f"c{i}" for i in range(102)], list(TCT_GROUPS), seed=0, weights=w)
    assert [sum(g == name for g in order.values()) for name in TCT_GROUPS] == [32, 19, 42, 6, 3]


def test_groups_mode_equal_balance_is_round_robin(six_class, tmp_path):
    ds = PartialDataset.load(simulate_partial_labels(six_class, tmp_path / "g", keep=1, seed=1, mode="groups",
                                                     balance="equal"))
    assert {g: sum(1 for c in ds.cases if c.group == g) for g in TCT_GROUPS} == dict.fromkeys(TCT_GROUPS, 2)
    with pytest.raises(PartialsegError, match="balance"):
        simulate_partial_labels(six_class, tmp_path / "h", keep=1, seed=1, mode="groups", balance="nope")


def test_groups_file_sizes(block_dataset, tmp_path):
    gf = tmp_path / "groups.yaml"
    gf.write_text("a: {classes: [liver], cases: 2}\nb: {classes: [spleen], cases: 1}\n")
    ds = PartialDataset.load(simulate_partial_labels(block_dataset, tmp_path / "g", keep=1, seed=0, mode="groups",
                                                     groups_file=gf))
    assert sorted(c.group for c in ds.cases) == ["a", "a", "b"]
    meta = json.loads((tmp_path / "g" / "dataset.json").read_text())["partialseg"]["simulate"]
    assert meta["group_cases"] == {"a": 2.0, "b": 1.0} and meta["balance"] == "proportional"
    gf.write_text("a: {classes: [liver], cases: 2}\nb: [spleen]\n")
    with pytest.raises(InputError, match="every group"):
        simulate_partial_labels(block_dataset, tmp_path / "h", keep=1, seed=0, mode="groups", groups_file=gf)
    gf.write_text("a: {classes: [liver], cases: -1}\n")
    with pytest.raises(InputError, match="positive"):
        simulate_partial_labels(block_dataset, tmp_path / "i", keep=1, seed=0, mode="groups", groups_file=gf)


def test_groups_mode_default_tct(six_class, tmp_path):
    before = _hashes(six_class)
    with pytest.warns(UserWarning, match="chaos"):  # 10 cases: CHAOS's 16/544 share rounds to none
        out = simulate_partial_labels(six_class, tmp_path / "g", keep=0.1, seed=1, mode="groups")
    assert _hashes(six_class) == before
    ds = PartialDataset.load(out)
    ds.validate()
    # stomach is in no group: dropped, and the values renumbered in the source order
    assert ds.label_space.names == ("liver", "spleen", "kidney_right", "kidney_left", "pancreas")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["partialseg"]["simulate"]["groups"] == TCT_GROUPS
    assert meta["partialseg"]["simulate"]["keep"] is None
    sizes = {g: sum(1 for c in ds.cases if c.group == g) for g in TCT_GROUPS}
    assert sizes == {"kits": 3, "msd_liver": 2, "msd_pancreas": 4, "msd_spleen": 1, "chaos": 0}
    stomach = TCT5_PLUS.index("stomach")
    for case in ds.cases:
        assert case.annotated == ds.label_space.indices(TCT_GROUPS[case.group])
        assert _values(case.label) <= {0} | set(case.annotated)
        ref = load_volume(case.reference).array
        full = load_volume(six_class / "labelsTr" / case.label.name).array
        assert not (ref == 6).any()
        for name in ds.label_space.names:  # renumbered consistently in labelsRef
            assert np.array_equal(ref == ds.label_space.index(name), full == TCT5_PLUS.index(name))
        assert np.array_equal(ref == 0, (full == 0) | (full == stomach))


def test_groups_file_and_unknown_class(block_dataset, tmp_path):
    gf = tmp_path / "groups.yaml"
    gf.write_text("a: [liver]\nb: [kidney_left, spleen]\n")
    ds = PartialDataset.load(simulate_partial_labels(block_dataset, tmp_path / "g", keep=0.5, seed=0, mode="groups", groups_file=gf))
    assert ds.label_space.names == ("liver", "spleen", "kidney_left")
    assert sorted(c.group for c in ds.cases) in (["a", "a", "b"], ["a", "b", "b"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"a": ["liver", "pancreas"]}))
    with pytest.raises(InputError, match="pancreas") as e:
        simulate_partial_labels(block_dataset, tmp_path / "h", keep=0.5, seed=0, mode="groups", groups_file=bad)
    assert str(bad) in str(e.value)
    assert not (tmp_path / "h").exists()
    # the default TCT groups need pancreas, which the 4-class space lacks
    with pytest.raises(InputError, match="pancreas"):
        simulate_partial_labels(block_dataset, tmp_path / "i", keep=0.5, seed=0, mode="groups")


def test_cli_simulate(block_dataset, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["simulate", str(block_dataset), str(tmp_path / "o"), "--keep", "0.5", "--seed", "2"])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output
    assert all(len(c.annotated) == 2 for c in PartialDataset.load(tmp_path / "o").cases)
    r = runner.invoke(app, ["simulate", str(block_dataset), str(tmp_path / "o"), "--keep", "0.5"])
    assert r.exit_code == 2 and "already exists" in r.output


def test_simulating_a_simulated_dataset_keeps_its_reference(six_class, tmp_path):
    first = PartialDataset.load(simulate_partial_labels(six_class, tmp_path / "a", keep=0.67, seed=0))
    second = PartialDataset.load(simulate_partial_labels(first.root, tmp_path / "b", keep=0.5, seed=0))
    second.validate()
    for c1, c2 in zip(first.cases, second.cases):
        assert c2.annotated < c1.annotated and len(c2.annotated) == 2  # round(0.5 * 4)
        assert c2.reference.read_bytes() == c1.reference.read_bytes()
        lab = load_volume(c2.label).array
        assert _values(c2.label) <= {0} | set(c2.annotated)
        assert np.all((lab == 0) | (lab == load_volume(c1.label).array))
