"""``partialseg-nnunet-train``: nnU-Net v2's training entry for partialseg's trainer classes.

Same arguments as ``nnUNetv2_train`` (nnU-Net v2, Isensee et al. 2021, Nature Methods), single process::

    partialseg-nnunet-train DATASET 3d_fullres FOLD -tr nnUNetTrainer_partialseg_marginal [-device cpu] ...

Why not ``nnUNetv2_train`` itself: nnU-Net finds ``-tr`` by importing every module of its trainer package
before it looks anywhere else (``nnUNet_extTrainer``), and one of them (the Primus trainers) imports timm ->
torchvision. Beside a CPU torch the torchvision that pip can install is a CUDA build whose import fails, so
the scan dies before it reaches our classes (``requirements-nnunet.txt``). Here the class is taken from
:data:`~partialseg.engines.nnunet.trainers.TRAINERS` directly, and nothing imports timm. The rest is
nnU-Net's: the trainer is built as ``nnunetv2.run.run_training.get_trainer_from_args`` builds it, and
checkpoints, training and the final validation run through nnU-Net's own functions. On a machine whose
torchvision imports, ``nnUNetv2_train`` with ``nnUNet_extTrainer`` set to
:data:`~partialseg.engines.nnunet.EXT_TRAINER_DIR` runs the same classes (and nnU-Net's multi-GPU DDP).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from partialseg.engines.nnunet import METHODS, TRAINER_PREFIX
from partialseg.errors import PartialsegError

__all__ = ["build_trainer", "main", "resolve_trainer", "train"]


def resolve_trainer(name: str) -> type:
    """A trainer class from its class name or its method name (``marginal``)."""
    from partialseg.engines.nnunet.trainers import TRAINERS

    full = name if name.startswith(TRAINER_PREFIX) else TRAINER_PREFIX + name
    if full not in TRAINERS:
        raise PartialsegError(f"unknown partialseg nnU-Net trainer {name!r}; choose one of {sorted(TRAINERS)} "
                              f"(or a method name: {list(METHODS)}); nnU-Net's own trainers run with nnUNetv2_train")
    return TRAINERS[full]


def build_trainer(dataset: str | int, configuration: str, fold: int | str, trainer: str | type = "marginal",
                  plans_identifier: str = "nnUNetPlans", continue_training: bool = False,
                  device: torch.device | str = "cpu") -> Any:
    """The trainer nnU-Net's ``get_trainer_from_args`` builds, for a partialseg class: plans and dataset.json
    from ``$nnUNet_preprocessed/<Dataset>/``."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    cls = resolve_trainer(trainer) if isinstance(trainer, str) else trainer
    if isinstance(fold, str) and fold != "all":
        fold = int(fold)
    if not str(dataset).startswith("Dataset"):
        dataset = int(dataset)
    folder = Path(nnUNet_preprocessed) / maybe_convert_to_dataset_name(dataset)
    plans = load_json(str(folder / f"{plans_identifier}.json"))
    plans["continue_training"] = continue_training
    return cls(plans=plans, configuration=configuration, fold=fold,
               dataset_json=load_json(str(folder / "dataset.json")), device=torch.device(device))


def train(dataset: str | int, configuration: str, fold: int | str, trainer: str | type = "marginal", *,
          plans_identifier: str = "nnUNetPlans", device: torch.device | str = "cpu",
          pretrained_weights: str | None = None, continue_training: bool = False, only_run_validation: bool = False,
          disable_checkpointing: bool = False, val_with_best: bool = False, export_validation_probabilities: bool = False,
          num_epochs: int | None = None, num_iterations_per_epoch: int | None = None,
          num_val_iterations_per_epoch: int | None = None, validate: bool = True) -> Any:
    """nnU-Net's single-process ``run_training`` with a partialseg trainer; returns the trainer.

    ``num_epochs`` / ``num_iterations_per_epoch`` / ``num_val_iterations_per_epoch`` override nnU-Net's
    1000 / 250 / 50; ``validate=False`` skips nnU-Net's final sliding-window validation of the fold.
    """
    from nnunetv2.run.run_training import maybe_load_checkpoint

    if val_with_best and disable_checkpointing:
        raise PartialsegError("--val_best needs checkpoints (not compatible with --disable_checkpointing)")
    if continue_training and only_run_validation:
        raise PartialsegError("choose one of --c (continue training) and --val (only validate)")
    t = build_trainer(dataset, configuration, fold, trainer, plans_identifier, continue_training, device)
    for attr, value in (("num_epochs", num_epochs), ("num_iterations_per_epoch", num_iterations_per_epoch),
                        ("num_val_iterations_per_epoch", num_val_iterations_per_epoch)):
        if value is not None:
            if int(value) < 1:
                raise PartialsegError(f"{attr} must be >= 1, got {value}")
            setattr(t, attr, int(value))
    t.disable_checkpointing = disable_checkpointing
    from partialseg import checkpoint as ckpt

    # nnU-Net unpickles pretrained weights unrestricted: as plain data only (the checkpoints of
    # continue-training and --val go through the trainer's load_checkpoint, which does the same)
    pretrained = pretrained_weights and not (continue_training or only_run_validation)
    with ckpt.plain_data_loads(pretrained_weights) if pretrained else contextlib.nullcontext():
        maybe_load_checkpoint(t, continue_training, only_run_validation, pretrained_weights)
    if torch.cuda.is_available():
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
    if not only_run_validation:
        t.run_training()
    if validate:
        if val_with_best:
            t.load_checkpoint(str(Path(t.output_folder) / "checkpoint_best.pth"))
        t.perform_actual_validation(export_validation_probabilities)
    return t


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="partialseg-nnunet-train", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset_name_or_id")
    p.add_argument("configuration")
    p.add_argument("fold", help="0..4 or 'all'")
    p.add_argument("-tr", default=TRAINER_PREFIX + "marginal",
                   help=f"a partialseg trainer ({TRAINER_PREFIX}<method>) or method name: {', '.join(METHODS)}")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier")
    p.add_argument("-pretrained_weights", default=None)
    p.add_argument("--npz", action="store_true", help="save softmax outputs of the final validation")
    p.add_argument("--c", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--val", action="store_true", help="only run the final validation")
    p.add_argument("--val_best", action="store_true", help="validate with checkpoint_best.pth")
    p.add_argument("--disable_checkpointing", action="store_true")
    p.add_argument("-device", default="cuda", choices=("cpu", "cuda", "mps"))
    p.add_argument("--epochs", type=int, default=None, help="override nnU-Net's 1000 epochs")
    p.add_argument("--iterations", type=int, default=None, help="override nnU-Net's 250 iterations per epoch")
    p.add_argument("--val_iterations", type=int, default=None,
                   help="override nnU-Net's 50 online-validation iterations per epoch")
    a = p.parse_args(argv)
    if a.device == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
    elif a.device == "cuda":
        # as nnUNetv2_train: more CPU threads do not help a GPU run
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
    try:
        train(a.dataset_name_or_id, a.configuration, a.fold, a.tr, plans_identifier=a.p, device=a.device,
              pretrained_weights=a.pretrained_weights, continue_training=a.c, only_run_validation=a.val,
              disable_checkpointing=a.disable_checkpointing, val_with_best=a.val_best,
              export_validation_probabilities=a.npz, num_epochs=a.epochs, num_iterations_per_epoch=a.iterations,
              num_val_iterations_per_epoch=a.val_iterations)
    except PartialsegError as e:
        raise SystemExit(f"partialseg-nnunet-train: error: {e}") from None


if __name__ == "__main__":
    main()
