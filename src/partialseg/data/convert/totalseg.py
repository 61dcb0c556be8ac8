"""TotalSegmentator v2 (``sXXXX/ct.nii.gz`` and ``sXXXX/segmentations/<structure>.nii.gz``, one binary
mask per structure): the structures with a registry class (:data:`~partialseg.registry.TOTALSEG_TO_AMOS15`,
the AMOS 15 organs) become one label map. A case annotates the classes whose mask file it has (an
empty mask means "absent", a missing file "not annotated"). Case group ``totalseg``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from partialseg.data.convert.common import write_case
from partialseg.errors import InputError
from partialseg.io import check_same_grid, load_volume
from partialseg.registry import AMOS15, TOTALSEG_TO_AMOS15


def convert_totalseg(src: Path, out: Path, *, keep_tumours: bool = False, progress: bool = True) -> Path:
    """Convert a TotalSegmentator v2 folder ``src`` into the new dataset folder ``out``."""
    from partialseg.data.dataset import dataset_json, write_dataset_json
    from partialseg.io import atomic_output_dir
    from partialseg.labels import LabelSpace
    from partialseg.progress import progress as progress_bar

    src, out = Path(src), Path(out)
    cases = sorted(p for p in src.iterdir() if p.is_dir() and (p / "ct.nii.gz").exists()) if src.is_dir() else []
    if not cases:
        raise InputError(src, "no sXXXX/ct.nii.gz case folders (a TotalSegmentator v2 dataset folder)")
    space = LabelSpace(AMOS15)
    annotated: dict[str, list[str]] = {}
    with atomic_output_dir(out) as tmp:
        for case in progress_bar(cases, desc="convert totalseg", unit="case", enabled=progress):
            image = load_volume(case / "ct.nii.gz")
            label = np.zeros(image.array.shape, np.int16)
            have = []
            for structure, name in TOTALSEG_TO_AMOS15.items():
                f = case / "segmentations" / f"{structure}.nii.gz"
                if not f.exists():
                    continue
                mask = load_volume(f)
                check_same_grid(image, mask)
                values = np.unique(mask.array)
                if not set(values.tolist()) <= {0, 1}:
                    raise InputError(f, f"a TotalSegmentator mask holds 0 and 1 only; found {values[:10].tolist()}")
                label[mask.array > 0] = space.index(name)
                have.append(name)
            if not have:
                raise InputError(case / "segmentations", "no mask of any of the AMOS 15 organs")
            write_case(tmp, case.name, case / "ct.nii.gz", label, image.affine)
            annotated[case.name] = [n for n in space.names if n in have]
        write_dataset_json(tmp, dataset_json(
            space, len(annotated), name=out.name, annotated=annotated, groups=dict.fromkeys(annotated, "totalseg"),
            extra={"partialseg": {"convert": {"format": "totalseg", "source": str(src.resolve())}}},
        ))
    return out


__all__ = ["convert_totalseg"]
