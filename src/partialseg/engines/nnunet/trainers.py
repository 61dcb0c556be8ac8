"""nnU-Net v2 trainers for partialseg's loss-based methods: ``nnUNetTrainer_partialseg_<method>``.

Each subclasses nnU-Net v2's ``nnUNetTrainer`` (Isensee et al. 2021, Nature Methods) and changes only what
partial labels need; planning, preprocessing, data loading, augmentation, network, optimiser, schedule,
checkpoints and the final validation stay nnU-Net's:

- ``_build_loss``: the method's partialseg loss at every output scale, with the deep-supervision weights
  nnU-Net computes for the plan (:class:`~partialseg.engines.nnunet.loss.PartialsegLoss`);
- ``train_step``: sets the loss's ``(B, C)`` Phi mask from ``batch["keys"]`` (the batch's case identifiers),
  then runs nnU-Net's own step (autocast, grad scaling, clipping);
- ``validation_step``: the same loss, and the online pseudo-Dice (nnU-Net's per-class TP/FP/FN of the argmax)
  summed only over the (sample, class) pairs where the class is annotated;
- ``sigmoid`` only, ``build_network_architecture``: N per-organ logits from nnU-Net's network with a
  constant 0 logit put first, so that nnU-Net's softmax argmax (online Dice, validation, ``nnUNetv2_predict``)
  labels a voxel ``c`` iff ``c`` has the largest logit and ``sigmoid(x_c) > 0.5`` -- partialseg's rule for the
  ``sigmoid`` method (``PerOrganSigmoid.probabilities``: background ``1 - max_c p_c``).

Phi comes from ``annotated_classes`` in the ``dataset.json`` nnU-Net passes to the trainer (copied from the
raw dataset at preprocessing); ``partialseg_options`` (a class attribute) sets the method's options in a subclass.
Region-based training and nnU-Net's ignore label are not supported: partial labels are partialseg's answer
to the same problem, and the two would conflict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from torch import Tensor, autocast, nn

from partialseg.engines.nnunet import METHODS, TRAINER_PREFIX
from partialseg.engines.nnunet.annotations import CaseAnnotations
from partialseg.engines.nnunet.loss import PartialsegLoss
from partialseg.errors import PartialsegError
from partialseg.methods.base import StepContext, get_method

__all__ = ["TRAINERS", "BackgroundLogit", "nnUNetTrainer_partialseg"] + [TRAINER_PREFIX + m for m in METHODS]


class BackgroundLogit(nn.Module):
    """``net``'s N logits with a constant 0 logit as channel 0: ``(B, N, ...)`` → ``(B, N + 1, ...)``, each
    deep-supervision output alike. ``argmax`` of it is the per-organ sigmoid label rule (module docstring)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    @property
    def decoder(self) -> nn.Module:
        # nnUNetTrainer.set_deep_supervision_enabled switches network.decoder.deep_supervision
        return self.net.decoder

    @staticmethod
    def _prepend(x: Tensor) -> Tensor:
        return torch.cat([x.new_zeros((x.shape[0], 1, *x.shape[2:])), x], dim=1)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:  # type: ignore[override]
        out = self.net(x)
        if isinstance(out, (list, tuple)):
            return [self._prepend(o) for o in out]
        return self._prepend(out)


