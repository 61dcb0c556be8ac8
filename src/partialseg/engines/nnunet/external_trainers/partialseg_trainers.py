"""partialseg's nnU-Net v2 trainers, for nnU-Net's ``nnUNet_extTrainer`` lookup (see the package docstring)."""

from partialseg.engines.nnunet.tct import nnUNetTrainer_partialseg_tct  # noqa: F401
from partialseg.engines.nnunet.trainers import (  # noqa: F401 (what nnU-Net looks up by name)
    nnUNetTrainer_partialseg_aal,
    nnUNetTrainer_partialseg_exclusion,
    nnUNetTrainer_partialseg_full,
    nnUNetTrainer_partialseg_marginal,
    nnUNetTrainer_partialseg_sigmoid,
)
from partialseg.engines.nnunet.vls import nnUNetTrainer_partialseg_ipnp  # noqa: F401,E402
