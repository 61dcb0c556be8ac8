"""The headline comparison tables, each over several seeds, with paired per-case tests.

A headline table is pure data (:data:`HEADLINE_TABLES`): protocol, setting, methods and step budget.
``partialseg benchmark --quick --table NAME --seeds 0 1 2 --out OUT`` runs one benchmark per seed
into ``OUT/seed_<s>/`` (an ordinary, resumable benchmark folder: new phantoms, a new partial-label
draw and a new initialisation per seed) and writes ``OUT/summary.md/.csv/.json``:

- per method: test mean DSC and mean HD95 (missed and spurious organs penalised, methods.md) as
  mean ± sd over the seeds, the missed / spurious organ instances summed over the seeds, the mean
  validation DSC at the last step, and % of the upper bound;
- per method against the reference method (``marginal``): the per-case differences of mean DSC
  and HD95 over every (seed, test case) pair, and the Wilcoxon signed-rank p-value of each
  (``scipy.stats.wilcoxon``, two-sided).

Hyper-parameters are never chosen here: the tables use what was chosen on validation.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.errors import PartialsegError
from partialseg.io import write_json_atomic, write_text_atomic

__all__ = ["HEADLINE_TABLES", "HeadlineTable", "archive_results", "run_seeds", "summarise_seeds"]

#: IPnP's retraining in the headline tables: 2 rounds of 360 steps (30 % of the CPU recipe's 1200 each)
_ROUNDS = "rounds=2,steps_per_round=360"


#: The other methods of the papers' tables, in every headline table
_OTHERS = ("aal", "dodnet", "clip_driven", "transdodnet", "hermes")
#: PFL trains a teacher per source (5 in the TCT protocol, each train.steps) or, with random per-case
#: subsets, per organ (15 in the IPnP protocol: there each teacher gets one IPnP round's 360 steps)
_PFL_IPNP = "pfl:teacher_steps=360"


@dataclass(frozen=True)
class HeadlineTable:
    """One headline table of the README: what ``run_benchmark`` runs for it, on every seed."""

    protocol: str
    methods: tuple[str, ...]
    keeps: tuple[float, ...] = ()
    match_steps: bool = False
    reference: str = "marginal"
    description: str = ""


HEADLINE_TABLES: dict[str, HeadlineTable] = {
    **{
        f"ipnp-{keep:g}": HeadlineTable(
            protocol="ipnp",
            keeps=(keep,),
            methods=("full", "marginal", f"ipnp:{_ROUNDS}", f"ipnp_gated:{_ROUNDS}", f"ipnp:{_ROUNDS},pseudo_source=none", *_OTHERS, _PFL_IPNP),
            match_steps=True,
            description=f"IPnP protocol, keep {keep:g}: every method and the upper bound train IPnP's total steps",
        )
        for keep in (0.67, 0.33)
    },
    "tct": HeadlineTable(
        protocol="tct",
        methods=("full", "marginal", "tct", "tct:absent_classes=keep", "tct:main_ce_weight=1,aux_kernel_size=1", *_OTHERS, "pfl"),
        description="TCT protocol: five sources in the paper's proportions, 5 organs",
    ),
}

#: Friendlier column names for the variants of the headline tables.
DISPLAY_NAMES = {
    f"ipnp[{_ROUNDS}]": "ipnp (paper)",
    f"ipnp_gated[{_ROUNDS}]": "ipnp_gated (ours)",
    f"ipnp[{_ROUNDS},pseudo_source=none]": "step control",
    "tct[main_ce_weight=1,aux_kernel_size=1]": "tct +CE, pointwise",
    "tct[absent_classes=keep]": "tct, absent organs' terms kept",
    "pfl[teacher_steps=360]": "pfl (teachers 360 steps)",
}


def seed_folder(out: Path, seed: int) -> Path:
    return Path(out) / f"seed_{seed}"


def run_seeds(out: str | Path, seeds: Sequence[int], table: str | None = None, **kwargs: Any) -> Path:
    """Run the benchmark once per seed into ``OUT/seed_<s>/`` and write the summary over the seeds.

    ``table`` names a :data:`HEADLINE_TABLES` entry, whose protocol, keeps, methods and step budget
    replace those in ``kwargs``; the other ``kwargs`` go to :func:`run_benchmark` unchanged.
    """
    from partialseg.experiments.benchmark import run_benchmark

    if not seeds:
        raise PartialsegError("--seeds needs at least one seed")
    reference = "marginal"
    if table is not None:
        if table not in HEADLINE_TABLES:
            raise PartialsegError(f"unknown table {table!r}; choose from {sorted(HEADLINE_TABLES)}")
        t = HEADLINE_TABLES[table]
        kwargs |= {"protocol": t.protocol, "methods": t.methods, "match_steps": t.match_steps}
        if t.keeps:
            kwargs["keeps"] = t.keeps
        reference = t.reference
    out = Path(out)
    for seed in seeds:
        run_benchmark(seed_folder(out, seed), seed=seed, **kwargs)
    summarise_seeds(out, seeds, reference=reference)
    if kwargs.get("transfer"):
        from partialseg.experiments.transfer import SCRATCH, TRANSFER

        summarise_seeds(out, seeds, reference=SCRATCH, subfolder=TRANSFER)
    return out / "summary.md"


# ---- the summary ------------------------------------------------------------------------------------
def _runs(folder: Path) -> dict[tuple[str, str], Path]:
    """(setting, method label) → run folder, for every evaluated run of a benchmark folder, whichever
    invocation made it (several may share a folder: each writes ``benchmark.json`` for its own runs)."""
    from partialseg.experiments.benchmark import RUN_LABEL_FILE, MethodSpec

    out: dict[tuple[str, str], Path] = {}
    listed: dict[tuple[str, str], int] = {}  # the order the benchmark ran them in
    if (folder / "benchmark.json").exists():
        for r in json.loads((folder / "benchmark.json").read_text()):
            listed.setdefault((r["setting"], r["method"]), len(listed))
            run = folder / "runs" / r["setting"] / MethodSpec(r["method"]).folder  # a label's folder
            if (run / "test_eval.json").exists():
                out.setdefault((r["setting"], r["method"]), run)
    # runs/SETTING/METHOD/ in a benchmark folder, runs/FOLDER/ in its transfer folder
    for f in sorted([*folder.glob(f"runs/*/*/{RUN_LABEL_FILE}"), *folder.glob(f"runs/*/{RUN_LABEL_FILE}")]):
        if (f.parent / "test_eval.json").exists():
            label = json.loads(f.read_text())
            out.setdefault((label["setting"], label["method"]), f.parent)
    order = {s: i for i, s in enumerate(dict.fromkeys(s for s, _ in out))}
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0] != "upper_bound", order[kv[0][0]],
                                                    listed.get(kv[0], len(listed)))))


def _per_case(evaluation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {case: v["organs"] for case, v in evaluation["per_case"].items()}


def _final_log(run: Path) -> Path:
    """The training log of a run's final model: its own, an IPnP run's last round's, a PFL run's student's."""
    logs = sorted(run.glob("round_*/log.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    if logs:
        return logs[-1]
    return run / "student" / "log.csv" if (run / "student" / "log.csv").exists() else run / "log.csv"


def validation_dsc(run: Path) -> float | None:
    """Mean validation DSC at the last validation of a run's final model (:func:`_final_log`)."""
    log = _final_log(run)
    if not log.exists():
        return None
    last = None
    with log.open() as f:
        for row in csv.DictReader(f):
            if row.get("val_dsc_mean"):
                last = float(row["val_dsc_mean"])
    return last


def archive_results(out: str | Path, seeds: Sequence[int], dest: str | Path) -> Path:
    """What :func:`summarise_seeds` reads of ``OUT/seed_<s>/`` and of its transfer folder, without models,
    predictions or data, into the new folder ``dest`` (about 20 kB a run: its label, config, test evaluation
    and validation rows), so that a table's per-case numbers outlive the benchmark folder and later seeds or
    methods can be pooled with them."""
    from partialseg.experiments.benchmark import RUN_LABEL_FILE
    from partialseg.experiments.transfer import TRANSFER

    out, dest = Path(out), Path(dest)
    if dest.exists():
        raise PartialsegError(f"{dest} exists; archive into a new folder")
    for s, sub in itertools.product(seeds, ("", TRANSFER)):
        src = seed_folder(out, s) / sub
        if sub and not src.is_dir():
            continue
        runs = _runs(src)
        for (setting, method), run in runs.items():
            to = seed_folder(dest, s) / run.relative_to(seed_folder(out, s))
            to.mkdir(parents=True)
            write_json_atomic({"setting": setting, "method": method}, to / RUN_LABEL_FILE)
            for name in ("test_eval.json", "config.yaml", "finetune.json"):
                if (run / name).exists():
                    write_text_atomic((run / name).read_text(), to / name)
            log = _final_log(run)
            if log.exists():
                with log.open() as f:
                    rows = list(csv.DictReader(f))
                buf = io.StringIO()
                fields = list(rows[0]) if rows else ["step", "val_dsc_mean"]
                w = csv.DictWriter(buf, fieldnames=fields)
                w.writeheader()
                w.writerows(r for r in rows if r.get("val_dsc_mean"))
                (to / log.relative_to(run)).parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(buf.getvalue(), to / log.relative_to(run))
        # the table's row order
        (seed_folder(dest, s) / sub).mkdir(parents=True, exist_ok=True)
        write_json_atomic([{"setting": k[0], "method": k[1]} for k in runs], seed_folder(dest, s) / sub / "benchmark.json")
    return dest


def _wilcoxon(diffs: np.ndarray) -> float | None:
    from scipy.stats import wilcoxon

    diffs = diffs[np.isfinite(diffs)]
    if diffs.size < 2 or not np.any(diffs != 0):
        return None
    return float(wilcoxon(diffs, alternative="two-sided").pvalue)


def _sd(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarise_seeds(
    out: str | Path, seeds: Sequence[int], *, reference: str = "marginal", subfolder: str = ""
) -> dict[str, Any]:
    """Aggregate ``OUT/seed_<s>/`` benchmark folders into ``OUT/summary.{md,csv,json}`` (see module doc).

    ``subfolder``: aggregate ``OUT/seed_<s>/SUBFOLDER/`` into ``OUT/SUBFOLDER/summary.*`` instead (the
    transfer setting: ``subfolder="transfer", reference="scratch"``).
    """
    from partialseg.evaluation.evaluate import case_means
    from partialseg.experiments.benchmark import UPPER_BOUND

    out = Path(out)
    per_seed: dict[int, dict[tuple[str, str], Path]] = {s: _runs(seed_folder(out, s) / subfolder) for s in seeds}
    keys = [k for k in per_seed[seeds[0]] if all(k in per_seed[s] for s in seeds)]
    evals = {(s, k): json.loads((per_seed[s][k] / "test_eval.json").read_text()) for s in seeds for k in keys}
    ub = next((k for k in keys if k[0] == UPPER_BOUND), None)
    rows: list[dict[str, Any]] = []
    for setting, method in keys:
        r: dict[str, Any] = {"setting": setting, "method": DISPLAY_NAMES.get(method, method), "label": method}
        dsc = [evals[(s, (setting, method))]["mean"]["dsc_mean"] for s in seeds]
        hd = [evals[(s, (setting, method))]["mean"]["hd95_mean"] for s in seeds]
        r |= {"dsc_per_seed": dsc, "hd95_per_seed": hd, "dsc_mean": float(np.mean(dsc)), "dsc_sd": _sd(dsc),
              "hd95_mean": float(np.mean(hd)), "hd95_sd": _sd(hd)}
        r["n_missed"] = sum(evals[(s, (setting, method))]["mean"]["n_missed"] for s in seeds)
        r["n_spurious"] = sum(evals[(s, (setting, method))]["mean"]["n_spurious"] for s in seeds)
        val = [validation_dsc(per_seed[s][(setting, method)]) for s in seeds]
        r["val_dsc_mean"] = float(np.mean(val)) if all(v is not None for v in val) else None
        if ub is not None:
            pct = [d / evals[(s, ub)]["mean"]["dsc_mean"] for s, d in zip(seeds, dsc)]
            r["pct_of_upper_bound"] = float(np.mean(pct))
        ref_key = (setting, reference)
        if ref_key in keys and ref_key != (setting, method):
            d_dsc, d_hd = [], []
            for s in seeds:
                mine = case_means(_per_case(evals[(s, (setting, method))]))
                ref = case_means(_per_case(evals[(s, ref_key)]))
                for case in sorted(set(mine) & set(ref)):
                    d_dsc.append(mine[case]["dsc"] - ref[case]["dsc"])
                    d_hd.append(mine[case]["hd95"] - ref[case]["hd95"])
            a_dsc, a_hd = np.asarray(d_dsc), np.asarray(d_hd)
            r |= {"n_pairs": int(np.isfinite(a_dsc).sum()),
                  "delta_dsc_mean": float(np.nanmean(a_dsc)), "delta_dsc_sd": float(np.nanstd(a_dsc, ddof=1)),
                  "p_dsc": _wilcoxon(a_dsc), "delta_hd95_mean": float(np.nanmean(a_hd)), "p_hd95": _wilcoxon(a_hd)}
        rows.append(r)
    _write_summary(out / subfolder, seeds, reference, rows)
    return {"seeds": list(seeds), "reference": reference, "rows": rows}


def _p(v: float | None) -> str:
    if v is None:
        return "–"
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def _write_summary(out: Path, seeds: Sequence[int], reference: str, rows: list[dict[str, Any]]) -> None:
    from partialseg.evaluation.evaluate import markdown_table

    header = ["setting", "method", "DSC (%) mean ± sd", "HD95 (mm) mean ± sd", "DSC per seed", "missed / spurious",
              f"Δ DSC vs {reference} (per case)", "p (Wilcoxon)", f"Δ HD95 vs {reference}", "p (HD95)",
              "validation DSC", "% of UB"]
    body = []
    for r in rows:
        has_delta = "delta_dsc_mean" in r
        body.append([
            r["setting"], r["method"],
            f"{100 * r['dsc_mean']:.1f} ± {100 * r['dsc_sd']:.1f}", f"{r['hd95_mean']:.1f} ± {r['hd95_sd']:.1f}",
            ", ".join(f"{100 * d:.1f}" for d in r["dsc_per_seed"]), f"{r['n_missed']} / {r['n_spurious']}",
            f"{100 * r['delta_dsc_mean']:+.1f} ± {100 * r['delta_dsc_sd']:.1f} (n={r['n_pairs']})" if has_delta else "–",
            _p(r.get("p_dsc")) if has_delta else "–",
            f"{r['delta_hd95_mean']:+.1f}" if has_delta else "–", _p(r.get("p_hd95")) if has_delta else "–",
            "–" if r["val_dsc_mean"] is None else f"{r['val_dsc_mean']:.3f}",
            f"{100 * r['pct_of_upper_bound']:.1f}" if "pct_of_upper_bound" in r else "–",
        ])
    notes = (
        f"Seeds {', '.join(map(str, seeds))}: each seed draws new phantoms, a new partial labelling and a new "
        "initialisation. DSC and HD95: test mean over organs (missed and spurious organs score DSC 0 and HD95 = the "
        "field-of-view diagonal; organs absent from both are left out), then mean ± sd over the seeds. "
        "'missed / spurious': organ instances over all seeds. Δ: per-case mean over organs minus the "
        f"reference `{reference}`'s on the same case, mean ± sd over every (seed, case) pair; p: two-sided "
        "Wilcoxon signed-rank test on those pairs. Validation DSC: mean over seeds at the last validation."
    )
    write_text_atomic(f"# Summary over seeds\n\n{notes}\n\n{markdown_table(header, body)}\n", out / "summary.md")
    buf = io.StringIO()
    columns = list(dict.fromkeys(k for r in rows for k, v in r.items() if not isinstance(v, list)))
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(buf.getvalue(), out / "summary.csv")
    write_json_atomic({"seeds": list(seeds), "reference": reference, "rows": rows}, out / "summary.json")

