"""A partially labelled dataset in the nnU-Net v2 raw layout.

On disk::

    DATASET/
      dataset.json              nnU-Net keys + partialseg keys (below)
      imagesTr/<case>_0000.nii.gz
      labelsTr/<case>.nii.gz    unannotated organs carry 0
      labelsRef/<case>.nii.gz   optional: full reference labels (simulated datasets)

partialseg keys in ``dataset.json`` (nnU-Net ignores them, so the folder stays a valid
nnU-Net dataset):

- ``annotated_classes``: ``{case_id: [class names]}``. A case without an entry is fully
  annotated. This is the only source of Phi (methods.md): it is never inferred from values.
- ``reference_labels``: name of the folder holding full reference label maps, if any.
- ``case_groups``: ``{case_id: group}``, the source dataset a case came from (TCT protocol).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.errors import InputError
from partialseg.io import Volume, check_same_grid, load_volume, read_json, write_json_atomic
from partialseg.labels import LabelSpace

ANNOTATED_KEY = "annotated_classes"
REFERENCE_KEY = "reference_labels"
GROUPS_KEY = "case_groups"


@dataclass(frozen=True)
class Case:
    """One training case. ``annotated`` is Phi as label indices."""

    case_id: str
    image: Path
    label: Path | None
    annotated: frozenset[int]
    reference: Path | None = None
    group: str | None = None

    def load_image(self) -> Volume:
        return load_volume(self.image, dtype=np.float32)

    def load_label(self, label_space: LabelSpace, image: Volume | None = None) -> Volume:
        """The (partial) label map as int16, checked against the label space and the image grid."""
        if self.label is None:
            raise InputError(self.image, "this case has no label file")
        return _load_label(self.label, label_space, image)

    def load_reference(self, label_space: LabelSpace, image: Volume | None = None) -> Volume | None:
        return None if self.reference is None else _load_label(self.reference, label_space, image)


def _load_label(path: Path, label_space: LabelSpace, image: Volume | None) -> Volume:
    vol = load_volume(path)
    label_space.check_label_map(vol.array, path)
    vol = Volume(vol.array.astype(np.int16, copy=False), vol.affine, vol.path)
    if image is not None:
        check_same_grid(image, vol)
    return vol


@dataclass
class PartialDataset:
    root: Path
    label_space: LabelSpace
    cases: list[Case]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def file_ending(self) -> str:
        return str(self.meta.get("file_ending", ".nii.gz"))

    @property
    def modality(self) -> str:
        """The image channel's name in ``channel_names`` ("CT", "MR", "T1", ...): it decides the normalisation."""
        return str(next(iter(self.meta.get("channel_names", {"0": "CT"}).values())))

    @property
    def is_ct(self) -> bool:
        return self.modality.upper() == "CT"

    @classmethod
    def load(cls, root: str | Path) -> PartialDataset:
        """Read ``dataset.json`` and list the cases; checks names and files, not voxels (see ``validate``)."""
        root = Path(root)
        if not root.is_dir():
            raise InputError(root, "dataset folder does not exist")
        djson = root / "dataset.json"
        meta = read_json(djson)
        if not isinstance(meta, dict) or "labels" not in meta:
            raise InputError(djson, "missing the 'labels' key of an nnU-Net v2 dataset.json")
        space = LabelSpace.from_dataset_json(meta["labels"], djson)
        channels = meta.get("channel_names", {"0": "CT"})
        if not isinstance(channels, dict):
            raise InputError(djson, f"'channel_names' must be a mapping {{\"0\": \"CT\"}}, got {channels!r}")
        if len(channels) != 1:
            raise InputError(djson, f"partialseg handles single-channel CT; channel_names has {len(channels)} entries")
        ending = str(meta.get("file_ending", ".nii.gz"))
        images_dir = root / "imagesTr"
        if not images_dir.is_dir():
            raise InputError(images_dir, "folder does not exist (nnU-Net v2 layout needs imagesTr/)")
        suffix = "_0000" + ending
        check_channel_files(images_dir, ending, len(channels), djson)
        image_files = sorted(p for p in images_dir.iterdir() if p.name.endswith(suffix))
        if not image_files:
            raise InputError(images_dir, f"no images named <case>{suffix}")
        annotated_raw = meta.get(ANNOTATED_KEY, {}) or {}
        groups = meta.get(GROUPS_KEY, {}) or {}
        ref_name = meta.get(REFERENCE_KEY)
        ref_dir = root / ref_name if ref_name else None
        if ref_dir is not None and not ref_dir.is_dir():
            raise InputError(djson, f"'{REFERENCE_KEY}' names the folder {ref_name!r}, which does not exist")
        cases: list[Case] = []
        for img in image_files:
            cid = img.name[: -len(suffix)]
            label = root / "labelsTr" / f"{cid}{ending}"
            if not label.exists():
                raise InputError(label, f"label file for case {cid!r} does not exist")
            if cid in annotated_raw:
                names = annotated_raw[cid]
                if not isinstance(names, list):
                    raise InputError(djson, f"{ANNOTATED_KEY}[{cid!r}] must be a list of class names")
                annotated = space.indices(names, f"{djson} ({ANNOTATED_KEY}[{cid!r}])")
                if not annotated:
                    raise InputError(djson, f"case {cid!r} has an empty annotated-class list: it supervises nothing; "
                                            "list its classes or remove the case")
            else:
                annotated = space.all_indices
            ref = None
            if ref_dir is not None:
                ref = ref_dir / f"{cid}{ending}"
                if not ref.exists():
                    raise InputError(ref, f"reference label for case {cid!r} does not exist")
            cases.append(Case(cid, img, label, annotated, ref, groups.get(cid)))
        known = {c.case_id for c in cases}
        unknown = sorted(set(annotated_raw) - known)
        if unknown:
            raise InputError(djson, f"{ANNOTATED_KEY} lists cases with no image: {unknown[:5]}")
        return cls(root, space, cases, meta)

    def case(self, case_id: str) -> Case:
        for c in self.cases:
            if c.case_id == case_id:
                return c
        raise KeyError(f"no case {case_id!r} in {self.root}")

    def validate(self) -> None:
        """Load every image/label pair: grid match, label values, NaN. Raises ``InputError`` on the first problem."""
        for c in self.cases:
            img = c.load_image()
            c.load_label(self.label_space, img)
            c.load_reference(self.label_space, img)

    def annotation_counts(self) -> dict[str, int]:
        """How many cases annotate each class."""
        cnt: Counter[int] = Counter()
        for c in self.cases:
            cnt.update(c.annotated)
        return {n: cnt[i + 1] for i, n in enumerate(self.label_space.names)}

    @property
    def is_partial(self) -> bool:
        return any(c.annotated != self.label_space.all_indices for c in self.cases)


