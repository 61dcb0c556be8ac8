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


__all__ = ["read_pair", "write_case"]
