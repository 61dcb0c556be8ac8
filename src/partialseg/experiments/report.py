"""``partialseg report PATH``: one self-contained HTML page (images inline, no server, no network) for
a benchmark folder or a run folder, so that a person sees the numbers and where a method fails.

Benchmark folder: the settings, the per-organ DSC/HD95 table with the missed/spurious counts, box
plots of per-case DSC per organ and method, each run's loss and validation curves, and overlays:
for a few test cases, an axial and a coronal slice through the organs with the reference (solid)
and each method's prediction (dashed) contours. Run folder: its configuration, curves,
postprocessing choice, pseudo-label quality (IPnP) and test evaluation where present.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.errors import InputError
from partialseg.io import write_text_atomic

REPORT_FILE = "report.html"
#: overlays for this many test cases, and at most this many methods per case
OVERLAY_CASES, OVERLAY_METHODS = 2, 4


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v: Any, scale: float = 1.0, digits: int = 1) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v * scale:.{digits}f}"


def _page(title: str, sections: list[tuple[str, str]]) -> str:
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f0f0f0}"
             "td:first-child,th:first-child{text-align:left}img{max-width:100%}pre{background:#f8f8f8;padding:1em}")
    body = "".join(f"<h2>{html.escape(h)}</h2>\n{content}\n" for h, content in sections)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>\n{body}</body></html>\n")


def _log_rows(run: Path) -> list[dict[str, Any]]:
    logs = sorted(run.glob("round_*/log.csv"), key=lambda p: int(p.parent.name.split("_")[1])) or [run / "log.csv"]
    rows: list[dict[str, Any]] = []
    offset = 0
    for log in logs:
        if not log.exists():
            continue
        with log.open() as f:
            part = list(csv.DictReader(f))
        for r in part:
            r["step"] = int(r["step"]) + offset
        offset = part[-1]["step"] if part else offset
        rows += part
    return rows


def _curves(runs: dict[str, Path]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    for label, run in runs.items():
        rows = _log_rows(run)
        if not rows:
            continue
        steps = np.array([r["step"] for r in rows])
        loss = np.array([float(r["loss"]) for r in rows])
        k = max(1, len(loss) // 50)
        a.plot(steps[k - 1:], np.convolve(loss, np.ones(k) / k, mode="valid"), label=label)
        # the patch curve during training, the sliding-window validations where there are any
        for key, ls in (("val_patch_dsc_mean", "--"), ("val_dsc_mean", "-")):
            val = [(r["step"], float(r[key])) for r in rows if r.get(key)]
            if val:
                b.plot(*zip(*val), marker="o", ls=ls, label=f"{label} ({'patches' if 'patch' in key else 'full'})")
    a.set(title="training loss (smoothed)", xlabel="step")
    b.set(title="validation DSC", xlabel="step", ylim=(0, 1))
    for ax in (a, b):
        if ax.lines:
            ax.legend(fontsize=7)
    return _png(fig)


def _boxplots(evals: dict[str, dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    organs = list(next(iter(evals.values()))["per_organ"])
    labels = list(evals)
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(organs) * max(1, len(labels)) / 2), 4.5))
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        data = [[v["organs"][o]["dsc"] for v in evals[label]["per_case"].values()
                 if o in v["organs"] and v["organs"][o]["dsc"] is not None] for o in organs]
        pos = np.arange(len(organs)) + (j - (len(labels) - 1) / 2) * width
        bp = ax.boxplot([d or [np.nan] for d in data], positions=pos, widths=width * 0.9, patch_artist=True,
                        manage_ticks=False)
        for box in bp["boxes"]:
            box.set_facecolor(f"C{j}")
        ax.plot([], [], color=f"C{j}", label=label, linewidth=6)
    ax.set_xticks(np.arange(len(organs)), organs, rotation=45, ha="right")
    ax.set(ylabel="per-case DSC", ylim=(0, 1))
    ax.legend(fontsize=7, ncol=2)
    return _png(fig)


def _overlays(test: Path, runs: dict[str, Path], cases: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from partialseg.data.dataset import PartialDataset
    from partialseg.io import load_volume

    ds = PartialDataset.load(test)
    ref_dir = test / json.loads((test / "dataset.json").read_text()).get("reference_labels", "labelsTr")
    parts = []
    shown = dict(list(runs.items())[:OVERLAY_METHODS])
    for case in cases:
        image = load_volume(ds.case(case).image).array
        ref = load_volume(ref_dir / f"{case}{ds.file_ending}").array
        preds = {m: load_volume(r / "test_pred" / f"{case}{ds.file_ending}").array for m, r in shown.items()
                 if (r / "test_pred" / f"{case}{ds.file_ending}").exists()}
        fg = ref > 0
        z = int(np.argmax(fg.sum(axis=(0, 1)))) if fg.any() else image.shape[2] // 2
        y = int(np.argmax(fg.sum(axis=(0, 2)))) if fg.any() else image.shape[1] // 2
        fig, axes = plt.subplots(len(preds) or 1, 2, figsize=(9, 4.2 * max(1, len(preds))), squeeze=False)
        for i, (method, pred) in enumerate(preds.items() or [("reference", ref)]):
            for ax, cut, title in ((axes[i, 0], (slice(None), slice(None), z), f"axial z={z}"),
                                   (axes[i, 1], (slice(None), y, slice(None)), f"coronal y={y}")):
                ax.imshow(np.clip(image[cut], -200, 300).T, cmap="gray", origin="lower")
                for k in range(1, ds.label_space.num_classes + 1):
                    colour = plt.cm.tab20(k % 20)
                    for mask, style in ((ref[cut] == k, "solid"), (pred[cut] == k, "dashed")):
                        if mask.any() and not mask.all():
                            ax.contour(mask.T.astype(float), levels=[0.5], colors=[colour], linestyles=style, linewidths=1)
                ax.set_title(f"{case}, {method}: {title}", fontsize=8)
                ax.axis("off")
        parts.append(_png(fig))
    return ("<p>Solid: reference; dashed: prediction; one colour per organ.</p>" + "".join(parts)) if parts else ""


def _organ_table(evals: dict[str, dict[str, Any]]) -> str:
    organs = list(next(iter(evals.values()))["per_organ"])
    header = ["organ"] + [f"{label} {k}" for label in evals for k in ("DSC %", "HD95 mm")]
    rows = []
    for o in organs:
        row: list[Any] = [o]
        for e in evals.values():
            row += [_fmt(e["per_organ"][o]["dsc_mean"], 100), _fmt(e["per_organ"][o]["hd95_mean"])]
        rows.append(row)
    rows.append(["mean"] + [x for e in evals.values() for x in (_fmt(e["mean"]["dsc_mean"], 100), _fmt(e["mean"]["hd95_mean"]))])
    rows.append(["missed / spurious"] + [x for e in evals.values()
                                         for x in (f"{e['mean']['n_missed']} / {e['mean']['n_spurious']}", "")])
    return _table(header, rows)


def benchmark_report(folder: Path) -> str:
    from partialseg.experiments.headline import _runs

    runs = _runs(folder)
    if not runs:
        raise InputError(folder, "no evaluated run in this benchmark folder yet")
    labelled = {f"{m} ({s})": p for (s, m), p in runs.items()}
    evals = {label: json.loads((p / "test_eval.json").read_text()) for label, p in labelled.items()}
    setup = folder / "benchmark_setup.json"
    sections = [("Settings", f"<pre>{html.escape(setup.read_text()) if setup.exists() else '(no benchmark_setup.json)'}</pre>"),
                ("Test DSC and HD95 per organ", "<p>HD95 includes the penalty of missed and spurious organs "
                 "(the field-of-view diagonal); organs absent from both reference and prediction are left out.</p>"
                 + _organ_table(evals)),
                ("Per-case DSC per organ", _boxplots(evals)),
                ("Training curves", _curves(labelled))]
    test = next((folder / "data" / n for n in ("test_tct", "test") if (folder / "data" / n / "dataset.json").exists()), None)
    if test is not None:
        cases = sorted(next(iter(evals.values()))["per_case"])[:OVERLAY_CASES]
        sections.append(("Overlays", _overlays(test, labelled, cases)))
    return _page(f"partialseg benchmark: {folder.name}", sections)


def run_report(run: Path) -> str:
    sections = [("Configuration", f"<pre>{html.escape((run / 'config.yaml').read_text())}</pre>"),
                ("Training curves", _curves({run.name: run}))]
    pp = run / "postprocessing.json"
    if pp.exists():
        d = json.loads(pp.read_text())
        rows = [[o, _fmt(v["dsc"], 100), _fmt(v["dsc_lcc"], 100), _fmt(v["hd95"]), _fmt(v["hd95_lcc"]), v["n"],
                 "yes" if v["applied"] else "no"] for o, v in d["organs"].items()]
        sections.append(("Postprocessing chosen on validation", _table(
            ["organ", "DSC %", "DSC % (largest component)", "HD95 mm", "HD95 mm (largest component)", "cases", "applied"], rows)))
    quality = run / "pseudo_quality.csv"
    if quality.exists():
        with quality.open() as f:
            q = list(csv.reader(f))
        if q:
            sections.append(("Pseudo-label quality per round", _table(q[0], q[1:])))
    ev = run / "test_eval.json"
    if ev.exists():
        sections.append(("Test evaluation", _organ_table({run.name: json.loads(ev.read_text())})))
    return _page(f"partialseg run: {run.name}", sections)


def write_report(path: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.html`` for a benchmark folder or a run folder (into it, or to ``out``)."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(path, "not a folder")
    if (path / "benchmark_setup.json").exists() or (path / "benchmark.json").exists():
        text = benchmark_report(path)
    elif (path / "config.yaml").exists():
        text = run_report(path)
    else:
        raise InputError(path, "neither a benchmark folder (benchmark_setup.json) nor a run folder (config.yaml)")
    target = Path(out) if out is not None else path / REPORT_FILE
    write_text_atomic(text, target)
    return target


__all__ = ["REPORT_FILE", "benchmark_report", "run_report", "write_report"]
