"""TCT on nnU-Net v2: ``nnUNetTrainer_partialseg_tct``.

Task consistency training (Zhu et al., methods.md "TCT", paper Sec. 3, Eq. 1-7) with nnU-Net v2 (Isensee et al.
2021, Nature Methods) as the engine: nnU-Net plans, preprocesses, augments, builds its U-Net and runs its
schedule; TCT adds, for training only, one auxiliary task head (ATH) per organ on the decoder's full-resolution
features, the same features nnU-Net's main segmentation head (MSH, ``decoder.seg_layers[-1]``) reads, and the
learnable log-variances of UAUWL. The loss is partialseg's own (:meth:`partialseg.methods.tct.TCT.head_loss`)::

    L = (sum_s w_s L_main(MSH_s)) e^{-s1} + L_aux(ATH) e^{-s2} + (s1 + s2)/2 + w(t) L_con(MSH_0, ATH)

- ``L_main``: the marginal Dice over {0} ∪ Phi at every deep-supervision scale s, with nnU-Net's weights w_s
  (as the other partialseg trainers do);
- ``L_aux`` and ``L_con`` (IoU-filtered consistency, absent organs as :class:`~partialseg.methods.tct.TCTOptions`
  says): at full resolution only. The ATHs sit on the last decoder stage, so deep supervision of the ATHs
  would need N extra heads per scale; the paper has one ATH per organ, at full resolution.

Phi per case comes from ``annotated_classes`` in ``dataset.json`` (:mod:`.annotations`), as for the other
trainers; ``partialseg_options`` (TCT's options) comes from ``--set method.options.NAME=VALUE``.

The checkpoints nnU-Net writes (``checkpoint_final.pth``, ``checkpoint_best.pth``, ``checkpoint_latest.pth``)
hold a plain nnU-Net model: ``network_weights`` is the plain network's state dict (no ATH weight) and
``trainer_name`` is ``"nnUNetTrainer"``. The ATHs and log-variances travel under :data:`TCT_STATE_KEY`, which
nnU-Net's predictor ignores and continue-training (``--c``) reads back.
"""

from __future__ import annotations

from typing import Any

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import Tensor, nn
from torch._dynamo import OptimizedModule

from partialseg import checkpoint as ckpt
from partialseg.engines.nnunet.trainers import TRAINERS, nnUNetTrainer_partialseg
from partialseg.errors import PartialsegError
from partialseg.methods.base import StepContext
from partialseg.methods.tct import TCT, TCTExtras

__all__ = ["EXPORT_TRAINER_NAME", "TCT_STATE_KEY", "TCTLoss", "TCTNetwork", "nnUNetTrainer_partialseg_tct"]

#: the ``trainer_name`` written into the checkpoints. nnU-Net's predictor rebuilds the network with
#: ``recursive_find_trainer_class_by_name(trainer_name).build_network_architecture(...)``. For nnU-Net's own
#: base trainer that lookup succeeds in nnU-Net's top-level trainer module, before it imports anything else;
#: any other name makes it import every trainer module of nnU-Net (the Primus ones import timm -> torchvision,
#: which fails beside a CPU torch, see run.py) and then needs ``nnUNet_extTrainer`` pointing at partialseg.
#: The exported network IS nnUNetTrainer's (this trainer does not change build_network_architecture), so the
#: base name rebuilds it exactly, on any machine with nnunetv2, with or without partialseg installed.
EXPORT_TRAINER_NAME = "nnUNetTrainer"
#: checkpoint key of the training-only state: ``{"trainer_name": <our class>, "heads": TCTExtras state dict}``
TCT_STATE_KEY = "partialseg_tct"


