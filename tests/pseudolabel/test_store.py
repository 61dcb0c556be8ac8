"""Pseudo-labels on disk: memory-mapped label maps, the entropy rule's memory read back, old folders."""

import json

import numpy as np
import pytest

from partialseg.errors import InputError
from partialseg.pseudolabel.loop import previous_pseudo
from partialseg.pseudolabel.store import has_pseudo, load_pseudo, save_pseudo


def test_round_trip_is_a_read_only_memory_map(tmp_path):
    label = np.zeros((4, 3, 2), np.int16)
    label[1, 1, 1], label[2, 0, 0] = 3, 5
    assert not has_pseudo(tmp_path, "c1")
    save_pseudo(tmp_path, "c1", label, frozenset({5, 3}), {3: 0.25})
    assert has_pseudo(tmp_path, "c1") and sorted(p.name for p in tmp_path.iterdir()) == ["c1.json", "c1.npy"]
    back, pseudo, ent = load_pseudo(tmp_path, "c1")
    assert isinstance(back, np.memmap) and not back.flags.writeable and back.dtype == np.int16
    np.testing.assert_array_equal(back, label)
    assert pseudo == {3, 5} and ent == {3: 0.25}


def test_previous_round_masks_come_from_its_file(tmp_path):
    label = np.zeros((4, 3, 2), np.int16)
    label[0] = 2
    label[3, 2] = 4
    save_pseudo(tmp_path, "c1", label, frozenset({2, 4}), {2: 0.1, 4: 0.3, 7: 0.9})  # 7: not a pseudo class
    prev = previous_pseudo(tmp_path, "c1")
    assert set(prev) == {2, 4} and prev[2][1] == 0.1 and prev[4][1] == 0.3
    np.testing.assert_array_equal(prev[2][0], label == 2)
    assert int(prev[4][0].sum()) == 2
    assert previous_pseudo(tmp_path, "other") == {} and previous_pseudo(tmp_path / "round_0", "c1") == {}


def test_folders_of_older_runs_still_read(tmp_path):
    label = np.arange(24, dtype=np.int16).reshape(4, 3, 2) % 3
    np.savez_compressed(tmp_path / "c1.npz", label=label, pseudo=np.array([2], np.int16), entropies=json.dumps({"2": 0.5}))
    assert has_pseudo(tmp_path, "c1")
    back, pseudo, ent = load_pseudo(tmp_path, "c1")
    np.testing.assert_array_equal(back, label)
    assert pseudo == {2} and ent == {2: 0.5}


def test_a_damaged_file_names_itself(tmp_path):
    save_pseudo(tmp_path, "c1", np.zeros((2, 2, 2), np.int16), frozenset())
    (tmp_path / "c1.npy").write_bytes(b"not an array")
    with pytest.raises(InputError, match="c1.json.*cannot read the pseudo-label"):
        load_pseudo(tmp_path, "c1")
