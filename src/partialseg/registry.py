"""Pure-data registry: the class sets partialseg knows by name.

Imports nothing heavy, so the CLI can build its choices and ``--list`` output instantly.
"""

from __future__ import annotations

#: The 15 AMOS abdominal organs, in AMOS numbering (index + 1 is the label value).
AMOS15: tuple[str, ...] = (
    "spleen",
    "kidney_right",
    "kidney_left",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior_vena_cava",
    "pancreas",
    "adrenal_gland_right",
    "adrenal_gland_left",
    "duodenum",
    "urinary_bladder",
    "prostate_uterus",
)

#: BTCV (Synapse multi-organ, 13 labels): label value -> registry class (None: no registry class, becomes 0).
BTCV13: dict[int, str | None] = {
    1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "esophagus", 6: "liver", 7: "stomach",
    8: "aorta", 9: "inferior_vena_cava", 10: None,  # portal and splenic vein
    11: "pancreas", 12: "adrenal_gland_right", 13: "adrenal_gland_left",
}

#: TotalSegmentator v2 ("total" task) structure names -> registry class, for the AMOS 15 organs; the
#: other 102 structures have no registry class. TotalSegmentator has a prostate and no uterus.
TOTALSEG_TO_AMOS15: dict[str, str] = {**{n: n for n in AMOS15 if n != "prostate_uterus"}, "prostate": "prostate_uterus"}

#: Label names used by the public collections' dataset.json files (lower case, spaces/dashes/underscores
#: and brackets removed: see ``data.convert.named.normalise``) -> registry class. "adrenal" (one label for
#: both glands, WORD) is split into right and left by world coordinates.
CLASS_ALIASES: dict[str, str] = {
    **{n.replace("_", ""): n for n in AMOS15},
    "rightkidney": "kidney_right", "kidneyr": "kidney_right", "leftkidney": "kidney_left", "kidneyl": "kidney_left",
    "gallbladder": "gallbladder", "arota": "aorta", "postcava": "inferior_vena_cava", "ivc": "inferior_vena_cava",
    "rightadrenalgland": "adrenal_gland_right", "leftadrenalgland": "adrenal_gland_left",
    "adrenalgladr": "adrenal_gland_right", "adrenalgladl": "adrenal_gland_left",
    "rightadrenal": "adrenal_gland_right", "leftadrenal": "adrenal_gland_left",
    "bladder": "urinary_bladder", "prostate": "prostate_uterus", "prostateuterus": "prostate_uterus",
}
#: single labels that cover a left/right pair: split by world coordinates into (right, left)
PAIRED_ALIASES: dict[str, tuple[str, str]] = {
    "adrenal": ("adrenal_gland_right", "adrenal_gland_left"), "adrenalgland": ("adrenal_gland_right", "adrenal_gland_left"),
    "kidney": ("kidney_right", "kidney_left"), "kidneys": ("kidney_right", "kidney_left"),
}

#: Organs the papers call small / hard; used to report subsets and to oversample.
SMALL_ORGANS: frozenset[str] = frozenset(
    {"gallbladder", "esophagus", "pancreas", "adrenal_gland_right", "adrenal_gland_left"}
)

#: Pairs of classes that swap under a patient left-right mirror.
LEFT_RIGHT_PAIRS: tuple[tuple[str, str], ...] = (
    ("kidney_right", "kidney_left"),
    ("adrenal_gland_right", "adrenal_gland_left"),
)

LABEL_SPACES: dict[str, tuple[str, ...]] = {"amos15": AMOS15}

#: Registered training methods: name → one-line description (``partialseg methods``).
#: The implementations register themselves under the same names in ``partialseg.methods``.
METHODS: dict[str, str] = {
    "full": "Naive full supervision: CE + Dice on the label map as if complete (unannotated organs learnt as background).",
    "sigmoid": "Partial supervision: one sigmoid channel per organ, BCE + Dice on annotated organs only.",
    "marginal": "TAL marginal loss (Fang & Yan 2020): unannotated organs' probabilities merged into background; CE + Dice.",
    "exclusion": "Marginal + exclusion loss (Shi et al. 2021): annotated organ voxels cannot be any unannotated organ.",
    "aal": "AAL (Chen et al. 2024): marginal merge of background and unannotated organs; focal CE (gamma 2) + Dice, plus entropy minimisation among the merged classes.",
    "dodnet": "DoDNet (Zhang et al. 2021): per-organ dynamic 1x1x1 heads whose weights a controller makes from the organ's one-hot code and pooled bottleneck features; sigmoid, BCE + Dice on annotated organs.",
    "transdodnet": "TransDoDNet (Xie et al. 2023): DoDNet's dynamic heads with parameters from per-organ task queries that attend to multi-scale encoder features (dense cross-attention for the paper's deformable attention).",
    "hermes": "Hermes (Gao et al. 2024): task and modality tokens in two-way attention with bottleneck and decoder features become per-organ prototypes; sigmoid, BCE + Dice on annotated organs.",
    "clip_driven": "CLIP-Driven (Liu et al. 2023): DoDNet-style dynamic heads conditioned on class embeddings (learnt, or CLIP text features from a file); sigmoid, BCE + Dice on annotated organs.",
    "pfl": "PFL, pseudo-full labels (Liu et al. 2022): one network per source (or per organ) labels the organs each training case lacks; one multi-class network trains on the merged maps.",
    "ipnp": "IPnP as published: specialist box-prompts a frozen generalist for unannotated organs; refined pseudo-labels, the paper's VLS loss, rounds.",
    "ipnp_gated": "IPnP with our additions: positive-only pseudo-label loss, a per-organ gate between generalist and specialist, largest-component prompts.",
    "tct": "Task consistency training (Zhu et al.): marginal Dice + per-organ auxiliary heads (training only), IoU-filtered MSH/ATH consistency, UAUWL weighting.",
}
