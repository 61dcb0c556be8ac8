"""Shared by the phantom tests: six cpu-preset phantoms (made once per session) and helpers to read them."""

from __future__ import annotations

import numpy as np
import pytest

from partialseg.labels import LabelSpace
from partialseg.synthetic import PRESETS, Phantom, make_phantom

SPACE = LabelSpace.named("amos15")
CPU = PRESETS["cpu"]
SEEDS = (0, 1, 2, 3, 4, 5)


@pytest.fixture(scope="session")
def phantoms() -> list[Phantom]:
    return [make_phantom(s, CPU) for s in SEEDS]


def centroid_world(ph: Phantom, name: str) -> np.ndarray:
    """Centroid of an organ in world RAS mm, through the affine (not array indices)."""
    idx = np.argwhere(ph.labels == SPACE.index(name)).mean(axis=0)
    return ph.affine[:3, :3] @ idx + ph.affine[:3, 3]


def median_hu(ph: Phantom, name: str) -> float:
    """Median HU inside an organ (robust to the partial-volume rim of 6 mm voxels)."""
    return float(np.median(ph.image[ph.labels == SPACE.index(name)]))
