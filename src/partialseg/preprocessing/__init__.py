"""Preprocessing: reorient to RAS, resample, normalise, and cache every case once.

``config`` (what to do), ``geometry`` (RAS and the target grid), ``resampling`` (separable
B-splines), ``normalisation`` (CT windows and statistics, MR z-score), ``pipeline`` (forward and
inverse transforms of one case) and ``cache`` (the prepared dataset on disk).
"""

from partialseg.preprocessing.cache import PreparedCase, PreparedDataset, prepare_dataset
from partialseg.preprocessing.config import PreprocessConfig
from partialseg.preprocessing.geometry import GridMeta, grid_for
from partialseg.preprocessing.normalisation import NormalizationStats, compute_normalization_stats
from partialseg.preprocessing.pipeline import (
    class_locations,
    preprocess_image,
    preprocess_label,
    restore_labels_from_probabilities,
    restore_to_original,
)

__all__ = [
    "GridMeta",
    "NormalizationStats",
    "PreparedCase",
    "PreparedDataset",
    "PreprocessConfig",
    "class_locations",
    "compute_normalization_stats",
    "grid_for",
    "prepare_dataset",
    "preprocess_image",
    "preprocess_label",
    "restore_labels_from_probabilities",
    "restore_to_original",
]
