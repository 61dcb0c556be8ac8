"""nnU-Net's fingerprint → plan → preprocess for a partialseg dataset, inside a partialseg run folder.

nnU-Net v2 (Isensee et al. 2021, Nature Methods) plans from a dataset fingerprint (spacings, shapes,
foreground intensities) with its rules, writes ``nnUNetPlans.json`` and preprocesses every case for the
chosen configurations. This runs those steps through nnunetv2's own functions (what ``nnUNetv2_plan_and_
preprocess`` calls), with the path variables pointing inside the run folder (:mod:`.paths`), and lets the
caller edit the plans between planning and preprocessing (a smaller patch or network, for instance).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from partialseg.engines.nnunet.paths import link_raw_dataset

__all__ = ["plan_and_preprocess", "plans_file"]


def plans_file(preprocessed_dataset: Path, plans_identifier: str = "nnUNetPlans") -> Path:
    return Path(preprocessed_dataset) / f"{plans_identifier}.json"


def plan_and_preprocess(
    dataset: str | Path,
    paths: dict[str, Path],
    dataset_id: int,
    *,
    configurations: Sequence[str] = ("3d_fullres",),
    num_processes: int = 2,
    edit_plans: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
    splits: list[dict[str, list[str]]] | None = None,
    verbose: bool = False,
) -> Path:
    """Fingerprint, plan and preprocess ``dataset`` as nnU-Net dataset ``dataset_id``; returns the dataset's
    folder in ``nnUNet_preprocessed``.

    ``paths``: from :func:`~partialseg.engines.nnunet.paths.nnunet_environment` (the variables must be set
    while this runs). ``edit_plans(plans)`` may change the plans dict in place (or return a new one) before
    preprocessing (only ``configurations`` are preprocessed; the others stay planned). ``splits``: nnU-Net's
    ``splits_final.json`` content (``[{"train": [...], "val": [...]}, ...]``); without it
    nnU-Net makes its seeded 5-fold split at training (which needs >= 5 cases).
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess

    link = link_raw_dataset(dataset, paths["nnUNet_raw"], dataset_id)
    extract_fingerprints([dataset_id], num_processes=num_processes, check_dataset_integrity=True, verbose=verbose,
                         show_progress_bar=verbose)
    # nnU-Net's planner sets torch's thread count to nnUNet_n_proc_DA while it sizes the network, and 0 (nnU-Net's
    # own setting for "no augmentation workers", common on CPUs) makes torch raise; 1 thread only for that estimate
    n_da = os.environ.get("nnUNet_n_proc_DA")
    if n_da is not None and n_da.strip() == "0":
        os.environ["nnUNet_n_proc_DA"] = "1"
    try:
        plan_experiments([dataset_id])
    finally:
        if n_da is not None:
            os.environ["nnUNet_n_proc_DA"] = n_da
    folder = Path(paths["nnUNet_preprocessed"]) / link.name
    pf = plans_file(folder)
    plans = json.loads(pf.read_text())
    missing = [c for c in configurations if c not in plans["configurations"]]
    if missing:
        raise ValueError(f"nnU-Net planned no {missing} for {dataset} (it planned {sorted(plans['configurations'])})")
    if edit_plans is not None:
        plans = edit_plans(plans) or plans
    pf.write_text(json.dumps(plans, indent=2))
    if splits is not None:
        (folder / "splits_final.json").write_text(json.dumps(splits, indent=2))
    preprocess([dataset_id], configurations=list(configurations), num_processes=[num_processes] * len(configurations),
               verbose=verbose, show_progress_bar=verbose)
    return folder
