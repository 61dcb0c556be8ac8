"""The phantom's tissues and their CT values (HU): the table, the tissue and label ids, the per-case HU draw."""

from __future__ import annotations

import numpy as np

from partialseg.registry import AMOS15
from partialseg.synthetic.config import PhantomConfig

#: name: (non-contrast HU, portal-venous HU, low-frequency texture sd HU, fine texture sd HU)
TISSUE_TABLE: dict[str, tuple[float, float, float, float]] = {
    "air": (-1000.0, -1000.0, 0.0, 0.0),
    "lung": (-860.0, -850.0, 25.0, 35.0),
    "fat": (-105.0, -105.0, 5.0, 8.0),
    "visceral_fat": (-95.0, -92.0, 8.0, 14.0),
    "muscle": (46.0, 60.0, 4.0, 5.0),
    "bone_cancellous": (230.0, 240.0, 40.0, 45.0),
    "bone_cortical": (800.0, 800.0, 60.0, 60.0),
    "disc": (85.0, 90.0, 5.0, 5.0),
    "csf": (15.0, 18.0, 3.0, 3.0),
    "cartilage": (130.0, 135.0, 10.0, 10.0),
    "artery": (42.0, 165.0, 2.0, 2.0),
    "vein": (40.0, 135.0, 3.0, 3.0),
    "portal_vein": (42.0, 160.0, 2.0, 2.0),
    "liver": (58.0, 108.0, 4.0, 3.0),
    "spleen": (47.0, 118.0, 3.0, 3.0),
    "kidney_cortex": (34.0, 185.0, 3.0, 3.0),
    "kidney_medulla": (30.0, 145.0, 3.0, 3.0),
    "renal_sinus": (-55.0, -40.0, 15.0, 25.0),
    "bile": (8.0, 10.0, 3.0, 2.0),
    "pancreas": (42.0, 100.0, 5.0, 6.0),
    "adrenal": (28.0, 55.0, 3.0, 3.0),
    "gi_wall": (42.0, 95.0, 4.0, 4.0),
    "gi_fluid": (15.0, 18.0, 5.0, 4.0),
    "chyme": (28.0, 30.0, 6.0, 14.0),
    "gas": (-960.0, -960.0, 20.0, 15.0),
    "stool": (-30.0, -25.0, 15.0, 70.0),
    "urine": (7.0, 8.0, 2.0, 2.0),
    "bladder_wall": (40.0, 70.0, 3.0, 3.0),
    "prostate": (40.0, 75.0, 4.0, 5.0),
    "uterus": (48.0, 105.0, 5.0, 5.0),
    "heart": (40.0, 140.0, 4.0, 3.0),
    "esophagus": (42.0, 65.0, 4.0, 4.0),
    "soft_tissue": (35.0, 70.0, 4.0, 4.0),
    "calcification": (450.0, 450.0, 50.0, 50.0),
    "table": (80.0, 80.0, 10.0, 20.0),
}
TISSUES: tuple[str, ...] = tuple(TISSUE_TABLE)
T = {n: i for i, n in enumerate(TISSUES)}
L = {n: i + 1 for i, n in enumerate(AMOS15)}


def tissue_hu(rng: np.random.Generator, cfg: PhantomConfig, contrast: bool) -> np.ndarray:
    """Per-case mean HU of every tissue (indexed by tissue id)."""
    enh = rng.uniform(0.75, 1.15)  # how far along the portal-venous curve this scan was taken
    hu = np.empty(len(TISSUES), np.float64)
    jitter = rng.normal(0.0, 1.0, len(TISSUES)) * cfg.contrast_jitter_hu
    for i, (name, (nc, pv, _, _)) in enumerate(TISSUE_TABLE.items()):
        v = nc + (enh * (pv - nc) if contrast else 0.0)
        if name in ("air", "gas", "lung"):
            v += 0.5 * jitter[i]
        elif name in ("fat", "visceral_fat", "urine", "bile", "csf", "gi_fluid"):
            v += 0.6 * jitter[i]  # fat and water-like fluids vary less between scans
        elif name.startswith("bone") or name == "calcification":
            v += 4.0 * jitter[i]
        else:
            v += jitter[i]
        hu[i] = v
    if rng.random() < 0.15:  # hepatic steatosis: the liver drops to or below the spleen
        hu[T["liver"]] -= rng.uniform(15.0, 45.0)
    return hu
