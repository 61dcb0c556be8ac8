"""The phantom's anatomy in the template frame, painted in order of priority onto the fine grid.

:func:`build_anatomy` draws the per-case parameters (:class:`Builder`) and runs the painting steps: body
outline, fat, muscle wall, thorax (:mod:`.body`), spine, ribs, pelvis (:mod:`.skeleton`), muscles, bowel
and unlabelled vessels (:mod:`.context`), then the labelled organs (:mod:`.organs`). Later paints win, so
neighbours indent each other.
"""

from __future__ import annotations

import numpy as np

from partialseg.synthetic.anatomy.body import paint_body
from partialseg.synthetic.anatomy.builder import Builder
from partialseg.synthetic.anatomy.context import paint_bowel, paint_muscles, paint_vessels
from partialseg.synthetic.anatomy.organs import paint_organs
from partialseg.synthetic.anatomy.skeleton import paint_pelvis, paint_ribs, paint_spine
from partialseg.synthetic.config import PhantomConfig

#: the painting steps in the order they run (the order fixes which paint wins and the random draws)
STEPS = (paint_body, paint_spine, paint_ribs, paint_pelvis, paint_muscles, paint_bowel, paint_vessels, paint_organs)


def build_anatomy(rng: np.random.Generator, cfg: PhantomConfig) -> Builder:
    """Draw one case's anatomy from ``rng`` and paint it onto a fresh canvas."""
    b = Builder(rng, cfg)
    for step in STEPS:
        step(b)
    return b


__all__ = ["STEPS", "Builder", "build_anatomy"]
