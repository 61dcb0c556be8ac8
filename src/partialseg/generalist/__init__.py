"""IPnP generalists: promptable segmenters (image + 2D box prompts -> 3D mask of one object).

``build_generalist("random_walker")`` (default, weight-free, CPU) or
``build_generalist("nninteractive", model_folder=...)`` (optional extra
``partialseg[nninteractive]`` and the user's copy of the nnInteractive weights).
"""

from partialseg.generalist.base import (
    DEFAULT_GENERALIST,
    GENERALISTS,
    BoxSegmentation,
    Generalist,
    build_generalist,
    parse_box,
    segment_box_file,
)
from partialseg.generalist.prompts import BoxPrompt, box_prompts_from_mask, prompts_bbox, roi_from_prompts

__all__ = [
    "DEFAULT_GENERALIST",
    "GENERALISTS",
    "BoxPrompt",
    "BoxSegmentation",
    "Generalist",
    "box_prompts_from_mask",
    "build_generalist",
    "parse_box",
    "prompts_bbox",
    "roi_from_prompts",
    "segment_box_file",
]
