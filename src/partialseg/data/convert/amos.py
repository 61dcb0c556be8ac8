"""AMOS22 (``dataset.json`` with a ``training`` list, ``imagesTr/amos_XXXX.nii.gz``, ``labelsTr/``): the 15
organs in AMOS numbering, which is the registry's :data:`~partialseg.registry.AMOS15`. AMOS mixes CT
and MR scans; case ids up to 500 are CT, above 500 MR (AMOS22's numbering). A dataset has one channel,
so ``modality`` picks which scans convert ("CT", default, or "MR": ``channel_names`` {"0": "MR"}).
Case group ``amos_ct`` or ``amos_mr``.
"""

from __future__ import annotations

import json
from pathlib import Path

from partialseg.data.convert.common import convert_pairs
from partialseg.errors import InputError
from partialseg.registry import AMOS15

#: AMOS22 case numbers above this are MR scans
LAST_CT_CASE = 500


def convert_amos(src: Path, out: Path, *, modality: str = "CT", keep_tumours: bool = False, progress: bool = True) -> Path:
    """Convert an AMOS22 folder ``src`` (its CT or MR scans) into the new dataset folder ``out``."""
    src, out = Path(src), Path(out)
    if modality not in ("CT", "MR"):
        raise InputError(src, f"modality must be 'CT' or 'MR', got {modality!r}")
    meta_file = src / "dataset.json"
    try:
        training = json.loads(meta_file.read_text())["training"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(meta_file, f"not an AMOS22 dataset.json with a 'training' list ({type(e).__name__}: {e})") from None
    pairs = []
    for item in training:
        image = src / str(item["image"]).removeprefix("./")
        label = src / str(item["label"]).removeprefix("./")
        case_id = image.name.removesuffix(".gz").removesuffix(".nii")
        try:
            number = int(case_id.rsplit("_", 1)[1])
        except (IndexError, ValueError):
            raise InputError(meta_file, f"case {case_id!r} is not named amos_<number>") from None
        if (number <= LAST_CT_CASE) == (modality == "CT"):
            pairs.append((case_id, image, label))
    values = {i + 1: n for i, n in enumerate(AMOS15)}
    return convert_pairs(pairs, out, values, group=f"amos_{modality.lower()}", source=src, fmt="amos", modality=modality,
                         progress=progress)


__all__ = ["LAST_CT_CASE", "convert_amos"]
