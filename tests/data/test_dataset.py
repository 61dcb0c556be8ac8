import json

import numpy as np
import pytest

from partialseg.data.dataset import PartialDataset
from partialseg.errors import InputError
from partialseg.io import save_volume
from tests.conftest import write_block_dataset


def _edit_json(root, **changes):
    p = root / "dataset.json"
    d = json.loads(p.read_text())
    d.update(changes)
    p.write_text(json.dumps(d))


def test_load_full_and_partial(block_dataset, small_space):
    ds = PartialDataset.load(block_dataset)
    assert ds.label_space == small_space
    assert [c.case_id for c in ds.cases] == ["case_000", "case_001", "case_002"]
    assert all(c.annotated == small_space.all_indices for c in ds.cases)
    assert not ds.is_partial
    _edit_json(block_dataset, annotated_classes={"case_001": ["spleen", "liver"]})
    ds = PartialDataset.load(block_dataset)
    assert ds.case("case_001").annotated == frozenset({1, 2})
    assert ds.is_partial
    assert ds.annotation_counts() == {"liver": 3, "spleen": 3, "kidney_right": 2, "kidney_left": 2}
    ds.validate()


def test_unknown_annotated_name_and_empty_list(block_dataset):
    _edit_json(block_dataset, annotated_classes={"case_001": ["pancreas"]})
    with pytest.raises(InputError, match="pancreas") as e:
        PartialDataset.load(block_dataset)
    assert "dataset.json" in str(e.value)
    _edit_json(block_dataset, annotated_classes={"case_001": []})
    with pytest.raises(InputError, match="empty annotated"):
        PartialDataset.load(block_dataset)
    _edit_json(block_dataset, annotated_classes={"nope": ["liver"]})
    with pytest.raises(InputError, match="nope"):
        PartialDataset.load(block_dataset)


def test_missing_label_file(block_dataset):
    (block_dataset / "labelsTr" / "case_002.nii.gz").unlink()
    with pytest.raises(InputError, match="case_002"):
        PartialDataset.load(block_dataset)


def test_validate_catches_voxel_problems(tmp_path, small_space):
    root = write_block_dataset(tmp_path / "d", small_space, n_cases=2)
    bad = root / "labelsTr" / "case_001.nii.gz"
    save_volume(np.full((20, 18, 16), 9, np.uint8), np.diag([2.0, 2.5, 3.0, 1.0]), bad, overwrite=True)
    with pytest.raises(InputError, match="outside the label space") as e:
        PartialDataset.load(root).validate()
    assert str(bad) in str(e.value)
    save_volume(np.zeros((20, 18, 15), np.uint8), np.diag([2.0, 2.5, 3.0, 1.0]), bad, overwrite=True)
    with pytest.raises(InputError, match="shape"):
        PartialDataset.load(root).validate()
    save_volume(np.zeros((20, 18, 16), np.uint8), np.diag([2.0, 2.5, 3.5, 1.0]), bad, overwrite=True)
    with pytest.raises(InputError, match="affine"):
        PartialDataset.load(root).validate()


def test_not_a_dataset(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        PartialDataset.load(tmp_path / "nothing")
    (tmp_path / "d").mkdir()
    with pytest.raises(InputError, match="dataset.json"):
        PartialDataset.load(tmp_path / "d")