def split_channel(name: str, ending: str) -> tuple[str, int] | None:
    """``"case_0001.nii.gz"`` → ``("case", 1)``; ``None`` for a name without nnU-Net's ``_XXXX`` channel suffix."""
    if not name.endswith(ending):
        return None
    stem = name[: -len(ending)]
    case, sep, channel = stem.rpartition("_")
    if not sep or not case or len(channel) != 4 or not channel.isdigit():
        return None
    return case, int(channel)


def check_channel_files(folder: Path, ending: str, num_channels: int, source: Path | None = None) -> None:
    """Every ``*<ending>`` in ``folder`` must be ``<case>_XXXX<ending>`` with ``XXXX < num_channels``, and every
    case must have all its channels; anything else is an ``InputError`` naming the file.

    nnU-Net takes the number of channels from ``channel_names``: a stray second-channel file or
    an image without the suffix would otherwise be silently ignored.
    """
    seen: dict[str, set[int]] = {}
    where = f" (channel_names in {source})" if source else ""
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or not f.name.endswith(ending):
            continue
        parsed = split_channel(f.name, ending)
        if parsed is None:
            raise InputError(f, f"image names need the channel suffix _0000 (<case>_0000{ending}); rename it "
                                f"to {f.name[: -len(ending)]}_0000{ending}")
        case, channel = parsed
        if channel >= num_channels:
            raise InputError(f, f"channel {channel:04d}, but the dataset has {num_channels} channel(s){where}; "
                                "remove the file or list the channel")
        seen.setdefault(case, set()).add(channel)
    for case, chans in seen.items():
        missing = sorted(set(range(num_channels)) - chans)
        if missing:
            raise InputError(folder / f"{case}_{missing[0]:04d}{ending}", f"channel {missing[0]} of case {case!r} "
                                                                           "does not exist")


def dataset_json(
    label_space: LabelSpace,
    num_training: int,
    *,
    name: str = "partialseg",
    modality: str = "CT",
    annotated: dict[str, list[str]] | None = None,
    reference_folder: str | None = None,
    groups: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a ``dataset.json`` dict (nnU-Net v2 keys first, then partialseg's)."""
    d: dict[str, Any] = {
        "name": name,
        "channel_names": {"0": modality},
        "labels": label_space.to_dataset_json(),
        "numTraining": num_training,
        "file_ending": ".nii.gz",
    }
    if annotated:
        d[ANNOTATED_KEY] = annotated
    if reference_folder:
        d[REFERENCE_KEY] = reference_folder
    if groups:
        d[GROUPS_KEY] = groups
    if extra:
        d.update(extra)
    return d


def write_dataset_json(root: Path, meta: dict[str, Any]) -> Path:
    return write_json_atomic(meta, Path(root) / "dataset.json")
