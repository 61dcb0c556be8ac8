"""Losses of the baselines, TCT and IPnP on tiny hand-computed examples.

Expected values are computed here with plain ``math`` (never by calling the code under test).
Tensors are ``(B, C, X)`` with one spatial dim unless a test needs more: the losses accept
any number of spatial dims.
"""

from __future__ import annotations

import math

import pytest
import torch

from partialseg.losses import DEFAULT_SMOOTH as S
from partialseg.losses import (
    annotated_channel_mask,
    exclusion_loss,
    full_loss,
    marginal_dice_loss,
    marginal_exclusion_loss,
    marginal_log_probs,
    marginal_loss,
    marginal_loss_positive_pseudo,
    sigmoid_loss,
    soft_dice_loss,
    vls_voxel_mask,
)
from partialseg.losses.tct import (
    ath_dice_losses,
    aux_dice_loss,
    consistency_keep_mask,
    consistency_loss,
    consistency_terms,
    rampup_weight,
    tct_head_terms,
    uncertainty_weighted,
)
from tests.losses.reference_losses import reference_ath_terms, reference_marginal_loss


def softmax(zs: list[float]) -> list[float]:
    m = max(zs)
    e = [math.exp(z - m) for z in zs]
    return [v / sum(e) for v in e]


def sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def dice(p: list[float], y: list[float], smooth: float = S) -> float:
    return (2 * sum(a * b for a, b in zip(p, y)) + smooth) / (sum(p) + sum(y) + smooth)


def t(values, dtype=torch.float32, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


# voxel-major hand logits for C = 3 (background, organ 1, organ 2) and 3 voxels
Z = [[0.5, 1.0, -0.3], [-1.0, 2.0, 0.2], [1.5, -0.5, 0.8]]


def logits_from(voxels: list[list[float]], grad: bool = False) -> torch.Tensor:
    """(V, C) voxel-major list → (1, C, V) logits."""
    return t([list(col) for col in zip(*voxels)], grad=grad).unsqueeze(0).detach().requires_grad_(grad)


# ---- bookkeeping and Dice -------------------------------------------------------------------
def test_annotated_channel_mask():
    m = annotated_channel_mask([frozenset({2}), frozenset(), frozenset({1, 2})], 3)
    assert m.dtype == torch.bool and m.tolist() == [[True, False, True], [True, False, False], [True, True, True]]
    with pytest.raises(ValueError):
        annotated_channel_mask([frozenset({3})], 3)
    with pytest.raises(ValueError):
        annotated_channel_mask([frozenset({0})], 3)


def test_soft_dice_hand_values():
    probs = t([[[0.8, 0.3], [0.2, 0.7]]])  # (B=1, C=2, V=2)
    onehot = t([[[1.0, 0.0], [0.0, 1.0]]])
    d0, d1 = dice([0.8, 0.3], [1, 0]), dice([0.2, 0.7], [0, 1])
    assert soft_dice_loss(probs, onehot).item() == pytest.approx(1 - (d0 + d1) / 2, abs=1e-6)
    only0 = soft_dice_loss(probs, onehot, channel_mask=t([[True, False]], torch.bool))
    assert only0.item() == pytest.approx(1 - d0, abs=1e-6)
    # masking voxel 1 removes it from every sum; channel 1 then has an empty target and counts
    masked = soft_dice_loss(probs, onehot, voxel_mask=t([[1.0, 0.0]]))
    e0, e1 = dice([0.8], [1]), dice([0.2], [0])
    assert masked.item() == pytest.approx(1 - (e0 + e1) / 2, abs=1e-6)
    # per-sample averaging: sample 2 counts only channel 0 and contributes 1 - Dice_0
    probs2 = torch.cat([probs, probs]), torch.cat([onehot, onehot])
    cm = t([[True, True], [True, False]], torch.bool)
    two = soft_dice_loss(*probs2, channel_mask=cm)
    assert two.item() == pytest.approx(((1 - (d0 + d1) / 2) + (1 - d0)) / 2, abs=1e-6)


# ---- full / marginal ------------------------------------------------------------------------
def test_full_loss_hand_value():
    target = [0, 1, 2]
    p = [softmax(z) for z in Z]
    ce = sum(-math.log(p[v][target[v]]) for v in range(3)) / 3
    dices = [dice([p[v][c] for v in range(3)], [float(target[v] == c) for v in range(3)]) for c in range(3)]
    expected = ce + 1 - sum(dices) / 3
    got = full_loss(logits_from(Z), t([target], torch.int64))
    assert got.dtype == torch.float32 and got.item() == pytest.approx(expected, abs=1e-5)


def test_marginal_equals_full_when_all_annotated():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 4, 5)
    target = torch.randint(0, 4, (2, 3, 4, 5))
    ann = annotated_channel_mask([frozenset({1, 2, 3})] * 2, 4)
    vm = (torch.rand(2, 3, 4, 5) > 0.3).float()
    assert torch.equal(marginal_loss(logits, target, ann), full_loss(logits, target))
    assert torch.equal(marginal_loss(logits, target, ann, voxel_mask=vm), full_loss(logits, target, voxel_mask=vm))
    assert torch.equal(marginal_log_probs(logits, ann), torch.log_softmax(logits, 1))


