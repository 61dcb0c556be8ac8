"""KiTS19 / KiTS21 (``case_XXXXX/imaging.nii.gz`` and ``segmentation.nii.gz``; labels 0 background,
1 kidney, 2 tumour, 3 cyst in KiTS21).

The single kidney label (with tumour and cyst merged into it by default) splits into
``kidney_right`` and ``kidney_left`` by connected component and the patient's side in world
coordinates (RAS+, through the affine; the midline is the body's centroid), as ``partialseg merge``
splits (:func:`partialseg.data.merge.split_left_right`). ``keep_tumours``: tumour and cyst stay
classes of their own (``kidney_tumour``, ``kidney_cyst``, not split). Cases without a segmentation
(the challenges' test cases) are skipped. Case group ``kits``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from partialseg.data.convert.common import read_pair, write_case
from partialseg.data.dataset import dataset_json, write_dataset_json
from partialseg.errors import InputError
from partialseg.io import atomic_output_dir
from partialseg.labels import LabelSpace
from partialseg.progress import progress as progress_bar

KITS_LABELS = {0: "background", 1: "kidney", 2: "tumour", 3: "cyst"}


def convert_kits(src: Path, out: Path, *, keep_tumours: bool = False, progress: bool = True) -> Path:
    """Convert a KiTS19/21 ``data`` folder ``src`` into the new dataset folder ``out``."""
    from partialseg.data.merge import body_midline_x, split_left_right

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise InputError(src, "folder does not exist")
    cases = sorted(p for p in src.iterdir() if p.is_dir() and p.name.startswith("case_"))
    if not cases:
        raise InputError(src, "no case_XXXXX folders (a KiTS19/21 'data' folder holds case_00000/imaging.nii.gz ...)")
    names = ("kidney_right", "kidney_left", *(("kidney_tumour", "kidney_cyst") if keep_tumours else ()))
    space = LabelSpace(names)
    annotated: dict[str, list[str]] = {}
    skipped, suspicious = [], []
    with atomic_output_dir(out) as tmp:
        for case in progress_bar(cases, desc="convert kits", unit="case", enabled=progress):
            image, seg = case / "imaging.nii.gz", case / "segmentation.nii.gz"
            if not seg.exists():
                if not image.exists():
                    raise InputError(case, "neither imaging.nii.gz nor segmentation.nii.gz")
                skipped.append(case.name)
                continue
            img, lab = read_pair(image, seg, set(KITS_LABELS))
            kidney = (lab.array == 1) if keep_tumours else (lab.array > 0)
            right, left, odd = split_left_right(kidney, img.affine, body_midline_x(img.array, img.affine))
            out_lab = np.zeros(lab.array.shape, np.int16)
            out_lab[right] = space.index("kidney_right")
            out_lab[left] = space.index("kidney_left")
            if keep_tumours:
                out_lab[lab.array == 2] = space.index("kidney_tumour")
                out_lab[lab.array == 3] = space.index("kidney_cyst")
            if odd:
                suspicious.append(case.name)
            write_case(tmp, case.name, image, out_lab, img.affine)
            annotated[case.name] = list(names)
        if not annotated:
            raise InputError(src, "no case has a segmentation.nii.gz")
        write_dataset_json(tmp, dataset_json(
            space, len(annotated), name=out.name, annotated=annotated, groups=dict.fromkeys(annotated, "kits"),
            extra={"partialseg": {"convert": {"format": "kits", "source": str(src.resolve()), "keep_tumours": keep_tumours,
                                              "skipped_without_segmentation": skipped}}},
        ))
    if suspicious:
        warnings.warn(f"kits: two or more large kidney components fell on one side of the midline in {suspicious}; "
                      "check those cases' left/right labels", stacklevel=2)
    return out


__all__ = ["convert_kits"]
