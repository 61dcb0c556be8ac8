"""Converters on small fake folders in each collection's own layout, and a converted + merged
KiTS + MSD collection trained and evaluated end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from partialseg.cli import app
from partialseg.data.convert import convert
from partialseg.data.dataset import PartialDataset
from partialseg.errors import InputError, PartialsegError
from partialseg.io import load_volume, save_volume
from tests.methods.test_tct import TINY

SHAPE = (24, 20, 16)
AFFINE = np.diag([2.0, 2.5, 3.0, 1.0])


def _body():
    img = np.full(SHAPE, -1000.0, np.float32)
    img[2:22, 2:18, :] = 40.0  # the body, centred in x
    return img


def write_msd(root: Path, organ: str = "liver", n: int = 2, modality: str = "CT", bad_value: int | None = None) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(n):
        lab = np.zeros(SHAPE, np.uint8)
        lab[6:12, 6:12, 4:10] = 1
        lab[8:10, 8:10, 6:8] = 2  # tumour inside the organ
        if bad_value is not None and i == 1:
            lab[0, 0, 0] = bad_value
        save_volume(_body(), AFFINE, root / "imagesTr" / f"{organ}_{i}.nii.gz")
        save_volume(lab, AFFINE, root / "labelsTr" / f"{organ}_{i}.nii.gz")
        training.append({"image": f"./imagesTr/{organ}_{i}.nii.gz", "label": f"./labelsTr/{organ}_{i}.nii.gz"})
    (root / "imagesTr" / f"._{organ}_0.nii.gz").write_bytes(b"mac junk")
    meta = {"name": organ, "modality": {"0": modality}, "labels": {"0": "background", "1": organ, "2": "cancer"},
            "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def write_kits(root: Path, n: int = 2) -> Path:
    for i in range(n):
        case = root / f"case_{i:05d}"
        case.mkdir(parents=True)
        lab = np.zeros(SHAPE, np.uint8)
        lab[16:20, 6:10, 4:8] = 1  # high x index = larger world x = the patient's right (RAS+)
        lab[4:8, 6:10, 4:8] = 1  # patient's left
        lab[17:19, 7:9, 5:7] = 2  # tumour in the right kidney
        save_volume(_body(), AFFINE, case / "imaging.nii.gz")
        save_volume(lab, AFFINE, case / "segmentation.nii.gz")
    test_case = root / f"case_{n:05d}"  # a challenge test case: imaging only
    test_case.mkdir()
    save_volume(_body(), AFFINE, test_case / "imaging.nii.gz")
    return root


def test_msd_tumour_merged_or_kept_and_annotations_filled(tmp_path):
    src = write_msd(tmp_path / "Task03_Liver")
    out = convert("msd", src, tmp_path / "liver")
    ds = PartialDataset.load(out)
    ds.validate()
    assert ds.label_space.names == ("liver",) and [c.case_id for c in ds.cases] == ["liver_0", "liver_1"]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["annotated_classes"]["liver_0"] == ["liver"] and meta["case_groups"]["liver_1"] == "msd_liver"
    lab = load_volume(out / "labelsTr" / "liver_0.nii.gz")
    assert set(np.unique(lab.array)) == {0, 1} and (lab.array == 1).sum() == 216  # the tumour joined its organ
    np.testing.assert_allclose(lab.affine, AFFINE)
    kept = PartialDataset.load(convert("msd", src, tmp_path / "liver_t", keep_tumours=True))
    assert kept.label_space.names == ("liver", "liver_tumour")
    assert (load_volume(tmp_path / "liver_t" / "labelsTr" / "liver_0.nii.gz").array == 2).sum() == 8


def test_msd_bad_input_names_the_file(tmp_path):
    with pytest.raises(InputError, match=r"liver_1\.nii\.gz.*\[5\].*not defined"):
        convert("msd", write_msd(tmp_path / "bad", bad_value=5), tmp_path / "o1")
    assert not (tmp_path / "o1").exists()  # nothing half-written
    with pytest.raises(InputError, match="only single-channel CT"):
        convert("msd", write_msd(tmp_path / "mr", modality="MRI"), tmp_path / "o2")
    src = write_msd(tmp_path / "missing")
    (src / "labelsTr" / "liver_1.nii.gz").unlink()
    with pytest.raises(InputError, match=r"liver_1\.nii\.gz.*does not exist"):
        convert("msd", src, tmp_path / "o3")
    with pytest.raises(InputError, match="dataset.json"):
        convert("msd", tmp_path / "nothing_here", tmp_path / "o4")
    with pytest.raises(PartialsegError, match="unknown format"):
        convert("no_such_format", src, tmp_path / "o5")


def test_kits_kidneys_split_by_world_side_and_test_cases_skipped(tmp_path):
    out = convert("kits", write_kits(tmp_path / "kits"), tmp_path / "kits_ps")
    ds = PartialDataset.load(out)
    assert ds.label_space.names == ("kidney_right", "kidney_left") and len(ds.cases) == 2
    lab = load_volume(out / "labelsTr" / "case_00000.nii.gz").array
    assert np.all(lab[16:20, 6:10, 4:8] == 1) and np.all(lab[4:8, 6:10, 4:8] == 2)  # tumour merged into the right
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["partialseg"]["convert"]["skipped_without_segmentation"] == ["case_00002"]
    assert set(meta["case_groups"].values()) == {"kits"}
    # flipping the x axis of the affine swaps the patient's sides: the split follows the world, not the indices
    flipped = tmp_path / "flip"
    write_kits(flipped, n=1)
    for f in ("imaging.nii.gz", "segmentation.nii.gz"):
        v = load_volume(flipped / "case_00000" / f)
        a = v.affine.copy()
        a[0, 0], a[0, 3] = -a[0, 0], 60.0
        (flipped / "case_00000" / f).unlink()
        save_volume(v.array.astype(np.uint8) if f.startswith("seg") else v.array, a, flipped / "case_00000" / f)
    lab = load_volume(convert("kits", flipped, tmp_path / "flip_ps") / "labelsTr" / "case_00000.nii.gz").array
    assert np.all(lab[16:20, 6:10, 4:8] == 2) and np.all(lab[4:8, 6:10, 4:8] == 1)


def test_converted_kits_and_msd_merge_train_and_evaluate(tmp_path):
    runner = CliRunner()
    for fmt, src in (("kits", write_kits(tmp_path / "raw_kits", n=3)), ("msd", write_msd(tmp_path / "raw_spleen", "spleen", n=3))):
        r = runner.invoke(app, ["convert", fmt, str(src), str(tmp_path / fmt)])
        assert r.exit_code == 0, r.output
    mapping = tmp_path / "collection.yaml"
    mapping.write_text(
        "labels: [spleen, kidney_right, kidney_left]\n"
        "sources:\n"
        "  - {path: kits, prefix: kits, map: {kidney_right: kidney_right, kidney_left: kidney_left}}\n"
        "  - {path: msd, prefix: spleen, map: {spleen: spleen}}\n"
    )
    r = runner.invoke(app, ["merge", str(mapping), str(tmp_path / "merged")])
    assert r.exit_code == 0, r.output
    merged = PartialDataset.load(tmp_path / "merged")
    annotated = {c.case_id: merged.label_space.names_of(c.annotated) for c in merged.cases}
    assert annotated["kits_case_00000"] == ["kidney_right", "kidney_left"] and annotated["spleen_spleen_0"] == ["spleen"]
    args = ["train", str(tmp_path / "merged"), "--out", str(tmp_path / "run"), "--method", "marginal"]
    for s in TINY:
        args += ["--set", s]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["predict", str(tmp_path / "run"), str(tmp_path / "merged" / "imagesTr"), str(tmp_path / "pred")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path / "pred"), str(tmp_path / "merged" / "labelsTr"), "--dataset",
                            str(tmp_path / "merged"), "--out", str(tmp_path / "res.json")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "res.json").read_text())
    assert res["per_organ"]["spleen"]["n_cases"] == 3 and res["per_organ"]["kidney_left"]["n_cases"] == 3


def test_btcv_thirteen_labels_to_the_registry(tmp_path):
    src = tmp_path / "Training"
    for i in (1, 2):
        lab = np.zeros(SHAPE, np.uint8)
        for v in range(1, 14):
            lab[v, 2:4, 2:4] = v
        save_volume(_body(), AFFINE, src / "img" / f"img{i:04d}.nii.gz")
        save_volume(lab, AFFINE, src / "label" / f"label{i:04d}.nii.gz")
    ds = PartialDataset.load(convert("btcv", src, tmp_path / "btcv"))
    assert len(ds.label_space.names) == 12 and "aorta" in ds.label_space.names  # the portal vein has no class
    assert [c.case_id for c in ds.cases] == ["btcv_0001", "btcv_0002"]
    lab = load_volume(tmp_path / "btcv" / "labelsTr" / "btcv_0001.nii.gz").array
    assert lab[10, 2, 2] == 0  # portal/splenic vein dropped
    assert ds.label_space.name(int(lab[6, 2, 2])) == "liver" and ds.label_space.name(int(lab[13, 2, 2])) == "adrenal_gland_left"
    (src / "label" / "label0002.nii.gz").unlink()
    with pytest.raises(InputError, match=r"label0002\.nii\.gz"):
        convert("btcv", src, tmp_path / "btcv2")


def test_amos_ct_and_mr_scans_convert_apart(tmp_path):
    src = tmp_path / "amos22"
    training = []
    for number in (1, 2, 540):
        lab = np.zeros(SHAPE, np.uint8)
        lab[4:8, 4:8, 4:8] = 6  # liver
        image = _body() if number <= 500 else np.abs(_body())
        save_volume(image, AFFINE, src / "imagesTr" / f"amos_{number:04d}.nii.gz")
        save_volume(lab, AFFINE, src / "labelsTr" / f"amos_{number:04d}.nii.gz")
        training.append({"image": f"./imagesTr/amos_{number:04d}.nii.gz", "label": f"./labelsTr/amos_{number:04d}.nii.gz"})
    (src / "dataset.json").write_text(json.dumps({"training": training}))
    ct = PartialDataset.load(convert("amos", src, tmp_path / "ct"))
    assert [c.case_id for c in ct.cases] == ["amos_0001", "amos_0002"] and ct.modality == "CT"
    assert len(ct.label_space.names) == 15
    r = CliRunner().invoke(app, ["convert", "amos", str(src), str(tmp_path / "mr"), "--modality", "MR"])
    assert r.exit_code == 0, r.output
    mr = PartialDataset.load(tmp_path / "mr")
    assert [c.case_id for c in mr.cases] == ["amos_0540"] and mr.modality == "MR"
    lab = load_volume(tmp_path / "mr" / "labelsTr" / "amos_0540.nii.gz").array
    assert mr.label_space.name(int(lab[5, 5, 5])) == "liver"


def test_totalseg_masks_from_the_real_example_round_trip(tmp_path, shared_ct):
    """The real CT example (labels: TotalSegmentator output in AMOS numbering) split into one mask per
    structure, as TotalSegmentator v2 ships them, converts back to the same label map."""
    from partialseg.registry import AMOS15, TOTALSEG_TO_AMOS15

    ref = load_volume(shared_ct / "labels_sm.nii.gz")
    case = tmp_path / "ts" / "s0001"
    (case / "segmentations").mkdir(parents=True)
    (case / "ct.nii.gz").write_bytes((shared_ct / "ct_sm.nii.gz").read_bytes())
    by_name = {v: k for k, v in TOTALSEG_TO_AMOS15.items()}
    for i, name in enumerate(AMOS15, start=1):
        if name == "urinary_bladder":
            continue  # a structure file missing: that organ is not annotated in this case
        save_volume((ref.array == i).astype(np.uint8), ref.affine, case / "segmentations" / f"{by_name[name]}.nii.gz")
    save_volume(np.zeros(ref.array.shape, np.uint8), ref.affine, case / "segmentations" / "femur_left.nii.gz")  # ignored
    ds = PartialDataset.load(convert("totalseg", tmp_path / "ts", tmp_path / "out"))
    got = load_volume(tmp_path / "out" / "labelsTr" / "s0001.nii.gz").array
    expected = np.where(ref.array == AMOS15.index("urinary_bladder") + 1, 0, ref.array)
    np.testing.assert_array_equal(got, expected)
    assert "urinary_bladder" not in ds.label_space.names_of(ds.cases[0].annotated)
    assert len(ds.cases[0].annotated - {0}) == 14


def test_named_labels_word_style_with_a_single_adrenal_label(tmp_path):
    src = tmp_path / "WORD"
    lab = np.zeros(SHAPE, np.uint8)
    lab[6:12, 6:12, 4:10] = 1  # liver
    lab[17:19, 4:6, 4:6] = 12  # "adrenal", patient right (high world x)
    lab[4:6, 4:6, 4:6] = 12  # "adrenal", patient left
    lab[10:12, 14:16, 10:12] = 10  # colon: no registry class
    save_volume(_body(), AFFINE, src / "imagesTr" / "word_0001.nii.gz")
    save_volume(lab, AFFINE, src / "labelsTr" / "word_0001.nii.gz")
    names = ["background", "liver", "spleen", "kidney_left", "kidney_right", "stomach", "gallbladder", "esophagus", "pancreas",
             "duodenum", "colon", "intestine", "adrenal", "rectum", "bladder", "Head_of_femur_L", "Head_of_femur_R"]
    (src / "dataset.json").write_text(json.dumps({
        "labels": {str(i): n for i, n in enumerate(names)},
        "training": [{"image": "./imagesTr/word_0001.nii.gz", "label": "./labelsTr/word_0001.nii.gz"}]}))
    out = convert("word", src, tmp_path / "word")
    ds = PartialDataset.load(out)
    assert "urinary_bladder" in ds.label_space.names and "adrenal_gland_left" in ds.label_space.names
    got = load_volume(out / "labelsTr" / "word_0001.nii.gz").array
    name = lambda v: ds.label_space.name(int(v))  # noqa: E731
    assert name(got[8, 8, 6]) == "liver" and name(got[17, 4, 4]) == "adrenal_gland_right" and name(got[4, 4, 4]) == "adrenal_gland_left"
    assert got[10, 14, 10] == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert "colon" in meta["partialseg"]["convert"]["dropped_labels"] and meta["case_groups"]["word_0001"] == "word"


def test_named_labels_nnunet_v2_style_flare(tmp_path):
    src = tmp_path / "FLARE22"
    lab = np.zeros(SHAPE, np.uint8)
    lab[6:12, 6:12, 4:10] = 5  # aorta, by FLARE's numbering below
    save_volume(_body(), AFFINE, src / "imagesTr" / "FLARE22_0001_0000.nii.gz")
    save_volume(lab, AFFINE, src / "labelsTr" / "FLARE22_0001.nii.gz")
    labels = {"background": 0, "liver": 1, "right kidney": 2, "spleen": 3, "pancreas": 4, "aorta": 5, "inferior vena cava": 6,
              "right adrenal gland": 7, "left adrenal gland": 8, "gallbladder": 9, "esophagus": 10, "stomach": 11,
              "duodenum": 12, "left kidney": 13}
    (src / "dataset.json").write_text(json.dumps({"labels": labels, "channel_names": {"0": "CT"}}))
    ds = PartialDataset.load(convert("flare22", src, tmp_path / "flare"))
    assert len(ds.label_space.names) == 13 and [c.case_id for c in ds.cases] == ["FLARE22_0001"]
    got = load_volume(tmp_path / "flare" / "labelsTr" / "FLARE22_0001.nii.gz").array
    assert ds.label_space.name(int(got[8, 8, 6])) == "aorta"
    (src / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "colon": 1}}))
    with pytest.raises(InputError, match="names an organ"):
        convert("flare22", src, tmp_path / "flare2")
