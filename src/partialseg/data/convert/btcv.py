"""BTCV (Synapse multi-organ CT, MICCAI 2015): ``img/img0001.nii.gz`` and ``label/label0001.nii.gz``
(the ``RawData/Training`` folder, or any folder holding ``img/`` and ``label/``), 13 labels mapped by
:data:`partialseg.registry.BTCV13`; the portal/splenic vein has no registry class and becomes 0
(it is outside the label space, so nothing is taught about it). Case ids ``btcv_0001``; group ``btcv``.
"""

from __future__ import annotations

from pathlib import Path

from partialseg.data.convert.common import convert_pairs
from partialseg.errors import InputError
from partialseg.registry import BTCV13


def convert_btcv(src: Path, out: Path, *, keep_tumours: bool = False, progress: bool = True) -> Path:
    """Convert a BTCV ``Training`` folder ``src`` into the new dataset folder ``out`` (``keep_tumours``: no tumours in BTCV)."""
    src, out = Path(src), Path(out)
    img_dir, lab_dir = src / "img", src / "label"
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise InputError(src, "a BTCV folder holds img/imgXXXX.nii.gz and label/labelXXXX.nii.gz")
    pairs = []
    for image in sorted(img_dir.glob("img*.nii*")):
        number = image.name.removeprefix("img").split(".")[0]
        label = lab_dir / image.name.replace("img", "label", 1)
        if not label.exists():
            raise InputError(label, f"label of {image.name} does not exist")
        pairs.append((f"btcv_{number}", image, label))
    return convert_pairs(pairs, out, BTCV13, group="btcv", source=src, fmt="btcv", progress=progress)


__all__ = ["convert_btcv"]
