"""``LabelSpace``: the one mapping between class names and label integers.

Background is always 0 and is not a class; classes are ``1..N``. A case's *annotated set*
is a ``frozenset[int]`` of class indices (methods.md, "Notation": Phi). It is stored with the
case and never inferred from the values that occur in a label map.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from partialseg.errors import InputError
from partialseg.registry import LABEL_SPACES, LEFT_RIGHT_PAIRS


@dataclass(frozen=True)
class LabelSpace:
    """Ordered class names; ``names[i]`` has label value ``i + 1``."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        names = tuple(self.names)
        object.__setattr__(self, "names", names)
        if not names:
            raise ValueError("a label space needs at least one class")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"duplicate class names: {dup}")
        for n in names:
            if not n or not isinstance(n, str):
                raise ValueError(f"invalid class name {n!r}")
            if n == "background":
                raise ValueError("'background' is label 0 and cannot be a class name")

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def named(cls, key: str) -> LabelSpace:
        """A registered label space, e.g. ``LabelSpace.named("amos15")``."""
        try:
            return cls(LABEL_SPACES[key])
        except KeyError:
            raise ValueError(f"unknown label space {key!r}; known: {sorted(LABEL_SPACES)}") from None

    @classmethod
    def from_dataset_json(cls, labels: Mapping[str, object], source: str | Path | None = None) -> LabelSpace:
        """From nnU-Net v2's ``"labels": {"background": 0, "spleen": 1, ...}``.

        Values must be exactly ``0..N`` with 0 for background (region-based labels are not supported).
        """
        if not isinstance(labels, Mapping):
            raise InputError(source, f"'labels' must be a mapping {{name: value}} with 'background': 0, "
                                     f"got a {type(labels).__name__}")
        inv: dict[int, str] = {}
        for name, value in labels.items():
            if not isinstance(value, int) or isinstance(value, bool):
                raise InputError(source, f"label {name!r} has value {value!r}; partialseg needs one integer per class")
            if value in inv:
                raise InputError(source, f"labels {inv[value]!r} and {name!r} share the value {value}")
            inv[value] = name
        if inv.get(0) != "background":
            raise InputError(source, "'labels' must map 'background' to 0")
        n = len(inv) - 1
        if sorted(inv) != list(range(n + 1)):
            raise InputError(source, f"label values must be contiguous 0..{n}, got {sorted(inv)}")
        try:
            return cls(tuple(inv[i] for i in range(1, n + 1)))
        except ValueError as e:
            raise InputError(source, str(e)) from None

    def to_dataset_json(self) -> dict[str, int]:
        return {"background": 0, **{n: i + 1 for i, n in enumerate(self.names)}}

    # ---- queries ------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """N, the number of foreground classes."""
        return len(self.names)

    @property
    def num_channels(self) -> int:
        """N + 1: background plus classes (the main head's channels)."""
        return len(self.names) + 1

    @property
    def all_indices(self) -> frozenset[int]:
        return frozenset(range(1, self.num_classes + 1))

    def index(self, name: str) -> int:
        try:
            return self.names.index(name) + 1
        except ValueError:
            raise KeyError(f"unknown class {name!r}; classes are {list(self.names)}") from None

    def name(self, index: int) -> str:
        if index == 0:
            return "background"
        if not 1 <= index <= self.num_classes:
            raise KeyError(f"label value {index} is outside 0..{self.num_classes}")
        return self.names[index - 1]

    def indices(self, names: Iterable[str], source: str | Path | None = None) -> frozenset[int]:
        """Class names → indices; an unknown name is an ``InputError`` naming ``source``."""
        out = set()
        for n in names:
            if n not in self.names:
                raise InputError(source, f"annotated class {n!r} is not in the label space {list(self.names)}")
            out.add(self.names.index(n) + 1)
        return frozenset(out)

    def names_of(self, indices: Iterable[int]) -> list[str]:
        return [self.name(i) for i in sorted(indices)]

    def left_right_swap(self) -> np.ndarray:
        """Lookup table mapping each label value to its mirror-image label (identity if unpaired)."""
        lut = np.arange(self.num_channels, dtype=np.int64)
        for a, b in LEFT_RIGHT_PAIRS:
            if a in self.names and b in self.names:
                ia, ib = self.index(a), self.index(b)
                lut[ia], lut[ib] = ib, ia
        return lut

    def check_label_map(self, labels: np.ndarray, source: str | Path | None = None) -> None:
        """Raise ``InputError`` if ``labels`` holds a value outside ``0..N`` (or non-integers)."""
        if labels.dtype.kind == "f":
            if not np.all(np.isfinite(labels)):
                raise InputError(source, "label map contains NaN or infinite values")
            if not np.all(labels == np.round(labels)):
                raise InputError(source, "label map contains non-integer values")
        values = np.unique(labels)
        bad = [int(v) for v in values if v < 0 or v > self.num_classes]
        if bad:
            raise InputError(
                source, f"label values {bad[:10]} are outside the label space 0..{self.num_classes} ({self.num_classes} classes)"
            )
