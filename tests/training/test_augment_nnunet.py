"""nnU-Net v2's augmentation from MONAI transforms (``training.augment_nnunet``) and its place in the loader."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from partialseg.config import AugmentConfig, ExperimentConfig
from partialseg.errors import InputError
from partialseg.labels import LabelSpace
from partialseg.preprocessing import PreparedDataset, PreprocessConfig, prepare_dataset
from partialseg.training.augment_nnunet import NnUNetAugment, augment_nnunet, draw_batch, source_region
from partialseg.training.loader import BatchRecipe, batch_loader, finish_batch, make_batch
from partialseg.training.trainer import load_train_cases
from tests.conftest import write_block_dataset

SPACE = LabelSpace(("liver", "spleen", "kidney_right", "kidney_left"))
NEVER = NnUNetAugment(p_rotation=0, p_scaling=0, p_noise=0, p_blur=0, p_brightness=0, p_contrast=0, p_low_resolution=0,
                      p_gamma_inverted=0, p_gamma=0)
ALWAYS = NnUNetAugment(p_rotation=1, p_scaling=1, p_noise=1, p_blur=1, p_blur_per_channel=1, p_brightness=1, p_contrast=1,
                       p_low_resolution=1, p_low_resolution_per_channel=1, p_gamma_inverted=1, p_gamma=1)


def _batch(shape, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((b, 1, *shape), generator=g), torch.randint(0, 5, (b, *shape), generator=g)


def test_the_source_patch_is_nnunets_initial_patch_size():
    # nnU-Net v2's get_patch_size gives [178, 308, 233] for its (64, 192, 192) at ±30°, [205]*3 for 128³ and
    # [64, 244, 244] for the anisotropic (64, 192, 208) (±180° in-plane): the same in RAS order, rounded up to
    # an even margin
    p = NnUNetAugment()
    assert p.source_size((192, 192, 64)) == (308, 234, 178) and not p.anisotropic((192, 192, 64))
    assert p.source_size((128, 128, 128)) == (206, 206, 206)
    assert p.source_size((192, 208, 64)) == (244, 244, 64) and p.anisotropic((192, 208, 64))
    assert NEVER.source_size((192, 208, 64)) == (192, 208, 64)


def test_with_every_probability_zero_it_is_the_identity():
    img, lab = _batch((64, 64, 32))
    draws = draw_batch(NEVER, (64, 64, 32), 2, seed=0, rank=0, step=3)
    out, olab = augment_nnunet(img, lab, draws, NEVER, (64, 64, 32))
    assert torch.equal(out, img) and torch.equal(olab, lab) and olab.dtype == torch.int64
    # with the default (larger) source patch and nothing drawn, the output is its centre
    src = NnUNetAugment().source_size((16, 16, 8))
    big, blab = _batch(src)
    out, olab = augment_nnunet(big, blab, draws, NEVER, (16, 16, 8))
    lo = [(s - q) // 2 for s, q in zip(src, (16, 16, 8))]
    box = (slice(lo[0], lo[0] + 16), slice(lo[1], lo[1] + 16), slice(lo[2], lo[2] + 8))
    assert torch.equal(out, big[(..., *box)]) and torch.equal(olab, blab[(slice(None), *box)])


def test_shapes_dtypes_labels_and_cpu_time():
    patch = (64, 64, 32)
    img, lab = _batch(ALWAYS.source_size(patch))
    t = time.perf_counter()
    out, olab = augment_nnunet(img, lab, draw_batch(ALWAYS, patch, 2, 0, 0, 0), ALWAYS, patch)
    assert time.perf_counter() - t < 30  # every transform on 2×1×64×64×32 takes well under a second here
    assert out.shape == (2, 1, *patch) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert olab.shape == (2, *patch) and olab.dtype == torch.int64
    assert set(olab.unique().tolist()) <= set(range(5))  # nearest resampling: no new label values


def test_the_loader_reads_only_the_part_a_rotation_samples():
    # everything of the source patch outside source_region is replaced by garbage: the result must not change
    patch = (24, 20, 12)
    src = ALWAYS.source_size(patch)
    img, lab = _batch(src)
    draws = draw_batch(ALWAYS, patch, 2, 0, 0, 5)
    assert all(d.affine is not None for d in draws)
    img2, lab2 = torch.full_like(img, 1e4), torch.full_like(lab, 3)
    for i, d in enumerate(draws):
        lo, hi = source_region(d, patch, src)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        img2[(i, slice(None), *box)] = img[(i, slice(None), *box)]
        lab2[(i, *box)] = lab[(i, *box)]
    a = augment_nnunet(img, lab, draws, ALWAYS, patch)
    b = augment_nnunet(img2, lab2, draws, ALWAYS, patch)
    assert torch.equal(a[1], b[1]) and torch.allclose(a[0], b[0], atol=1e-5)


def test_in_plane_rotation_of_an_anisotropic_patch_leaves_the_slices_apart():
    # an image equal to its slice index z everywhere in-plane: a rotation about Z keeps each slice's value
    patch = (32, 32, 8)
    p = NnUNetAugment(p_rotation=1, p_scaling=1, p_noise=0, p_blur=0, p_brightness=0, p_contrast=0, p_low_resolution=0,
                      p_gamma_inverted=0, p_gamma=0)
    assert p.anisotropic(patch)
    src = p.source_size(patch)
    img = torch.arange(src[2], dtype=torch.float32).expand(1, 1, *src).clone()
    draws = draw_batch(p, patch, 1, 0, 0, 0)
    assert abs(draws[0].affine[2, 2] - 1) < 1e-12 and not draws[0].affine[2, :2].any()
    zeros = torch.zeros(1, *src, dtype=torch.long)
    out, _ = augment_nnunet(img, zeros, draws, p, patch)
    z0 = (src[2] - patch[2]) // 2
    # where the rotated patch leaves the source patch it is zero-padded: compare only the voxels inside it
    inside = augment_nnunet(torch.ones_like(img), zeros, draws, p, patch)[0][0, 0] > 1 - 1e-6
    expect = torch.arange(z0, z0 + patch[2], dtype=torch.float32).expand(*patch)
    assert inside.any() and torch.allclose(out[0, 0][inside], expect[inside], atol=1e-5)


@pytest.fixture
def cases(tmp_path):
    root = write_block_dataset(tmp_path / "d", SPACE, n_cases=2, shape=(40, 36, 20))
    prep = PreparedDataset.load(prepare_dataset(root, tmp_path / "p", PreprocessConfig(spacing=(2.0, 2.5, 3.0)), progress=False))
    return load_train_cases(prep, prep.case_ids)


def _recipe(cases, **aug) -> BatchRecipe:
    return BatchRecipe(cases, SPACE, (16, 16, 8), 2, 0.5, AugmentConfig(preset="nnunet", **aug), seed=0)


def _same(a, b) -> bool:
    return torch.equal(a.image, b.image) and torch.equal(a.target, b.target) and torch.equal(a.annotated, b.annotated)


def test_batches_are_a_function_of_seed_rank_and_step_wherever_they_are_augmented(cases):
    recipe = _recipe(cases)
    raw = make_batch(recipe, 4)
    assert raw.image.shape[2:] == NnUNetAugment().source_size((16, 16, 8)) and raw.target.dtype == torch.int16
    done = finish_batch(recipe, raw, 4)
    assert done.image.shape == (2, 1, 16, 16, 8) and done.target.dtype == torch.int64
    assert _same(done, finish_batch(recipe, make_batch(recipe, 4), 4))  # twice the same
    assert not _same(done, finish_batch(recipe, make_batch(recipe, 5), 5))  # another step
    other_rank = BatchRecipe(**{**recipe.__dict__, "rank": 1})
    assert not _same(done, finish_batch(other_rank, make_batch(other_rank, 4), 4))
    in_workers = _recipe(cases, on_device=False)
    assert _same(done, make_batch(in_workers, 4))  # augmented in the loader: the same batch
    assert finish_batch(in_workers, make_batch(in_workers, 4), 4).image.shape == (2, 1, 16, 16, 8)  # not twice
    resumed = [finish_batch(recipe, b, s) for s, b in zip((4, 5), batch_loader(recipe, 4, 6, num_workers=2))]
    assert _same(resumed[0], done)


def test_a_left_right_flip_swaps_the_left_and_right_labels(cases):
    # batch size 1 and a step where nothing position-dependent is drawn (no spatial transform, noise or
    # low resolution): the mirrored batch is then the plain one flipped along X with kidneys swapped
    recipe = BatchRecipe(cases, SPACE, (16, 16, 8), 1, 1.0, AugmentConfig(preset="nnunet", p_mirror_lr=0.0), seed=0)
    flipped = dataclasses.replace(recipe, augment=AugmentConfig(preset="nnunet", p_mirror_lr=1.0))
    p = NnUNetAugment()
    step = next(s for s in range(200) if (d := draw_batch(p, (16, 16, 8), 1, 0, 0, s)[0]).affine is None
                and d.noise is None and d.low_resolution_seed is None and d.blur_sigma is None)
    a = finish_batch(recipe, make_batch(recipe, step), step)
    b = finish_batch(flipped, make_batch(flipped, step), step)
    lut = torch.as_tensor(SPACE.left_right_swap())
    assert torch.equal(b.target, lut[a.target.flip(1)])
    assert torch.allclose(b.image, a.image.flip(2), atol=1e-5)
    kr, kl = SPACE.index("kidney_right"), SPACE.index("kidney_left")
    assert bool(a.annotated[0, kr]) == bool(b.annotated[0, kl])


def test_the_preset_is_validated():
    cfg = ExperimentConfig()
    cfg.augment.preset = "batchgenerators"
    with pytest.raises(InputError, match=r"augment.preset = 'batchgenerators' is not one of \['light', 'nnunet'\]"):
        cfg.validate()
    assert ExperimentConfig().augment.preset == "light"  # the CPU presets keep today's augmentation


def test_the_full_benchmark_preset_uses_nnunets_augmentation():
    from partialseg.config import load_config
    from partialseg.experiments.benchmark import PRESETS

    assert load_config(None, list(PRESETS["full"].overrides)).augment.preset == "nnunet"
    assert load_config(None, list(PRESETS["quick"].overrides)).augment.preset == "light"
    # not nnU-Net's mirroring: a mirrored abdomen is situs inversus even with the left/right labels swapped
    assert load_config(None, list(PRESETS["full"].overrides)).augment.p_mirror_lr == 0.0


def test_a_resumed_training_repeats_the_augmented_batches(tmp_path, small_space):
    from partialseg.config import load_config
    from partialseg.training.trainer import train

    data = write_block_dataset(tmp_path / "blocks", small_space, n_cases=3, annotated={"case_000": ["liver"]})
    cfg = load_config(None, ["train.steps=3", "train.batch_size=2", "train.patch_size=[32,16,16]", "train.val_every=0",
                             "train.checkpoint_every=1", "network.options={base_channels: 4}", "data.spacing=[2.0,2.5,3.0]",
                             "train.num_threads=1", "augment.preset=nnunet", "augment.p_mirror_lr=0.5"])

    class Killed(Exception):
        pass

    def kill(step):
        if step == 0:
            raise Killed

    train(data, tmp_path / "straight", cfg, progress=False)
    with pytest.raises(Killed):
        train(data, tmp_path / "killed", cfg, progress=False, on_step=kill)
    train(data, tmp_path / "killed", None, resume=True, progress=False)
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "killed" / "model.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
