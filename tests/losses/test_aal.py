"""AAL's loss on hand-computed tensors (methods.md "Baselines")."""

from __future__ import annotations

import math

import pytest
import torch

from partialseg.losses import (
    aal_loss,
    ambiguity_entropy,
    annotated_channel_mask,
    marginal_loss,
)


def _two_voxels():
    # channels: background, organ 1 (annotated), organ 2 (not annotated); voxel A labelled 0, B labelled 1
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(2.0)], [0.0, 0.0]]).reshape(1, 3, 2)
    target = torch.tensor([[0, 1]])
    annotated = annotated_channel_mask([frozenset({1})], 3)
    return logits, target, annotated


def test_hand_values():
    logits, target, annotated = _two_voxels()
    # p_A = (1/3, 1/3, 1/3): q0 = 2/3; p_B = (1/4, 1/2, 1/4): q1 = 1/2
    focal = ((1 / 3) ** 2 * -math.log(2 / 3) + (1 / 2) ** 2 * -math.log(1 / 2)) / 2
    # Dice of q over {0, 1}: q0 = (2/3, 1/2) against (1, 0); q1 = (1/3, 1/2) against (0, 1)
    dice = ((2 * 2 / 3) / (7 / 6 + 1) + (2 * 1 / 2) / (5 / 6 + 1)) / 2
    entropy = math.log(2.0)  # voxel A splits q0 evenly between background and organ 2
    got = aal_loss(logits, target, annotated, smooth=0.0, entropy_weight=0.1)
    assert got.item() == pytest.approx(focal + (1 - dice) + 0.1 * entropy, abs=1e-6)
    assert ambiguity_entropy(logits, target, annotated).item() == pytest.approx(entropy, abs=1e-6)


def test_patches_without_labelled_foreground_are_weighted_up():
    logits, _, annotated = _two_voxels()
    background_only = torch.tensor([[0, 0]])
    # voxel B: r = (1/4, 1/4) / (1/2) = (1/2, 1/2) as well, so both voxels have entropy log 2
    got = ambiguity_entropy(logits, background_only, annotated, no_foreground_weight=3.0)
    assert got.item() == pytest.approx(3.0 * math.log(2.0), abs=1e-6)


def test_a_fully_annotated_sample_has_no_ambiguity():
    logits, target, _ = _two_voxels()
    full = annotated_channel_mask([frozenset({1, 2})], 3)
    assert ambiguity_entropy(logits, target, full).item() == pytest.approx(0.0, abs=1e-7)


def test_gamma_0_without_entropy_is_the_marginal_loss():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 4, 3, generator=g, requires_grad=True)
    target = torch.randint(0, 4, (2, 5, 4, 3), generator=g)
    annotated = annotated_channel_mask([frozenset({1, 3}), frozenset({2})], 4)
    target = torch.where(annotated.gather(1, target.reshape(2, -1)).reshape(target.shape), target, 0)
    a = aal_loss(logits, target, annotated, gamma=0.0, entropy_weight=0.0)
    b = marginal_loss(logits, target, annotated)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    a.backward()
    assert torch.isfinite(logits.grad).all()


def test_finite_at_extreme_logits():
    logits = torch.tensor([[1e4, -1e4], [-1e4, 1e4], [0.0, 0.0]]).reshape(1, 3, 2).requires_grad_()
    target = torch.tensor([[0, 1]])
    loss = aal_loss(logits, target, annotated_channel_mask([frozenset({1})], 3))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_gradients_finite_when_some_channels_are_merged_and_others_not():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 6, 5, 4, generator=g, requires_grad=True)
    target = torch.randint(0, 2, (2, 6, 5, 4), generator=g)
    annotated = annotated_channel_mask([frozenset({1}), frozenset({1, 2, 3})], 4)
    aal_loss(logits, target, annotated).backward()
    assert torch.isfinite(logits.grad).all()