def test_merged_background_probability_by_hand():
    z = [0.0, 1.0, 2.0]
    p = softmax(z)
    ann = annotated_channel_mask([frozenset({1})], 3)
    q = marginal_log_probs(logits_from([z]), ann).exp()[0, :, 0]
    assert q[0].item() == pytest.approx(p[0] + p[2], abs=1e-6)
    assert q[1].item() == pytest.approx(p[1], abs=1e-6)
    assert q[2].item() == 0.0  # unannotated channel: log q = -inf
    assert marginal_log_probs(logits_from([z]), ann)[0, 2, 0].item() == float("-inf")


def test_marginal_loss_hand_value():
    target = [0, 1, 0]
    ann = annotated_channel_mask([frozenset({1})], 3)
    p = [softmax(z) for z in Z]
    q0 = [pv[0] + pv[2] for pv in p]
    q1 = [pv[1] for pv in p]
    ce = (-math.log(q0[0]) - math.log(q1[1]) - math.log(q0[2])) / 3
    d = (dice(q0, [1, 0, 1]) + dice(q1, [0, 1, 0])) / 2
    got = marginal_loss(logits_from(Z), t([target], torch.int64), ann)
    assert got.item() == pytest.approx(ce + 1 - d, abs=1e-5)
    assert marginal_dice_loss(logits_from(Z), t([target], torch.int64), ann).item() == pytest.approx(1 - d, abs=1e-6)
    # a stray label of an unannotated class is folded into background
    stray = marginal_loss(logits_from(Z), t([[2, 1, 0]], torch.int64), ann)
    assert stray.item() == pytest.approx(got.item(), abs=1e-6)


def test_marginal_invariant_to_mass_moving_between_background_and_unannotated():
    # p0 + p2 = 3/4 and p1 = 1/4 in both: only the split between 0 and 2 changes
    a = [[math.log(1.0), 0.0, math.log(2.0)], [math.log(0.5), 0.0, math.log(2.5)]]
    b = [[math.log(2.5), 0.0, math.log(0.5)], [math.log(3.0 - 1e-3), 0.0, math.log(1e-3)]]
    target = t([[0, 1]], torch.int64)
    ann = annotated_channel_mask([frozenset({1})], 3)
    la = marginal_loss(logits_from(a), target, ann)
    lb = marginal_loss(logits_from(b), target, ann)
    assert la.item() == pytest.approx(lb.item(), abs=1e-6)
    full_a, full_b = full_loss(logits_from(a), target), full_loss(logits_from(b), target)
    assert abs(full_a.item() - full_b.item()) > 1e-2  # the full loss does see the split


def test_marginal_gradient_is_blind_to_the_background_unannotated_split():
    # moving logits by (d z0, d z2) = eps (p2, -p0) leaves every q unchanged, so per voxel
    # p2 dL/dz0 == p0 dL/dz2 exactly (the gradient itself is not zero: p2 still shares the
    # softmax normaliser with the annotated organ)
    logits = logits_from(Z, grad=True)
    ann = annotated_channel_mask([frozenset({1})], 3)
    loss = marginal_loss(logits, t([[0, 1, 0]], torch.int64), ann)
    (g,) = torch.autograd.grad(loss, logits)
    p = torch.softmax(logits.detach(), 1)
    torch.testing.assert_close(p[:, 2] * g[:, 0], p[:, 0] * g[:, 2], atol=1e-7, rtol=1e-5)
    assert g[:, 2].abs().max() > 1e-3


