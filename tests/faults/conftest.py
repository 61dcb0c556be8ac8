"""Broken inputs for the fault suite: each fixture writes a tiny dataset (16×16×8) into tmp_path
and breaks it in one way; ``checksums`` snapshots every input file so a test can assert that
nothing it read was modified."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from partialseg.labels import LabelSpace
from tests.conftest import write_block_dataset

SHAPE = (16, 16, 8)
SPACING = (2.0, 2.5, 3.0)
TINY = [
    "train.steps=2", "train.batch_size=1", "train.patch_size=[32,16,16]", "train.val_every=0",
    "train.checkpoint_every=1", "network.options={base_channels: 4}", "data.spacing=[2.0,2.5,3.0]",
    "train.num_threads=1", "data.val_fraction=0.34",
]


def checksums(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (hidden files too)."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _rewrite_header(path: Path, edit: Callable[[nib.Nifti1Header], None], data: np.ndarray | None = None) -> None:
    img = nib.load(str(path))
    header = img.header.copy()
    edit(header)
    arr = np.asanyarray(img.dataobj) if data is None else data
    nib.save(nib.Nifti1Image(arr, None, header), str(path))


def _no_codes(h: nib.Nifti1Header) -> None:
    h.set_qform(None, code=0)
    h.set_sform(None, code=0)


def _zero_pixdim(path: Path) -> None:
    """No qform/sform and pixdim[1:4] = 0, patched into the bytes (nibabel's writer would fix the header)."""
    _rewrite_header(path, _no_codes)
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[80:92] = np.zeros(3, "<f4").tobytes()  # pixdim is float32[8] at byte 76; [1:4] are the voxel sizes
    path.write_bytes(gzip.compress(bytes(raw)))


def _spacing_x1000(h: nib.Nifti1Header) -> None:
    aff = np.diag([*(s * 1000 for s in SPACING), 1.0])
    h.set_qform(aff, code=1)
    h.set_sform(aff, code=1)


@pytest.fixture
def space() -> LabelSpace:
    return LabelSpace(("liver", "spleen", "kidney_right", "kidney_left"))


@pytest.fixture
def good_dataset(tmp_path: Path, space: LabelSpace) -> Path:
    return write_block_dataset(tmp_path / "data", space, n_cases=3, shape=SHAPE, spacing=SPACING)


@pytest.fixture
def broken_dataset(good_dataset: Path) -> Callable[[str], Path]:
    """``broken_dataset(fault)``: the good dataset with one fault applied (see ``FAULTS``)."""
    images = good_dataset / "imagesTr"

    def make(fault: str) -> Path:
        case = images / "case_001_0000.nii.gz"
        if fault == "spacing_x1000":
            _rewrite_header(case, _spacing_x1000)
            _rewrite_header(good_dataset / "labelsTr" / "case_001.nii.gz", _spacing_x1000)
        elif fault in ("no_qform_sform", "zero_pixdim"):  # a tool that writes no geometry: image and label alike
            for f in (case, good_dataset / "labelsTr" / "case_001.nii.gz"):
                _rewrite_header(f, _no_codes) if fault == "no_qform_sform" else _zero_pixdim(f)
        elif fault == "uint8_image":
            arr = np.asanyarray(nib.load(str(case)).dataobj)
            arr8 = np.clip(arr + 128, 0, 255).astype(np.uint8)
            _rewrite_header(case, lambda h: h.set_data_dtype(np.uint8), arr8)
        elif fault == "labels_list":
            meta = json.loads((good_dataset / "dataset.json").read_text())
            meta["labels"] = list(meta["labels"])  # ["background", "liver", ...] instead of {name: value}
            (good_dataset / "dataset.json").write_text(json.dumps(meta))
        elif fault == "stray_channel":
            (images / "case_001_0001.nii.gz").write_bytes(case.read_bytes())
        elif fault == "no_channel_suffix":
            case.rename(images / "case_001.nii.gz")
        else:
            raise ValueError(fault)
        return good_dataset

    return make
