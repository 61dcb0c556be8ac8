"""Merge several nnU-Net v2 raw datasets with different label sets into one (``partialseg merge``).

The mapping file (YAML or JSON; see ``examples/merge_kits_msd.yaml``)::

    name: kits_msd                   # optional: dataset.json "name" (default: the output folder's name)
    labels: amos15                   # target label space: a registered name or a list of class names
    split:                           # optional: how left/right splits find the patient's midline
      midline: body                  #   'body' (default) or 'grid_center'
      body_hu: -500                  #   body = image voxels above this value (HU)
    sources:
      - path: kits19                 # nnU-Net v2 raw dataset folder; relative to the mapping file's folder
        prefix: kits                 # optional: case ids become kits_<id>
        group: kits                  # optional: case group (default: prefix, else the folder name)
        map:                         # source label NAME (its dataset.json) -> target
          kidney: {split: left_right, into: [kidney_right, kidney_left]}   # [patient right, patient left]
          tumor: {split: left_right, into: [kidney_right, kidney_left]}    # tumour merged into its organ
          cyst: null                 # explicitly dropped, no warning
      - path: msd_spleen
        prefix: spleen
        map: {spleen: spleen}

Map values: a target class name; ``{split: left_right, into: [right_class, left_class]}`` (or
``{split: left_right, right: ..., left: ...}``); or ``null``. Several source labels may map to one
target. A source label that is not in the map is dropped: its voxels become 0 and a warning says
so (``null`` drops it silently). Dropping is harmless for training only because the annotated
set below is built from the map: a target class never mapped from a source is unannotated in
that source's cases, so its voxels being 0 there says nothing.

Annotated set of a merged case: the target classes its source maps to, keeping a target only
when every source label mapped into it is annotated in that case (matters for a source that is
itself partial: a kidney whose tumour is unannotated has holes, so it is not a complete label).

Left/right split: connected components (26-connectivity) of the union of the source labels that
share one split; a component goes to the patient-right class when its centroid's world x (RAS+:
+x is the patient's right, computed through the affine, never from array indices) exceeds the
midline, else to the patient-left class. The midline is the world x of the centroid of the body
(image voxels above ``body_hu``, default -500 HU: soft tissue and bone, not air); with no such
voxel, or ``midline: grid_center``, it is the world x of the image grid's centre. Small fragments
(below 10 % of the largest component) are assigned by their own centroid too; a warning names the
cases where two or more large components fall on one side (e.g. a midline pulled off by the table).

Images are copied unchanged (an uncompressed ``.nii`` is gzipped byte for byte); labels are
written on the image grid. The provenance goes to ``dataset.json`` under ``partialseg.merge``.
"""

from __future__ import annotations

import gzip
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.data.dataset import Case, PartialDataset, dataset_json, write_dataset_json
from partialseg.data.simulate import (
    as_label_values,
    check_label_on_grid,
    image_header_grid,
    label_dtype,
    read_mapping_file,
    refuse_output_inside,
)
from partialseg.errors import InputError, PartialsegError
from partialseg.io import atomic_output_dir, load_volume, save_volume
from partialseg.labels import LabelSpace
from partialseg.progress import progress as progress_bar

MIDLINES = ("body", "grid_center")
DEFAULT_BODY_HU = -500.0
#: components below this fraction of the largest are fragments (they do not trigger the same-side warning)
FRAGMENT_FRACTION = 0.1

_SOURCE_KEYS = frozenset({"path", "prefix", "group", "map"})
_TOP_KEYS = frozenset({"name", "labels", "split", "sources"})


@dataclass(frozen=True)
class SplitSettings:
    """Where the patient's midline is taken for left/right splits."""

    midline: str = "body"
    body_hu: float = DEFAULT_BODY_HU


