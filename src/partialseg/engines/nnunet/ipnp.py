"""IPnP with an nnU-Net v2 specialist: ``partialseg train DATASET --engine nnunet --method ipnp --out RUN``.

IPnP ("Foundation Model-guided Iteratively Prompting and Pseudo-Labeling for Partially Labeled Medical Image
Segmentation"; methods.md "IPnP") as the paper ran it: the specialist is nnU-Net v2 (Isensee et al. 2021). Round
0 is nnU-Net with ``nnUNetTrainer_partialseg_marginal`` on the partial labels (the loss partialseg's ``ipnp``
uses for round 0). Each round ``r = 1..R`` then

1. predicts every case with nnU-Net's own ``nnUNetPredictor`` (its preprocessing, sliding window, mirroring
   and resampling back to the image grid), one case at a time: ``(C, X, Y, Z)`` probabilities of one case
   in RAM at once;
2. prompts the generalist with the specialist's boxes, refines (τ, ROI dilation δ, entropy rule) and assembles
   the pseudo-full label map with partialseg's own round (:func:`~partialseg.pseudolabel.round.pseudo_label_round`:
   one prediction per case, the organ gate's included), on the image grid reoriented to RAS (axis flips and
   permutations only: the prompts' axial/sagittal axes are RAS's, as in partialseg's own loop);
3. writes them as a new nnU-Net raw dataset, preprocesses it with round 0's plans (same network, same
   normalisation) and continues training with ``nnUNetTrainer_partialseg_ipnp`` (:mod:`.vls`: the VLS loss,
   initialised from the previous round's weights; ``retrain="scratch"``: from nnU-Net's initialisation).

Run folder (nnU-Net's path variables point inside it for the call, :mod:`.paths`)::

    RUN/nnunet.json                         what ran; ``nnunet_dataset``/``trainer``: the latest finished round
    RUN/nnUNet_raw/Dataset001_<name>        -> DATASET (round 0; a link, never written)
    RUN/nnUNet_raw/Dataset<1+r>_<name>ipnp<r>/   round r: imagesTr/ links to the user's images, labelsTr/ the
                                            user's labels + pseudo-labels, dataset.json with annotated_classes
                                            (Phi ∪ P, what the loss supervises) and pseudo_labelled_classes (P)
    RUN/nnUNet_preprocessed/Dataset.../     round 0's plans and split in every round
    RUN/nnUNet_results/Dataset.../<trainer>__nnUNetPlans__<configuration>/fold_<f>/   each round's model
    RUN/pseudo/round_<r>/<case>.npy|.json   the store (RAS image grid; the entropy rule reads it next round)
    RUN/pseudo/round_<r>/decisions.json     per case and organ: accepted / rejected and why
    RUN/ipnp/round_<r>.json                 written when round r's training finished: the round is done
    RUN/pseudo_quality.csv|.md|.png         with reference labels: pseudo-label DSC per round and organ

Resuming (``--resume``): a round with its ``ipnp/round_<r>.json`` is skipped; otherwise the cases already in
the store are kept, the raw dataset (written under a temporary name and renamed) is made if missing,
preprocessing is redone unless it finished, and training continues from nnU-Net's latest checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.data.dataset import PartialDataset, dataset_json, write_dataset_json
from partialseg.engines.nnunet import trainer_name
from partialseg.engines.nnunet.drive import (
    DATASET_ID,
    INSTALL_HINT,
    _trainer_class,
    ensure_preprocessed,
    parse_overrides,
    resolve_device_setting,
)
from partialseg.engines.nnunet.paths import dataset_folder_name, nnunet_environment
from partialseg.errors import OutputExistsError, PartialsegError
from partialseg.io import atomic_output_dir, read_json, save_volume, write_json_atomic

__all__ = ["IPNP_SETTINGS", "round_dataset_name", "train_ipnp_run"]

#: ``--set nnunet.KEY=VALUE`` keys of the ipnp procedure on top of :data:`~.drive.SETTINGS`: epochs of each
#: retraining round (None: ``epochs``), and the specialist's prediction: sliding-window overlap and nnU-Net's
#: mirroring (off: it flips left-right without swapping left/right organs; ``partialseg predict``'s defaults)
IPNP_SETTINGS: dict[str, Any] = {"round_epochs": None, "overlap": 0.5, "mirror": False}
ROUND0_METHOD = "marginal"


def round_dataset_name(r: int, name: str) -> str:
    """nnU-Net's folder name of round ``r``'s dataset (round 0: the user's, linked)."""
    return dataset_folder_name(DATASET_ID + r, name if r == 0 else f"{name}ipnp{r}")


def _split_overrides(overrides: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(nnU-Net settings, ipnp settings, method options) from ``--set`` items."""
    import yaml

    ours, rest = dict(IPNP_SETTINGS), []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if sep and key.startswith("nnunet.") and key[7:] in IPNP_SETTINGS:
            ours[key[7:]] = yaml.safe_load(raw)
        else:
            rest.append(item)
    settings, options = parse_overrides(rest)
    return settings, ours, options


def _loss_options(opts: Any) -> dict[str, Any]:
    """The options of IPnP's loss (``MarginalOptions``' fields: ``ce_weight``, ``dice_weight``, ``vls``, ...)."""
    from partialseg.methods.baselines import MarginalOptions

    return {f.name: getattr(opts, f.name) for f in fields(MarginalOptions)}


def _fold_folder(paths: dict[str, Path], dataset: str, trainer: str, settings: dict[str, Any]) -> Path:
    return paths["nnUNet_results"] / dataset / f"{trainer}__nnUNetPlans__{settings['configuration']}" / f"fold_{settings['fold']}"


def _drop_broken_final(fold: Path) -> None:
    """A kill while nnU-Net wrote ``checkpoint_final.pth`` (not atomic) leaves a file ``--c`` would load first."""
    from partialseg import checkpoint as ckpt
    from partialseg.errors import InputError

    final = fold / "checkpoint_final.pth"
    if final.is_file() and (fold / "checkpoint_latest.pth").is_file():
        try:
            ckpt.load(final, numpy_scalars=True)
        except InputError as e:
            if "refused" in str(e):  # readable but not plain data: not a half-written file, never loaded
                raise
            final.unlink()


def _train_round(paths: dict[str, Path], r: int, name: str, cls: type, settings: dict[str, Any], epochs: Any) -> Path:
    from partialseg.engines.nnunet.run import train

    fold = _fold_folder(paths, round_dataset_name(r, name), cls.__name__, settings)
    _drop_broken_final(fold)
    resume = any((fold / f).is_file() for f in ("checkpoint_final.pth", "checkpoint_latest.pth"))
    t = train(DATASET_ID + r, settings["configuration"], settings["fold"], cls, device=settings["device"],
              continue_training=resume, num_epochs=epochs, num_iterations_per_epoch=settings["iterations"],
              num_val_iterations_per_epoch=settings["val_iterations"], validate=bool(settings["validate"]))
    return Path(t.output_folder)


def train_ipnp_run(dataset: str | Path, run: str | Path, method: str = "ipnp", overrides: Sequence[str] = (), *,
                   resume: bool = False, edit_plans: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
                   progress: bool = False) -> Path:
    """Round 0 and ``rounds`` IPnP rounds on nnU-Net inside ``run``; returns the last round's fold folder.

    ``overrides``: ``nnunet.KEY=VALUE`` (:data:`~.drive.SETTINGS`, :data:`IPNP_SETTINGS`) and
    ``method.options.NAME=VALUE`` (``IPnPOptions``); a resumed run without them reuses the saved ones.
    ``edit_plans(plans)`` may change nnU-Net's plans before round 0 preprocesses (every round uses them).
    """

    from partialseg.methods.base import get_method
    from partialseg.pseudolabel.loop import check_generalist_options

    if importlib.util.find_spec("nnunetv2") is None:
        raise PartialsegError(INSTALL_HINT)
    run = Path(run)
    ds = PartialDataset.load(dataset)
    record_file = run / "nnunet.json"
    record = read_json(record_file) if resume and record_file.is_file() else None
    if resume and record is None:
        raise PartialsegError(f"{run}: no nnU-Net run to resume (no nnunet.json)")
    if not resume and run.exists():
        raise OutputExistsError(run)
    settings, ours, options = _split_overrides(overrides)
    if record is not None:
        if record.get("method") != method or Path(record.get("dataset", "")) != ds.root.resolve():
            raise PartialsegError(f"{run} trained {record.get('method')!r} on {record.get('dataset')}; resume it with those")
        if not overrides:
            settings, ours, options = record["settings"], record["ipnp_settings"], record["method_options"]
        elif options != record["method_options"]:
            raise PartialsegError(f"{run} ran with method options {record['method_options']}, not {options}: the "
                                  "rounds would disagree; resume without --set or with the same options")
    opts = get_method(method).parse_options(options)
    if opts.specialist_run or opts.steps_per_round:
        raise PartialsegError("with --engine nnunet, round 0 is trained in the run (no specialist_run) and a round's "
                              "length is nnunet.round_epochs (not steps_per_round)")
    check_generalist_options(opts)
    settings["device"] = resolve_device_setting(settings["device"])
    name = ds.root.name
    base = {"engine": "nnunet", "method": method, "dataset": str(ds.root.resolve()), "settings": settings,
            "ipnp_settings": ours, "method_options": options, "configuration": settings["configuration"],
            "fold": settings["fold"]}
    run.mkdir(parents=True, exist_ok=True)
    with nnunet_environment(run) as paths:
        ensure_preprocessed(ds, paths, settings, edit_plans=edit_plans)
        trainer0 = trainer_name(ROUND0_METHOD)
        write_json_atomic({**base, "trainer": trainer0, "nnunet_dataset": round_dataset_name(0, name), "round": 0}, record_file)
        done = run / "ipnp" / "round_0.json"
        if not done.is_file():
            fold = _train_round(paths, 0, name, _trainer_class(ROUND0_METHOD, _loss_options(opts)), settings, settings["epochs"])
            write_json_atomic({"round": 0, "fold": str(fold), "trainer": trainer0}, done)
        fold = Path(read_json(done)["fold"])
        generalist = None
        for r in range(1, opts.rounds + 1):
            done = run / "ipnp" / f"round_{r}.json"
            if not done.is_file():
                from partialseg.engines.nnunet.pseudo import build_generalist_for, pseudo_label_round
                from partialseg.engines.nnunet.vls import IPNP_TRAINER, nnUNetTrainer_partialseg_ipnp

                if generalist is None:
                    generalist = build_generalist_for(opts, ds, run, paths, settings, progress)
                pseudo_label_round(ds, run, r, fold / "checkpoint_final.pth", generalist, opts, settings, ours, progress)
                raw = _write_round_dataset(ds, run, paths, r, name, fold)
                _preprocess_round(paths, r, name, raw, settings)
                init = str(fold / "checkpoint_final.pth") if opts.retrain == "continue" else ""
                cls = type(IPNP_TRAINER, (nnUNetTrainer_partialseg_ipnp,), {
                    "partialseg_options": _loss_options(opts), "partialseg_init_checkpoint": init,
                    "__module__": nnUNetTrainer_partialseg_ipnp.__module__,
                    "__qualname__": nnUNetTrainer_partialseg_ipnp.__qualname__})
                epochs = ours["round_epochs"] if ours["round_epochs"] is not None else settings["epochs"]
                new = _train_round(paths, r, name, cls, settings, epochs)
                write_json_atomic({"round": r, "fold": str(new), "trainer": IPNP_TRAINER, "initialised_from": init}, done)
                write_json_atomic({**base, "trainer": IPNP_TRAINER, "nnunet_dataset": round_dataset_name(r, name), "round": r},
                                  record_file)
            fold = Path(read_json(done)["fold"])
    return fold


def _write_round_dataset(ds: PartialDataset, run: Path, paths: dict[str, Path], r: int, name: str, specialist: Path) -> Path:
    """Round ``r``'s nnU-Net raw dataset from the store, built under a temporary name and renamed into place.

    Images (and reference labels) are links to the user's files; each label map is the user's with the round's
    pseudo-labels where the user's is 0, back on the image grid and with the user's label header affine.
    """
    from partialseg.engines.nnunet.pseudo import case_grid
    from partialseg.engines.nnunet.vls import PSEUDO_KEY
    from partialseg.preprocessing.geometry import from_ras
    from partialseg.pseudolabel.store import load_pseudo

    out = paths["nnUNet_raw"] / round_dataset_name(r, name)
    if out.is_dir():
        return out
    pdir = run / "pseudo" / f"round_{r}"
    space = ds.label_space
    annotated, pseudo_names = {}, {}
    with atomic_output_dir(out) as tmp:
        for sub in ("imagesTr", "labelsTr") + (("labelsRef",) if any(c.reference for c in ds.cases) else ()):
            (tmp / sub).mkdir()
        for case in ds.cases:
            (tmp / "imagesTr" / case.image.name).symlink_to(case.image.resolve())
            if case.reference is not None:
                (tmp / "labelsRef" / case.reference.name).symlink_to(case.reference.resolve())
            user = case.load_label(space)
            label, pseudo, _ = load_pseudo(pdir, case.case_id)
            full = np.ascontiguousarray(from_ras(np.asarray(label), case_grid(user.affine)))
            if full.shape != user.array.shape or not np.array_equal(full[user.array != 0], user.array[user.array != 0]):
                raise PartialsegError(f"{pdir / case.case_id}: the stored pseudo-label does not keep the user's labels")
            save_volume(full.astype(np.uint8 if space.num_classes < 256 else np.int16), user.affine,
                        tmp / "labelsTr" / f"{case.case_id}{ds.file_ending}")
            annotated[case.case_id] = space.names_of(case.annotated | pseudo)
            pseudo_names[case.case_id] = space.names_of(pseudo)
        meta = dataset_json(space, len(ds.cases), name=f"{name}_ipnp{r}", modality=ds.modality, annotated=annotated,
                            reference_folder="labelsRef" if any(c.reference for c in ds.cases) else None,
                            groups={c.case_id: c.group for c in ds.cases if c.group} or None,
                            extra={PSEUDO_KEY: pseudo_names,
                                   "partialseg": {"ipnp": {"round": r, "source": str(ds.root.resolve()),
                                                           "specialist": str(specialist)}}})
        meta["file_ending"] = ds.file_ending
        write_dataset_json(tmp, meta)
    return out


def _preprocess_round(paths: dict[str, Path], r: int, name: str, raw: Path, settings: dict[str, Any]) -> Path:
    """nnU-Net's preprocessing of round ``r``'s dataset with round 0's plans (the network whose weights carry
    over, the normalisation they were trained with) and split."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess

    folder0 = paths["nnUNet_preprocessed"] / round_dataset_name(0, name)
    folder = paths["nnUNet_preprocessed"] / raw.name
    marker = folder / "partialseg_preprocessed.json"
    if marker.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    plans = json.loads((folder0 / "nnUNetPlans.json").read_text())
    plans["dataset_name"] = raw.name
    write_json_atomic(plans, folder / "nnUNetPlans.json")
    for f in ("dataset_fingerprint.json", "splits_final.json"):
        if (folder0 / f).is_file():
            shutil.copyfile(folder0 / f, folder / f)
    shutil.copyfile(raw / "dataset.json", folder / "dataset.json")  # nnU-Net's preprocessor reads it from here
    preprocess([DATASET_ID + r], configurations=[settings["configuration"]], num_processes=[int(settings["num_processes"])],
               verbose=False, show_progress_bar=False)
    write_json_atomic({"round": r, "plans_from": str(folder0)}, marker)
    return folder

