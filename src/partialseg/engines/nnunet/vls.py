"""``nnUNetTrainer_partialseg_ipnp``: IPnP's retraining on nnU-Net v2 with the voxel-level selection loss.

IPnP ("Foundation Model-guided Iteratively Prompting and Pseudo-Labeling for Partially Labeled Medical
Image Segmentation"; its specialist is nnU-Net v2, Isensee et al. 2021) retrains the specialist each round on
annotations + pseudo-labels with VLS (Eq. 4; methods.md "VLS"): with P the classes pseudo-labelled in a case,
``m_v = 0`` where the target ``y_v`` is in P and the specialist's current prediction ``ŷ_v != y_v``, 1
elsewhere; ``m`` multiplies the voxel terms of CE and Dice, and classes outside Phi ∪ P stay marginalised.

That is partialseg's own ``ipnp`` retraining loss (``Marginal.loss`` with ``Batch.pseudo``; the method's
loss options ``ce_weight``, ``dice_weight``, ``vls``, ``pseudo_background``), so this trainer is the
``marginal`` trainer of :mod:`.trainers` fed with one more ``(B, C)`` mask: P per case, read from the
``pseudo_labelled_classes`` key of the round's ``dataset.json`` (written by :mod:`.ipnp`), whose
``annotated_classes`` hold Phi ∪ P. At each deep-supervision scale ŷ is the argmax of that scale's logits.

``partialseg_init_checkpoint`` (a class attribute, set in a subclass by :mod:`.ipnp`) loads *all* network
weights of the previous round's checkpoint when the trainer initialises; nnU-Net's ``-pretrained_weights``
would skip the segmentation layers. Resuming the round (``--c``) then loads the round's own checkpoint over it.
The online pseudo-Dice counts the (case, class) pairs of Phi ∪ P.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from partialseg.engines.nnunet import TRAINER_PREFIX
from partialseg.engines.nnunet.trainers import TRAINERS, nnUNetTrainer_partialseg
from partialseg.errors import InputError
from partialseg.labels import LabelSpace
from partialseg.losses import annotated_channel_mask

__all__ = ["IPNP_TRAINER", "PSEUDO_KEY", "PseudoClasses", "load_network_weights", "nnUNetTrainer_partialseg_ipnp"]

IPNP_TRAINER = TRAINER_PREFIX + "ipnp"
#: the dataset.json key naming each case's pseudo-labelled classes (as partialseg.pseudolabel.export writes it)
PSEUDO_KEY = "pseudo_labelled_classes"


class PseudoClasses:
    """P of every case named under ``pseudo_labelled_classes`` (``{case_id: [class names]}``; absent: none)."""

    def __init__(self, dataset_json: Mapping[str, Any], label_space: LabelSpace, source: str = "dataset.json") -> None:
        self.label_space = label_space
        raw = dataset_json.get(PSEUDO_KEY) or {}
        if not isinstance(raw, Mapping):
            raise InputError(source, f"{PSEUDO_KEY} must be a mapping {{case_id: [class names]}}")
        self.sets = {str(case): label_space.indices(names, f"{source} ({PSEUDO_KEY}[{case!r}])")
                     for case, names in raw.items()}

    def mask(self, keys: Iterable[str], device: torch.device | str | None = None) -> Tensor:
        """``(B, C)`` bool, row ``b`` = P of case ``keys[b]``, column 0 (background) False."""
        m = annotated_channel_mask([self.sets.get(str(k), frozenset()) for k in keys],
                                   self.label_space.num_channels, device)
        m[:, 0] = False
        return m


def load_network_weights(network: torch.nn.Module, checkpoint: str) -> None:
    """Every weight of an nnU-Net checkpoint's ``network_weights`` into ``network`` (strict), through DDP and
    ``torch.compile`` wrappers as nnU-Net's own ``load_checkpoint`` does."""
    from torch._dynamo import OptimizedModule
    from torch.nn.parallel import DistributedDataParallel

    from partialseg import checkpoint as ckpt

    saved = ckpt.load(checkpoint, numpy_scalars=True)["network_weights"]
    saved = {k[7:] if k.startswith("module.") else k: v for k, v in saved.items()}
    net = network.module if isinstance(network, DistributedDataParallel) else network
    if isinstance(net, OptimizedModule):
        net = net._orig_mod
    net.load_state_dict(saved)


class nnUNetTrainer_partialseg_ipnp(nnUNetTrainer_partialseg):  # noqa: N801 (nnU-Net's naming)
    """``ipnp``'s retraining: the marginal loss over Phi ∪ P with the VLS mask on P (module docstring)."""

    partialseg_method = "marginal"  # IPnP's loss is Marginal's (methods/ipnp.py); P turns VLS on
    partialseg_init_checkpoint: ClassVar[str] = ""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.partialseg_pseudo = PseudoClasses(dataset_json, self.partialseg_annotations.label_space)

    def initialize(self) -> None:
        fresh = not self.was_initialized
        super().initialize()
        if fresh and self.partialseg_init_checkpoint:
            load_network_weights(self.network, self.partialseg_init_checkpoint)

    def _set_batch(self, batch: dict) -> None:
        super()._set_batch(batch)
        self.loss.pseudo = self.partialseg_pseudo.mask(list(batch["keys"]), self.device)


TRAINERS[IPNP_TRAINER] = nnUNetTrainer_partialseg_ipnp
