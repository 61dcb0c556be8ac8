import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from partialseg.cli import app
from partialseg.data.dataset import PartialDataset, dataset_json, write_dataset_json
from partialseg.data.merge import body_midline_x, merge_datasets, split_left_right
from partialseg.errors import InputError
from partialseg.io import load_volume, save_volume
from partialseg.labels import LabelSpace
from tests.conftest import write_block_dataset

SHAPE = (24, 10, 8)
RAS = np.diag([2.0, 2.0, 3.0, 1.0])
LPS = np.array([[-2.0, 0, 0, 100.0], [0, -2.0, 0, 50.0], [0, 0, 3.0, -20.0], [0, 0, 0, 1]])
TARGET = ["liver", "spleen", "kidney_right", "kidney_left"]

# Array regions of the KiTS-like case. The body spans x-index 0..15 (centroid 7.5), off the grid
# centre (11.5), so only a body midline separates the two kidneys.
KIDNEY_A = (slice(2, 5), slice(3, 7), slice(2, 6))  # low x index, with a tumour beside it
TUMOUR_A = (slice(2, 5), slice(7, 8), slice(2, 6))
KIDNEY_B = (slice(10, 13), slice(3, 7), slice(2, 6))  # high x index, with a tumour inside
TUMOUR_B = (slice(11, 12), slice(4, 6), slice(3, 5))
FRAGMENT = (14, 1, 1)  # a one-voxel piece of kidney on B's side
CYST = (slice(6, 8), slice(0, 2), slice(0, 2))