# ---- exclusion --------------------------------------------------------------------------------
def test_exclusion_hand_values_and_zero_case():
    # Phi = {1}; class 2 unannotated; E = voxels labelled 1 = {0, 1}
    vox = [[0.0, 1.0, 0.5], [0.2, 0.0, -1.0], [1.0, 0.0, 2.0]]
    target = t([[1, 1, 0]], torch.int64)
    ann = annotated_channel_mask([frozenset({1})], 3)
    p2 = [softmax(z)[2] for z in vox]
    e = [1.0, 1.0, 0.0]
    exp_dice = 2 * (p2[0] + p2[1]) / (sum(p2) + sum(e) + S)
    exp_ce = (-math.log(1 - p2[0]) - math.log(1 - p2[1])) / 2
    got_dice = exclusion_loss(logits_from(vox), target, ann, form="dice")
    got_ce = exclusion_loss(logits_from(vox), target, ann, form="ce")
    both = exclusion_loss(logits_from(vox), target, ann, form="dice+ce")
    assert got_dice.item() == pytest.approx(exp_dice, abs=1e-6) and got_dice.item() > 0
    assert got_ce.item() == pytest.approx(exp_ce, abs=1e-6) and got_ce.item() > 0
    assert both.item() == pytest.approx(exp_dice + exp_ce, abs=1e-6)
    # p^2 == 0 on E (it may be anything off E): both forms exactly 0
    zero = [[0.0, 1.0, -1e4], [0.2, 0.0, -1e4], [1.0, 0.0, 2.0]]
    for form in ("dice", "ce", "dice+ce"):
        assert exclusion_loss(logits_from(zero), target, ann, form=form).item() == 0.0
    # fully annotated: no unannotated class, nothing to exclude
    full = annotated_channel_mask([frozenset({1, 2})], 3)
    assert exclusion_loss(logits_from(vox), target, full).item() == 0.0
    combined = marginal_exclusion_loss(logits_from(vox), target, ann, exclusion_weight=0.3)
    plain = marginal_loss(logits_from(vox), target, ann)
    assert combined.item() == pytest.approx(plain.item() + 0.3 * exp_dice, abs=1e-6)
    with pytest.raises(ValueError):
        exclusion_loss(logits_from(vox), target, ann, form="focal")


# ---- sigmoid ------------------------------------------------------------------------------------
def test_sigmoid_loss_hand_value_and_ignores_unannotated_channels():
    # N = 2 organs, Phi = {1}: only channel 0 (class 1) is supervised
    logits = t([[[2.0, -1.0], [0.7, -0.4]]], grad=True)  # (1, N=2, V=2)
    target = t([[1, 2]], torch.int64)  # voxel 1 is organ 2, unannotated: it is (y == 1) = 0 for channel 0
    ann = annotated_channel_mask([frozenset({1})], 3)
    s0, s1 = sig(2.0), sig(-1.0)
    bce = (-math.log(s0) - math.log(1 - s1)) / 2
    expected = bce + 1 - dice([s0, s1], [1, 0])
    loss = sigmoid_loss(logits, target, ann)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    (g,) = torch.autograd.grad(loss, logits)
    assert torch.all(g[:, 1] == 0) and torch.all(g[:, 0] != 0)


# ---- TCT -----------------------------------------------------------------------------------------
def test_aux_dice_hand_value_sum_over_annotated_classes():
    # N = 2, 2 voxels, target [1, 2]; ATH j logits (background, j) per voxel
    aux = t([[[[0.0, 1.0], [1.0, -0.5]], [[0.3, 0.0], [-0.2, 0.4]]]], grad=True)  # (1, N, V, 2)
    aux_logits = aux.permute(0, 1, 3, 2)  # (1, N, 2, V)
    target = t([[1, 2]], torch.int64)

    def term(j: int) -> float:
        g = [softmax(aux[0, j - 1, v].tolist()) for v in range(2)]
        zj = [float(tv == j) for tv in (1, 2)]
        return 1 - 0.5 * (dice([gv[0] for gv in g], [1 - x for x in zj]) + dice([gv[1] for gv in g], zj))

    only1 = aux_dice_loss(aux_logits, target, annotated_channel_mask([frozenset({1})], 3))
    assert only1.item() == pytest.approx(term(1), abs=1e-6)
    both = aux_dice_loss(aux_logits, target, annotated_channel_mask([frozenset({1, 2})], 3))
    assert both.item() == pytest.approx(term(1) + term(2), abs=1e-6)  # Eq. 3 sums over j
    (g,) = torch.autograd.grad(only1, aux)
    assert torch.all(g[:, 1] == 0)  # ATH 2 is not annotated here: no supervised term


def test_consistency_terms_hand_value_and_iou():
    msh = [[2.0, 0.0, -1.0], [0.0, 1.5, 0.5], [0.1, 0.2, 1.0]]  # argmax: 0, 1, 2
    ath = [[[0.0, 1.0], [0.5, 0.0], [1.0, -1.0]], [[2.0, 0.0], [1.0, 0.0], [0.0, 3.0]]]  # (N, V, 2)
    logits = logits_from(msh)
    aux_logits = t(ath).permute(0, 2, 1).unsqueeze(0)  # (1, N, 2, V)
    terms, iou = consistency_terms(logits, aux_logits)
    for j in (1, 2):
        s = 0.0
        for v in range(3):
            pj = softmax(msh[v])[j]
            g0, gj = softmax(ath[j - 1][v])
            s += 0.5 * (((1 - pj) - g0) ** 2 + (pj - gj) ** 2)
        assert terms[0, j - 1].item() == pytest.approx(s / 3, abs=1e-6)
    # MSH_1 = {1}, ATH_1 = {0} → 0/2; MSH_2 = {2}, ATH_2 = {2} → 1
    assert iou.tolist() == [[0.0, 1.0]]
    # both masks empty → IoU undefined (nan), which the filter treats by its `absent` option
    empty_msh = logits_from([[5.0, 0.0, 0.0]] * 3)
    empty_ath = t([[[[3.0, -3.0]] * 3] * 2]).permute(0, 1, 3, 2)
    assert torch.isnan(consistency_terms(empty_msh, empty_ath)[1]).all()


