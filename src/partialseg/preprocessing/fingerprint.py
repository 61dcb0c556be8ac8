"""A dataset fingerprint: what planning needs to know about a dataset, read from its headers.

nnU-Net v2's fingerprint (Isensee et al., Nat. Methods 2021, "data fingerprint") holds per case the
spacing and shape after cropping, and the foreground intensities of the training labels. Ours holds
the spacing and shape after reorientation to RAS (partialseg does not crop: a CT's field of view is
the body), read from the NIfTI headers only, so a 200-case collection fingerprints in seconds; the
foreground intensity statistics (one pass over every image) are optional, since only the
``nnunet`` CT normalisation needs them and ``prepare`` computes them itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from partialseg.errors import InputError, PartialsegError
from partialseg.preprocessing.config import Shape, Spacing
from partialseg.preprocessing.normalisation import NormalizationStats

if TYPE_CHECKING:
    from partialseg.data.dataset import PartialDataset
    from partialseg.preprocessing.cache import PreparedDataset

FINGERPRINT_FORMAT = "partialseg-fingerprint"


@dataclass(frozen=True)
class DatasetFingerprint:
    """Per case ``spacings[i]`` (mm) and ``shapes[i]`` (voxels) along the RAS axes, in case order.

    ``modality``: ``"CT"`` or the dataset's first channel name; ``intensities``: foreground
    statistics of the annotated organs (HU), or ``None`` when not computed.
    """

    case_ids: tuple[str, ...]
    spacings: tuple[Spacing, ...]
    shapes: tuple[Shape, ...]
    modality: str = "CT"
    intensities: NormalizationStats | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not (len(self.case_ids) == len(self.spacings) == len(self.shapes)) or not self.case_ids:
            raise PartialsegError("a fingerprint needs one spacing and one shape per case, and at least one case")

    @property
    def median_spacing(self) -> Spacing:
        return tuple(float(s) for s in np.median(np.array(self.spacings), axis=0))  # type: ignore[return-value]

    def resampled_shapes(self, spacing: Spacing) -> np.ndarray:
        """``(N, 3)`` voxel counts of every case on a grid of ``spacing`` (the rounding of ``grid_for``)."""
        extent = np.array(self.shapes, dtype=np.float64) * np.array(self.spacings, dtype=np.float64)
        return np.maximum(1, np.floor(extent / np.asarray(spacing, dtype=np.float64) + 0.5)).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FINGERPRINT_FORMAT,
            "source": self.source,
            "modality": self.modality,
            "num_cases": len(self.case_ids),
            "median_spacing": list(self.median_spacing),
            "median_shape": [int(v) for v in np.median(np.array(self.shapes), axis=0)],
            "intensities": None if self.intensities is None else self.intensities.to_dict(),
            "cases": [
                {"id": c, "spacing": list(sp), "shape": list(sh)}
                for c, sp, sh in zip(self.case_ids, self.spacings, self.shapes, strict=True)
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | Path | None = None) -> DatasetFingerprint:
        if d.get("format") != FINGERPRINT_FORMAT:
            raise InputError(source, f"not a partialseg fingerprint (missing 'format': {FINGERPRINT_FORMAT!r})")
        try:
            cases = d["cases"]
            return cls(
                case_ids=tuple(str(c["id"]) for c in cases),
                spacings=tuple(tuple(float(v) for v in c["spacing"]) for c in cases),  # type: ignore[misc]
                shapes=tuple(tuple(int(v) for v in c["shape"]) for c in cases),  # type: ignore[misc]
                modality=str(d.get("modality", "CT")),
                intensities=None if d.get("intensities") is None else NormalizationStats.from_dict(d["intensities"]),
                source=str(d.get("source", "")),
            )
        except (KeyError, TypeError, ValueError, PartialsegError) as e:
            raise InputError(source, f"corrupt fingerprint ({type(e).__name__}: {e})") from None


def fingerprint_dataset(dataset: PartialDataset, *, intensities: bool = False, progress: bool = False) -> DatasetFingerprint:
    """Fingerprint ``dataset`` from its image headers (and, with ``intensities``, its foreground voxels)."""
    import nibabel as nib

    from partialseg.io import header_affine
    from partialseg.preprocessing.geometry import ras_orientation, ras_spacing
    from partialseg.preprocessing.normalisation import compute_normalization_stats

    spacings, shapes = [], []
    for case in dataset.cases:
        try:
            img = nib.load(str(case.image))
        except Exception as e:  # nibabel raises many types for corrupt headers
            raise InputError(case.image, f"cannot read as NIfTI ({type(e).__name__}: {e})") from None
        shape = tuple(int(s) for s in img.shape[:3])
        if len(img.shape) != 3:
            raise InputError(case.image, f"expected a 3D image, got shape {tuple(img.shape)}")
        affine = header_affine(img, case.image)
        ornt, _ = ras_orientation(affine, shape)  # type: ignore[arg-type]
        shapes.append(tuple(shape[int(np.flatnonzero(ornt[:, 0] == a)[0])] for a in range(3)))
        spacings.append(ras_spacing(affine))
    stats = compute_normalization_stats(dataset, progress=progress) if intensities else None
    return DatasetFingerprint(
        case_ids=tuple(c.case_id for c in dataset.cases),
        spacings=tuple(spacings),
        shapes=tuple(shapes),  # type: ignore[arg-type]
        modality=dataset.modality,
        intensities=stats,
        source=str(Path(dataset.root).resolve()),
    )


def fingerprint_prepared(prepared: PreparedDataset) -> DatasetFingerprint:
    """The fingerprint of the dataset a prepared cache was made from (its stored grid metadata)."""
    return DatasetFingerprint(
        case_ids=tuple(c.case_id for c in prepared.cases),
        spacings=tuple(c.meta.ras_spacing for c in prepared.cases),
        shapes=tuple(c.meta.ras_shape for c in prepared.cases),
        modality=str(prepared.info.get("modality", "CT")),
        intensities=prepared.stats,
        source=str(prepared.source or prepared.root),
    )
