"""Task-conditioned dynamic heads on the shared backbone: DoDNet (Zhang et al. 2021), CLIP-Driven
(Liu et al. 2023) and TransDoDNet (Xie et al. 2023); methods.md "Baselines", networks in
:mod:`partialseg.networks.dynamic_head` and :mod:`partialseg.networks.task_query`.

Both predict one sigmoid per organ and train with the ``sigmoid`` baseline's loss, BCE + Dice over the
sample's annotated organs Phi (:func:`partialseg.losses.sigmoid_loss`). DoDNet trains one task per
sample; here every organ's head runs on every sample (one backbone pass) and the loss picks Phi,
which is the same objective when a source annotates one organ and uses all of Phi when it annotates several.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from partialseg import losses as L
from partialseg.errors import InputError
from partialseg.methods.base import Batch, StepContext, register
from partialseg.methods.baselines import PerOrganSigmoid


@dataclass
class DoDNetOptions:
    head_channels: int = 8  # width of the dynamic heads (8-8-1 in the paper)
    #: "he": generated heads start He-initialised (controller bias); "default": PyTorch's Linear init
    #: (near-constant logits at the start); see DynamicHeadNetwork
    controller_init: str = "he"
    bce_weight: float = 1.0
    dice_weight: float = 1.0


class _DynamicHeadMethod(PerOrganSigmoid):
    def loss(self, net: nn.Module, extras: nn.Module | None, batch: Batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        logits = net(batch.image)
        o = self.options
        loss = L.sigmoid_loss(logits, batch.target, batch.annotated, bce_weight=o.bce_weight, dice_weight=o.dice_weight)
        return loss, {"loss": float(loss.detach())}


@register
class DoDNet(_DynamicHeadMethod):
    name = "dodnet"
    options_cls = DoDNetOptions

    def wrap_network(self, net: nn.Module, *, training: bool = True) -> nn.Module:
        from partialseg.networks.dynamic_head import DynamicHeadNetwork

        return DynamicHeadNetwork(net, self.label_space.num_classes, task_code="onehot", head_channels=self.options.head_channels,
            controller_init=self.options.controller_init,
        )


@dataclass
class ClipDrivenOptions:
    #: class embeddings by class name (.npz: one array per name; .json: {name: [floats]}), e.g. CLIP text
    #: features of "A computerized tomography of a {organ}"; None: learnt embeddings
    embedding_file: str | None = None
    embedding_dim: int = 512  # CLIP ViT-B/32 text features
    projection_dim: int = 256
    head_channels: int = 8
    controller_init: str = "he"
    bce_weight: float = 1.0
    dice_weight: float = 1.0


def load_class_embeddings(path: str | Path, names: tuple[str, ...], dim: int) -> Tensor:
    """``(N, dim)`` float32 rows in the order of ``names`` from an .npz or .json file keyed by class name."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "class embedding file not found")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            table = {k: np.asarray(z[k]) for k in z.files}
    elif path.suffix == ".json":
        try:
            table = {k: np.asarray(v, dtype=np.float64) for k, v in json.loads(path.read_text()).items()}
        except (json.JSONDecodeError, AttributeError, ValueError) as e:
            raise InputError(path, f"not a JSON object of class name -> list of numbers ({e})") from None
    else:
        raise InputError(path, "class embeddings must be an .npz (one array per class name) or a .json file")
    missing = [n for n in names if n not in table]
    if missing:
        raise InputError(path, f"no embedding for class(es) {missing}; the file has {sorted(table)}")
    bad = {n: tuple(table[n].shape) for n in names if table[n].shape != (dim,)}
    if bad:
        raise InputError(path, f"embeddings must be vectors of embedding_dim={dim}; got shapes {bad}")
    rows = np.stack([table[n] for n in names]).astype(np.float32)
    if not np.isfinite(rows).all():
        raise InputError(path, "class embeddings contain NaN or infinite values")
    return torch.from_numpy(rows)


@register
class ClipDriven(_DynamicHeadMethod):
    name = "clip_driven"
    options_cls = ClipDrivenOptions

    def wrap_network(self, net: nn.Module, *, training: bool = True) -> nn.Module:
        from partialseg.networks.dynamic_head import DynamicHeadNetwork

        o = self.options
        embeddings = None
        if o.embedding_file is not None:
            names = self.label_space.names
            # a saved model holds the embeddings: loading it must not need the file any more
            embeddings = (
                load_class_embeddings(o.embedding_file, names, o.embedding_dim) if training
                else torch.zeros(len(names), o.embedding_dim)
            )
        return DynamicHeadNetwork(
            net, self.label_space.num_classes, task_code="embedding", head_channels=o.head_channels,
            embedding_dim=o.embedding_dim, projection_dim=o.projection_dim, embeddings=embeddings, controller_init=o.controller_init,
        )


@dataclass
class TransDoDNetOptions:
    head_channels: int = 8
    d_model: int = 128  # width of the task queries and memory tokens
    num_heads: int = 4
    num_layers: int = 2  # transformer decoder layers
    levels: int = 3  # deepest encoder outputs in the memory (1/16, 1/8, 1/4)
    controller_init: str = "he"
    bce_weight: float = 1.0
    dice_weight: float = 1.0


@register
class TransDoDNet(_DynamicHeadMethod):
    """DoDNet's dynamic heads with parameters from N task queries that attend to multi-scale encoder
    features (dense cross-attention standing in for the paper's deformable attention)."""

    name = "transdodnet"
    options_cls = TransDoDNetOptions

    def wrap_network(self, net: nn.Module, *, training: bool = True) -> nn.Module:
        from partialseg.networks.task_query import TaskQueryNetwork

        o = self.options
        return TaskQueryNetwork(
            net, self.label_space.num_classes, head_channels=o.head_channels, d_model=o.d_model, num_heads=o.num_heads,
            num_layers=o.num_layers, levels=o.levels, controller_init=o.controller_init,
        )


@dataclass
class HermesOptions:
    d_model: int = 128  # token width
    num_heads: int = 4
    num_modalities: int = 1  # modality tokens (every case here is CT)
    bce_weight: float = 1.0
    dice_weight: float = 1.0


@register
class Hermes(_DynamicHeadMethod):
    """Hermes (Gao et al. 2024): task and modality tokens in two-way attention with the bottleneck and
    decoder features; each task token becomes a prototype whose dot product with the features is the
    class's logit. Same loss as DoDNet (BCE + Dice over the annotated classes)."""

    name = "hermes"
    options_cls = HermesOptions

    def wrap_network(self, net: nn.Module, *, training: bool = True) -> nn.Module:
        from partialseg.networks.task_tokens import TaskTokenNetwork

        o = self.options
        return TaskTokenNetwork(net, self.label_space.num_classes, num_modalities=o.num_modalities, d_model=o.d_model,
                                num_heads=o.num_heads)