def test_ath_logits_as_their_difference_give_the_same_losses_and_gradients():
    # (B, N, 1, ...) = a^j - a^0 is the 2-channel softmax head's only degree of freedom
    torch.manual_seed(3)
    logits = torch.randn(2, 4, 5, 3, 2)
    aux = torch.randn(2, 3, 2, 5, 3, 2, requires_grad=True)
    diff = (aux[:, :, 1:] - aux[:, :, :1]).detach().requires_grad_(True)
    target = torch.randint(0, 4, (2, 5, 3, 2))
    ann = annotated_channel_mask([frozenset({1, 3}), frozenset({2})], 4)
    vm = (torch.rand(2, 5, 3, 2) > 0.3).float()
    for fn in (
        lambda a: aux_dice_loss(a, target, ann),
        lambda a: aux_dice_loss(a, target, ann, voxel_mask=vm),
        lambda a: consistency_terms(logits, a)[0].sum(),
        lambda a: consistency_loss(logits, a, ann, threshold="mean"),
    ):
        full, short = fn(aux), fn(diff)
        assert short.item() == pytest.approx(full.item(), abs=1e-6)
        (g_full,) = torch.autograd.grad(full, aux)
        (g_short,) = torch.autograd.grad(short, diff)
        torch.testing.assert_close(g_short[:, :, 0], g_full[:, :, 1], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(g_full[:, :, 0], -g_full[:, :, 1], atol=1e-6, rtol=1e-5)
    assert torch.equal(consistency_terms(logits, aux)[1], consistency_terms(logits, diff)[1])


def test_consistency_zero_when_heads_agree():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 3, 3, 2)
    p = torch.softmax(logits, 1)[:, 1:]
    aux = torch.stack([torch.log1p(-p), torch.log(p)], dim=2).requires_grad_(True)
    terms, _ = consistency_terms(logits, aux)
    assert terms.abs().max().item() < 1e-12
    ann = annotated_channel_mask([frozenset({1}), frozenset({2, 3})], 4)
    assert consistency_loss(logits, aux, ann, threshold=0.0).item() < 1e-12


def test_keep_mask_median_mean_batch_mean_fixed():
    iou = t([[0.1, 0.5, 0.9, 0.3], [0.2, 0.6, 0.4, 0.8]])
    everyone = torch.ones(2, 4, dtype=torch.bool)
    # medians (even count: mean of the middle two): 0.4 and 0.5
    assert consistency_keep_mask(iou, everyone, "median").tolist() == [[False, True, True, False], [False, True, False, True]]
    # odd count through participation: sample 0 over {0.1, 0.5, 0.9} → 0.5 kept, 0.3 never (not taking part)
    part = t([[True, True, True, False], [True, True, True, True]], torch.bool)
    assert consistency_keep_mask(iou, part, "median")[0].tolist() == [False, True, True, False]
    # a tie with the threshold is kept (>=)
    assert consistency_keep_mask(t([[0.2, 0.4, 0.6]]), torch.ones(1, 3, dtype=torch.bool), "median").tolist() == [[False, True, True]]
    assert consistency_keep_mask(iou, everyone, "mean").tolist() == [[False, True, True, False], [False, True, False, True]]
    # batch mean per ATH (over the samples): 0.15, 0.55, 0.65, 0.55
    assert consistency_keep_mask(iou, everyone, "batch-mean").tolist() == [[False, False, True, False], [True, True, False, True]]
    # only participating samples enter an ATH's mean: class 3 over sample 1 alone → 0.8 kept
    assert consistency_keep_mask(iou, part, "batch-mean").tolist() == [[False, False, True, False], [True, True, False, True]]
    assert consistency_keep_mask(iou, everyone, 0.35).tolist() == [[False, True, True, False], [False, True, True, True]]
    with pytest.raises(ValueError):
        consistency_keep_mask(iou, everyone, "max")


