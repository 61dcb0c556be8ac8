"""The folder named by nnU-Net's ``nnUNet_extTrainer`` (:data:`partialseg.engines.nnunet.EXT_TRAINER_DIR`).

nnU-Net v2 (≥ 2.8) imports every module of that folder as a top-level module while it looks for a ``-tr``
class name, then forgets them; :mod:`partialseg_trainers` is the one module here, a re-export, so the classes
nnU-Net finds are partialseg's own (``partialseg.engines.nnunet.trainers``), not second copies.
"""
