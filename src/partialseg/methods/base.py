"""The method interface the training loop talks to.

A method decides (1) how many output channels the network has and how they become class
probabilities, (2) which heads it puts on the configured backbone for good (``wrap_network``: the
task-conditioned heads of DoDNet and CLIP-Driven; most methods keep the backbone as it is),
(3) which training-only modules sit beside the network (auxiliary heads, learnable loss weights),
and (4) the training loss. The inference model is the (wrapped) network alone, so every method
predicts with the same code.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from partialseg.errors import PartialsegError
from partialseg.labels import LabelSpace
from partialseg.registry import METHODS


@dataclass
class Batch:
    """A training batch. Shapes: image (B, 1, X, Y, Z) float; target (B, X, Y, Z) int64 in 0..N;
    annotated (B, N+1) bool with column 0 True (Phi per sample); pseudo (B, N+1) bool: classes whose
    labels in ``target`` are pseudo-labels (IPnP), or None."""

    image: Tensor
    target: Tensor
    annotated: Tensor
    pseudo: Tensor | None = None

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.image.to(device, non_blocking=True),
            self.target.to(device, non_blocking=True),
            self.annotated.to(device, non_blocking=True),
            None if self.pseudo is None else self.pseudo.to(device, non_blocking=True),
        )

    def pin_memory(self) -> Batch:
        """Page-locked copies (what ``DataLoader(pin_memory=True)`` calls), for asynchronous copies to a GPU."""
        return Batch(self.image.pin_memory(), self.target.pin_memory(), self.annotated.pin_memory(),
                     None if self.pseudo is None else self.pseudo.pin_memory())


@dataclass(frozen=True)
class StepContext:
    step: int  # 0-based optimiser step
    total_steps: int


@dataclass
class NoOptions:
    pass


class Method:
    """Base class: softmax over N+1 channels, no extra modules. Subclasses set ``name`` and
    ``options_cls`` and implement ``loss``."""

    name: ClassVar[str] = ""
    options_cls: ClassVar[type] = NoOptions
    #: the multi-stage procedure that trains this method (``partialseg.api.PROCEDURES``: IPnP's rounds,
    #: PFL's teachers and student); None: one training run
    procedure: ClassVar[str | None] = None

    def __init__(self, label_space: LabelSpace, options: dict[str, Any] | None = None) -> None:
        self.label_space = label_space
        self.options = self.parse_options(options)

    @classmethod
    def parse_options(cls, options: dict[str, Any] | None) -> Any:
        """The options dataclass from a config's ``method.options`` (validated, defaults filled in)."""
        try:
            return cls.options_cls(**(options or {}))
        except TypeError as e:
            valid = [f.name for f in dataclasses.fields(cls.options_cls)]
            raise PartialsegError(f"method {cls.name!r}: bad options {options} ({e}); valid options: {valid}") from None

    # -- network shape --------------------------------------------------------------------
    def output_channels(self) -> int:
        return self.label_space.num_channels

    def probabilities(self, logits: Tensor) -> Tensor:
        """(B, out_channels, ...) logits → (B, N+1, ...) class probabilities whose argmax is the label."""
        return torch.softmax(logits.float(), dim=1)

    def wrap_network(self, net: nn.Module, *, training: bool = True) -> nn.Module:
        """The network this method trains and predicts with, built around the configured backbone.

        Called with the freshly built backbone both before training and when a model file is loaded
        (``training=False``: nothing outside the model file may be read; ``load_state_dict`` fills
        in what training learnt). Default: the backbone itself.
        """
        return net

    # -- training -------------------------------------------------------------------------
    def build_extras(self, net: nn.Module) -> nn.Module | None:
        """Training-only modules (auxiliary heads, learnable loss weights); not part of the saved model."""
        return None

    def loss(self, net: nn.Module, extras: nn.Module | None, batch: Batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError


class TrainingModel(nn.Module):
    """Network + training-only modules, with the loss computed inside ``forward`` so that DDP sees
    every parameter used in one forward call."""

    def __init__(self, net: nn.Module, method: Method) -> None:
        super().__init__()
        self.net = net
        self.method = method
        self.extras = method.build_extras(net)

    def forward(self, batch: Batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:  # type: ignore[override]
        return self.method.loss(self.net, self.extras, batch, ctx)


_REGISTRY: dict[str, type[Method]] = {}
# Modules that register methods; imported on first lookup so the CLI starts fast.
_METHOD_MODULES = (
    "partialseg.methods.baselines", "partialseg.methods.dynamic", "partialseg.methods.ipnp", "partialseg.methods.pfl",
    "partialseg.methods.tct",
)


def register(cls: type[Method]) -> type[Method]:
    if not cls.name:
        raise ValueError("a method class needs a name")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    for mod in _METHOD_MODULES:
        importlib.import_module(mod)


def method_names() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> type[Method]:
    _load_all()
    if name not in _REGISTRY:
        raise PartialsegError(f"unknown method {name!r}; registered methods: {sorted(_REGISTRY)}")
    return _REGISTRY[name]