def test_consistency_filter_leaves_absent_organs_out_of_the_median():
    # issue 12: 15 organs, 4 present with IoUs 0.61-0.88, 11 absent from both heads (IoU nan)
    present = [0.61, 0.70, 0.79, 0.88]
    iou = torch.full((1, 15), float("nan"))
    iou[0, [2, 5, 9, 13]] = t(present)
    everyone = torch.ones(1, 15, dtype=torch.bool)
    # median of the 4 present = (0.70 + 0.79) / 2 = 0.745: 0.79 and 0.88 pass
    want_present = {9, 13}
    keep = consistency_keep_mask(iou, everyone, "median", "keep")[0]
    assert {j for j in (2, 5, 9, 13) if keep[j]} == want_present
    assert all(keep[j] for j in range(15) if j not in (2, 5, 9, 13))  # absent terms kept
    drop = consistency_keep_mask(iou, everyone, "median", "drop")[0]
    assert {j for j in range(15) if drop[j]} == want_present
    # the literal reading: 11 IoUs of 1 make theta = 1 and filter out every present organ
    literal = consistency_keep_mask(iou, everyone, "median", "in_median")[0]
    assert not any(literal[j] for j in (2, 5, 9, 13)) and literal.sum() == 11
    # means and a fixed threshold ignore absent classes too; a sample with no present class keeps
    # only its absent terms under "keep", nothing under "drop"
    assert {j for j in range(15) if consistency_keep_mask(iou, everyone, "mean", "drop")[0][j]} == {9, 13}
    assert {j for j in range(15) if consistency_keep_mask(iou, everyone, 0.75, "drop")[0][j]} == {9, 13}
    none = torch.full((1, 3), float("nan"))
    assert consistency_keep_mask(none, torch.ones(1, 3, dtype=torch.bool), "median", "keep").all()
    assert not consistency_keep_mask(none, torch.ones(1, 3, dtype=torch.bool), "median", "drop").any()
    with pytest.raises(ValueError, match="absent"):
        consistency_keep_mask(iou, everyone, "median", "sometimes")


def test_consistency_loss_keeps_terms_at_or_above_median_iou():
    # N = 3, 4 voxels. MSH argmax [1, 1, 2, 3]; ATH masks {0, 1}, {2, 3}, {} →
    # IoU_1 = 1, IoU_2 = 1/2, IoU_3 = 0; median 1/2 keeps classes 1 and 2
    msh = [[0.0, 3.0, 0.0, 0.0], [0.0, 2.0, 1.0, 0.0], [0.0, 0.0, 2.0, 1.0], [0.0, 0.5, 0.0, 2.5]]
    ath_fg = [[True, True, False, False], [False, False, True, True], [False, False, False, False]]
    ath = [[[-1.0, 1.0] if fg else [1.0, -1.0] for fg in row] for row in ath_fg]
    logits = logits_from(msh, grad=True)
    aux_logits = t(ath).permute(0, 2, 1).unsqueeze(0).requires_grad_(True)
    terms, iou = consistency_terms(logits, aux_logits)
    assert iou.tolist() == [[1.0, 0.5, 0.0]]
    ann = annotated_channel_mask([frozenset({1})], 4)
    loss = consistency_loss(logits, aux_logits, ann)
    assert loss.item() == pytest.approx(terms[0, 0].item() + terms[0, 1].item(), abs=1e-7)
    # only Phi^c = {2, 3} take part: median over {1/2, 0} = 1/4 keeps class 2 only
    unl = consistency_loss(logits, aux_logits, ann, classes="unlabelled")
    assert unl.item() == pytest.approx(terms[0, 1].item(), abs=1e-7)
    # stop-gradient: the ATH side gets no gradient
    detached = consistency_loss(logits, aux_logits, ann, stop_grad_aux=True)
    (ga,) = torch.autograd.grad(detached, aux_logits, allow_unused=True)
    assert ga is None or torch.all(ga == 0)


def test_consistency_loss_zero_not_nan_when_nothing_kept():
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    aux = torch.randn(2, 2, 2, 4, 4, requires_grad=True)
    all_ann = annotated_channel_mask([frozenset({1, 2})] * 2, 3)
    for loss in (
        consistency_loss(logits, aux, all_ann, classes="unlabelled"),  # nobody takes part
        consistency_loss(logits, aux, all_ann, threshold=1.5),  # nobody passes
    ):
        assert loss.item() == 0.0 and torch.isfinite(loss)
        gl, ga = torch.autograd.grad(loss, (logits, aux))
        assert torch.all(gl == 0) and torch.all(ga == 0)


def test_uncertainty_weighted_value_and_gradient():
    l1, l2 = t(0.7), t(2.5)
    s = t([0.3, -0.8], grad=True)
    total = uncertainty_weighted([l1, l2], s)
    expected = 0.7 * math.exp(-0.3) + 0.15 + 2.5 * math.exp(0.8) - 0.4
    assert total.item() == pytest.approx(expected, abs=1e-5)
    (g,) = torch.autograd.grad(total, s)
    assert g[0].item() == pytest.approx(-0.7 * math.exp(-0.3) + 0.5, abs=1e-6)
    assert g[1].item() == pytest.approx(-2.5 * math.exp(0.8) + 0.5, abs=1e-5)
    with pytest.raises(ValueError):
        uncertainty_weighted([l1], s)


def test_rampup_weight():
    # total 100, fraction 0.4 → T = 40
    assert rampup_weight(0, 100, 0.5, 0.4) == pytest.approx(0.5 * math.exp(-5))
    assert rampup_weight(20, 100, 0.5, 0.4) == pytest.approx(0.5 * math.exp(-1.25))
    assert rampup_weight(40, 100, 0.5, 0.4) == 0.5
    assert rampup_weight(90, 100, 0.5, 0.4) == 0.5
    assert rampup_weight(0, 100, 0.5, 0.0) == 0.5


