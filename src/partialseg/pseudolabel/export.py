"""``partialseg pseudolabel``: export a dataset with pseudo-full labels (nnU-Net v2 raw layout).

Each case's label map is the user's partial label map with the last IPnP round's pseudo-labels
filled in where the user's map is 0 (restored to the original image grid). ``annotated_classes``
lists annotated + pseudo-labelled classes, so nnU-Net (or partialseg) can train on it; the key
``pseudo_labelled_classes`` says which of them are pseudo-labels.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from partialseg.data.dataset import PartialDataset, dataset_json, write_dataset_json
from partialseg.errors import InputError
from partialseg.io import atomic_output_dir, save_volume

PSEUDO_KEY = "pseudo_labelled_classes"


def last_pseudo_round(run: Path) -> Path:
    rounds = sorted((p for p in (run / "pseudo").glob("round_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[1]))
    if not rounds:
        raise InputError(run, "no pseudo-labels in this run folder (train it with --method ipnp or pfl first)")
    return rounds[-1]


def export_pseudo_labels(run: str | Path, dataset: str | Path, out: str | Path, *, progress: bool = True) -> Path:
    from partialseg.preprocessing import PreparedDataset, restore_to_original
    from partialseg.progress import progress as progress_bar
    from partialseg.pseudolabel.store import has_pseudo, load_pseudo

    run, out = Path(run), Path(out)
    ds = PartialDataset.load(dataset)
    pdir = last_pseudo_round(run)
    # IPnP keeps its round-0 split, PFL its student's; both name the prepared cache the labels are on
    split = next((f for f in (run / "round_0" / "split.json", run / "student" / "split.json") if f.exists()), None)
    if split is None:
        raise InputError(run, "no split.json in round_0/ or student/: not an ipnp or pfl run folder")
    prepared = PreparedDataset.load(Path(json.loads(split.read_text())["prepared"]))
    if prepared.label_space != ds.label_space:
        raise InputError(ds.root / "dataset.json", f"label space differs from the one run {run} was trained with")
    annotated: dict[str, list[str]] = {}
    pseudo_names: dict[str, list[str]] = {}
    with atomic_output_dir(out) as tmp:
        for case in progress_bar(ds.cases, desc="export pseudo-labels", unit="case", enabled=progress):
            image = case.load_image()
            label = case.load_label(ds.label_space, image)
            merged = label.array.copy()
            pseudo: frozenset[int] = frozenset()
            if has_pseudo(pdir, case.case_id):
                pp_label, pseudo, _ = load_pseudo(pdir, case.case_id)
                meta = prepared.case(case.case_id).meta
                restored = restore_to_original(pp_label.astype(np.int16), meta, is_label=True)
                fill = (merged == 0) & np.isin(restored, sorted(pseudo))
                merged[fill] = restored[fill]
            (tmp / "imagesTr").mkdir(exist_ok=True)
            shutil.copyfile(case.image, tmp / "imagesTr" / case.image.name)
            save_volume(merged.astype(np.uint8 if ds.label_space.num_classes < 256 else np.int16), label.affine,
                        tmp / "labelsTr" / f"{case.case_id}{ds.file_ending}")
            if case.reference is not None:
                (tmp / "labelsRef").mkdir(exist_ok=True)
                shutil.copyfile(case.reference, tmp / "labelsRef" / case.reference.name)
            annotated[case.case_id] = ds.label_space.names_of(case.annotated | pseudo)
            pseudo_names[case.case_id] = ds.label_space.names_of(pseudo)
        meta = dataset_json(
            ds.label_space, len(ds.cases), name=f"{ds.meta.get('name', 'dataset')}_pseudo",
            annotated=annotated, reference_folder="labelsRef" if any(c.reference for c in ds.cases) else None,
            groups={c.case_id: c.group for c in ds.cases if c.group} or None,
            extra={PSEUDO_KEY: pseudo_names, "partialseg": {"pseudolabel": {"run": str(run.resolve()), "round": pdir.name,
                                                                             "source": str(ds.root.resolve())}}},
        )
        write_dataset_json(tmp, meta)
    return out