class nnUNetTrainer_partialseg(nnUNetTrainer):  # noqa: N801 (nnU-Net's naming)
    """Base class; a subclass sets ``partialseg_method`` (a registered partialseg method name)."""

    partialseg_method: ClassVar[str] = ""
    partialseg_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        # the parameter names must be nnUNetTrainer's: it records them from this signature for checkpoints
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.partialseg_method not in METHODS:
            raise PartialsegError(f"{type(self).__name__}: partialseg_method must be one of {list(METHODS)}, "
                                  f"got {self.partialseg_method!r}")
        if self.label_manager.has_regions or self.label_manager.has_ignore_label:
            raise PartialsegError(f"{type(self).__name__}: nnU-Net regions and ignore labels are not supported; "
                                  "partial labels are given by annotated_classes in dataset.json")
        self.partialseg_annotations = CaseAnnotations(dataset_json)
        self.partialseg = get_method(self.partialseg_method)(self.partialseg_annotations.label_space,
                                                             dict(self.partialseg_options))
        self.partialseg_steps = 0

    @classmethod
    def per_organ_sigmoid(cls) -> bool:
        return cls.partialseg_method == "sigmoid"

    # ---- loss ---------------------------------------------------------------------------------------
    def _build_loss(self) -> PartialsegLoss:
        # nnU-Net's own loss only for its deep-supervision weights (1/2^s, lowest scale 0, normalised; DDP quirk)
        nnunet_loss = super()._build_loss()
        weights = nnunet_loss.weight_factors if isinstance(nnunet_loss, DeepSupervisionWrapper) else None
        return PartialsegLoss(self.partialseg, weights, background_logit=self.per_organ_sigmoid())

    def partialseg_mask(self, keys: Any) -> Tensor:
        """``(B, C)`` bool Phi of the batch's cases (``batch["keys"]``), on the trainer's device."""
        return self.partialseg_annotations.mask(list(keys), self.device)

    def _set_batch(self, batch: dict) -> None:
        self.loss.annotated = self.partialseg_mask(batch["keys"])
        total = max(1, self.num_epochs * self.num_iterations_per_epoch)
        self.loss.step = StepContext(min(self.partialseg_steps, total - 1), total)

    def train_step(self, batch: dict) -> dict:
        self.partialseg_steps = max(self.partialseg_steps, self.current_epoch * self.num_iterations_per_epoch)
        self._set_batch(batch)
        out = super().train_step(batch)
        self.partialseg_steps += 1
        return out

    # ---- checkpoints -------------------------------------------------------------------------------------
    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        """nnU-Net's ``load_checkpoint`` (continue-training, ``--val``), reading the file as plain data only
        (:func:`partialseg.checkpoint.plain_data_loads`; otherwise an ``InputError``): nnU-Net unpickles it
        unrestricted, which could run code."""
        from partialseg import checkpoint as ckpt

        if not isinstance(filename_or_checkpoint, (str, Path)):
            super().load_checkpoint(filename_or_checkpoint)
            return
        # a path, not the loaded dict: nnU-Net's load_checkpoint (2.8) leaves a dict argument unused
        with ckpt.plain_data_loads(filename_or_checkpoint):
            super().load_checkpoint(str(filename_or_checkpoint))

    # ---- augmentation ----------------------------------------------------------------------------------
    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self) -> tuple:  # noqa: N802 (nnU-Net's name)
        """nnU-Net's rotation and patch settings, without mirroring, in training and in its predictor's test-time
        augmentation (as ``nnUNetTrainerNoMirroring``): nnU-Net mirrors every axis without swapping labels, so a
        mirrored case would teach a left kidney on the right; partialseg mirrors only left-right with the
        left/right labels swapped (methods.md), which nnU-Net's transforms cannot do."""
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None

    # ---- final validation ------------------------------------------------------------------------------
    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """nnU-Net's final validation, then its summary scored on each case's annotated classes only
        (:mod:`~partialseg.engines.nnunet.validation`; nnU-Net's all-class summary is kept beside it)."""
        from partialseg.engines.nnunet.validation import rewrite_validation_summary

        super().perform_actual_validation(save_probabilities)
        if self.local_rank == 0:
            out = rewrite_validation_summary(Path(self.output_folder) / "validation", self.dataset_json)
            if out is not None:
                self.print_to_log_file("Mean Validation Dice over each case's annotated classes (partialseg): ",
                                       out["foreground_mean"]["Dice"], also_print_to_console=True)

    # ---- online validation -----------------------------------------------------------------------------
    def validation_step(self, batch: dict) -> dict:
        """nnU-Net's validation step with the partial loss and a pseudo-Dice over annotated (sample, class) pairs.

        Returns ``loss`` and ``tp_hard``/``fp_hard``/``fn_hard`` ``(N,)`` (foreground classes), what nnU-Net's
        ``on_validation_epoch_end`` sums over the epoch: a class never annotated in the epoch's validation
        patches gets 0/0 = NaN, which nnU-Net's ``nanmean`` leaves out of the mean pseudo-Dice.
        """
        self._set_batch(batch)
        annotated = self.loss.annotated
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            output = self.network(data)
            del data
            loss = self.loss(output, target)
        if self.enable_deep_supervision:
            output, target = output[0], target[0]
        onehot = torch.zeros(output.shape, device=output.device, dtype=torch.float16)
        onehot.scatter_(1, output.argmax(1, keepdim=True), 1)
        # per sample (no batch axis in the sum), so that unannotated (sample, class) pairs can be dropped
        tp, fp, fn, _ = get_tp_fp_fn_tn(onehot, target, axes=tuple(range(2, output.ndim)))
        keep = annotated.to(tp.dtype)
        return {
            "loss": loss.detach().cpu().numpy(),
            **{k: (v * keep).sum(0)[1:].detach().cpu().numpy() for k, v in (("tp_hard", tp), ("fp_hard", fp), ("fn_hard", fn))},
        }



