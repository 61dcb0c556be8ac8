"""Per-case annotated classes (Phi) for nnU-Net batches, read from the ``dataset.json`` nnU-Net trains with.

nnU-Net v2 (Isensee et al. 2021, Nature Methods) copies the raw ``dataset.json`` into its preprocessed folder
unchanged and hands it to the trainer, so partialseg's ``annotated_classes`` (``{case_id: [class names]}``,
data/dataset.py) arrive with it; its data loader names each batch's cases in ``batch["keys"]``. These are the
two ends joined here. No nnunetv2 import: the rules are partialseg's and testable without it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from partialseg.data.dataset import ANNOTATED_KEY
from partialseg.errors import InputError
from partialseg.labels import LabelSpace
from partialseg.losses import annotated_channel_mask

__all__ = ["CaseAnnotations"]


class CaseAnnotations:
    """Phi of every case named in ``dataset.json``; a case without an entry is fully annotated (README,
    "Dataset format"), as in :meth:`partialseg.data.dataset.PartialDataset.load`."""

    def __init__(self, dataset_json: Mapping[str, Any], source: str | None = None) -> None:
        self.source = source or "dataset.json"
        self.label_space = LabelSpace.from_dataset_json(dataset_json.get("labels", {}), self.source)
        raw = dataset_json.get(ANNOTATED_KEY) or {}
        if not isinstance(raw, Mapping):
            raise InputError(self.source, f"{ANNOTATED_KEY} must be a mapping {{case_id: [class names]}}")
        self.sets: dict[str, frozenset[int]] = {}
        for case, names in raw.items():
            if not isinstance(names, list):
                raise InputError(self.source, f"{ANNOTATED_KEY}[{case!r}] must be a list of class names")
            phi = self.label_space.indices(names, f"{self.source} ({ANNOTATED_KEY}[{case!r}])")
            if not phi:
                raise InputError(self.source, f"case {case!r} has an empty annotated-class list: it supervises nothing")
            self.sets[str(case)] = phi

    @property
    def num_channels(self) -> int:
        """C = N + 1, the softmax channels (background first)."""
        return self.label_space.num_channels

    def phi(self, case: str) -> frozenset[int]:
        return self.sets.get(str(case), self.label_space.all_indices)

    def mask(self, keys: Iterable[str], device: torch.device | str | None = None) -> Tensor:
        """``(B, C)`` bool, row ``b`` = Phi of case ``keys[b]`` with background (column 0) True.

        ``keys``: nnU-Net's ``batch["keys"]`` (a numpy array of case identifiers, in batch order).
        """
        return annotated_channel_mask([self.phi(k) for k in keys], self.num_channels, device)
