"""One phantom from a seed: :func:`make_phantom`."""

from __future__ import annotations

import numpy as np

from partialseg.synthetic.anatomy import build_anatomy
from partialseg.synthetic.config import PRESETS, Phantom, PhantomConfig
from partialseg.synthetic.render import check_organs, render, warp
from partialseg.synthetic.tissues import TISSUES, tissue_hu


def make_phantom(seed: int, config: PhantomConfig | None = None) -> Phantom:
    """Draw one synthetic abdominal CT (HU image, AMOS15 labels, RAS+ affine) from ``seed``."""
    cfg = config if config is not None else PRESETS["cpu"]
    rng = np.random.default_rng(int(seed))
    b = build_anatomy(rng, cfg)
    hu = tissue_hu(rng, cfg, b.contrast)
    tissue, label = warp(b, rng)
    image, labels = render(b, tissue, label, hu, rng)
    check_organs(labels, cfg)
    info = {
        "seed": int(seed),
        "phase": "portal-venous" if b.contrast else "non-contrast",
        "sex": "female" if b.female else "male",
        "scale": b.scale,
        "subcutaneous_fat_mm": float(b.t_sub),
        "tissue_hu": {n: float(hu[i]) for i, n in enumerate(TISSUES)},
    }
    return Phantom(image=image, labels=labels, affine=b.grid.affine, info=info)