class nnUNetTrainer_partialseg_full(nnUNetTrainer_partialseg):  # noqa: N801
    """``full``: CE + Dice on the label map as if complete (unannotated organs learnt as background)."""

    partialseg_method = "full"


class nnUNetTrainer_partialseg_marginal(nnUNetTrainer_partialseg):  # noqa: N801
    """``marginal`` (TAL, Fang & Yan 2020): unannotated organs' probabilities merged into background."""

    partialseg_method = "marginal"


class nnUNetTrainer_partialseg_exclusion(nnUNetTrainer_partialseg):  # noqa: N801
    """``exclusion`` (ME, Shi et al. 2021): marginal loss plus the exclusion term."""

    partialseg_method = "exclusion"


class nnUNetTrainer_partialseg_aal(nnUNetTrainer_partialseg):  # noqa: N801
    """``aal`` (Chen et al. 2024): marginal focal CE + Dice and the entropy term among the merged classes."""

    partialseg_method = "aal"


class nnUNetTrainer_partialseg_sigmoid(nnUNetTrainer_partialseg):  # noqa: N801
    """``sigmoid``: one sigmoid channel per organ, BCE + Dice on the annotated organs only."""

    partialseg_method = "sigmoid"

    @staticmethod
    def build_network_architecture(plans_manager: Any, configuration_manager: Any, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        """nnU-Net's network for the plan with N = ``num_output_channels - 1`` outputs, behind
        :class:`BackgroundLogit`. Static with nnU-Net's signature: its predictor calls it to rebuild the model."""
        net = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                       num_output_channels - 1, enable_deep_supervision)
        return BackgroundLogit(net)


#: the classes nnU-Net's ``-tr`` can name, by class name
TRAINERS: dict[str, type[nnUNetTrainer_partialseg]] = {
    cls.__name__: cls
    for cls in (nnUNetTrainer_partialseg_full, nnUNetTrainer_partialseg_sigmoid, nnUNetTrainer_partialseg_marginal,
                nnUNetTrainer_partialseg_exclusion, nnUNetTrainer_partialseg_aal)
}

# TCT's trainer (heads, loss, checkpoints) has its own module and adds itself to TRAINERS; imported here so
# that TRAINERS is complete whichever module is imported first
from partialseg.engines.nnunet import tct as _tct  # noqa: E402,F401
from partialseg.engines.nnunet import vls as _vls  # noqa: E402,F401 (IPnP's VLS retraining trainer, the same way)
