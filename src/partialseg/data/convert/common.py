"""What every converter shares: reading an image/label pair on one grid, checking label values,
and writing the converted case and the dataset.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from partialseg.errors import InputError
from partialseg.io import Volume, check_same_grid, load_volume, save_volume


def read_pair(image: Path, label: Path, allowed: set[int]) -> tuple[Volume, Volume]:
    """The image and its label map, on the same grid, with label values only from ``allowed``."""
    for p in (image, label):
        if not p.is_file():
            raise InputError(p, "file does not exist")
    img = load_volume(image)
    lab = load_volume(label)
    check_same_grid(img, lab)
    values = np.unique(lab.array)
    if not np.all(np.equal(np.mod(values, 1), 0)):
        raise InputError(label, "label map holds non-integer values")
    bad = sorted(int(v) for v in values if int(v) not in allowed)
    if bad:
        raise InputError(label, f"label value(s) {bad} are not defined by this format (defined: {sorted(allowed)})")
    return img, Volume(lab.array.astype(np.int16), lab.affine, lab.path)


def write_case(tmp: Path, case_id: str, image: Path, label: np.ndarray, affine: np.ndarray) -> None:
    """``imagesTr/<id>_0000.nii.gz`` (the source image copied, gzipped if it was not) and ``labelsTr/<id>.nii.gz``."""
    import gzip
    import shutil

    (tmp / "imagesTr").mkdir(exist_ok=True)
    (tmp / "labelsTr").mkdir(exist_ok=True)
    dst = tmp / "imagesTr" / f"{case_id}_0000.nii.gz"
    if image.name.endswith(".gz"):
        shutil.copyfile(image, dst)
    else:
        with image.open("rb") as f, gzip.open(dst, "wb") as g:
            shutil.copyfileobj(f, g)
    save_volume(label.astype(np.uint8), affine, tmp / "labelsTr" / f"{case_id}.nii.gz")


def convert_pairs(
    pairs: list[tuple[str, Path, Path]],
    out: Path,
    values: dict[int, str | None],
    *,
    group: str,
    source: Path,
    fmt: str,
    modality: str = "CT",
    progress: bool = True,
) -> Path:
    """Write ``(case id, image, label)`` pairs whose label values mean ``values`` (value -> registry class,
    None: dropped to 0) as a dataset in ``out``: every case annotates every kept class, case group ``group``."""
    from partialseg.data.dataset import dataset_json, write_dataset_json
    from partialseg.io import atomic_output_dir
    from partialseg.labels import LabelSpace
    from partialseg.progress import progress as progress_bar
    from partialseg.registry import AMOS15

    kept = [n for _, n in sorted(values.items()) if n is not None]
    space = LabelSpace(tuple(sorted(kept, key=lambda n: AMOS15.index(n) if n in AMOS15 else len(AMOS15))))
    lut = np.zeros(max(values) + 1, np.int16)
    for v, n in values.items():
        lut[v] = 0 if n is None else space.index(n)
    if not pairs:
        raise InputError(source, "no training case")
    with atomic_output_dir(out) as tmp:
        for case_id, image, label in progress_bar(pairs, desc=f"convert {fmt}", unit="case", enabled=progress):
            img, lab = read_pair(image, label, {0, *values})
            write_case(tmp, case_id, image, lut[lab.array], img.affine)
        ids = [c for c, _, _ in pairs]
        write_dataset_json(tmp, dataset_json(
            space, len(ids), name=out.name, modality=modality, annotated={c: list(space.names) for c in ids},
            groups=dict.fromkeys(ids, group),
            extra={"partialseg": {"convert": {"format": fmt, "source": str(source.resolve()),
                                              "dropped_labels": sorted(v for v, n in values.items() if n is None)}}},
        ))
    return out


__all__ = ["convert_pairs", "read_pair", "write_case"]
