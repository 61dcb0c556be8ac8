"""Collections whose ``dataset.json`` names its labels (nnU-Net v1 / MSD style: ``labels`` {"1": "liver",
...} and a ``training`` list; or nnU-Net v2: ``labels`` {"liver": 1, ...} and ``imagesTr/<id>_0000``):
WORD, FLARE22, and any such folder. Label names map to registry classes through
:data:`partialseg.registry.CLASS_ALIASES`; a single label for a left/right pair ("adrenal",
"kidney") splits by world coordinates (:data:`~partialseg.registry.PAIRED_ALIASES`); names with no
registry class (colon, intestine, femur heads, ...) become 0 and are listed in the output's
``dataset.json``. Case group: ``group`` (default: the source folder's name).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from partialseg.data.convert.common import read_pair, write_case
from partialseg.errors import InputError
from partialseg.registry import AMOS15, CLASS_ALIASES, PAIRED_ALIASES


def normalise(name: str) -> str:
    return re.sub(r"[\s_\-()\[\]/]", "", name.lower())


def _read(src: Path) -> tuple[dict[int, str], list[tuple[str, Path, Path]]]:
    meta_file = src / "dataset.json"
    try:
        meta = json.loads(meta_file.read_text())
        raw = meta["labels"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(meta_file, f"not a dataset.json with 'labels' ({type(e).__name__}: {e})") from None
    try:  # v1: {"1": "liver"}; v2: {"liver": 1}
        labels = {int(k): str(v) for k, v in raw.items()} if all(str(k).isdigit() for k in raw) else \
            {int(v): str(k) for k, v in raw.items()}
    except (TypeError, ValueError):
        raise InputError(meta_file, f"labels {raw!r} are neither value -> name nor name -> value") from None
    pairs = []
    if "training" in meta and meta["training"]:
        for item in meta["training"]:
            image, label = src / str(item["image"]).removeprefix("./"), src / str(item["label"]).removeprefix("./")
            pairs.append((image.name.removesuffix(".gz").removesuffix(".nii"), image, label))
    else:
        for image in sorted((src / "imagesTr").glob("*_0000.nii.gz")):
            cid = image.name.removesuffix("_0000.nii.gz")
            pairs.append((cid, image, src / "labelsTr" / f"{cid}.nii.gz"))
    if not pairs:
        raise InputError(src, "no training case (neither a 'training' list nor imagesTr/<id>_0000.nii.gz)")
    return labels, pairs


def convert_named(src: Path, out: Path, *, group: str | None = None, keep_tumours: bool = False, progress: bool = True) -> Path:
    """Convert a folder whose dataset.json names its labels into the new dataset folder ``out``."""
    from partialseg.data.dataset import dataset_json, write_dataset_json
    from partialseg.data.merge import body_midline_x, split_left_right
    from partialseg.io import atomic_output_dir
    from partialseg.labels import LabelSpace
    from partialseg.progress import progress as progress_bar

    src, out = Path(src), Path(out)
    labels, pairs = _read(src)
    plain: dict[int, str] = {}
    paired: dict[int, tuple[str, str]] = {}
    dropped: list[str] = []
    for v, name in labels.items():
        if v == 0:
            continue
        key = normalise(name)
        if key in CLASS_ALIASES:
            plain[v] = CLASS_ALIASES[key]
        elif key in PAIRED_ALIASES:
            paired[v] = PAIRED_ALIASES[key]
        else:
            dropped.append(name)
    names = set(plain.values()) | {n for pair in paired.values() for n in pair}
    if not names:
        raise InputError(src / "dataset.json", f"none of the labels {sorted(labels.values())} names an organ partialseg knows")
    space = LabelSpace(tuple(n for n in AMOS15 if n in names))
    lut = np.zeros(max(labels) + 1, np.int16)
    for v, n in plain.items():
        lut[v] = space.index(n)
    group = group or src.name
    with atomic_output_dir(out) as tmp:
        for case_id, image, label in progress_bar(pairs, desc=f"convert {group}", unit="case", enabled=progress):
            img, lab = read_pair(image, label, set(labels))
            out_lab = lut[lab.array]
            for v, (right_name, left_name) in paired.items():
                right, left, _ = split_left_right(lab.array == v, img.affine, body_midline_x(img.array, img.affine))
                out_lab[right], out_lab[left] = space.index(right_name), space.index(left_name)
            write_case(tmp, case_id, image, out_lab, img.affine)
        ids = [c for c, _, _ in pairs]
        write_dataset_json(tmp, dataset_json(
            space, len(ids), name=out.name, annotated={c: list(space.names) for c in ids}, groups=dict.fromkeys(ids, group),
            extra={"partialseg": {"convert": {"format": "named", "source": str(src.resolve()), "dropped_labels": sorted(dropped)}}},
        ))
    return out


__all__ = ["convert_named", "normalise"]