def _kits(root: Path, affine: np.ndarray, n_cases: int = 2) -> Path:
    img = np.full(SHAPE, -1000.0, np.float32)
    img[0:16] = 30.0
    lab = np.zeros(SHAPE, np.uint8)
    lab[KIDNEY_A] = 1
    lab[TUMOUR_A] = 2
    lab[KIDNEY_B] = 1
    lab[TUMOUR_B] = 2
    lab[FRAGMENT] = 1
    lab[CYST] = 3
    for i in range(n_cases):
        save_volume(img, affine, root / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        save_volume(lab, affine, root / "labelsTr" / f"case_{i:03d}.nii.gz")
    write_dataset_json(root, dataset_json(LabelSpace(("kidney", "tumor", "cyst")), n_cases, name="kits"))
    return root


def _mapping(tmp: Path, kits: str = "kits", spleen: str = "spl", **changes) -> Path:
    m = {
        "labels": TARGET,
        "sources": [
            {
                "path": kits,
                "prefix": "kits",
                "map": {
                    "kidney": {"split": "left_right", "into": ["kidney_right", "kidney_left"]},
                    "tumor": {"split": "left_right", "right": "kidney_right", "left": "kidney_left"},
                },
            },
            {"path": spleen, "prefix": "spleen", "map": {"spleen": "spleen", "liver": "liver"}},
        ],
    }
    m.update(changes)
    p = tmp / "mapping.yaml"
    p.write_text(yaml.safe_dump(m))
    return p


@pytest.fixture
def sources(tmp_path):
    _kits(tmp_path / "kits", RAS)
    _kits(tmp_path / "kits_lps", LPS)
    write_block_dataset(
        tmp_path / "spl", LabelSpace(("spleen", "liver")), n_cases=2, annotated={"case_001": ["spleen"]}
    )
    return tmp_path


def _hashes(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _expected_sides(low_index_side: int, high_index_side: int) -> np.ndarray:
    exp = np.zeros(SHAPE, np.int16)
    exp[KIDNEY_A] = exp[TUMOUR_A] = low_index_side
    exp[KIDNEY_B] = high_index_side
    exp[FRAGMENT] = high_index_side
    return exp


@pytest.mark.parametrize("kits, low_side", [("kits", "kidney_left"), ("kits_lps", "kidney_right")])
def test_merge_split_by_world_coordinates(sources, kits, low_side):
    # RAS: low x index = small world x = patient left. LPS: low index = large world x = patient right.
    before = _hashes(sources / kits) | _hashes(sources / "spl")
    mapping = _mapping(sources, kits=kits)
    with pytest.warns(UserWarning, match="cyst"):
        out = merge_datasets(mapping, sources / "merged")
    assert (_hashes(sources / kits) | _hashes(sources / "spl")) == before
    ds = PartialDataset.load(out)
    ds.validate()
    assert list(ds.label_space.names) == TARGET
    assert [c.case_id for c in ds.cases] == ["kits_case_000", "kits_case_001", "spleen_case_000", "spleen_case_001"]
    kid = ds.label_space.indices(["kidney_right", "kidney_left"])
    assert ds.case("kits_case_000").annotated == kid
    assert ds.case("spleen_case_000").annotated == ds.label_space.indices(["spleen", "liver"])
    assert ds.case("spleen_case_001").annotated == ds.label_space.indices(["spleen"])  # source was partial
    assert ds.case("kits_case_000").group == "kits" and ds.case("spleen_case_001").group == "spleen"

    high_side = "kidney_right" if low_side == "kidney_left" else "kidney_left"
    expected = _expected_sides(ds.label_space.index(low_side), ds.label_space.index(high_side))
    merged = load_volume(out / "labelsTr" / "kits_case_000.nii.gz")
    assert np.array_equal(merged.array, expected)  # tumour joined its kidney, cyst dropped to 0
    src_img = sources / kits / "imagesTr" / "case_000_0000.nii.gz"
    assert (out / "imagesTr" / "kits_case_000_0000.nii.gz").read_bytes() == src_img.read_bytes()
    assert np.allclose(merged.affine, load_volume(src_img).affine)

    spleen_src = load_volume(sources / "spl" / "labelsTr" / "case_000.nii.gz").array
    spleen_out = load_volume(out / "labelsTr" / "spleen_case_000.nii.gz").array
    assert np.array_equal(spleen_out == 2, spleen_src == 1) and np.array_equal(spleen_out == 1, spleen_src == 2)

    prov = json.loads((out / "dataset.json").read_text())["partialseg"]["merge"]
    assert prov["sources"][0]["cases"] == 2 and prov["mapping_file"] == str(mapping.resolve())


@pytest.mark.filterwarnings("ignore:.*not in the map")
def test_grid_center_midline_warns(sources):
    mapping = _mapping(sources, split={"midline": "grid_center"})
    with pytest.warns(UserWarning, match="one side"):
        out = merge_datasets(mapping, sources / "merged")
    lab = load_volume(out / "labelsTr" / "kits_case_000.nii.gz").array
    left = TARGET.index("kidney_left") + 1
    # both kidneys' centroids lie left of the grid centre (index 11.5); the fragment at 14 does not
    assert (lab[KIDNEY_A] == left).all() and (lab[KIDNEY_B] == left).all()
    assert lab[FRAGMENT] == TARGET.index("kidney_right") + 1


def test_split_helpers_directly():
    img = np.full(SHAPE, -1000.0)
    img[0:16] = 0.0
    assert body_midline_x(img, RAS) == pytest.approx(15.0)
    assert body_midline_x(img, LPS) == pytest.approx(85.0)
    mask = np.zeros(SHAPE, bool)
    mask[KIDNEY_A] = mask[KIDNEY_B] = True
    right, left, odd = split_left_right(mask, RAS, 15.0)
    assert right[KIDNEY_B].all() and left[KIDNEY_A].all() and not odd
    assert not (right & left).any() and np.array_equal(right | left, mask)


@pytest.mark.filterwarnings("ignore:.*not in the map")
@pytest.mark.parametrize(
    "change, message",
    [
        ({"labels": ["liver", "spleen"]}, "kidney_right"),  # target class not in the label space
        ({"labels": "nope15"}, "nope15"),
        ({"sources": [{"path": "kits", "map": {"kidnye": "liver"}}]}, "kidnye"),
        ({"sources": [{"path": "missing", "map": {"kidney": "liver"}}]}, "does not exist"),
        ({"sources": [{"path": "kits", "map": {"kidney": "liver"}}, {"path": "kits_lps", "map": {"kidney": "liver"}}]}, "case id"),
        ({"sources": [{"path": "kits", "map": {"kidney": {"split": "up_down", "into": ["liver", "spleen"]}}}]}, "up_down"),
        ({"sources": [{"path": "kits", "mapp": {}}]}, "mapp"),
    ],
)
def test_mapping_errors_name_the_file(sources, change, message):
    mapping = _mapping(sources, **change)
    with pytest.raises(InputError, match=message) as e:
        merge_datasets(mapping, sources / "merged")
    assert str(mapping) in str(e.value)
    assert not (sources / "merged").exists()


@pytest.mark.filterwarnings("ignore:.*not in the map")
def test_cli_merge(sources):
    mapping = _mapping(sources)
    r = CliRunner().invoke(app, ["merge", str(mapping), str(sources / "m")])
    assert r.exit_code == 0, r.output
    assert len(PartialDataset.load(sources / "m").cases) == 4
    bad = _mapping(sources, labels=["liver"])
    r = CliRunner().invoke(app, ["merge", str(bad), str(sources / "m2")])
    assert r.exit_code == 2 and "mapping.yaml" in r.output


def test_example_mapping_parses():
    from partialseg.data.merge import read_merge_mapping

    example = Path(__file__).resolve().parents[2] / "examples" / "merge_kits_msd.yaml"
    with pytest.raises(InputError, match="does not exist"):  # the example's data folders are not in the repo
        read_merge_mapping(example)
    raw = yaml.safe_load(example.read_text())
    assert raw["sources"][0]["map"]["kidney"]["split"] == "left_right"


@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore:.*not in the map")
def test_split_recovers_left_right_on_real_ct(shared_ct, tmp_path):
    """A KiTS-like single 'kidney' label made from a real CT splits back into its true sides, in RAS and LPS."""
    import nibabel as nib

    ct = load_volume(shared_ct / "ct.nii.gz")
    lab = load_volume(shared_ct / "labels.nii.gz").array  # AMOS ids: 2 kidney_right, 3 kidney_left
    kits_like = np.where(np.isin(lab, [2, 3]), 1, 0).astype(np.uint8)
    # the same patient stored LPS: array flipped along x and y, affine compensating, world unchanged
    to_lps = nib.orientations.ornt_transform(nib.io_orientation(ct.affine), nib.orientations.axcodes2ornt("LPS"))
    lps_affine = ct.affine @ nib.orientations.inv_ornt_aff(to_lps, ct.array.shape)
    for name, reorient, affine in (
        ("ras", lambda a: a, ct.affine),
        ("lps", lambda a: nib.orientations.apply_orientation(a, to_lps), lps_affine),
    ):
        root = tmp_path / name
        save_volume(reorient(ct.array), affine, root / "imagesTr" / "ct_0000.nii.gz")
        save_volume(reorient(kits_like), affine, root / "labelsTr" / "ct.nii.gz")
        write_dataset_json(root, dataset_json(LabelSpace(("kidney",)), 1))
        m = tmp_path / f"{name}.yaml"
        m.write_text(yaml.safe_dump({
            "labels": "amos15",
            "sources": [{"path": name, "map": {"kidney": {"split": "left_right", "into": ["kidney_right", "kidney_left"]}}}],
        }))
        out = load_volume(merge_datasets(m, tmp_path / f"out_{name}") / "labelsTr" / "ct.nii.gz").array
        assert np.array_equal(out, reorient(np.where(np.isin(lab, [2, 3]), lab, 0))), name
