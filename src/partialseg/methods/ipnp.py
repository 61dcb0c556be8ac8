"""IPnP: iterative prompting and pseudo-labelling (methods.md "IPnP").

Two registered names:

- ``ipnp`` is the paper's configuration: every unannotated organ the specialist finds is prompted
  to the generalist, P_k = G_k ∩ ROI_k ∩ {p_k ≥ τ} (``pseudo_source="generalist"``, no
  largest-component step), and the retraining loss is the paper's (``pseudo_background=
  "supervised"``: a background voxel of a pseudo-labelled case is taught "not k") with VLS;
- ``ipnp_gated`` adds our three choices: positive-only pseudo-labels (``pseudo_background=
  "marginal"``), the organ gate (``pseudo_source="auto"``) and prompts from the largest component.

``pseudo_source="none"`` is the step control: IPnP's schedule with no pseudo-label at all. The
specialist's loss is ``Marginal``'s; ``fit`` runs the rounds in ``partialseg.pseudolabel.loop``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from partialseg.errors import PartialsegError
from partialseg.methods.base import register
from partialseg.methods.baselines import Marginal, MarginalOptions

PSEUDO_SOURCES = ("generalist", "specialist", "auto", "none")


@dataclass
class IPnPOptions(MarginalOptions):
    """The paper's IPnP. The loss options (``ce_weight``, ``dice_weight``, ``vls``: False = the paper's
    "without VLS" ablation, ``pseudo_background``: "supervised" = the paper's) are ``MarginalOptions``'."""

    rounds: int = 2  # pseudo-labelling rounds after round 0
    #: a finished marginal (or ipnp) run on the same dataset with the same settings to use as round 0
    #: instead of training it again ("" = train round 0)
    specialist_run: str = ""
    steps_per_round: int = 0  # retraining steps per round; 0 = train.steps
    retrain: str = "continue"  # "continue" from the previous round's weights, or "scratch"
    #: "random_walker" (weight-free, CPU), "boxnet" (trained on this dataset's annotated organs before
    #: round 1, into RUN/generalist/, unless generalist_options gives a model_folder) or "nninteractive"
    generalist: str = "random_walker"
    generalist_options: dict[str, Any] = field(default_factory=dict)  # e.g. {model_folder: ..., device: cuda}
    #: boxnet only: training settings (partialseg.generalist.boxnet.BoxNetConfig fields, e.g. {steps: 1000})
    generalist_training: dict[str, Any] = field(default_factory=dict)
    padding: int = 5  # ρ: box padding in voxels
    #: τ: specialist probability threshold. The paper's value was lost in extraction; with τ ≥ 0.5 the
    #: refinement can only remove voxels from the specialist's own argmax. 0.05 had the best pseudo-label
    #: DSC on the validation cases of the keep-0.33 round-0 specialist among 0.02-0.7
    #: (benchmarks/ipnp_tau.py; docs/results.md, "IPnP's τ").
    tau: float = 0.05
    dilation: int = 10  # δ: ROI dilation in voxels
    entropy_from_round: int = 2  # r_e: the entropy rule applies from this round on
    #: where a class's pseudo-label comes from: "generalist" (the paper), "specialist" (self-training,
    #: no generalist), "auto" (per organ and round, whichever agrees better with the annotations of
    #: the cases that annotate the organ; an organ below min_organ_dsc stays marginalised) or "none"
    #: (no pseudo-labels: the step control, IPnP's schedule on the partial labels alone)
    pseudo_source: str = "generalist"
    min_organ_dsc: float = 0.5  # the "auto" gate's threshold (mean DSC on the annotating cases)
    prompt_high_confidence: bool = False  # prompt from {argmax = k and p_k ≥ τ} instead of {argmax = k}
    largest_component: bool = False  # prompt from the largest connected component only

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rounds < 1:
            raise PartialsegError("ipnp: rounds must be ≥ 1")
        if self.retrain not in ("continue", "scratch"):
            raise PartialsegError(f"ipnp: retrain must be 'continue' or 'scratch', got {self.retrain!r}")
        if self.pseudo_source not in PSEUDO_SOURCES:
            raise PartialsegError(f"ipnp: pseudo_source must be one of {list(PSEUDO_SOURCES)}, got {self.pseudo_source!r}")
        if not 0 <= self.min_organ_dsc <= 1:
            raise PartialsegError(f"ipnp: min_organ_dsc must be in [0, 1], got {self.min_organ_dsc}")
        if not 0 <= self.tau < 1:
            raise PartialsegError(f"ipnp: tau must be in [0, 1), got {self.tau}")
        if self.padding < 0 or self.dilation < 0:
            raise PartialsegError("ipnp: padding and dilation must be ≥ 0")
        if self.generalist_training and self.generalist != "boxnet":
            raise PartialsegError("ipnp: generalist_training applies to generalist='boxnet' only")
        # the keys of generalist_training are checked by pseudolabel.loop.check_generalist_options when the
        # run starts, before round 0 (the generalists sit above the methods: options cannot import them)


@dataclass
class IPnPGatedOptions(IPnPOptions):
    """``ipnp_gated``: the paper's IPnP with our three additions as defaults (each chosen on the
    validation split of the keep-0.33 benchmark in earlier sessions, docs/results.md)."""

    #: pseudo-labels as positive evidence only: a background voxel keeps the marginal target
    pseudo_background: str = "marginal"
    #: the organ gate: per organ and round, the source that agrees better with held annotations
    pseudo_source: str = "auto"
    largest_component: bool = True


@register
class IPnP(Marginal):
    name = "ipnp"
    options_cls = IPnPOptions
    procedure = "ipnp"  # round 0, then rounds of pseudo-labelling and retraining (partialseg.pseudolabel.loop)


@register
class IPnPGated(IPnP):
    name = "ipnp_gated"
    options_cls = IPnPGatedOptions


def is_ipnp(name: str) -> bool:
    """``ipnp`` and its registered variants: methods that train a round-0 specialist, then rounds
    (False for a name no method is registered under)."""
    from partialseg.methods import get_method

    try:
        return issubclass(get_method(name), IPnP)
    except PartialsegError:
        return False
