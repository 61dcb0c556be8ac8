"""PFL, pseudo-full labels (Liu et al. 2022; methods.md "Baselines"): single-task teachers label the
organs each training case lacks, and one multi-class network learns from the merged maps.

A multi-stage method like ``ipnp``: ``fit`` runs :func:`partialseg.pseudolabel.pfl.run_pfl`. Every
stage trains with this class's loss, TAL's marginal CE + Dice: a teacher sees only its organs, so the
marginal loss is its single-task loss; the student sees the ground truth plus the teachers' organs
as labelled, which makes it ordinary CE + Dice on the pseudo-full labels (no VLS: the paper has none).
"""

from __future__ import annotations

from dataclasses import dataclass

from partialseg.errors import PartialsegError
from partialseg.methods.base import register
from partialseg.methods.baselines import Marginal, MarginalOptions

#: how PFL groups the organs into teachers (``PFLOptions.grouping``)
GROUPINGS = ("auto", "source", "organ")


@dataclass
class PFLOptions(MarginalOptions):
    #: "source": a teacher per distinct annotated set (a source dataset); "organ": a teacher per organ;
    #: "auto": "source" when there are at most N distinct sets, else "organ"
    grouping: str = "auto"
    teacher_steps: int = 0  # optimiser steps of each teacher; 0 = train.steps (the student always trains train.steps)
    vls: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.grouping not in GROUPINGS:
            raise PartialsegError(f"pfl: grouping must be one of {list(GROUPINGS)}, got {self.grouping!r}")
        if self.teacher_steps < 0:
            raise PartialsegError("pfl: teacher_steps must be >= 0")


@register
class PFL(Marginal):
    name = "pfl"
    options_cls = PFLOptions
    procedure = "pfl"  # teachers, pseudo-full labels, student (partialseg.pseudolabel.pfl)