# ---- IPnP ------------------------------------------------------------------------------------------
def test_vls_voxel_mask_and_its_use_in_marginal_loss():
    target = t([[0, 1, 2, 2]], torch.int64)
    pred = t([[1, 0, 2, 0]], torch.int64)
    pseudo = t([[True, False, True]], torch.bool)  # class 2 pseudo-labelled; column 0 ignored
    m = vls_voxel_mask(target, pred, pseudo)
    assert m.dtype == torch.float32 and m.tolist() == [[1.0, 1.0, 1.0, 0.0]]
    # a zero in the mask is the same as cropping the voxel out (CE and Dice)
    torch.manual_seed(3)
    logits = torch.randn(1, 3, 4)
    ann = annotated_channel_mask([frozenset({1, 2})], 3)
    masked = marginal_loss(logits, target, ann, voxel_mask=m)
    cropped = marginal_loss(logits[..., :3], target[..., :3], ann)
    assert masked.item() == pytest.approx(cropped.item(), abs=1e-6)


def test_vls_background_drops_background_voxels_predicted_as_a_pseudo_class():
    # class 1 annotated, class 2 pseudo-labelled, class 3 still unannotated
    target = t([[0, 0, 0, 0, 2, 1]], torch.int64)
    pred = t([[0, 2, 1, 3, 1, 2]], torch.int64)
    pseudo = t([[False, False, True, False]], torch.bool)
    # paper VLS: only the pseudo voxel predicted otherwise (index 4) is dropped
    assert vls_voxel_mask(target, pred, pseudo).tolist() == [[1.0, 1.0, 1.0, 1.0, 0.0, 1.0]]
    # background predicted as the pseudo class 2 (index 1) is dropped too; background predicted as the
    # annotated class 1 or the unannotated class 3, and the annotated voxel, stay supervised
    m = vls_voxel_mask(target, pred, pseudo, background=True)
    assert m.tolist() == [[1.0, 0.0, 1.0, 1.0, 0.0, 1.0]]
    # per sample: the same voxel is kept in a sample where class 2 is not pseudo-labelled
    two = vls_voxel_mask(target.repeat(2, 1), pred.repeat(2, 1), t([[False, False, True, False], [False] * 4], torch.bool),
                         background=True)
    assert two[1].tolist() == [1.0] * 6


def test_marginal_loss_positive_pseudo_by_hand():
    # 3 classes: 1 annotated, 2 pseudo-labelled; voxels: background, class 1, pseudo 2
    logits = t([[[2.0, 0.0, 1.0], [0.0, 3.0, 0.0], [1.0, -1.0, 2.0]]]).reshape(1, 3, 3)
    target = t([[0, 1, 2]], torch.int64)
    ann = annotated_channel_mask([frozenset({1})], 3)
    pseudo = t([[False, False, True]], torch.bool)
    p = torch.softmax(logits, dim=1)[0]  # (C, V)
    # CE: background voxel -log(p0 + p2) (2 is not annotated: merged), class 1 -log p1, pseudo voxel -log p2
    ce = -(torch.log(p[0, 0] + p[2, 0]) + torch.log(p[1, 1]) + torch.log(p[2, 2])) / 3
    # Dice over {0, 1} with q0 = p0 + p2 and the pseudo voxel counted as merged background
    q0, q1 = p[0] + p[2], p[1]
    y0, y1 = t([1.0, 0.0, 1.0]), t([0.0, 1.0, 0.0])
    s = 1e-5
    d0 = (2 * (q0 * y0).sum() + s) / (q0.sum() + y0.sum() + s)
    d1 = (2 * (q1 * y1).sum() + s) / (q1.sum() + y1.sum() + s)
    expected = ce + 1 - (d0 + d1) / 2
    got = marginal_loss_positive_pseudo(logits, target, ann, pseudo)
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)
    # without pseudo-labels it is the marginal loss
    assert marginal_loss_positive_pseudo(logits, t([[0, 1, 0]], torch.int64), ann, torch.zeros(1, 3, dtype=torch.bool)).item() == \
        pytest.approx(marginal_loss(logits, t([[0, 1, 0]], torch.int64), ann).item(), abs=1e-6)
    # a zero VLS weight on the pseudo voxel crops it out
    masked = marginal_loss_positive_pseudo(logits, target, ann, pseudo, voxel_mask=t([[1.0, 1.0, 0.0]]))
    assert masked.item() == pytest.approx(marginal_loss(logits[..., :2], target[..., :2], ann).item(), abs=1e-6)


