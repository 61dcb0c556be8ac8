"""Batches are a pure function of (seed, rank, step): the same with any number of workers, in order."""

from __future__ import annotations

import pytest
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


def test_patch_validation_scores_fixed_patches_and_the_end_runs_the_sliding_window(tmp_path):
    import json

    from partialseg.config import load_config
    from partialseg.training.trainer import train

    root = write_block_dataset(tmp_path / "d", SPACE, n_cases=3)
    cfg = load_config(None, ["train.steps=4", "train.val_every=2", "train.val_patches=2", "train.checkpoint_every=2",
                             "network.options={base_channels: 4}", "data.val_fraction=0.34", "train.patch_size=[32,16,16]",
                             "train.batch_size=1", "data.spacing=[2.0,2.5,3.0]"])
    train(root, tmp_path / "run", cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log_rows.jsonl").read_text().splitlines()]
    assert "val_patch_dsc_mean" in rows[1] and "val_dsc_mean" not in rows[1]  # step 2: patches only
    assert "val_dsc_mean" in rows[3] and "val_patch_dsc_mean" not in rows[3]  # the end: the sliding window
    assert all(0.0 <= v <= 1.0 for k, v in rows[1].items() if k.startswith("val_patch_dsc"))


def test_patch_dice_sums_counts_over_patches(tmp_path):
    """A net that always predicts class 1: per-class Dice = 2 TP / (2 TP + FP + FN) from summed counts."""
    import numpy as np
    from torch import nn

    from partialseg.config import load_config
    from partialseg.methods import get_method
    from partialseg.training.sampling import sample_patch
    from partialseg.training.validation import validate_patches

    recipe = _recipe(tmp_path)
    method = get_method("full")(SPACE, {})

    class AlwaysLiver(nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], SPACE.num_channels, *x.shape[2:])
            out[:, 1] = 10.0
            return out

    cfg = load_config(None, ["train.patch_size=[16,16,16]", "train.val_patches=3", "train.amp=false"])
    case = recipe.cases[0]
    got = validate_patches(AlwaysLiver(), method, [case], cfg, torch.device("cpu"))
    rng = np.random.default_rng([cfg.train.seed, 7, 0])
    tp = fp = fn = 0
    for k in range(3):
        p = sample_patch(case.image, case.label, case.annotated, case.class_locations, (16, 16, 16), rng,
                         force_foreground=k % 2 == 0, pad_value=case.pad_value)
        liver = p.label == 1
        tp, fp, fn = tp + liver.sum(), fp + (~liver).sum(), fn
    assert got["val_patch_dsc_liver"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert "val_patch_dsc_spleen" in got and got["val_patch_dsc_spleen"] == 0.0  # present in some patch, never predicted
