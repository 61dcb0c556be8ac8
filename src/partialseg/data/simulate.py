"""Simulate partial annotation on a fully labelled dataset (``partialseg simulate``).

Two protocols from the papers:

- ``random`` (IPnP): every case keeps its own random subset of the organs.
- ``groups`` (TCT, section 4.1): cases are split into source "datasets", each annotating a
  fixed subset of organs (KiTS kidneys, MSD liver, MSD pancreas, MSD spleen, CHAOS four organs).

The output is a new dataset folder; the input is only read. Besides the partial ``labelsTr``
it holds ``labelsRef`` with the full labels, so evaluation can score every organ, including
those hidden from training.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.data.dataset import (
    ANNOTATED_KEY,
    GROUPS_KEY,
    REFERENCE_KEY,
    Case,
    PartialDataset,
    dataset_json,
    write_dataset_json,
)
from partialseg.errors import InputError, PartialsegError
from partialseg.io import AFFINE_ATOL, atomic_output_dir, load_volume, save_volume
from partialseg.labels import LabelSpace
from partialseg.progress import progress as progress_bar

MODES = ("random", "groups")
#: How ``groups`` mode sizes the source groups: in proportion to their ``cases`` (the default; the
#: default groups' are the TCT paper's training sets) or equal (round-robin)
BALANCES = ("proportional", "equal")
REFERENCE_FOLDER = "labelsRef"

#: TCT paper, section 4.1: the five partially labelled sources on the 5-organ label space.
TCT_GROUPS: dict[str, list[str]] = {
    "kits": ["kidney_right", "kidney_left"],
    "msd_liver": ["liver"],
    "msd_pancreas": ["pancreas"],
    "msd_spleen": ["spleen"],
    "chaos": ["liver", "kidney_right", "kidney_left", "spleen"],
}
#: Training cases of each TCT source (paper Fig. 3a: KiTS19 168, MSD-Liver 104, MSD-Pancreas 224,
#: MSD-Spleen 32, CHAOS-MR 16; 544 in all): the class imbalance TCT is meant for.
TCT_GROUP_CASES: dict[str, int] = {"kits": 168, "msd_liver": 104, "msd_pancreas": 224, "msd_spleen": 32, "chaos": 16}

# dataset.json keys that the writers below set themselves; everything else is carried over
_OWN_KEYS = frozenset(
    {"name", "labels", "numTraining", "file_ending", ANNOTATED_KEY, REFERENCE_KEY, GROUPS_KEY, "partialseg"}
)


# ---- helpers shared with merge.py ---------------------------------------------------------


def read_mapping_file(path: Path) -> Any:
    """Parse a small YAML or JSON file (JSON is YAML, so one parser reads both)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise InputError(path, f"cannot read as YAML/JSON ({e})") from None


def refuse_output_inside(out: Path, source: Path) -> None:
    """Writing the output inside an input folder would change what the user gave; refuse it."""
    out_r, src_r = Path(out).resolve(), Path(source).resolve()
    if out_r == src_r or src_r in out_r.parents:
        raise PartialsegError(f"{out}: the output folder may not lie inside the input dataset {source}")


def label_dtype(num_classes: int) -> type:
    return np.uint8 if num_classes <= 255 else np.int16