# ---- numerics ---------------------------------------------------------------------------------------
def _all_losses(logits: torch.Tensor, aux: torch.Tensor, target: torch.Tensor, ann: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "full": full_loss(logits, target),
        "marginal": marginal_loss(logits, target, ann),
        "marginal_dice": marginal_dice_loss(logits, target, ann),
        "exclusion_dice": marginal_exclusion_loss(logits, target, ann, form="dice"),
        "exclusion_ce": marginal_exclusion_loss(logits, target, ann, form="dice+ce"),
        "sigmoid": sigmoid_loss(logits[:, 1:], target, ann),
        "aux": aux_dice_loss(aux, target, ann),
        "con": consistency_loss(logits, aux, ann, threshold=0.0),
    }


def test_stable_with_huge_logits():
    torch.manual_seed(4)
    shape = (2, 4, 3, 3, 2)
    sign = torch.randint(0, 2, shape).float() * 2 - 1
    logits = (1e4 * sign).requires_grad_(True)
    aux = (1e4 * (torch.randint(0, 2, (2, 3, 2, 3, 3, 2)).float() * 2 - 1)).requires_grad_(True)
    target = torch.randint(0, 4, (2, 3, 3, 2))
    ann = annotated_channel_mask([frozenset({1}), frozenset({2, 3})], 4)
    for name, loss in _all_losses(logits, aux, target, ann).items():
        assert torch.isfinite(loss), name
        grads = torch.autograd.grad(loss, (logits, aux), allow_unused=True)
        assert all(g is None or torch.isfinite(g).all() for g in grads), name


def test_bf16_autocast_smoke():
    torch.manual_seed(5)
    logits32 = torch.randn(2, 4, 4, 4, 2)
    aux32 = torch.randn(2, 3, 2, 4, 4, 2)
    target = torch.randint(0, 4, (2, 4, 4, 2))
    ann = annotated_channel_mask([frozenset({1, 3}), frozenset({2})], 4)
    logits = logits32.to(torch.bfloat16).requires_grad_(True)
    aux = aux32.to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = _all_losses(logits, aux, target, ann)
    reference = _all_losses(logits.detach().float(), aux.detach().float(), target, ann)
    for name, loss in losses.items():
        assert loss.dtype == torch.float32 and torch.isfinite(loss), name
        assert loss.item() == pytest.approx(reference[name].item(), abs=1e-5), name
    sum(losses.values()).backward()
    assert torch.isfinite(logits.grad.float()).all() and logits.grad.dtype == torch.bfloat16


def test_shape_errors():
    logits = torch.zeros(1, 3, 4)
    ann = annotated_channel_mask([frozenset({1})], 3)
    with pytest.raises(ValueError):
        marginal_loss(logits, torch.zeros(1, 5, dtype=torch.int64), ann)
    with pytest.raises(ValueError):
        marginal_loss(logits, torch.zeros(1, 4, dtype=torch.int64), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError):
        consistency_terms(logits, torch.zeros(1, 3, 2, 4))
    with pytest.raises(ValueError):
        consistency_loss(logits, torch.zeros(1, 2, 2, 4), ann, classes="some")


# ---- the fast implementations against literal autograd references -----------------------------
# The losses avoid one-hot tensors and merged-probability maps, and TCT's ATH terms have a
# hand-written backward (_ATHSums). These references are the formulas as written (float64, plain
# autograd): values and gradients must agree.
def _fast_case(seed: int = 11):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(3, 5, 6, 5, 4, generator=g)).requires_grad_(True)
    aux = (2 * torch.randn(3, 4, 2, 6, 5, 4, generator=g)).requires_grad_(True)
    target = torch.randint(0, 5, (3, 6, 5, 4), generator=g)
    target[0, 3] = 4  # an unannotated class's voxels still labelled: folded into background
    ann = annotated_channel_mask([frozenset({1, 3}), frozenset({2}), frozenset()], 5)
    vm = (torch.rand(3, 6, 5, 4, generator=g) > 0.3).float()
    return logits, aux, target, ann, vm


