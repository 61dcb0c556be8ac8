"""``partialseg predict RUN IMAGES OUT`` for a run trained with ``--engine nnunet`` (RUN/nnunet.json).

nnU-Net v2's own predictor (Isensee et al. 2021, Nature Methods) segments the images with the run's trained
fold: nnU-Net's preprocessing of the plan, Gaussian-weighted sliding window, resampling back and export. The
label maps are then rewritten as partialseg writes its own predictions: ``OUT/<case>.nii.gz`` (``_0000``
dropped) with the input's exact shape and affine, values ``0..N`` of the dataset's ``labels`` (nnU-Net trains
on those values, so they need no mapping), and ``OUT/labels.json``, with which ``partialseg evaluate`` matches
classes by name. The dataset's path variables are set inside RUN for the call (:mod:`.paths`).

The network: the checkpoint is read as plain data only (:func:`partialseg.checkpoint.load`; nnU-Net's
``initialize_from_trained_model_folder`` unpickles it unrestricted, which could run code), the
network rebuilt as that function does and handed to ``nnUNetPredictor.manual_initialization``. Its trainer
class: a partialseg one from :data:`~partialseg.engines.nnunet.trainers.TRAINERS` (nnU-Net's lookup would import
its Primus trainers first, see run.py), ``nnUNetTrainer`` (what the TCT trainer exports, :mod:`.tct`) directly,
any other by nnU-Net's search.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from partialseg.errors import InputError, PartialsegError
from partialseg.io import atomic_output_dir, load_volume, nifti_inputs, read_json, save_volume, write_json_atomic

__all__ = ["is_nnunet_run", "load_predictor", "model_folder", "predict_run"]

RECORD = "nnunet.json"


def is_nnunet_run(run: str | Path) -> bool:
    """A run folder written by ``partialseg train --engine nnunet`` (no nnunetv2 needed to tell)."""
    return (Path(run) / RECORD).is_file()


def model_folder(run: str | Path) -> tuple[Path, dict[str, Any]]:
    """nnU-Net's trained model folder of ``run`` (``<trainer>__<plans>__<configuration>``, holding ``fold_F``)
    and the run's record."""
    from partialseg.engines.nnunet.paths import run_paths

    record = read_json(Path(run) / RECORD)
    settings = record.get("settings", {})
    name = f"{record['trainer']}__nnUNetPlans__{settings.get('configuration', '3d_fullres')}"
    return run_paths(run)["nnUNet_results"] / record["nnunet_dataset"] / name, record


def load_predictor(folder: str | Path, fold: int | str, *, checkpoint: str = "checkpoint_final.pth",
                   device: Any = "cpu", overlap: float = 0.5, mirror: bool = False, progress: bool = False) -> Any:
    """An initialised ``nnUNetPredictor`` for ``folder/fold_<fold>/<checkpoint>`` (module docstring).

    ``overlap``: sliding-window overlap (nnU-Net's ``tile_step_size = 1 - overlap``); ``mirror``: nnU-Net's
    mirroring test-time augmentation (off by default: it flips the left-right axis without swapping
    left/right organ labels).
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from partialseg import checkpoint as ckpt

    folder, device = Path(folder), torch.device(device)
    fold = fold if fold == "all" else int(fold)
    ckpt_path = folder / f"fold_{fold}" / checkpoint
    if not ckpt_path.is_file():
        raise InputError(ckpt_path, "no trained nnU-Net checkpoint (training not finished? `partialseg train --resume`)")
    if not 0.0 <= overlap < 1.0:
        raise PartialsegError(f"overlap must be in [0, 1), got {overlap}")
    predictor = nnUNetPredictor(tile_step_size=1.0 - overlap, use_gaussian=True, use_mirroring=mirror,
                                perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=progress)
    # plain data only (nnU-Net's initialize_from_trained_model_folder unpickles unrestricted), then the
    # network rebuilt and handed over as that function does
    checkpoint_data = ckpt.load(ckpt_path, numpy_scalars=True)
    name = checkpoint_data["trainer_name"]
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_json = load_json(str(folder / "dataset.json"))
    plans = PlansManager(load_json(str(folder / "plans.json")))
    config = plans.get_configuration(checkpoint_data["init_args"]["configuration"])
    network = _trainer_class(name).build_network_architecture(
        plans, config, determine_num_input_channels(plans, config, dataset_json),
        plans.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
    network.load_state_dict(checkpoint_data["network_weights"])
    predictor.manual_initialization(network, plans, config, [checkpoint_data["network_weights"]], dataset_json, name,
                                    checkpoint_data.get("inference_allowed_mirroring_axes"))
    return predictor


def _trainer_class(name: str) -> type:
    """The trainer class a checkpoint names: partialseg's from :data:`TRAINERS`, nnU-Net's ``nnUNetTrainer`` (what
    the TCT trainer exports) directly, any other by nnU-Net's own search of its trainer package."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from partialseg.engines.nnunet.trainers import TRAINERS

    if name in TRAINERS:
        return TRAINERS[name]
    if name == nnUNetTrainer.__name__:
        return nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    cls = recursive_find_trainer_class_by_name(name)  # nnU-Net's search (its package, then nnUNet_extTrainer)
    if cls is None:
        raise PartialsegError(f"nnU-Net trainer {name!r} not found (a custom trainer? install its package)")
    return cls