@dataclass
class SourceSpec:
    """One source dataset and its label map, checked against both label spaces."""

    path: Path
    prefix: str | None
    group: str
    plain: dict[str, str] = field(default_factory=dict)  # source label -> target class
    splits: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (right, left) -> source labels
    dropped: list[str] = field(default_factory=list)  # explicitly mapped to null

    def case_id(self, source_id: str) -> str:
        return f"{self.prefix}_{source_id}" if self.prefix else source_id

    def targets_of(self, source_label: str) -> tuple[str, ...]:
        if source_label in self.plain:
            return (self.plain[source_label],)
        for pair, names in self.splits.items():
            if source_label in names:
                return pair
        return ()

    def mapped(self) -> list[str]:
        return list(self.plain) + [n for names in self.splits.values() for n in names]

    def describe(self) -> dict[str, Any]:
        """The normalised map, for the provenance record."""
        m: dict[str, Any] = dict(self.plain)
        for (right, left), names in self.splits.items():
            for n in names:
                m[n] = {"split": "left_right", "right": right, "left": left}
        for n in self.dropped:
            m[n] = None
        return {"path": str(self.path), "prefix": self.prefix, "group": self.group, "map": m}


@dataclass
class MergePlan:
    name: str | None
    target: LabelSpace
    split: SplitSettings
    sources: list[SourceSpec]
    raw: dict[str, Any]


# ---- reading the mapping ------------------------------------------------------------------


def read_merge_mapping(mapping: Path) -> MergePlan:
    """Parse and check the mapping file (not the source datasets' labels; see ``_bind``)."""
    mapping = Path(mapping)
    raw = read_mapping_file(mapping)
    if not isinstance(raw, dict):
        raise InputError(mapping, "expected a mapping with the keys 'labels' and 'sources'")
    extra = sorted(set(map(str, raw)) - _TOP_KEYS)
    if extra:
        raise InputError(mapping, f"unknown keys {extra}; allowed: {sorted(_TOP_KEYS)}")
    target = _target_space(raw.get("labels"), mapping)
    split = _split_settings(raw.get("split"), mapping)
    name = raw.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise InputError(mapping, "'name' must be a non-empty string")
    sources_raw = raw.get("sources")
    if not isinstance(sources_raw, list) or not sources_raw:
        raise InputError(mapping, "'sources' must be a non-empty list of source datasets")
    sources = [_source_spec(s, i, mapping, target) for i, s in enumerate(sources_raw, start=1)]
    return MergePlan(name, target, split, sources, raw)


def _target_space(labels: Any, mapping: Path) -> LabelSpace:
    if isinstance(labels, str):
        try:
            return LabelSpace.named(labels)
        except ValueError as e:
            raise InputError(mapping, f"'labels': {e}") from None
    if isinstance(labels, list) and labels and all(isinstance(n, str) for n in labels):
        try:
            return LabelSpace(tuple(labels))
        except ValueError as e:
            raise InputError(mapping, f"'labels': {e}") from None
    raise InputError(mapping, "'labels' must be a registered label space name (e.g. amos15) or a list of class names")


def _split_settings(split: Any, mapping: Path) -> SplitSettings:
    if split is None:
        return SplitSettings()
    if not isinstance(split, dict) or set(split) - {"midline", "body_hu"}:
        raise InputError(mapping, "'split' may only hold 'midline' (body | grid_center) and 'body_hu' (a number)")
    midline = split.get("midline", "body")
    if midline not in MIDLINES:
        raise InputError(mapping, f"split.midline must be one of {list(MIDLINES)}, got {midline!r}")
    body_hu = split.get("body_hu", DEFAULT_BODY_HU)
    if not isinstance(body_hu, (int, float)) or isinstance(body_hu, bool):
        raise InputError(mapping, f"split.body_hu must be a number, got {body_hu!r}")
    return SplitSettings(midline, float(body_hu))