def _final_seg_layer(net: nn.Module) -> nn.Module:
    """nnU-Net's full-resolution segmentation layer (a 1x1(x1) conv), whose input is the decoder's last features."""
    layers = getattr(getattr(net, "decoder", None), "seg_layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers) or not isinstance(layers[-1], (nn.Conv2d, nn.Conv3d)):
        raise PartialsegError(f"TCT on nnU-Net needs nnU-Net's UNetDecoder (decoder.seg_layers of convs: PlainConvUNet, "
                              f"ResidualEncoderUNet); {type(net).__name__} has none")
    return layers[-1]


class _DecoderHeads:
    """What :class:`~partialseg.methods.tct.TCTExtras` builds its ATH conv from (``feature_channels``,
    ``make_head``), for nnU-Net's decoder: heads like its segmentation layer, on the same F features."""

    def __init__(self, seg: nn.Module) -> None:
        self.seg = seg
        self.feature_channels = seg.in_channels

    def make_head(self, out_channels: int) -> nn.Module:
        s = self.seg
        return type(s)(s.in_channels, out_channels, s.kernel_size, s.stride, s.padding, bias=s.bias is not None)


class TCTNetwork(nn.Module):
    """nnU-Net's network ``net`` with TCT's training-only modules ``extras`` beside it.

    ``forward(x)`` returns exactly ``net(x)`` (a list of ``(B, N+1, *spatial_s)`` logits with deep supervision,
    else one tensor), so nnU-Net's train step, online validation and sliding window use it unchanged; with
    :attr:`heads_enabled` it also leaves the ATH logits ``(B, N, 2, *spatial)`` in :attr:`aux_logits`, computed
    inside ``forward`` so that DDP sees the ATH parameters used. The features come from a forward pre-hook on
    nnU-Net's full-resolution segmentation layer (its input), so nnU-Net's decoder runs as it is.
    """

    def __init__(self, net: nn.Module, extras: TCTExtras) -> None:
        super().__init__()
        self.net, self.extras = net, extras
        self.heads_enabled = True
        self.aux_logits: Tensor | None = None
        self._features: Tensor | None = None
        self._hook = _final_seg_layer(net).register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        if self.heads_enabled:
            self._features = args[0]

    @property
    def decoder(self) -> nn.Module:
        # nnUNetTrainer.set_deep_supervision_enabled switches network.decoder.deep_supervision
        return self.net.decoder

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:  # type: ignore[override]
        self.aux_logits = None
        out = self.net(x)
        features, self._features = self._features, None
        if self.heads_enabled:
            if features is None:
                raise RuntimeError("the decoder's full-resolution segmentation layer did not run")
            self.aux_logits = self.extras.aux_logits(features)
        return out


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside nnU-Net's DDP and ``torch.compile`` wrappers."""
    mod = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
    return mod._orig_mod if isinstance(mod, OptimizedModule) else mod


class TCTLoss:
    """The trainer's ``self.loss(output, target)``: TCT's Eq. 7 with ``L_main`` summed over nnU-Net's scales.

    ``output``/``target``: nnU-Net's lists of ``(B, N+1, *spatial_s)`` logits and ``(B, 1, *spatial_s)`` label
    maps, full resolution first (or one of each without deep supervision). The ATH logits are the network's
    :attr:`TCTNetwork.aux_logits` of the same forward pass. The trainer sets :attr:`annotated` (``(B, N+1)``
    bool) and :attr:`step` before each call; :attr:`last_logs` holds TCT's logged terms of the last call.
    """

    def __init__(self, method: TCT, weights: tuple[float, ...] | None, network: TCTNetwork) -> None:
        self.method, self.weights, self.network = method, weights, network
        self.annotated: Tensor | None = None
        self.step = StepContext(0, 1)
        self.last_logs: dict[str, float] = {}

    def __call__(self, output: Tensor | list[Tensor], target: Tensor | list[Tensor]) -> Tensor:
        annotated = self.annotated
        if annotated is None:
            raise RuntimeError("TCTLoss.annotated is not set: the trainer sets the batch's (B, C) Phi mask first")
        outs = list(output) if isinstance(output, (list, tuple)) else [output]
        tgts = list(target) if isinstance(target, (list, tuple)) else [target]
        weights = self.weights if self.weights is not None else (1.0,)
        if not len(outs) == len(tgts) == len(weights):
            raise ValueError(f"{len(outs)} outputs, {len(tgts)} targets and {len(weights)} deep-supervision weights")
        labels = [(y[:, 0] if y.ndim == o.ndim else y).long() for o, y in zip(outs, tgts)]
        aux = self.network.aux_logits
        if aux is None:
            raise RuntimeError("no ATH logits: the network ran with heads_enabled off")
        m = self.method
        probs = m.main_probs(outs[0])
        # nnU-Net's lowest scale has weight 0: not computed
        l_main = sum(w * m.main_loss(o, y, annotated, probs if s == 0 else None)
                     for s, (w, o, y) in enumerate(zip(weights, outs, labels)) if w)
        total, self.last_logs = m.head_loss(outs[0], aux, labels[0], annotated, self.network.extras.log_vars,
                                            self.step, l_main=l_main, probs=probs)
        return total


class nnUNetTrainer_partialseg_tct(nnUNetTrainer_partialseg):  # noqa: N801 (nnU-Net's naming)
    """``tct``: TCT's MSH + per-organ ATHs + IoU-filtered consistency + UAUWL on nnU-Net (module docstring)."""

    partialseg_method = "tct"

    def tct_network(self) -> TCTNetwork:
        net = unwrap(self.network)
        assert isinstance(net, TCTNetwork), "initialize() puts the TCT heads beside the network"
        return net

    def configure_optimizers(self) -> Any:
        # nnU-Net's initialize() calls this once, after building (and maybe compiling) the network and before
        # wrapping it in DDP: the heads joined here are in the optimiser, the gradient clipping and DDP
        if not isinstance(unwrap(self.network), TCTNetwork):
            compiled = isinstance(self.network, OptimizedModule)
            net = unwrap(self.network)
            seg = _final_seg_layer(net)
            if not isinstance(seg, nn.Conv3d) and self.partialseg.options.aux_kernel_size:
                raise PartialsegError("TCT's aux_kernel_size 1 or 3 builds 3D convs: a 2D nnU-Net configuration "
                                      "takes aux_kernel_size=0 (heads like nnU-Net's segmentation layer)")
            extras = self.partialseg.build_extras(_DecoderHeads(seg)).to(self.device)
            wrapped = TCTNetwork(net, extras)
            self.network = torch.compile(wrapped) if compiled else wrapped
        return super().configure_optimizers()

    def _build_loss(self) -> TCTLoss:
        # nnU-Net's own loss only for its deep-supervision weights (as the other trainers)
        from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

        nnunet_loss = nnUNetTrainer._build_loss(self)
        weights = tuple(nnunet_loss.weight_factors) if isinstance(nnunet_loss, DeepSupervisionWrapper) else None
        return TCTLoss(self.partialseg, weights, self.tct_network())

    # ---- training-only heads on during training and online validation, off for nnU-Net's final validation
    def on_train_start(self) -> None:
        super().on_train_start()
        self.tct_network().heads_enabled = True

    def on_train_end(self) -> None:
        super().on_train_end()
        self.tct_network().heads_enabled = False

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        if self.was_initialized:
            self.tct_network().heads_enabled = False
        super().perform_actual_validation(save_probabilities)

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        logs = self.loss.last_logs
        if logs:
            self.print_to_log_file("tct (last step): " + ", ".join(f"{k} {v:.4g}" for k, v in logs.items()))

    # ---- checkpoints: a plain nnU-Net model plus the training-only state under TCT_STATE_KEY ------------
    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint with the plain network's weights and ``trainer_name`` :data:`EXPORT_TRAINER_NAME`
        (nnU-Net's ``save_checkpoint`` would store the wrapper's, ATHs included, under our class name)."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        net = self.tct_network()
        torch.save({
            "network_weights": net.net.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": EXPORT_TRAINER_NAME,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            TCT_STATE_KEY: {"trainer_name": type(self).__name__, "heads": net.extras.state_dict()},
        }, filename)

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        """nnU-Net's ``load_checkpoint`` for :meth:`save_checkpoint`'s layout (continue-training, ``--val``)."""
        if not self.was_initialized:
            self.initialize()
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):
            checkpoint = ckpt.load(checkpoint, self.device, numpy_scalars=True)
        state = checkpoint.get(TCT_STATE_KEY)
        if not isinstance(state, dict) or "heads" not in state:
            raise PartialsegError(f"{type(self).__name__}: the checkpoint holds no TCT heads (written by another "
                                  "trainer?); start a new run, or use its weights with -pretrained_weights")
        net = self.tct_network()
        net.net.load_state_dict(checkpoint["network_weights"])
        net.extras.load_state_dict(state["heads"])
        self.my_init_kwargs = checkpoint["init_args"]
        self.current_epoch = checkpoint["current_epoch"]
        self.logger.load_checkpoint(checkpoint["logging"])
        self._best_ema = checkpoint["_best_ema"]
        self.inference_allowed_mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes",
                                                               self.inference_allowed_mirroring_axes)
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if self.grad_scaler is not None and checkpoint["grad_scaler_state"] is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])


TRAINERS[nnUNetTrainer_partialseg_tct.__name__] = nnUNetTrainer_partialseg_tct