def predict_run(run: str | Path, input_dir: str | Path, out_dir: str | Path, *, device: str = "auto",
                overlap: float | None = None, mirror: bool = False, probabilities: bool = False,
                checkpoint: str = "checkpoint_final.pth", progress: bool = True) -> list[Path]:
    """Segment every ``*.nii.gz``/``*.nii`` of ``input_dir`` (or one image) into the new folder ``out_dir`` with
    the nnU-Net model of ``run``; returns the label maps written."""
    from partialseg.inference.predict import check_channels, output_name

    if importlib.util.find_spec("nnunetv2") is None:
        from partialseg.engines.nnunet.drive import INSTALL_HINT

        raise PartialsegError(f"{run} was trained with --engine nnunet; predicting with it: {INSTALL_HINT}")
    if mirror:
        raise PartialsegError("--mirror is partialseg's left-right test-time augmentation with left/right organs "
                              "swapped back; nnU-Net's mirroring swaps nothing (nnUNetv2_predict runs it)")
    if probabilities:
        raise PartialsegError("--probabilities is not supported for nnU-Net runs (nnU-Net's probability files "
                              "are in its own array order); use nnUNetv2_predict --save_probabilities")
    from partialseg.engines.nnunet.paths import nnunet_environment
    from partialseg.labels import LabelSpace
    from partialseg.runtime import resolve_device

    input_dir = Path(input_dir)
    files = nifti_inputs(input_dir)
    folder, record = model_folder(run)
    dataset_json = read_json(folder / "dataset.json")
    if len(dataset_json.get("channel_names", {"0": "CT"})) != 1:
        raise PartialsegError(f"{run}: predicting a multi-channel nnU-Net model is not supported here; use nnUNetv2_predict")
    check_channels(files, 1)
    names = [output_name(f) for f in files]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(input_dir, f"several inputs map to the same output name {dup[0]!r}")
    label_space = LabelSpace.from_dataset_json(dataset_json["labels"], folder / "dataset.json")
    fold = record.get("settings", {}).get("fold", 0)
    with nnunet_environment(run):
        predictor = load_predictor(folder, fold, checkpoint=checkpoint, device=resolve_device(device),
                                   overlap=0.5 if overlap is None else float(overlap), mirror=mirror,
                                   progress=progress)
        written = []
        with atomic_output_dir(out_dir) as tmp, tempfile.TemporaryDirectory(dir=tmp.parent,
                                                                             prefix=".nnunet-predict.") as raw:
            stems = [str(Path(raw) / n[: -len(".nii.gz")]) for n in names]
            # one process: nnU-Net's multiprocessing predict_from_files spawns workers per call
            predictor.predict_from_files_sequential([[str(f)] for f in files], stems, save_probabilities=False,
                                                    overwrite=True)
            for f, name, stem in zip(files, names, stems):
                image = load_volume(f, check_finite=False)
                labels = np.asarray(load_volume(stem + dataset_json.get("file_ending", ".nii.gz"), check_finite=False).array)
                if labels.shape != image.array.shape:
                    raise PartialsegError(f"nnU-Net's prediction of {f} has shape {labels.shape}, the image "
                                          f"{image.array.shape}: its reader changed the axis order")
                # nnU-Net writes the input's geometry; the input's own affine makes it exact for `evaluate`
                save_volume(np.rint(labels).astype(np.uint8), image.affine, tmp / name)
                written.append(Path(out_dir) / name)
            from partialseg.evaluation.evaluate import PRED_LABELS_FILE

            write_json_atomic({"labels": {"background": 0, **{n: i + 1 for i, n in enumerate(label_space.names)}},
                               "model": str(folder.resolve()), "engine": "nnunet", "largest_component": []},
                              tmp / PRED_LABELS_FILE)
    return written