def image_header_grid(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine from the NIfTI header alone (no voxel data is read)."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises many types for corrupt files
        raise InputError(path, f"cannot read as NIfTI ({type(e).__name__}: {e})") from None
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    return shape, np.asarray(img.affine, dtype=np.float64)


def check_label_on_grid(label: np.ndarray, label_affine: np.ndarray, label_path: Path, image: Path) -> None:
    """Raise ``InputError`` naming the label file when it is not on the image's voxel grid."""
    shape, affine = image_header_grid(image)
    if tuple(label.shape) != shape:
        raise InputError(label_path, f"shape {tuple(label.shape)} does not match the image {image} shape {shape}")
    if not np.allclose(label_affine, affine, atol=AFFINE_ATOL):
        raise InputError(label_path, f"affine does not match the image {image}")


def carried_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The source dataset.json keys partialseg does not rewrite (description, licence, channel names...)."""
    return {k: v for k, v in meta.items() if k not in _OWN_KEYS}


def _rng(seed: int, key: str) -> np.random.Generator:
    # Hash (seed, key) rather than drawing from one stream, so a case's draw does not depend on
    # which other cases exist or their order; sha256 because Python's hash() is salted per process.
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _num_kept(keep: float, n: int) -> int:
    # round half up (Python's round() rounds half to even, which surprises at keep=0.5)
    return max(1, min(n, int(math.floor(keep * n + 0.5))))


# ---- groups -------------------------------------------------------------------------------


def load_groups(
    groups_file: Path | None, label_space: LabelSpace, dataset_json_path: Path
) -> tuple[dict[str, list[str]], dict[str, float] | None]:
    """Read and check the groups: ``({group: [class names]}, {group: relative size} or None)``.

    A groups file maps each group to its class names, or to ``{classes: [...], cases: N}`` where
    ``N`` (any positive number) sets the group's share of the cases; either every group gives
    ``cases`` or none does. ``None`` gives the TCT paper's five sources with their training sizes.
    """
    if groups_file is None:
        raw: Any = {g: {"classes": c, "cases": TCT_GROUP_CASES[g]} for g, c in TCT_GROUPS.items()}
        where: Path = dataset_json_path
    else:
        raw = read_mapping_file(groups_file)
        where = Path(groups_file)
    if not isinstance(raw, dict) or not raw:
        raise InputError(where, "groups must be a non-empty mapping {group name: [class names]}")
    groups: dict[str, list[str]] = {}
    sizes: dict[str, float] = {}
    for name, entry in raw.items():
        if not isinstance(name, str) or not name:
            raise InputError(where, f"group name {name!r} must be a non-empty string")
        classes = entry
        if isinstance(entry, dict):
            extra = set(entry) - {"classes", "cases"}
            if extra or "classes" not in entry:
                raise InputError(where, f"group {name!r}: expected {{classes: [...], cases: N}}, got keys {sorted(entry)}")
            classes = entry["classes"]
            if "cases" in entry:
                n = entry["cases"]
                if isinstance(n, bool) or not isinstance(n, int | float) or not math.isfinite(n) or n <= 0:
                    raise InputError(where, f"group {name!r}: cases must be a positive number, got {n!r}")
                sizes[name] = float(n)
        if isinstance(classes, str):
            classes = [classes]
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise InputError(where, f"group {name!r} must list at least one class name")
        unknown = [c for c in classes if c not in label_space.names]
        if unknown:
            hint = "" if groups_file is not None else " (these are the default TCT groups; pass a groups file)"
            raise InputError(
                where, f"group {name!r} names classes {unknown} that are not in the label space {list(label_space.names)}{hint}"
            )
        groups[name] = list(dict.fromkeys(classes))  # drop repeats, keep order
    if sizes and set(sizes) != set(groups):
        raise InputError(where, f"either every group gives 'cases' or none does; missing for {sorted(set(groups) - set(sizes))}")
    return groups, (sizes or None)


def group_sizes(n: int, weights: Sequence[float]) -> list[int]:
    """Split ``n`` cases in proportion to ``weights`` (largest remainder, ties to the earlier group)."""
    total = float(sum(weights))
    quotas = [n * w / total for w in weights]
    sizes = [int(math.floor(q)) for q in quotas]
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - sizes[i]), i))
    for i in order[: n - sum(sizes)]:
        sizes[i] += 1
    return sizes


def cases_for_min_group(weights: Sequence[float], min_cases: int) -> int:
    """The fewest cases for which every group of a proportional split gets at least ``min_cases``."""
    n = int(math.ceil(min_cases * sum(weights) / min(weights) - 1e-9))
    while min(group_sizes(n, weights)) < min_cases:
        n += 1
    return n


def assign_groups(
    case_ids: Sequence[str], group_names: Sequence[str], seed: int, weights: Sequence[float] | None = None
) -> dict[str, str]:
    """Seeded shuffle, then round-robin (``weights`` None: sizes differ by at most one) or
    consecutive runs sized by :func:`group_sizes`."""
    order = _rng(seed, "\x00groups").permutation(len(case_ids))
    if weights is None:
        return {case_ids[int(j)]: group_names[i % len(group_names)] for i, j in enumerate(order)}
    owner = [g for g, k in zip(group_names, group_sizes(len(case_ids), weights)) for _ in range(k)]
    return {case_ids[int(j)]: owner[i] for i, j in enumerate(order)}


# ---- the command --------------------------------------------------------------------------


def simulate_partial_labels(
    dataset: Path,
    out: Path,
    *,
    keep: float,
    seed: int,
    mode: str = "random",
    groups_file: Path | None = None,
    balance: str = "proportional",
) -> Path:
    """Write a partially labelled copy of ``dataset`` to the new folder ``out``.

    ``mode="random"`` (IPnP protocol): each case keeps ``round(keep * N)`` of its organs (at
    least one; halves round up), drawn uniformly without replacement with a generator derived
    from ``(seed, case_id)``, so a case's draw does not depend on the other cases.

    ``mode="groups"`` (TCT protocol): ``groups_file`` (YAML/JSON ``{group: [class names]}``,
    default :data:`TCT_GROUPS`) defines source groups; cases are assigned to groups by a seeded
    shuffle, in proportion to the groups' ``cases`` (``balance="proportional"``, the default: the
    default groups get the TCT paper's imbalance, :data:`TCT_GROUP_CASES`) or round-robin
    (``balance="equal"``, or a file without sizes), and each case keeps its group's classes. The output label space is
    the union of the groups' classes in the source order; other classes are dropped to 0 and the
    values renumbered in both ``labelsTr`` and ``labelsRef``. ``keep`` is ignored in this mode.

    The input is expected to be fully annotated. A case that is already partial only loses
    classes from its own annotated set (a class it does not annotate is never declared
    annotated); if the input holds reference labels, those become the output's reference,
    otherwise the input's ``labelsTr`` does. In groups mode a case whose annotated set does not
    meet its group's classes would supervise nothing: it is left out with a warning.

    Output: ``imagesTr`` (byte-identical copies), ``labelsTr`` (partial), ``labelsRef`` (full),
    and ``dataset.json`` with ``annotated_classes`` for every case, ``reference_labels``,
    ``case_groups`` (groups mode, or carried over from the input) and the provenance under
    ``partialseg.simulate``. Only training cases are copied (no ``imagesTs``).
    """
    dataset, out = Path(dataset), Path(out)
    if mode not in MODES:
        raise PartialsegError(f"unknown mode {mode!r}; choose from {list(MODES)}")
    if balance not in BALANCES:
        raise PartialsegError(f"unknown balance {balance!r}; choose from {list(BALANCES)}")
    if mode == "random" and not (isinstance(keep, (int, float)) and math.isfinite(keep) and 0 < keep <= 1):
        raise PartialsegError(f"keep must be a fraction in (0, 1], got {keep!r}")
    src = PartialDataset.load(dataset)
    refuse_output_inside(out, dataset)
    space = src.label_space
    djson = dataset / "dataset.json"

    groups: dict[str, list[str]] | None = None
    weights: dict[str, float] | None = None
    case_group: dict[str, str] = {c.case_id: c.group for c in src.cases if c.group is not None}
    if mode == "groups":
        groups, weights = load_groups(groups_file, space, djson)
        wanted = {n for classes in groups.values() for n in classes}
        out_space = LabelSpace(tuple(n for n in space.names if n in wanted))
        if balance == "equal":
            weights = None
        case_group = assign_groups([c.case_id for c in src.cases], list(groups), seed,
                                   None if weights is None else [weights[g] for g in groups])
        empty = [g for g in groups if g not in case_group.values()]
        if empty:
            warnings.warn(f"{len(src.cases)} cases for {len(groups)} groups: groups {empty} get no case", stacklevel=2)
    else:
        out_space = space
    # source label value -> output label value (identity in random mode, renumbering in groups mode)
    lut = np.zeros(space.num_channels, dtype=label_dtype(out_space.num_classes))
    for i, n in enumerate(space.names, start=1):
        lut[i] = out_space.index(n) if n in out_space.names else 0

    ending = src.file_ending
    annotated: dict[str, list[str]] = {}
    skipped: list[str] = []
    with atomic_output_dir(out) as tmp:
        for case in progress_bar(src.cases, desc="simulate", unit="case"):
            if groups is not None:
                group_phi = space.indices(groups[case_group[case.case_id]])
                phi_src = case.annotated & group_phi
                if not phi_src:
                    skipped.append(case.case_id)
                    continue
                kept = phi_src
            else:
                pool = np.array(sorted(case.annotated))
                k = _num_kept(float(keep), len(pool))
                kept = frozenset(int(v) for v in _rng(seed, case.case_id).choice(pool, size=k, replace=False))
            _write_case(case, tmp, ending, space, out_space, lut, kept, renumber=groups is not None)
            annotated[case.case_id] = out_space.names_of(int(lut[i]) for i in kept)
        if not annotated:
            raise PartialsegError(f"{dataset}: no case annotates any class of its group; nothing to write")
        if skipped:
            warnings.warn(
                f"{len(skipped)} cases annotate none of their group's classes and were left out: {skipped[:5]}",
                stacklevel=2,
            )
        provenance = {
            "mode": mode,
            "keep": float(keep) if mode == "random" else None,
            "seed": seed,
            "groups": groups,
            "group_cases": (weights if mode == "groups" else None),
            "balance": balance if mode == "groups" else None,
            "source": str(dataset.resolve()),
        }
        if skipped:
            provenance["skipped_cases"] = skipped
        extra = carried_meta(src.meta)
        extra["file_ending"] = ending
        extra["partialseg"] = {**(src.meta.get("partialseg") or {}), "simulate": provenance}
        meta = dataset_json(
            out_space,
            len(annotated),
            name=str(src.meta.get("name", dataset.name)),
            annotated=annotated,
            reference_folder=REFERENCE_FOLDER,
            groups={c: g for c, g in case_group.items() if c in annotated} or None,
            extra=extra,
        )
        write_dataset_json(tmp, meta)
    return out


def _write_case(
    case: Case,
    root: Path,
    ending: str,
    space: LabelSpace,
    out_space: LabelSpace,
    lut: np.ndarray,
    kept: frozenset[int],
    *,
    renumber: bool,
) -> None:
    """Copy the image; write the partial label map and the full reference for one case."""
    assert case.label is not None  # PartialDataset.load guarantees a label file per case
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(case.image, root / "imagesTr" / case.image.name)
    # The reference is the most complete label map the input has for this case.
    ref_path = case.reference if case.reference is not None else case.label
    ref = load_volume(ref_path)
    space.check_label_map(ref.array, ref_path)
    check_label_on_grid(ref.array, ref.affine, ref_path, case.image)
    values = as_label_values(ref.array)
    ref_out = root / REFERENCE_FOLDER / f"{case.case_id}{ending}"
    if renumber:
        save_volume(lut[values], ref.affine, ref_out)
    else:
        ref_out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ref_path, ref_out)  # untouched: byte-identical to what the user gave
    # Start from the input's own training labels: for an already partial case they are the
    # annotation actually given, which the reference may exceed only in unannotated classes.
    if case.reference is not None:
        given = load_volume(case.label)
        space.check_label_map(given.array, case.label)
        check_label_on_grid(given.array, given.affine, case.label, case.image)
        values = as_label_values(given.array)
    keep_lut = np.zeros_like(lut)
    for i in kept:
        keep_lut[i] = lut[i]
    save_volume(keep_lut[values], ref.affine, root / "labelsTr" / f"{case.case_id}{ending}")


def as_label_values(array: np.ndarray) -> np.ndarray:
    """Label map usable as indices into a look-up table (values already checked to be ``0..N``).

    Integer maps are used as stored: widening a CT-sized map to int64 would cost gigabytes.
    """
    return array if array.dtype.kind in "ui" else np.rint(array).astype(np.int32)
