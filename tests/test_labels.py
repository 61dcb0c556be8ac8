import numpy as np
import pytest

from partialseg.errors import InputError
from partialseg.labels import LabelSpace


def test_amos15_numbering():
    s = LabelSpace.named("amos15")
    assert s.num_classes == 15 and s.num_channels == 16
    assert s.index("spleen") == 1 and s.index("liver") == 6 and s.index("prostate_uterus") == 15
    assert s.name(0) == "background" and s.name(8) == "aorta"


def test_dataset_json_round_trip():
    s = LabelSpace(("liver", "spleen"))
    d = s.to_dataset_json()
    assert d == {"background": 0, "liver": 1, "spleen": 2}
    assert LabelSpace.from_dataset_json(d) == s


@pytest.mark.parametrize(
    "labels, msg",
    [
        ({"liver": 1}, "background"),
        ({"background": 0, "liver": 2}, "contiguous"),
        ({"background": 0, "liver": 1, "spleen": 1}, "share"),
        ({"background": 0, "liver": [1, 2]}, "one integer"),
    ],
)
def test_dataset_json_errors_name_the_source(labels, msg):
    with pytest.raises(InputError, match=msg) as e:
        LabelSpace.from_dataset_json(labels, "ds/dataset.json")
    assert "ds/dataset.json" in str(e.value)


def test_indices_reject_unknown_names():
    s = LabelSpace(("liver", "spleen"))
    assert s.indices(["spleen"]) == frozenset({2})
    with pytest.raises(InputError, match="'kidney'"):
        s.indices(["kidney"], "x.json")


def test_duplicate_and_background_names_rejected():
    with pytest.raises(ValueError):
        LabelSpace(("a", "a"))
    with pytest.raises(ValueError):
        LabelSpace(("background", "a"))


def test_check_label_map():
    s = LabelSpace(("a", "b"))
    s.check_label_map(np.array([0, 1, 2]))
    with pytest.raises(InputError, match=r"\[3\]"):
        s.check_label_map(np.array([0, 3]), "lab.nii.gz")
    with pytest.raises(InputError, match="non-integer"):
        s.check_label_map(np.array([0.5]), "lab.nii.gz")
    with pytest.raises(InputError, match="NaN"):
        s.check_label_map(np.array([np.nan]), "lab.nii.gz")


def test_left_right_swap_table():
    s = LabelSpace.named("amos15")
    lut = s.left_right_swap()
    assert lut[s.index("kidney_right")] == s.index("kidney_left")
    assert lut[s.index("adrenal_gland_left")] == s.index("adrenal_gland_right")
    assert lut[s.index("liver")] == s.index("liver") and lut[0] == 0
    assert sorted(lut) == list(range(16))
