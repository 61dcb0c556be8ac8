"""Medical Segmentation Decathlon CT tasks (Task03_Liver, Task07_Pancreas, Task09_Spleen, ...).

An MSD task folder holds ``dataset.json`` (``labels`` {"0": "background", "1": "liver", "2":
"cancer"}, ``modality``, ``training`` [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}])
and the two folders (plus macOS ``._`` files, ignored). Output: one organ class named through the
registry, every case annotating it; tumour labels ("cancer", "tumour", "tumor") merged into the
organ, or kept as ``<organ>_tumour`` with ``keep_tumours``; case group ``msd_<organ>``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from partialseg.data.convert.common import read_pair, write_case
from partialseg.data.dataset import dataset_json, write_dataset_json
from partialseg.errors import InputError
from partialseg.io import atomic_output_dir
from partialseg.labels import LabelSpace
from partialseg.progress import progress as progress_bar
from partialseg.registry import AMOS15

TUMOUR_NAMES = ("cancer", "tumour", "tumor")
#: MSD label names -> registry class names
ORGAN_NAMES = {"liver": "liver", "pancreas": "pancreas", "spleen": "spleen"}


def _read_task(src: Path) -> tuple[dict[int, str], list[tuple[Path, Path]]]:
    meta_file = src / "dataset.json"
    if not meta_file.is_file():
        raise InputError(src, "not an MSD task folder (no dataset.json)")
    try:
        meta = json.loads(meta_file.read_text())
        labels = {int(k): str(v).lower() for k, v in meta["labels"].items()}
        modality = {str(k): str(v) for k, v in meta.get("modality", {"0": "CT"}).items()}
        training = meta["training"]
    except (ValueError, KeyError, AttributeError, TypeError) as e:
        raise InputError(meta_file, f"not an MSD dataset.json with 'labels' and 'training' ({type(e).__name__}: {e})") from None
    if list(modality.values()) != ["CT"]:
        raise InputError(meta_file, f"modality {modality}: only single-channel CT tasks convert (MR is not supported yet)")
    pairs = []
    for item in training:
        try:
            pairs.append((src / str(item["image"]).removeprefix("./"), src / str(item["label"]).removeprefix("./")))
        except (KeyError, TypeError):
            raise InputError(meta_file, f"training entry {item!r} needs 'image' and 'label'") from None
    return labels, pairs


def convert_msd(src: Path, out: Path, *, keep_tumours: bool = False, progress: bool = True) -> Path:
    """Convert an MSD CT task folder ``src`` into the new dataset folder ``out``."""
    src, out = Path(src), Path(out)
    labels, pairs = _read_task(src)
    organs = [n for v, n in sorted(labels.items()) if v and n in ORGAN_NAMES]
    if len(organs) != 1:
        raise InputError(src / "dataset.json", f"labels {labels}: expected exactly one of the organs {sorted(ORGAN_NAMES)}")
    organ = ORGAN_NAMES[organs[0]]
    unknown = [n for v, n in labels.items() if v and n not in ORGAN_NAMES and n not in TUMOUR_NAMES]
    if unknown:
        raise InputError(src / "dataset.json", f"label(s) {unknown} are neither {organ} nor a tumour label {list(TUMOUR_NAMES)}")
    names = (organ, f"{organ}_tumour") if keep_tumours else (organ,)
    space = LabelSpace(names)
    lut = np.zeros(max(labels) + 1, np.int16)
    for v, n in labels.items():
        if v:
            lut[v] = space.index(organ) if n in ORGAN_NAMES or not keep_tumours else space.index(f"{organ}_tumour")
    assert organ in AMOS15
    group = f"msd_{organ}"
    annotated: dict[str, list[str]] = {}
    groups: dict[str, str] = {}
    with atomic_output_dir(out) as tmp:
        for image, label in progress_bar(pairs, desc=f"convert msd {organ}", unit="case", enabled=progress):
            if image.name.startswith("._"):
                continue
            case_id = image.name.removesuffix(".gz").removesuffix(".nii")
            img, lab = read_pair(image, label, set(labels))
            write_case(tmp, case_id, image, lut[lab.array], img.affine)
            annotated[case_id] = list(names)
            groups[case_id] = group
        if not annotated:
            raise InputError(src, "no training case")
        write_dataset_json(tmp, dataset_json(
            space, len(annotated), name=out.name, annotated=annotated, groups=groups,
            extra={"partialseg": {"convert": {"format": "msd", "source": str(src.resolve()), "keep_tumours": keep_tumours}}},
        ))
    return out


__all__ = ["convert_msd"]