def _source_spec(entry: Any, i: int, mapping: Path, target: LabelSpace) -> SourceSpec:
    where = f"source {i}"
    if not isinstance(entry, dict):
        raise InputError(mapping, f"{where} must be a mapping with 'path' and 'map'")
    extra = sorted(set(map(str, entry)) - _SOURCE_KEYS)
    if extra:
        raise InputError(mapping, f"{where}: unknown keys {extra}; allowed: {sorted(_SOURCE_KEYS)}")
    if not isinstance(entry.get("path"), str) or not entry["path"]:
        raise InputError(mapping, f"{where} needs 'path', the source dataset folder")
    path = Path(entry["path"]).expanduser()
    if not path.is_absolute():
        path = mapping.resolve().parent / path
    where = f"source {i} ({entry['path']})"
    if not path.is_dir():
        raise InputError(mapping, f"{where}: folder {path} does not exist")
    prefix = entry.get("prefix")
    for key, value in (("prefix", prefix), ("group", entry.get("group"))):
        if value is not None and (not isinstance(value, str) or not value or "/" in value or value != value.strip()):
            raise InputError(mapping, f"{where}: '{key}' must be a non-empty name without '/' or spaces at the ends")
    group = entry.get("group") or prefix or path.name
    spec = SourceSpec(path=path, prefix=prefix, group=group)
    m = entry.get("map")
    if not isinstance(m, dict) or not m:
        raise InputError(mapping, f"{where} needs 'map': {{source label name: target}}")
    for src_name, tgt in m.items():
        if not isinstance(src_name, str):
            raise InputError(mapping, f"{where}: map keys are source label names, got {src_name!r}")
        if src_name == "background":
            raise InputError(mapping, f"{where}: 'background' is always 0 and cannot be mapped")
        if tgt is None:
            spec.dropped.append(src_name)
        elif isinstance(tgt, str):
            _check_target(tgt, target, mapping, where, src_name)
            spec.plain[src_name] = tgt
        elif isinstance(tgt, dict):
            pair = _split_pair(tgt, mapping, where, src_name)
            for t in pair:
                _check_target(t, target, mapping, where, src_name)
            spec.splits.setdefault(pair, []).append(src_name)
        else:
            raise InputError(mapping, f"{where}: map[{src_name!r}] must be a class name, a split or null")
    if not spec.plain and not spec.splits:
        raise InputError(mapping, f"{where} maps no label to the target space")
    return spec


def _check_target(name: str, target: LabelSpace, mapping: Path, where: str, src_name: str) -> None:
    if name not in target.names:
        raise InputError(
            mapping, f"{where}: map[{src_name!r}] names the target class {name!r}, which is not in {list(target.names)}"
        )


def _split_pair(spec: Mapping[str, Any], mapping: Path, where: str, src_name: str) -> tuple[str, str]:
    bad = f"{where}: map[{src_name!r}] must be {{split: left_right, into: [right_class, left_class]}}"
    if spec.get("split") != "left_right":
        raise InputError(mapping, bad + f" (split {spec.get('split')!r} is not supported)")
    if "into" in spec:
        into = spec["into"]
        if set(spec) - {"split", "into"} or not isinstance(into, list) or len(into) != 2:
            raise InputError(mapping, bad)
        right, left = into
    else:
        if set(spec) != {"split", "right", "left"}:
            raise InputError(mapping, bad + " or {split: left_right, right: ..., left: ...}")
        right, left = spec["right"], spec["left"]
    if not isinstance(right, str) or not isinstance(left, str) or right == left:
        raise InputError(mapping, bad + " with two different classes")
    return right, left


def _bind(spec: SourceSpec, source: PartialDataset, mapping: Path, target: LabelSpace) -> None:
    """Check the map's keys against the source's own labels; warn about labels left out."""
    names = source.label_space.names
    unknown = [n for n in [*spec.mapped(), *spec.dropped] if n not in names]
    if unknown:
        raise InputError(
            mapping, f"source {spec.path}: labels {unknown} are not in its dataset.json, whose labels are {list(names)}"
        )
    left_out = [n for n in names if n not in spec.mapped() and n not in spec.dropped]
    if left_out:
        also_target = [n for n in left_out if n in target.names]
        hint = f"; {also_target} are also target classes: map them to keep them" if also_target else ""
        warnings.warn(
            f"{mapping}: source {spec.path}: labels {left_out} are not in the map; their voxels become 0 "
            f"(map them to null to silence this){hint}",
            stacklevel=3,
        )


