"""The generator's contract: determinism per seed, cases that differ, case seeds, configuration checks."""

from __future__ import annotations

import numpy as np
import pytest

from partialseg.errors import PartialsegError
from partialseg.synthetic import PRESETS, Phantom, PhantomConfig, case_seed, make_phantom
from tests.synthetic.conftest import CPU, SEEDS


def test_deterministic_and_cases_differ(phantoms: list[Phantom]) -> None:
    again = make_phantom(SEEDS[2], CPU)
    assert np.array_equal(again.image, phantoms[2].image)
    assert np.array_equal(again.labels, phantoms[2].labels)
    assert np.array_equal(again.affine, phantoms[2].affine)
    a, b = phantoms[0], phantoms[1]
    assert not np.array_equal(a.labels, b.labels)
    dice = 2 * ((a.labels == 6) & (b.labels == 6)).sum() / ((a.labels == 6).sum() + (b.labels == 6).sum())
    assert dice < 0.95  # shape and position vary, not just noise


def test_case_seed_is_independent_of_count() -> None:
    assert case_seed(3, 0) == case_seed(3, 0)
    assert len({case_seed(3, i) for i in range(50)}) == 50
    assert case_seed(3, 1) != case_seed(4, 1)


def test_config_validation() -> None:
    with pytest.raises(PartialsegError):
        PhantomConfig(oversample=0)
    with pytest.raises(PartialsegError):
        PhantomConfig(spacing=(1.0, 0.0, 1.0))
    with pytest.raises(PartialsegError):
        PhantomConfig(female_fraction=1.5)
    assert PRESETS["gpu"].shape[0] > CPU.shape[0] and max(PRESETS["gpu"].spacing) <= 3.0
    cpu_fov = np.array(CPU.shape) * np.array(CPU.spacing)
    assert np.all(cpu_fov >= (360, 300, 340))
