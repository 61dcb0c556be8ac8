"""Intensity normalisation: the TCT HU window, nnU-Net's CT foreground statistics, per-image z-score
(MR and every non-CT channel)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from partialseg.errors import InputError, PartialsegError
from partialseg.preprocessing.config import PreprocessConfig
from partialseg.progress import progress as progress_bar

if TYPE_CHECKING:
    from partialseg.data.dataset import PartialDataset

STATS_SAMPLES_PER_CASE = 10000  # nnU-Net v2's foreground intensity sample size per case


@dataclass
class NormalizationStats:
    """Foreground (labelled-voxel) intensity statistics of the training images, in HU.

    ``percentile_00_5`` / ``percentile_99_5`` are the nnU-Net CT clip bounds; ``mean`` / ``std``
    (of the unclipped samples, as in nnU-Net) the z-score parameters.
    """

    mean: float
    std: float
    percentile_00_5: float
    percentile_99_5: float
    median: float = float("nan")
    min: float = float("nan")
    max: float = float("nan")
    num_samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: (int(v) if k == "num_samples" else float(v)) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NormalizationStats:
        try:
            return cls(**{k: d[k] for k in d if k in cls.__dataclass_fields__})
        except TypeError as e:
            raise PartialsegError(f"invalid normalisation statistics {dict(d)!r}: {e}") from None


def compute_normalization_stats(
    dataset: PartialDataset, *, samples_per_case: int = STATS_SAMPLES_PER_CASE, seed: int = 0, progress: bool = False
) -> NormalizationStats:
    """nnU-Net-style CT statistics from voxels of annotated classes over all training cases.

    Each case contributes at most ``samples_per_case``
    randomly chosen foreground voxels (so large scans do not dominate). Only voxels whose label is
    in the case's annotated set count: unannotated organs carry 0 and are indistinguishable from
    background. Loading validates every case (grid, label values, NaN).
    """
    rng = np.random.default_rng(seed)
    samples: list[np.ndarray] = []
    for case in progress_bar(dataset.cases, desc="intensity statistics", unit="case", enabled=progress):
        image = case.load_image()
        label = case.load_label(dataset.label_space, image)
        mask = np.isin(label.array, np.fromiter(case.annotated, dtype=np.int16))
        values = image.array[mask]
        if values.size > samples_per_case:
            values = rng.choice(values, samples_per_case, replace=False)
        samples.append(values.astype(np.float64))
    allv = np.concatenate(samples) if samples else np.zeros(0)
    if allv.size == 0:
        raise InputError(
            dataset.root, "no labelled foreground voxels in any case: cannot compute nnU-Net CT statistics"
        )
    std = float(np.std(allv))
    return NormalizationStats(
        mean=float(np.mean(allv)),
        std=std,
        percentile_00_5=float(np.percentile(allv, 0.5)),
        percentile_99_5=float(np.percentile(allv, 99.5)),
        median=float(np.median(allv)),
        min=float(np.min(allv)),
        max=float(np.max(allv)),
        num_samples=int(allv.size),
    )


def zscore_body(x: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Per-image z-score over the body (voxels above the image's minimum, i.e. not the zero-filled
    background of an MR scan), 0 outside; nnU-Net's ``ZScoreNormalization`` with its mask."""
    x = np.asarray(x, dtype=np.float32)
    body = x > x.min()
    if not body.any():
        body = np.ones_like(body)
    values = x[body].astype(np.float64)
    mean, std = float(values.mean()), max(float(values.std()), 1e-8)
    out = np.where(body, (x - np.float32(mean)) * np.float32(1.0 / std), np.float32(0.0)).astype(np.float32)
    return out, (float(out.min()), float(out.max()))


def normalize_intensities(
    array: np.ndarray, config: PreprocessConfig, stats: NormalizationStats | None
) -> tuple[np.ndarray, tuple[float, float]]:
    """HU → network intensities (float32), and the value range the output is confined to."""
    x = np.asarray(array, dtype=np.float32)
    if config.normalization == "tct":
        lo, hi = config.clip
        out = (np.clip(x, lo, hi) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
        return out.astype(np.float32, copy=False), (0.0, 1.0)
    if config.normalization == "zscore":
        return zscore_body(x)
    if stats is None:
        raise PartialsegError("normalization 'nnunet' needs NormalizationStats (compute_normalization_stats)")
    lo, hi = stats.percentile_00_5, stats.percentile_99_5
    std = max(stats.std, 1e-8)
    out = (np.clip(x, lo, hi) - np.float32(stats.mean)) * np.float32(1.0 / std)
    return out.astype(np.float32, copy=False), ((lo - stats.mean) / std, (hi - stats.mean) / std)

