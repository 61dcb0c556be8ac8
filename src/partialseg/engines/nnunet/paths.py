"""nnU-Net's three path variables, set by partialseg from its own run folder.

nnU-Net v2 (Isensee et al. 2021, Nature Methods) finds its data through ``nnUNet_raw``, ``nnUNet_preprocessed``
and ``nnUNet_results``. A user of plain ``nnUNetv2_*`` sets them as nnU-Net documents; when partialseg drives
nnU-Net it points them inside the run folder instead, so our users set nothing::

    RUN/nnUNet_raw/Dataset<ID>_<name>  -> a symlink to the user's dataset (read only, never modified)
    RUN/nnUNet_preprocessed/           nnU-Net's fingerprint, plans and preprocessed arrays
    RUN/nnUNet_results/                nnU-Net's trainer output folders

nnunetv2 ≥ 2.8 reads the variables each time it needs a path (``nnunetv2.paths._EnvPath``), so setting them in
this process is enough, before or after nnunetv2 is imported. No nnunetv2 import here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from partialseg.errors import InputError

__all__ = ["PATH_VARIABLES", "dataset_folder_name", "link_raw_dataset", "nnunet_environment", "run_paths"]

PATH_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def run_paths(run: str | Path) -> dict[str, Path]:
    """The three folders inside ``run``, keyed by nnU-Net's variable names."""
    run = Path(run).resolve()
    return {name: run / name for name in PATH_VARIABLES}


@contextmanager
def nnunet_environment(run: str | Path) -> Iterator[dict[str, Path]]:
    """Set nnU-Net's path variables to the folders inside ``run`` (created) for the ``with`` block, then
    restore what was there: a caller's own nnU-Net settings survive a partialseg call."""
    paths = run_paths(run)
    saved = {name: os.environ.get(name) for name in PATH_VARIABLES}
    for name, folder in paths.items():
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(folder)
    try:
        yield paths
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """nnU-Net's ``Dataset<ID:03d>_<name>`` (IDs 1..999; the name without characters nnU-Net splits on)."""
    if not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"nnU-Net dataset IDs are 1..999, got {dataset_id}")
    clean = re.sub(r"[^A-Za-z0-9]+", "", name) or "partialseg"
    return f"Dataset{int(dataset_id):03d}_{clean}"


def link_raw_dataset(dataset: str | Path, raw_root: str | Path, dataset_id: int, name: str | None = None) -> Path:
    """``raw_root/Dataset<ID>_<name>`` as a symlink to ``dataset``: a partialseg dataset already is an nnU-Net v2
    raw folder (``imagesTr/<case>_0000``, ``labelsTr``, ``dataset.json``; nnU-Net ignores partialseg's keys and
    ``labelsRef``), and nnU-Net only reads it. An existing link must point at the same dataset."""
    dataset = Path(dataset).resolve()
    if not (dataset / "dataset.json").is_file():
        raise InputError(dataset, "not a dataset folder (no dataset.json)")
    link = Path(raw_root) / dataset_folder_name(dataset_id, name or dataset.name)
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.resolve() != dataset:
            raise InputError(link, f"already holds another dataset ({link.resolve()}), not {dataset}")
        return link
    link.symlink_to(dataset, target_is_directory=True)
    return link
