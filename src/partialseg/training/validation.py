"""Validation during training: on fixed patches (cheap, every ``train.val_every`` steps) and by full
sliding-window inference (at the end, and every ``train.val_full_every`` steps).

Both score against the full reference when the dataset has one, otherwise against the partial
labels on each case's annotated classes only. The patch validation is nnU-Net's online "pseudo
Dice": true/false positives and false negatives summed per class over the validation patches, one
Dice per class from the sums; its patches are drawn once per case from a fixed seed (half of them
centred on an annotated organ), so every validation of a run sees the same voxels and the curve
moves with the model only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from partialseg.config import ExperimentConfig
from partialseg.methods import Method


def validate(
    net: nn.Module, method: Method, cases: Sequence[Any], cfg: ExperimentConfig, device: torch.device,
    evidence: Any = None, spacing: Sequence[float] | None = None,
) -> dict[str, float]:
    """Mean DSC per class over validation cases: against the full reference when the dataset has one,
    otherwise against the partial labels on each case's annotated classes only. ``evidence``: a
    :class:`~partialseg.inference.postprocess.PostprocessingEvidence` that also scores each case with
    the largest component per organ (voxel size ``spacing``)."""
    from partialseg.evaluation.metrics import dice
    from partialseg.inference.sliding_window import sliding_window_probabilities

    space = method.label_space
    scores: dict[int, list[float]] = {c: [] for c in range(1, space.num_channels)}
    for case in cases:
        pred = sliding_window_probabilities(
            net, method.probabilities, case.image, cfg.train.patch_size,
            overlap=cfg.train.sw_overlap, device=device, amp=cfg.train.amp, amp_cpu=cfg.train.amp_cpu, argmax=True,
        ).numpy()
        if case.reference is not None:
            ref, classes = np.asarray(case.reference), range(1, space.num_channels)
        else:
            ref, classes = np.asarray(case.label), sorted(case.annotated)
        for c in classes:
            d = dice(pred == c, ref == c)
            if not math.isnan(d):  # absent from both: undefined, left out (methods.md, Evaluation)
                scores[c].append(d)
        if evidence is not None:
            evidence.add_case(pred, ref, classes, spacing or (1.0, 1.0, 1.0))
    out = {f"val_dsc_{space.name(c)}": float(np.mean(v)) for c, v in scores.items() if v}
    if out:
        out["val_dsc_mean"] = float(np.mean(list(out.values())))
    return out


def validate_patches(
    net: nn.Module, method: Method, cases: Sequence[Any], cfg: ExperimentConfig, device: torch.device,
) -> dict[str, float]:
    """Per-class Dice from TP/FP/FN summed over ``train.val_patches`` fixed patches per case
    (``val_patch_dsc_<organ>``, ``val_patch_dsc_mean``); classes absent from every patch and prediction
    are left out. One forward per patch: no sliding window, no full-volume arrays."""
    from partialseg.runtime import autocast_context
    from partialseg.training.sampling import sample_patch

    space = method.label_space
    n = space.num_channels
    tp, fp, fn = np.zeros(n), np.zeros(n), np.zeros(n)
    was_training = net.training
    net.eval()
    try:
        for i, case in enumerate(cases):
            ref_arr = case.reference if case.reference is not None else case.label
            classes = range(1, n) if case.reference is not None else sorted(case.annotated)
            rng = np.random.default_rng([cfg.train.seed, 7, i])  # the same patches at every validation
            for k in range(cfg.train.val_patches):
                p = sample_patch(case.image, ref_arr, case.annotated, case.class_locations, cfg.train.patch_size, rng, force_foreground=k % 2 == 0,
                                 pad_value=case.pad_value)
                with torch.no_grad(), autocast_context(device, cfg.train.amp, cfg.train.amp_cpu):
                    logits = net(torch.from_numpy(np.ascontiguousarray(p.image))[None].to(device))
                pred = method.probabilities(logits.float())[0].argmax(0).cpu().numpy()
                for c in classes:
                    a, b = pred == c, p.label == c
                    tp[c] += np.count_nonzero(a & b)
                    fp[c] += np.count_nonzero(a & ~b)
                    fn[c] += np.count_nonzero(~a & b)
    finally:
        net.train(was_training)
    out = {}
    for c in range(1, n):
        denom = 2 * tp[c] + fp[c] + fn[c]
        if denom > 0:
            out[f"val_patch_dsc_{space.name(c)}"] = float(2 * tp[c] / denom)
    if out:
        out["val_patch_dsc_mean"] = float(np.mean(list(out.values())))
    return out
