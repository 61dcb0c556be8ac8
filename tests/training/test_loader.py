"""Batches are a pure function of (seed, rank, step): the same with any number of workers, in order."""

from __future__ import annotations

import torch

from partialseg.config import AugmentConfig
from partialseg.labels import LabelSpace
from partialseg.preprocessing import PreparedDataset, PreprocessConfig, prepare_dataset
from partialseg.training.loader import BatchRecipe, batch_loader, make_batch
from partialseg.training.trainer import load_train_cases
from tests.conftest import write_block_dataset

SPACE = LabelSpace(("liver", "spleen", "kidney_right", "kidney_left"))


def _recipe(tmp_path, seed=0):
    root = write_block_dataset(tmp_path / "d", SPACE, n_cases=3)
    prep = PreparedDataset.load(prepare_dataset(root, tmp_path / "p", PreprocessConfig(spacing=(2.0, 2.5, 3.0)), progress=False))
    cases = load_train_cases(prep, prep.case_ids)
    return BatchRecipe(cases, SPACE, (16, 16, 16), 3, 0.5, AugmentConfig(p_rotate_scale=1.0, p_noise=1.0), seed)


def _same(a, b) -> bool:
    return torch.equal(a.image, b.image) and torch.equal(a.target, b.target) and torch.equal(a.annotated, b.annotated)


def test_batches_do_not_depend_on_the_number_of_workers_or_where_the_run_resumed(tmp_path):
    recipe = _recipe(tmp_path)
    here = list(batch_loader(recipe, 0, 6, num_workers=0))
    forked = list(batch_loader(recipe, 0, 6, num_workers=2))
    assert len(here) == len(forked) == 6 and all(_same(a, b) for a, b in zip(here, forked))
    resumed = list(batch_loader(recipe, 4, 6, num_workers=2))
    assert _same(resumed[0], here[4]) and _same(resumed[1], here[5])
    assert not _same(here[0], here[1])  # steps differ
    assert here[0].image.shape == (3, 1, 16, 16, 16) and here[0].target.dtype == torch.int64


def test_the_seed_and_rank_change_the_batches(tmp_path):
    recipe = _recipe(tmp_path)
    other_seed = BatchRecipe(**{**recipe.__dict__, "seed": 1})
    other_rank = BatchRecipe(**{**recipe.__dict__, "rank": 1})
    b = make_batch(recipe, 0)
    assert not _same(b, make_batch(other_seed, 0)) and not _same(b, make_batch(other_rank, 0))
    assert _same(b, make_batch(recipe, 0))