# ---- left/right -------------------------------------------------------------------------


def body_midline_x(image: np.ndarray, affine: np.ndarray, settings: SplitSettings = SplitSettings()) -> float:
    """World x (mm, RAS+) of the patient's midline: the body's centroid, or the grid centre."""
    center = (np.asarray(image.shape, dtype=np.float64) - 1) / 2
    if settings.midline == "body":
        body = image > settings.body_hu
        n = int(body.sum())
        if n:
            # centroid from per-axis marginals: no index arrays the size of the body
            center = np.array(
                [
                    float((body.sum(axis=tuple(a for a in range(3) if a != ax)) * np.arange(image.shape[ax])).sum()) / n
                    for ax in range(3)
                ]
            )
    return float(affine[0, :3] @ center + affine[0, 3])


def split_left_right(
    mask: np.ndarray, affine: np.ndarray, midline_x: float
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Split ``mask`` into (patient-right, patient-left) by connected component and world x.

    Returns the two masks and whether two or more large components (at least
    ``FRAGMENT_FRACTION`` of the largest) ended up on the same side, which deserves a look.
    """
    import cc3d

    cc = cc3d.connected_components(mask.astype(np.uint8, copy=False), connectivity=26)
    stats = cc3d.statistics(cc)
    counts = np.asarray(stats["voxel_counts"][1:], dtype=np.float64)
    if counts.size == 0:
        empty = np.zeros(mask.shape, bool)
        return empty, empty.copy(), False
    centroids = np.asarray(stats["centroids"][1:], dtype=np.float64)
    world_x = centroids @ affine[0, :3] + affine[0, 3]
    is_right = np.concatenate([[False], world_x > midline_x])
    right = is_right[cc]
    left = mask.astype(bool) & ~right
    large = counts >= FRAGMENT_FRACTION * counts.max()
    suspicious = bool(large.sum() >= 2 and len(set(is_right[1:][large].tolist())) == 1)
    return right, left, suspicious


# ---- the command --------------------------------------------------------------------------


def merge_datasets(mapping: Path, out: Path) -> Path:
    """Build the merged dataset described by ``mapping`` in the new folder ``out``.

    See the module docstring for the mapping format and the rules. Errors in the mapping
    (unknown target class or source label, missing source folder, duplicate case ids) are
    ``InputError`` naming the mapping file; the sources are only read.
    """
    mapping, out = Path(mapping), Path(out)
    plan = read_merge_mapping(mapping)
    loaded: list[tuple[SourceSpec, PartialDataset]] = []
    seen: dict[str, Path] = {}
    for spec in plan.sources:
        refuse_output_inside(out, spec.path)
        src = PartialDataset.load(spec.path)
        _bind(spec, src, mapping, plan.target)
        for c in src.cases:
            new_id = spec.case_id(c.case_id)
            if new_id in seen:
                raise InputError(
                    mapping,
                    f"case id {new_id!r} comes from both {seen[new_id]} and {spec.path}; give the sources different 'prefix' values",
                )
            seen[new_id] = spec.path
        if src.file_ending not in (".nii.gz", ".nii"):
            raise InputError(spec.path / "dataset.json", f"file_ending {src.file_ending!r}: partialseg reads NIfTI only")
        loaded.append((spec, src))

    target = plan.target
    annotated: dict[str, list[str]] = {}
    groups: dict[str, str] = {}
    skipped: list[str] = []
    suspicious: list[str] = []
    records: list[dict[str, Any]] = []
    with atomic_output_dir(out) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        for spec, src in loaded:
            lut = _plain_lut(spec, src.label_space, target)
            written = 0
            for case in progress_bar(src.cases, desc=f"merge {spec.group}", unit="case"):
                new_id = spec.case_id(case.case_id)
                phi = _annotated_targets(spec, src.label_space, case)
                if not phi:
                    skipped.append(new_id)
                    continue
                if _merge_case(case, new_id, tmp, spec, src.label_space, target, lut, plan.split):
                    suspicious.append(new_id)
                annotated[new_id] = [n for n in target.names if n in phi]
                groups[new_id] = spec.group
                written += 1
            records.append({**spec.describe(), "cases": written})
        if not annotated:
            raise PartialsegError(f"{mapping}: no source case annotates any mapped class; nothing to write")
        if skipped:
            warnings.warn(
                f"{len(skipped)} cases annotate none of the labels mapped from their source and were left out: {skipped[:5]}",
                stacklevel=2,
            )
        if suspicious:
            warnings.warn(
                f"left/right split put two large components on one side in {len(suspicious)} cases "
                f"(check them): {suspicious[:5]}",
                stacklevel=2,
            )
        provenance: dict[str, Any] = {
            "mapping_file": str(mapping.resolve()),
            "mapping": plan.raw,
            "sources": records,
            "split": {"midline": plan.split.midline, "body_hu": plan.split.body_hu},
        }
        if skipped:
            provenance["skipped_cases"] = skipped
        if suspicious:
            provenance["split_warnings"] = suspicious
        meta = dataset_json(
            target,
            len(annotated),
            name=plan.name or out.name,
            annotated=annotated,
            groups=groups,
            extra={"partialseg": {"merge": provenance}},
        )
        write_dataset_json(tmp, meta)
    return out


def _plain_lut(spec: SourceSpec, space: LabelSpace, target: LabelSpace) -> np.ndarray:
    """Source value -> target value for one-to-one maps; split and dropped labels go to 0 here."""
    lut = np.zeros(space.num_channels, dtype=label_dtype(target.num_classes))
    for src_name, tgt in spec.plain.items():
        lut[space.index(src_name)] = target.index(tgt)
    return lut


def _annotated_targets(spec: SourceSpec, space: LabelSpace, case: Case) -> set[str]:
    """Targets whose every contributing source label is annotated in this case."""
    contributors: dict[str, list[str]] = {}
    for src_name in spec.mapped():
        for t in spec.targets_of(src_name):
            contributors.setdefault(t, []).append(src_name)
    given = set(space.names_of(case.annotated))
    return {t for t, names in contributors.items() if all(n in given for n in names)}


def _merge_case(
    case: Case,
    new_id: str,
    root: Path,
    spec: SourceSpec,
    space: LabelSpace,
    target: LabelSpace,
    lut: np.ndarray,
    settings: SplitSettings,
) -> bool:
    """Copy one image and write its label map in the target space; True if a split looks suspicious."""
    assert case.label is not None  # PartialDataset.load guarantees a label file per case
    _copy_image(case.image, root / "imagesTr" / f"{new_id}_0000.nii.gz")
    lab = load_volume(case.label)
    space.check_label_map(lab.array, case.label)
    check_label_on_grid(lab.array, lab.affine, case.label, case.image)
    _, image_affine = image_header_grid(case.image)
    values = as_label_values(lab.array)
    merged = lut[values]
    midline: float | None = None
    suspicious = False
    for (right, left), names in spec.splits.items():
        mask = np.isin(values, [space.index(n) for n in names])
        if not mask.any():
            continue
        if midline is None:  # load the image only when a split needs it
            midline = body_midline_x(load_volume(case.image).array, image_affine, settings)
        r, lft, odd = split_left_right(mask, image_affine, midline)
        merged[r] = target.index(right)
        merged[lft] = target.index(left)
        suspicious |= odd
    save_volume(merged, image_affine, root / "labelsTr" / f"{new_id}.nii.gz")
    return suspicious


def _copy_image(src: Path, dst: Path) -> None:
    if src.name.endswith(".nii.gz"):
        shutil.copyfile(src, dst)
    else:  # plain .nii: same bytes, gzipped, so every case shares one file ending
        with open(src, "rb") as fi, gzip.open(dst, "wb", compresslevel=6) as fo:
            shutil.copyfileobj(fi, fo, length=1 << 20)
