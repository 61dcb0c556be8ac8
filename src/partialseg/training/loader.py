"""Training batches: patch sampling, left-right mirroring and augmentation, in background workers.

Every batch is a pure function of ``(seed, rank, step)``: its random numbers come from
``numpy.random.default_rng([seed, rank, step])`` (and a torch generator seeded from it), not from a
stream carried from step to step. So the batches do not depend on how many worker processes made
them or in which order they finished, a resumed run repeats exactly the batches it would have
seen, and nothing random needs to be stored in a checkpoint.

:func:`batch_loader` runs :func:`make_batch` in a ``torch.utils.data.DataLoader`` (persistent
workers, pinned memory, ``prefetch_factor`` batches ahead per worker), as nnU-Net runs its
batchgenerators augmentation in background processes, so that on a GPU the network step and not
the loader sets the pace. Workers are forked (the memory-mapped cases are shared, not copied);
where ``fork`` does not exist, batches are made in the main process. With ``augment.preset = "nnunet"``
the workers only crop and :func:`finish_batch` augments on the training device (``augment.on_device``),
so a GPU and not the CPU cores pays for the resampling.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from partialseg.config import AugmentConfig
from partialseg.labels import LabelSpace
from partialseg.methods import Batch


@dataclass(frozen=True)
class BatchRecipe:
    """What a batch is made of. ``cases``: the ``TrainCase`` list (read only)."""

    cases: Sequence[Any]
    label_space: LabelSpace
    patch_size: tuple[int, int, int]
    batch_size: int
    foreground_fraction: float
    augment: AugmentConfig
    seed: int
    rank: int = 0


def collate(patches: Sequence[Any], num_channels: int) -> Batch:
    """Stack :class:`~partialseg.training.sampling.Patch` es; ``annotated`` includes pseudo-labelled classes."""
    def mask(sets: Sequence[frozenset[int]]) -> torch.Tensor:
        m = torch.zeros(len(sets), num_channels, dtype=torch.bool)
        m[:, 0] = True
        for i, s in enumerate(sets):
            m[i, list(s)] = True
        return m

    pseudo = mask([p.pseudo for p in patches]) if any(p.pseudo for p in patches) else None
    if pseudo is not None:
        pseudo[:, 0] = False
    return Batch(
        torch.from_numpy(np.stack([p.image for p in patches])),
        torch.from_numpy(np.stack([p.label for p in patches])),
        mask([p.annotated | p.pseudo for p in patches]),
        pseudo,
    )


def _nnunet(recipe: BatchRecipe) -> bool:
    return recipe.augment.enabled and recipe.augment.preset == "nnunet"


def make_batch(recipe: BatchRecipe, step: int) -> Batch:
    """The batch of optimiser step ``step`` (0-based): ``batch_size`` patches, the last
    ``round(foreground_fraction * batch_size)`` forced onto an annotated organ (nnU-Net's rule).

    With ``augment.preset = "nnunet"`` and ``augment.on_device`` the batch is not augmented yet: it holds the
    larger source patches (``NnUNetAugment.source_size``, int16 labels), of each only the part its spatial
    transform reads, and :func:`finish_batch` augments it on the training device.
    """
    from partialseg.training.augment import augment_batch
    from partialseg.training.augment_nnunet import NnUNetAugment, draw_batch, source_region
    from partialseg.training.sampling import mirror_left_right, sample_patch

    rng = np.random.default_rng([int(recipe.seed), int(recipe.rank), int(step)])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    n_fg = int(round(recipe.foreground_fraction * recipe.batch_size))
    aug = recipe.augment
    nnunet = _nnunet(recipe)
    margin, draws, source = (0, 0, 0), None, recipe.patch_size
    if nnunet:
        params = NnUNetAugment()
        source = params.source_size(recipe.patch_size)
        margin = tuple((s - p) // 2 for s, p in zip(source, recipe.patch_size))
        draws = draw_batch(params, recipe.patch_size, recipe.batch_size, recipe.seed, recipe.rank, step)
    patches = []
    for i in range(recipe.batch_size):
        case = recipe.cases[int(rng.integers(len(recipe.cases)))]
        within = source_region(draws[i], recipe.patch_size, source) if draws is not None else None
        p = sample_patch(case.image, case.label, case.annotated, case.class_locations, recipe.patch_size, rng,
                         force_foreground=i >= recipe.batch_size - n_fg, pad_value=case.pad_value, pseudo=case.pseudo,
                         margin=margin, within=within, label_dtype=np.int16 if nnunet else np.int64)
        if aug.enabled and aug.p_mirror_lr > 0 and rng.random() < aug.p_mirror_lr:
            p = mirror_left_right(p, recipe.label_space)  # source regions are symmetric: still the part that is read
        if nnunet:
            p.label = p.label.astype(np.int16, copy=False)  # (the swap table is int64) a quarter of the bytes to move
        patches.append(p)
    batch = collate(patches, recipe.label_space.num_channels)
    if nnunet:
        return batch if aug.on_device else finish_batch(recipe, batch, step, here=True)
    image, target = augment_batch(batch.image, batch.target, aug, gen)
    return Batch(image, target, batch.annotated, batch.pseudo)


def finish_batch(recipe: BatchRecipe, batch: Batch, step: int, *, here: bool = False) -> Batch:
    """The augmentation left to the training device: nnU-Net's (``augment.preset = "nnunet"``) on a batch
    from :func:`make_batch`, on ``batch``'s device; any other batch is returned as it is. ``here``: also
    without ``augment.on_device`` (``make_batch`` itself)."""
    if not _nnunet(recipe) or not (recipe.augment.on_device or here):
        return batch
    from partialseg.training.augment_nnunet import NnUNetAugment, augment_nnunet, draw_batch

    params = NnUNetAugment()
    draws = draw_batch(params, recipe.patch_size, recipe.batch_size, recipe.seed, recipe.rank, step)
    image, target = augment_nnunet(batch.image, batch.target, draws, params, recipe.patch_size)
    return Batch(image, target, batch.annotated, batch.pseudo)


class _Steps(torch.utils.data.Dataset):
    def __init__(self, recipe: BatchRecipe, start: int, stop: int) -> None:
        self.recipe, self.start, self.stop = recipe, start, stop

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __getitem__(self, i: int) -> Batch:
        return make_batch(self.recipe, self.start + i)


def resolve_workers(num_workers: int | None, device: torch.device) -> int:
    """``None``: no workers on a CPU (they would take the cores the step needs), else up to 8, leaving
    one core to the main process (nnU-Net uses 12 on a GPU node)."""
    if "fork" not in mp.get_all_start_methods():
        return 0
    if num_workers is not None:
        return int(num_workers)
    return 0 if device.type == "cpu" else max(min(8, (os.cpu_count() or 1) - 1), 0)


def batch_loader(recipe: BatchRecipe, start: int, stop: int, *, num_workers: int = 0, pin_memory: bool = False,
                 prefetch_factor: int = 2) -> Iterator[Batch]:
    """The batches of steps ``start .. stop-1`` in order, made by ``num_workers`` forked workers (0: here)."""
    steps = _Steps(recipe, start, stop)
    if num_workers <= 0:
        for i in range(len(steps)):
            b = steps[i]
            yield b.pin_memory() if pin_memory else b
        return
    loader = torch.utils.data.DataLoader(
        steps, batch_size=None, shuffle=False, num_workers=num_workers, prefetch_factor=prefetch_factor,
        multiprocessing_context="fork", pin_memory=pin_memory, worker_init_fn=_worker_init,
    )  # one pass over every remaining step: the workers live as long as the training
    yield from loader


def _worker_init(_worker_id: int) -> None:
    # one thread per worker: the augmentation's torch ops would otherwise each spawn a full pool
    torch.set_num_threads(1)
