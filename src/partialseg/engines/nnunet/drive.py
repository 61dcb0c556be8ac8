"""``partialseg train DATASET --out RUN --engine nnunet --method M``: nnU-Net v2 end to end in a partialseg run.

nnU-Net v2 (Isensee et al. 2021, Nature Methods) fingerprints, plans (its rules, unedited), preprocesses and
trains with ``nnUNetTrainer_partialseg_<M>``; nnU-Net's three path variables point inside RUN for the call
(:mod:`.paths`), so the user sets nothing, and the dataset is only linked, never modified::

    RUN/nnunet.json                   what ran: method, trainer, nnU-Net dataset, configuration, fold, settings
    RUN/nnUNet_raw/Dataset001_<name>  -> DATASET
    RUN/nnUNet_preprocessed/...       fingerprint, nnUNetPlans.json, preprocessed cases
    RUN/nnUNet_results/...            nnU-Net's trainer folder (checkpoints, logs, final validation)

Settings come as ``--set nnunet.KEY=VALUE`` (:data:`SETTINGS`) and ``--set method.options.NAME=VALUE`` (the
method's options dataclass, as for partialseg's own engine). nnU-Net's fold 0 of its seeded 5-fold split is
the default; a dataset of fewer than 5 cases gets one split with its last case for validation.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from partialseg.data.dataset import PartialDataset
from partialseg.engines.nnunet import METHODS, trainer_name
from partialseg.engines.nnunet.paths import dataset_folder_name, nnunet_environment
from partialseg.errors import OutputExistsError, PartialsegError
from partialseg.io import read_json, write_json_atomic

__all__ = ["SETTINGS", "ensure_preprocessed", "parse_overrides", "resolve_device_setting", "train_run"]

DATASET_ID = 1  # one dataset per run folder
#: ``--set nnunet.KEY=VALUE`` keys and their defaults (None: nnU-Net's own: 1000 epochs, 250 + 50 iterations)
SETTINGS: dict[str, Any] = {"configuration": "3d_fullres", "fold": 0, "device": "auto", "epochs": None,
                            "iterations": None, "val_iterations": None, "validate": True, "num_processes": 2}
INSTALL_HINT = "the nnunet engine needs nnunetv2: pip install -c constraints.txt -r requirements-nnunet.txt"


def parse_overrides(overrides: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``["nnunet.epochs=2", "method.options.exclusion_weight=0.5"]`` → (nnU-Net settings, method options)."""
    settings, options = dict(SETTINGS), {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise PartialsegError(f"--set {item!r}: expected KEY=VALUE")
        value = yaml.safe_load(raw)
        if key.startswith("nnunet.") and key[7:] in SETTINGS:
            settings[key[7:]] = value
        elif key.startswith("method.options."):
            options[key[15:]] = value
        else:
            raise PartialsegError(f"--set {key}: the nnunet engine takes nnunet.<{'|'.join(SETTINGS)}> and "
                                  "method.options.<name>; partialseg's own train.*/data.* keys do not apply to it")
    return settings, options


def _trainer_class(method: str, options: dict[str, Any]) -> type:
    from partialseg.engines.nnunet.trainers import TRAINERS

    base = TRAINERS[trainer_name(method)]
    if not options:
        return base
    # same class name: nnU-Net names the output folder and the checkpoint's trainer after it, and inference
    # (which ignores the loss) then finds the registered class
    return type(base.__name__, (base,), {"partialseg_options": dict(options), "__module__": base.__module__,
                                          "__qualname__": base.__qualname__})


def resolve_device_setting(device: str) -> str:
    """``nnunet.device``: ``auto`` is CUDA where there is one, else the CPU."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def ensure_preprocessed(ds: PartialDataset, paths: dict[str, Path], settings: dict[str, Any], *,
                        edit_plans: Any = None) -> Path:
    """Plan and preprocess ``ds`` as nnU-Net dataset :data:`DATASET_ID` unless that finished; returns its
    preprocessed folder. A dataset of fewer than 5 cases gets one split, its last case for validation
    (nnU-Net's 5-fold split needs 5)."""
    folder = paths["nnUNet_preprocessed"] / dataset_folder_name(DATASET_ID, ds.root.name)
    if not (folder / "nnUNetPlans.json").is_file() or not (folder / f"nnUNetPlans_{settings['configuration']}").is_dir():
        from partialseg.engines.nnunet.prepare import plan_and_preprocess

        cases = sorted(c.case_id for c in ds.cases)
        splits = [{"train": cases[:-1], "val": cases[-1:]}] if len(cases) < 5 else None
        plan_and_preprocess(ds.root, paths, DATASET_ID, configurations=[settings["configuration"]],
                            num_processes=int(settings["num_processes"]), edit_plans=edit_plans, splits=splits)
    return folder


def train_run(dataset: str | Path, run: str | Path, method: str = "marginal", overrides: Sequence[str] = (),
              *, resume: bool = False) -> Path:
    """Plan, preprocess and train ``method`` with nnU-Net inside ``run``; returns nnU-Net's fold folder."""
    if importlib.util.find_spec("nnunetv2") is None:
        raise PartialsegError(INSTALL_HINT)
    from partialseg.methods.ipnp import is_ipnp

    if is_ipnp(method):  # round 0, then rounds of pseudo-labels and VLS retraining (.ipnp)
        from partialseg.engines.nnunet.ipnp import train_ipnp_run

        return train_ipnp_run(dataset, run, method, overrides, resume=resume)
    if method not in METHODS:
        raise PartialsegError(f"method {method!r} has no nnU-Net trainer; --engine nnunet takes {list(METHODS)} "
                              "and the IPnP methods (ipnp, ipnp_gated)")
    run = Path(run)
    settings, options = parse_overrides(overrides)
    from partialseg.methods.base import get_method

    get_method(method).parse_options(options)  # a bad option fails here, before any work
    ds = PartialDataset.load(dataset)
    record = run / "nnunet.json"
    if resume:
        if not record.is_file():
            raise PartialsegError(f"{run}: no nnU-Net run to resume (no nnunet.json)")
        before = read_json(record)
        if before.get("method") != method or Path(before.get("dataset", "")) != ds.root.resolve():
            raise PartialsegError(f"{run} trained {before.get('method')!r} on {before.get('dataset')}; resume it with those")
    elif run.exists():
        raise OutputExistsError(run)
    device = resolve_device_setting(settings["device"])
    name = dataset_folder_name(DATASET_ID, ds.root.name)
    run.mkdir(parents=True, exist_ok=True)
    with nnunet_environment(run) as paths:
        ensure_preprocessed(ds, paths, settings)
        write_json_atomic({"engine": "nnunet", "method": method, "trainer": trainer_name(method),
                           "dataset": str(ds.root.resolve()), "nnunet_dataset": name, "settings": settings,
                           "method_options": options}, record)
        from partialseg.engines.nnunet.run import train

        t = train(DATASET_ID, settings["configuration"], settings["fold"], _trainer_class(method, options),
                  device=device, continue_training=resume, num_epochs=settings["epochs"],
                  num_iterations_per_epoch=settings["iterations"],
                  num_val_iterations_per_epoch=settings["val_iterations"], validate=bool(settings["validate"]))
        return Path(t.output_folder)
