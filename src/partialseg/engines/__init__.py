"""Training engines other than partialseg's own loop.

- :mod:`~partialseg.engines.nnunet`: nnU-Net v2 (Isensee et al. 2021, Nature Methods 18:203-211) drives the
  data pipeline, augmentation, network and schedule; partialseg supplies the partial-label losses.
  Needs the optional extra (``requirements-nnunet.txt``).
"""
