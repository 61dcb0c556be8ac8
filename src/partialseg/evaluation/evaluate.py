"""Evaluate predicted label maps against references, per organ per case, then per organ.

Protocol (methods.md, "Data conventions" → Evaluation; Metrics Reloaded; the TCT and IPnP tables):

- per case and organ: DSC and HD95 in mm (voxel spacing from the reference's affine);
- an organ is evaluated in a case only if the reference *annotates* it. Full references
  (``labelsRef`` or any user folder) annotate every class; a partially labelled ``labelsTr``
  annotates the classes dataset.json lists for the case;
- annotated but absent from both reference and prediction: the pair is undefined (``nan``), left
  out of every mean and counted (``n_both_empty``);
- missed (reference has the organ, prediction not) or spurious (the reverse): DSC 0 and HD95 =
  the diagonal of the image's field of view in mm, counted (``n_missed``, ``n_spurious``) and
  averaged in: a method that misses organs must not get a better HD95 for it;
- per organ: mean (± population std) DSC and HD95 over the defined pairs;
- a mean row: the unweighted mean of the per-organ means (each organ counts once), counts summed.

``aggregate`` and ``organ_table_rows``/``markdown_table`` work on plain per-case records, so
benchmark tables that put several methods side by side reuse them.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.errors import InputError
from partialseg.evaluation.metrics import Spacing, label_map_metrics
from partialseg.io import Volume, check_can_write, check_same_grid, load_volume, write_json_atomic, write_text_atomic
from partialseg.labels import LabelSpace

__all__ = [
    "CONVENTION",
    "EvaluationResult",
    "aggregate",
    "case_means",
    "evaluate_case",
    "evaluate_folders",
    "format_csv",
    "format_table",
    "markdown_table",
    "mean_over_organs",
    "organ_table_rows",
]

#: Names the metric conventions of this module; results written under another one (or none: the
#: conventions before it, where both-empty pairs scored DSC 1 and missed organs had no HD95) are stale.
CONVENTION = "metrics-reloaded-fov-penalty-v1"

#: Per-case per-organ record: {"dsc": float, "hd95": float (nan/None = undefined), "pred_empty": bool,
#: "ref_empty": bool, "penalised": bool}
OrganRecord = Mapping[str, Any]
#: {case id: {organ name: OrganRecord}}; only organs the case's reference annotates appear.
PerCase = Mapping[str, Mapping[str, OrganRecord]]

COUNT_KEYS = ("n_cases", "n_evaluated", "n_both_empty", "n_missed", "n_spurious")

CSV_COLUMNS = ("organ", *COUNT_KEYS[:1], "dsc_mean", "dsc_std", "hd95_mean", "hd95_std", *COUNT_KEYS[1:])

TABLE_NOTES = (
    "DSC and HD95 (mm): mean ± std over the cases whose reference annotates the organ, leaving out pairs where "
    "reference and prediction are both empty (undefined; counted under 'both empty').",
    "A missed organ (in the reference, not predicted) or a spurious one (predicted, not in the reference) scores "
    "DSC 0 and HD95 = the diagonal of the image's field of view in mm; both are in the means and counted.",
    "Mean row: unweighted mean of the organ means; its counts are totals.",
)


def _value(v: Any) -> float:
    """A stored metric as a float; ``None`` (JSON null) is ``nan``."""
    return math.nan if v is None else float(v)


# ---- one case ---------------------------------------------------------------------------------
def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    label_space: LabelSpace,
    spacing: Spacing,
    annotated: frozenset[int] | None = None,
) -> dict[str, dict[str, float | bool]]:
    """DSC and HD95 of each annotated organ of one case.

    Args:
        pred, ref: integer label maps on the same grid (0 = background, ``1..N`` = ``label_space``).
        label_space: names the classes.
        spacing: voxel size in mm per array axis.
        annotated: class indices the reference annotates (Phi); ``None`` = every class.

    Returns:
        ``{organ name: {"dsc", "hd95", "pred_empty", "ref_empty", "penalised"}}`` in label-space
        order, only for annotated organs; ``nan`` DSC and HD95 when both masks are empty, DSC 0
        and the field-of-view diagonal when exactly one is (``penalised``).
    """
    classes = sorted(label_space.all_indices if annotated is None else annotated)
    unknown = [c for c in classes if c not in label_space.all_indices]
    if unknown:
        raise ValueError(f"annotated classes {unknown} are outside 1..{label_space.num_classes}")
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    metrics = label_map_metrics(pred, ref, classes, spacing)
    return {label_space.name(c): metrics[c].as_dict() for c in classes}


# ---- aggregation --------------------------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std())


def _defined(r: OrganRecord) -> bool:
    """False for a pair that is empty in both reference and prediction (no DSC, no HD95)."""
    return not (bool(r["pred_empty"]) and bool(r["ref_empty"]))


def aggregate(per_case: PerCase, organs: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per-organ summary of per-case records.

    Args:
        per_case: ``{case: {organ: record}}`` as produced by ``evaluate_case``.
        organs: organ order of the output (default: order of first appearance). Organs that
            no case evaluates get ``n_cases == 0`` and ``None`` means.

    Returns:
        ``{organ: {n_cases, dsc_mean, dsc_std, hd95_mean, hd95_std, n_evaluated, n_both_empty,
        n_missed, n_spurious}}``: ``n_cases`` references annotate the organ; ``n_evaluated`` of them
        have it in the reference or the prediction and make the means; ``n_both_empty`` = the rest;
        ``n_missed`` = in the reference, not predicted; ``n_spurious`` = predicted, not in the
        reference (both scored DSC 0 and the HD95 penalty).
    """
    if organs is None:
        seen: dict[str, None] = {}
        for records in per_case.values():
            seen.update(dict.fromkeys(records))
        organs = list(seen)
    out: dict[str, dict[str, Any]] = {}
    for organ in organs:
        recs = [records[organ] for records in per_case.values() if organ in records]
        defined = [r for r in recs if _defined(r)]
        dsc_mean, dsc_std = _mean_std([_value(r["dsc"]) for r in defined])
        hd_mean, hd_std = _mean_std([_value(r["hd95"]) for r in defined])
        out[organ] = {
            "n_cases": len(recs),
            "dsc_mean": dsc_mean,
            "dsc_std": dsc_std,
            "hd95_mean": hd_mean,
            "hd95_std": hd_std,
            "n_evaluated": len(defined),
            "n_both_empty": len(recs) - len(defined),
            "n_missed": sum(not bool(r["ref_empty"]) and bool(r["pred_empty"]) for r in recs),
            "n_spurious": sum(bool(r["ref_empty"]) and not bool(r["pred_empty"]) for r in recs),
        }
    return out