def _assert_same_value_and_grads(fast, ref, inputs):
    assert fast.item() == pytest.approx(ref.item(), abs=1e-5, rel=1e-5)
    g_fast = torch.autograd.grad(fast, inputs, allow_unused=True)
    g_ref = torch.autograd.grad(ref, inputs, allow_unused=True)
    for a, b in zip(g_fast, g_ref, strict=True):
        if b is None:
            assert a is None or a.abs().max() == 0
        else:
            torch.testing.assert_close(a.double(), b.double(), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("masked", [False, True])
def test_marginal_losses_match_the_literal_reference(masked):
    logits, _, target, ann, vm = _fast_case()
    vm = vm if masked else None
    _assert_same_value_and_grads(
        marginal_loss(logits, target, ann, voxel_mask=vm), reference_marginal_loss(logits, target, ann, vm), (logits,)
    )
    _assert_same_value_and_grads(
        marginal_dice_loss(logits, target, ann, voxel_mask=vm), reference_marginal_loss(logits, target, ann, vm, 0.0), (logits,)
    )
    # the probabilities handed in by TCT give the same loss and the same gradient through them
    probs = torch.softmax(logits.float(), 1)
    _assert_same_value_and_grads(
        marginal_dice_loss(logits, target, ann, voxel_mask=vm, probs=probs),
        reference_marginal_loss(logits, target, ann, vm, 0.0),
        (logits,),
    )
    everyone = annotated_channel_mask([frozenset(range(1, 5))] * 3, 5)
    _assert_same_value_and_grads(full_loss(logits, target, voxel_mask=vm), reference_marginal_loss(logits, target, everyone, vm), (logits,))


def test_ath_terms_match_the_literal_reference():
    logits, aux, target, ann, vm = _fast_case()
    w1, w2 = torch.rand(3, 4, generator=torch.Generator().manual_seed(2)), torch.rand(3, 4)

    def ref(vm=None):
        ref_dice, ref_terms = reference_ath_terms(logits, aux, target, vm)
        return (ref_dice * w1).sum() + (ref_terms * w2).sum()

    dice_, terms, iou = tct_head_terms(logits, aux, target)
    _assert_same_value_and_grads((dice_ * w1).sum() + (terms * w2).sum(), ref(), (logits, aux))
    # the ATH logit differences alone, and the MSH probabilities handed in
    diff = aux[:, :, 1:] - aux[:, :, :1]
    dice_d, terms_d, iou_d = tct_head_terms(logits, diff, target, probs=torch.softmax(logits, 1))
    _assert_same_value_and_grads((dice_d * w1).sum() + (terms_d * w2).sum(), ref(), (logits, aux))
    assert torch.equal(iou, iou_d) and torch.equal(iou, consistency_terms(logits, aux)[1])
    _assert_same_value_and_grads(
        (ath_dice_losses(aux, target, voxel_mask=vm) * w1).sum(), (reference_ath_terms(logits, aux, target, vm)[0] * w1).sum(), (aux,)
    )
    _assert_same_value_and_grads(
        aux_dice_loss(aux, target, ann),
        torch.where(ann[:, 1:], reference_ath_terms(logits, aux, target)[0], 0.0).sum(1).mean(),
        (logits, aux),
    )
    # stop_grad_aux: the consistency pulls only the MSH; L_aux still trains the ATHs
    _, terms_s, _ = tct_head_terms(logits, aux, target, stop_grad_aux=True)
    g_logits, g_aux = torch.autograd.grad(terms_s.sum(), (logits, aux), allow_unused=True)
    assert g_aux is None or g_aux.abs().max() == 0
    (g_ref,) = torch.autograd.grad(reference_ath_terms(logits, aux, target)[1].sum(), logits)
    torch.testing.assert_close(g_logits.double(), g_ref.double(), atol=1e-6, rtol=1e-4)


def test_loss_step_benchmark_runs(capsys, monkeypatch):
    """benchmarks/loss_step.py on tiny tensors (a smoke test: the script must not rot), values agreeing."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "benchmarks"
    monkeypatch.syspath_prepend(str(folder))  # it imports train_step's batch
    spec = importlib.util.spec_from_file_location("loss_step_benchmark", folder / "loss_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--patch", "8", "8", "4", "--organs", "3", "--steps", "1", "--threads", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("full_loss", "marginal", "TCT"))]
    assert len(rows) == 4
    assert all(float(row.split()[-1]) < 1e-4 for row in rows)  # |value diff| against the literal formulas


def test_large_patches_keep_float32_accuracy():
    # a confident background over 1M voxels: per-label sums accumulated voxel after voxel in float32
    # (a plain scatter_add) were off by 7e-4 in the loss here; the literal float64 formula is the judge
    g = torch.Generator().manual_seed(0)
    shape = (1, 4, 256, 64, 64)
    logits = torch.randn(*shape, generator=g)
    logits[:, 0] += 6.0
    target = torch.zeros(1, *shape[2:], dtype=torch.int64)
    target[:, :4, :20, :20] = 1
    target[:, 4:200, :40, :40] = 2  # a large organ: its sums are long too
    ann = torch.tensor([[True, True, True, False]])
    x = logits.clone().requires_grad_(True)
    x64 = logits.double().requires_grad_(True)
    for fast, ref in (
        (marginal_dice_loss(x, target, ann), reference_marginal_loss(x64, target, ann, ce_weight=0.0)),
        ((ath_dice_losses(x[:, 1:].unsqueeze(2), target) ** 2).sum(),
         (reference_ath_terms(x64, torch.stack([torch.zeros_like(x64[:, 1:]), x64[:, 1:]], 2), target)[0] ** 2).sum()),
    ):
        assert fast.item() == pytest.approx(ref.item(), abs=2e-6)
        (g_fast,) = torch.autograd.grad(fast, x)
        (g_ref,) = torch.autograd.grad(ref, x64)
        assert ((g_fast.double() - g_ref).norm() / g_ref.norm()).item() < 1e-5
