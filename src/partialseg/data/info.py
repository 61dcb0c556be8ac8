"""Summarise a dataset (``partialseg info``) from ``dataset.json`` and the NIfTI headers.

Only headers are read (nibabel loads lazily and the voxel data is never touched), so the
summary of a few hundred CT volumes takes seconds; ``check=True`` additionally loads every
file through ``PartialDataset.validate``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.data.dataset import PartialDataset
from partialseg.errors import InputError
from partialseg.progress import progress as progress_bar


def dataset_info(dataset: Path, *, check: bool = False) -> dict[str, Any]:
    """A JSON-serialisable summary of the dataset at ``dataset``.

    Keys: ``path``, ``name``, ``num_cases``, ``labels`` (``{value: name}``, background
    included), ``annotation_counts`` (``{class: {"cases", "percent"}}``), ``annotated_per_case``
    (min/median/max number of annotated classes), ``partial``, ``groups`` (``{group: {"cases",
    "classes", "uniform"}}``, ``uniform`` false when the group's cases annotate different sets),
    ``reference_labels`` (folder name or None), ``spacing`` and ``shape`` (``{"min", "median",
    "max"}``, one value per array axis), ``orientation`` (``{"RAS": n, ...}``), ``image_dtypes``,
    ``intensity`` (the header's calibrated display range ``cal_min``/``cal_max`` over all images,
    or None when the headers do not set it), ``provenance`` (``dataset.json``'s ``partialseg``
    record) and ``check`` (``"passed"``, or None when not run; a failed check raises).
    """
    import nibabel as nib

    ds = PartialDataset.load(dataset)
    space = ds.label_space
    n = len(ds.cases)

    counts = ds.annotation_counts()
    annotation_counts = {
        name: {"cases": k, "percent": round(100.0 * k / n, 1)} for name, k in counts.items()
    }
    sizes = [len(c.annotated) for c in ds.cases]

    group_sets: dict[str, list[frozenset[int]]] = {}
    for c in ds.cases:
        if c.group is not None:
            group_sets.setdefault(c.group, []).append(c.annotated)
    groups = {
        g: {
            "cases": len(sets),
            "classes": space.names_of(frozenset().union(*sets)),
            "uniform": len(set(sets)) == 1,
        }
        for g, sets in sorted(group_sets.items())
    }

    spacings, shapes, dtypes, cal = [], [], Counter(), []
    orientations: Counter[str] = Counter()
    for c in progress_bar(ds.cases, desc="info", unit="case", leave=False):
        try:
            img = nib.load(str(c.image))
            shape = tuple(int(s) for s in img.shape[:3])
            affine = np.asarray(img.affine, dtype=np.float64)
            dtype = str(img.get_data_dtype())
            cal_min, cal_max = float(img.header["cal_min"]), float(img.header["cal_max"])
        except Exception as e:  # nibabel raises many types for corrupt headers
            raise InputError(c.image, f"cannot read the NIfTI header ({type(e).__name__}: {e})") from None
        spacings.append(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
        shapes.append(shape)
        orientations["".join(nib.aff2axcodes(affine))] += 1
        dtypes[dtype] += 1
        if cal_max > cal_min:
            cal.append((cal_min, cal_max))

    if check:
        ds.validate()

    ref = ds.meta.get("reference_labels")
    return {
        "path": str(Path(dataset)),
        "name": ds.meta.get("name"),
        "num_cases": n,
        "labels": {str(i): space.name(i) for i in range(space.num_channels)},
        "annotation_counts": annotation_counts,
        "annotated_per_case": _stats1(sizes),
        "partial": ds.is_partial,
        "groups": groups,
        "reference_labels": ref or None,
        "spacing": _stats(np.array(spacings), digits=4),
        "shape": {k: [int(x) for x in v] for k, v in _stats(np.array(shapes), digits=1).items()},
        "orientation": dict(orientations.most_common()),
        "image_dtypes": dict(dtypes.most_common()),
        "intensity": None if len(cal) < n else {"min": min(a for a, _ in cal), "max": max(b for _, b in cal)},
        "provenance": ds.meta.get("partialseg"),
        "check": "passed" if check else None,
    }


def _stats(values: np.ndarray, digits: int) -> dict[str, list[float]]:
    """Per-column min/median/max."""
    return {
        "min": [round(float(x), digits) for x in values.min(axis=0)],
        "median": [round(float(x), digits) for x in np.median(values, axis=0)],
        "max": [round(float(x), digits) for x in values.max(axis=0)],
    }


def _stats1(values: list[int]) -> dict[str, float]:
    return {"min": min(values), "median": float(np.median(values)), "max": max(values)}


def _triple(v: list[float]) -> str:
    return " x ".join(f"{x:g}" for x in v)


def format_info(summary: dict[str, Any]) -> str:
    """Human-readable text for :func:`dataset_info`'s summary."""
    s = summary
    n = s["num_cases"]
    classes = [f"{v} {name}" for v, name in s["labels"].items() if v != "0"]
    lines = [
        f"dataset      {s['path']}" + (f"  ({s['name']})" if s.get("name") else ""),
        f"cases        {n}",
        f"labels       {len(classes)} classes: " + ", ".join(classes),
        f"partial      {'yes' if s['partial'] else 'no (every case fully annotated)'}",
    ]
    if s["partial"]:
        a = s["annotated_per_case"]
        lines.append(f"annotated    {a['min']:g} to {a['max']:g} classes per case (median {a['median']:g})")
    lines.append(f"reference    {s['reference_labels'] or 'none'}")
    lines.append("annotated cases per organ:")
    width = max(len(k) for k in s["annotation_counts"])
    for name, c in s["annotation_counts"].items():
        lines.append(f"  {name:<{width}}  {c['cases']:>5}/{n}  {c['percent']:5.1f}%")
    if s["groups"]:
        lines.append("groups:")
        for g, info in s["groups"].items():
            mixed = "" if info["uniform"] else "  (cases differ; union shown)"
            plural = "case" if info["cases"] == 1 else "cases"
            lines.append(f"  {g} ({info['cases']} {plural}): {', '.join(info['classes'])}{mixed}")
    for key, unit in (("spacing", "spacing (mm)"), ("shape", "shape (vox)")):
        st = s[key]
        lines.append(
            f"{unit:<12} min {_triple(st['min'])}   median {_triple(st['median'])}   max {_triple(st['max'])}"
        )
    lines.append("orientation  " + ", ".join(f"{k}: {v}" for k, v in s["orientation"].items()))
    lines.append("image dtype  " + ", ".join(f"{k}: {v}" for k, v in s["image_dtypes"].items()))
    if s["intensity"] is not None:
        lines.append(f"intensity    {s['intensity']['min']:g} to {s['intensity']['max']:g} (header cal_min/cal_max)")
    prov = s.get("provenance") or {}
    for step, p in prov.items():
        if step == "simulate" and isinstance(p, dict):
            detail = f"mode {p.get('mode')}, seed {p.get('seed')}" + (
                f", keep {p['keep']:g}" if p.get("keep") is not None else ""
            )
            lines.append(f"made by      simulate ({detail}) from {p.get('source')}")
        elif step == "merge" and isinstance(p, dict):
            lines.append(f"made by      merge of {len(p.get('sources', []))} sources ({p.get('mapping_file')})")
    lines.append(f"check        {'passed (all files loaded)' if s['check'] else 'not run (use --check)'}")
    return "\n".join(lines)