def mean_over_organs(per_organ: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The mean row: unweighted mean of the per-organ means; counts are summed.

    Organs with no defined pair are left out of the means, and ``n_organs`` says how many organs
    the means cover.
    """
    dsc = [o["dsc_mean"] for o in per_organ.values() if o["dsc_mean"] is not None]
    hd = [o["hd95_mean"] for o in per_organ.values() if o["hd95_mean"] is not None]
    row: dict[str, Any] = {
        "dsc_mean": float(np.mean(dsc)) if dsc else None,
        "hd95_mean": float(np.mean(hd)) if hd else None,
        "n_organs": len(dsc),
    }
    for key in COUNT_KEYS:
        row[key] = int(sum(o[key] for o in per_organ.values()))
    return row


def case_means(per_case: PerCase, organs: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Per case: mean DSC and mean HD95 over its defined organ pairs (``nan`` if none), the unit of
    the paired per-case tests between methods."""
    out: dict[str, dict[str, float]] = {}
    for case, records in per_case.items():
        recs = [r for o, r in records.items() if (organs is None or o in organs) and _defined(r)]
        out[case] = {
            "dsc": float(np.mean([_value(r["dsc"]) for r in recs])) if recs else math.nan,
            "hd95": float(np.mean([_value(r["hd95"]) for r in recs])) if recs else math.nan,
        }
    return out


# ---- result -----------------------------------------------------------------------------------
@dataclass
class EvaluationResult:
    """Everything ``evaluate_folders`` computed; ``to_json`` is what it writes.

    ``per_case[case][organ]`` holds ``dsc``, ``hd95`` (mm, ``nan`` = missing), ``pred_empty``,
    ``ref_empty``; ``per_organ`` and ``mean`` are ``aggregate`` and ``mean_over_organs`` of it.
    """

    organs: tuple[str, ...]
    per_case: dict[str, dict[str, dict[str, Any]]]
    per_organ: dict[str, dict[str, Any]]
    mean: dict[str, Any]
    counts: dict[str, int]
    settings: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    spacings: dict[str, tuple[float, ...]] = field(default_factory=dict)

    @classmethod
    def from_per_case(
        cls,
        per_case: dict[str, dict[str, dict[str, Any]]],
        organs: Sequence[str],
        *,
        settings: dict[str, Any] | None = None,
        warnings: list[str] | None = None,
        spacings: dict[str, tuple[float, ...]] | None = None,
    ) -> EvaluationResult:
        per_organ = aggregate(per_case, organs)
        mean = mean_over_organs(per_organ)
        counts = {
            "cases": len(per_case),
            "organ_evaluations": sum(len(r) for r in per_case.values()),
            "evaluated": mean["n_evaluated"],
            "both_empty": mean["n_both_empty"],
            "missed": mean["n_missed"],
            "spurious": mean["n_spurious"],
        }
        return cls(tuple(organs), per_case, per_organ, mean, counts, settings or {}, warnings or [], spacings or {})

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; an undefined DSC/HD95 (``nan``) becomes ``null``."""
        return _jsonable(
            {
                "convention": CONVENTION,
                "settings": self.settings,
                "counts": self.counts,
                "mean": self.mean,
                "per_organ": self.per_organ,
                "per_case": {
                    case: {"spacing": list(self.spacings.get(case, ())), "organs": organs}
                    for case, organs in self.per_case.items()
                },
                "warnings": self.warnings,
            }
        )


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return _jsonable(obj.item())
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ---- tables -----------------------------------------------------------------------------------
def _pm(mean: float | None, std: float | None, scale: float = 1.0) -> str:
    if mean is None:
        return "–"
    return f"{mean * scale:.2f} ± {(std or 0.0) * scale:.2f}" if std is not None else f"{mean * scale:.2f}"


def organ_table_rows(
    per_organ: Mapping[str, Mapping[str, Any]], mean: Mapping[str, Any] | None = None
) -> list[list[str]]:
    """Rows ``[organ, n, DSC (%), HD95 (mm), missed, spurious, both empty]``, then the mean row if given."""

    def row(name: str, o: Mapping[str, Any], std: bool) -> list[str]:
        return [
            name,
            str(o["n_cases"]),
            _pm(o["dsc_mean"], o["dsc_std"] if std else None, 100.0),
            _pm(o["hd95_mean"], o["hd95_std"] if std else None),
            str(o["n_missed"]),
            str(o["n_spurious"]),
            str(o["n_both_empty"]),
        ]

    rows = [row(organ, o, True) for organ, o in per_organ.items()]
    if mean is not None:
        rows.append(row("**mean**", mean, False))
    return rows


TABLE_HEADER = ("organ", "n", "DSC (%)", "HD95 (mm)", "missed", "spurious", "both empty")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table; the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def format_table(result: EvaluationResult) -> str:
    """Markdown: the organ table with its mean row, the notes on conventions, and any warnings."""
    parts = [markdown_table(TABLE_HEADER, organ_table_rows(result.per_organ, result.mean)), ""]
    parts += [f"- {n}" for n in TABLE_NOTES]
    parts.append(f"- {result.counts['cases']} cases, {result.counts['organ_evaluations']} organ evaluations.")
    if result.warnings:
        parts += ["", *[f"warning: {w}" for w in result.warnings]]
    return "\n".join(parts)


def format_csv(result: EvaluationResult) -> str:
    """One row per organ (raw numbers: DSC as a fraction, HD95 in mm) and a final ``mean`` row."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)

    def cell(v: Any) -> str:
        return "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))

    for organ, o in result.per_organ.items():
        writer.writerow([organ, *(cell(o[k]) for k in CSV_COLUMNS[1:])])
    writer.writerow(["mean", *(cell(result.mean.get(k)) for k in CSV_COLUMNS[1:])])
    return buf.getvalue()


# ---- folders ----------------------------------------------------------------------------------
def _load_label_map(path: Path, label_space: LabelSpace) -> Volume:
    vol = load_volume(path)
    label_space.check_label_map(vol.array, path)
    return Volume(vol.array.astype(np.int16, copy=False), vol.affine, vol.path)


#: Written by ``partialseg predict`` beside its label maps: the model's label space
#: (``{"labels": {"background": 0, name: value, ...}}``, nnU-Net's dataset.json form).
PRED_LABELS_FILE = "labels.json"


def read_pred_labels(path: Path) -> LabelSpace:
    """The label space of a prediction folder's ``labels.json`` (values 0..N, background 0)."""
    try:
        labels = json.loads(path.read_text())["labels"]
        by_value = sorted((int(v), str(k)) for k, v in labels.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(path, f"not a label file {{'labels': {{name: value}}}} ({type(e).__name__}: {e})") from None
    if [v for v, _ in by_value] != list(range(len(by_value))) or by_value[0][0] != 0:
        raise InputError(path, "label values must be 0 (background), 1, ..., N without gaps")
    return LabelSpace(tuple(n for _, n in by_value[1:]))


def label_space_match(pred_space: LabelSpace, ref_space: LabelSpace) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, list[str], list[str]]:
    """Classes matched by name between a model's predictions and a reference label space.

    Returns the evaluated classes (the reference's classes the model knows, in the reference's order),
    lookup tables that map prediction values and reference values into it (anything else to 0), the
    reference classes the model does not know, and the model's classes the reference does not have.
    """
    known = tuple(n for n in ref_space.names if n in set(pred_space.names))
    index = {n: i + 1 for i, n in enumerate(known)}
    pred_lut = np.array([0, *(index.get(n, 0) for n in pred_space.names)], dtype=np.int16)
    ref_lut = np.array([0, *(index.get(n, 0) for n in ref_space.names)], dtype=np.int16)
    unknown = [n for n in ref_space.names if n not in index]
    extra = [n for n in pred_space.names if n not in set(ref_space.names)]
    return known, pred_lut, ref_lut, unknown, extra


def _case_files(folder: Path, ending: str) -> dict[str, Path]:
    return {p.name[: -len(ending)]: p for p in sorted(folder.iterdir()) if p.name.endswith(ending) and p.is_file()}


def evaluate_folders(
    pred_dir: Path,
    ref_dir: Path,
    *,
    out: Path,
    dataset: Path | None = None,
    label_space_name: str = "amos15",
    overwrite: bool = False,
    pred_labels: Path | None = None,
) -> EvaluationResult:
    """Evaluate every reference case ``<case>.nii.gz`` of ``ref_dir`` against ``pred_dir/<case>.nii.gz``.

    Args:
        pred_dir: predicted label maps. Predictions with no reference are ignored (a warning
            in the result); a reference with no prediction is an ``InputError`` naming the file.
        ref_dir: reference label maps; they define the case list and the voxel spacing.
        out: results JSON path (``.json``); ``.md`` and ``.csv`` tables are written beside it.
        dataset: dataset folder. Gives the label space (its dataset.json) and, when ``ref_dir``
            is its ``labelsTr``, each case's annotated classes; any other ``ref_dir`` (e.g.
            ``labelsRef``) is taken as fully annotated.
        label_space_name: registered label space used when ``dataset`` is not given.
        pred_labels: the predictions' label space (a ``labels.json``); default ``pred_dir/labels.json``
            if ``partialseg predict`` wrote one, else the reference's. When it differs (a model
            evaluated on a dataset with another label space), classes are matched by name: reference
            organs the model does not know are reported as such and left out of the means, the model's
            other classes count as background.

    Raises:
        InputError: a missing folder/file, a prediction not on its reference's grid, a label
            value outside the label space, or a reference case unknown to ``dataset``.
    """
    from partialseg.data.dataset import PartialDataset

    pred_dir, ref_dir, out = Path(pred_dir), Path(ref_dir), Path(out)
    if out.suffix.lower() != ".json":
        raise InputError(out, "the results path must end in .json (the .md and .csv tables are written beside it)")
    for folder in (pred_dir, ref_dir):
        if not folder.is_dir():
            raise InputError(folder, "folder does not exist")

    ds = None
    if dataset is not None:
        ds = PartialDataset.load(dataset)
        label_space, ending = ds.label_space, ds.file_ending
    else:
        try:
            label_space = LabelSpace.named(label_space_name)
        except ValueError as e:
            raise InputError(None, str(e)) from None
        ending = ".nii.gz"
    partial_ref = ds is not None and ref_dir.resolve() == (ds.root / "labelsTr").resolve()
    warnings: list[str] = []
    if pred_labels is None and (pred_dir / PRED_LABELS_FILE).is_file():
        pred_labels = pred_dir / PRED_LABELS_FILE
    pred_space = label_space if pred_labels is None else read_pred_labels(Path(pred_labels))
    ref_space = label_space
    mapping = None
    unknown: list[str] = []
    extra_classes: list[str] = []
    if pred_space.names != ref_space.names:
        known, pred_lut, ref_lut, unknown, extra_classes = label_space_match(pred_space, ref_space)
        mapping = (pred_lut, ref_lut)
        if not known:
            raise InputError(pred_labels, f"the model's classes {list(pred_space.names)} share no name with the "
                                          f"reference's {list(ref_space.names)}")
        label_space = LabelSpace(known)
        if unknown:
            warnings.append(f"{len(unknown)} reference organ(s) are unknown to the model and not evaluated: "
                            + ", ".join(unknown))
        if extra_classes:
            warnings.append(f"{len(extra_classes)} class(es) of the model are not in the reference and count as "
                            "background: " + ", ".join(extra_classes))
    if partial_ref and ds is not None and ds.cases and ds.cases[0].reference is not None:
        warnings.append(
            f"evaluating against the partial labels of {ref_dir}; the dataset also has full references in "
            f"{ds.cases[0].reference.parent}"
        )

    refs = _case_files(ref_dir, ending)
    if not refs:
        raise InputError(ref_dir, f"no reference label maps named <case>{ending}")
    preds = _case_files(pred_dir, ending)
    extra = sorted(set(preds) - set(refs))
    if extra:
        shown = ", ".join(extra[:10]) + (", ..." if len(extra) > 10 else "")
        warnings.append(f"{len(extra)} prediction(s) in {pred_dir} have no reference and were ignored: {shown}")

    per_case: dict[str, dict[str, dict[str, Any]]] = {}
    spacings: dict[str, tuple[float, ...]] = {}
    for case, ref_path in refs.items():
        pred_path = pred_dir / f"{case}{ending}"
        if case not in preds:
            raise InputError(pred_path, f"prediction for reference case {case!r} does not exist")
        annotated: frozenset[int] | None = None
        if partial_ref and ds is not None:
            try:
                annotated = ds.case(case).annotated
            except KeyError:
                raise InputError(ref_path, f"case {case!r} is not a case of the dataset {ds.root} (no image)") from None
        ref = _load_label_map(ref_path, ref_space)
        pred = _load_label_map(pred_path, pred_space)
        check_same_grid(ref, pred)
        spacings[case] = ref.spacing
        p, r = pred.array, ref.array
        if mapping is not None:
            p, r = mapping[0][p], mapping[1][r]
            if annotated is not None:
                annotated = frozenset(int(mapping[1][a]) for a in annotated if mapping[1][a] > 0)
        per_case[case] = evaluate_case(p, r, label_space, ref.spacing, annotated)

    settings = {
        "pred_dir": str(pred_dir.resolve()),
        "ref_dir": str(ref_dir.resolve()),
        "dataset": None if ds is None else str(ds.root.resolve()),
        "label_space": list(label_space.names),
        "reference_label_space": list(ref_space.names),
        "prediction_label_space": list(pred_space.names),
        "not_in_model": unknown,
        "not_in_reference": extra_classes,
        "annotated_from": "dataset.json annotated_classes (partial reference labelsTr)"
        if partial_ref
        else "all classes (full reference)",
        "metrics": {
            "dsc": "2|P∩R|/(|P|+|R|); MONAI DiceMetric",
            "hd95": "symmetric 95th-percentile Hausdorff distance in mm between surface voxels (mask XOR its "
            "6-connected erosion), linear interpolation; MONAI HausdorffDistanceMetric(percentile=95) with "
            "use_subvoxels=False",
            "both_empty": "undefined (null), left out of the means, counted in n_both_empty",
            "one_empty": "DSC 0, HD95 = field-of-view diagonal in mm (penalised), counted in n_missed/n_spurious",
            "aggregation": "per organ over cases whose reference annotates it, defined pairs only; mean row = "
            "mean of organ means",
        },
    }
    result = EvaluationResult.from_per_case(
        per_case, label_space.names, settings=settings, warnings=warnings, spacings=spacings
    )
    # an organ no reference contains usually means the wrong label space (--dataset/--labels)
    absent = [o for o, a in result.per_organ.items() if a["n_cases"] and a["n_both_empty"] + a["n_spurious"] == a["n_cases"]]
    if absent:
        result.warnings.append(
            f"{len(absent)} organ(s) are absent from every reference (left out where not predicted): "
            + ", ".join(absent)
        )
    outputs = [out, out.with_suffix(".md"), out.with_suffix(".csv")]
    for p in outputs:  # all checked before any is written; never over an input, not over a result unless overwrite
        check_can_write(p, overwrite=overwrite, inputs=(pred_dir, ref_dir, *([] if ds is None else [ds.root])),
                        hint="choose a new --out or pass --overwrite")
    write_json_atomic(result.to_json(), outputs[0])
    write_text_atomic(format_table(result) + "\n", outputs[1])
    write_text_atomic(format_csv(result), outputs[2])
    return result
