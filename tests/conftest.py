"""Shared fixtures: small volumes written to a temp folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from partialseg.data.dataset import dataset_json, write_dataset_json
from partialseg.io import save_volume
from partialseg.labels import LabelSpace

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalseg_example"


def write_block_dataset(
    root: Path,
    label_space: LabelSpace,
    n_cases: int = 3,
    shape: tuple[int, int, int] = (20, 18, 16),
    spacing: tuple[float, float, float] = (2.0, 2.5, 3.0),
    annotated: dict[str, list[str]] | None = None,
    seed: int = 0,
) -> Path:
    """A tiny nnU-Net-layout dataset: each class is a random axis-aligned box with its own HU."""
    rng = np.random.default_rng(seed)
    affine = np.diag([*spacing, 1.0])
    for i in range(n_cases):
        cid = f"case_{i:03d}"
        lab = np.zeros(shape, np.uint8)
        for c in range(1, label_space.num_classes + 1):
            lo = [int(rng.integers(0, s - 4)) for s in shape]
            sz = [int(rng.integers(2, 5)) for _ in shape]
            lab[lo[0] : lo[0] + sz[0], lo[1] : lo[1] + sz[1], lo[2] : lo[2] + sz[2]] = c
        img = (rng.normal(0, 10, shape) + 40 * lab - 100).astype(np.float32)
        save_volume(img, affine, root / "imagesTr" / f"{cid}_0000.nii.gz")
        save_volume(lab, affine, root / "labelsTr" / f"{cid}.nii.gz")
    write_dataset_json(root, dataset_json(label_space, n_cases, annotated=annotated))
    return root


@pytest.fixture
def small_space() -> LabelSpace:
    return LabelSpace(("liver", "spleen", "kidney_right", "kidney_left"))


@pytest.fixture
def block_dataset(tmp_path: Path, small_space: LabelSpace) -> Path:
    return write_block_dataset(tmp_path / "blocks", small_space)


@pytest.fixture
def shared_ct() -> Path:
    if not (SHARED_DATA / "ct.nii.gz").exists():
        pytest.skip(f"real CT example not found at {SHARED_DATA}")
    return SHARED_DATA
