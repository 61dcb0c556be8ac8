"""nnU-Net v2 as the training engine for partialseg's loss-based methods.

nnU-Net v2 (Isensee et al. 2021, "nnU-Net: a self-configuring method for deep learning-based biomedical
image segmentation", Nature Methods 18:203-211) plans, preprocesses, augments, builds the network and runs
the schedule; the trainers here replace only its loss with partialseg's (``full``, ``sigmoid``, ``marginal``,
``exclusion``, ``aal``; ``tct`` adds its training-only auxiliary heads on the decoder), fed with each patch's
annotated classes, and make its online pseudo-Dice count annotated classes only.

Modules (only :mod:`.annotations` and :mod:`.paths` import without nnunetv2):

- :mod:`.annotations`: ``dataset.json``'s ``annotated_classes`` → per-case Phi → ``(B, C)`` masks per batch;
- :mod:`.paths`: nnU-Net's three path variables for a partialseg run folder;
- :mod:`.loss`: partialseg's method loss at every deep-supervision scale;
- :mod:`.trainers`: the ``nnUNetTrainer_partialseg_<method>`` classes;
- :mod:`.tct`: ``nnUNetTrainer_partialseg_tct``, TCT's auxiliary heads on nnU-Net's decoder (training only);
- :mod:`.vls`: ``nnUNetTrainer_partialseg_ipnp``, IPnP's retraining with the VLS loss on pseudo-labels;
- :mod:`.ipnp` (with :mod:`.pseudo`): IPnP's rounds with an nnU-Net specialist (``--method ipnp``);
- :mod:`.predict`: ``partialseg predict`` for a run trained with ``--engine nnunet`` (nnU-Net's predictor);
- :mod:`.run`: ``partialseg-nnunet-train``, nnU-Net's single-process training entry with our classes.

How nnU-Net finds the trainers (nnunetv2 ≥ 2.8): ``partialseg-nnunet-train DATASET 3d_fullres FOLD -tr
nnUNetTrainer_partialseg_marginal`` (no lookup at all), or plain ``nnUNetv2_train ... -tr
nnUNetTrainer_partialseg_marginal`` with nnU-Net's ``nnUNet_extTrainer`` variable set to
:data:`EXT_TRAINER_DIR` (nnU-Net's own mechanism for trainers outside its package; it needs an importable
torchvision, see ``requirements-nnunet.txt``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["EXT_TRAINER_DIR", "METHODS", "TRAINER_PREFIX", "trainer_name"]

TRAINER_PREFIX = "nnUNetTrainer_partialseg_"
#: partialseg methods with an nnU-Net trainer: a loss of (logits, target, Phi); ``tct`` adds training-only heads (.tct)
METHODS = ("full", "sigmoid", "marginal", "exclusion", "aal", "tct")
#: the folder to put in nnU-Net's ``nnUNet_extTrainer``: one module re-exporting the trainer classes, so that
#: nnU-Net's scan imports nothing else of partialseg under a second module name
EXT_TRAINER_DIR = Path(__file__).resolve().parent / "external_trainers"


def trainer_name(method: str) -> str:
    """``"marginal"`` → ``"nnUNetTrainer_partialseg_marginal"``, the class name nnU-Net's ``-tr`` takes."""
    if method not in METHODS:
        raise ValueError(f"no nnU-Net trainer for method {method!r}; methods with one: {list(METHODS)}")
    return TRAINER_PREFIX + method
