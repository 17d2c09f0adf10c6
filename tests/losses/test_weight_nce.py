"""WeightNCE tests.

Oracle: ``naive.naive_weight_nce`` — per-anchor loop of docs/design.md §3.2
ℓ_i = −log e^{s_ii/τ} / (e^{s_ii/τ} + Q(n−1) Σ_{j≠i} w_ij e^{s_ij/τ} + e^{−10/τ}),
w = softmax_{j≠i}(±s_ij/β).  Also checks exact invariants (β → ∞ equals PatchNCE) and
inequalities that follow from the weights being similarity-ordered (Chebyshev's sum
inequality / covariance sign), never heuristics.
"""

import pytest
import torch
from naive import naive_patch_nce, naive_weight_nce, naive_weight_nce_limit, random_features

from patchcontrast.losses import patch_nce, weight_nce

RTOL, ATOL = 1e-10, 1e-12


@pytest.mark.parametrize("weighting", ["hard", "easy"])
@pytest.mark.parametrize("beta", [0.05, 0.5, 2.0])
@pytest.mark.parametrize("Q", [0.5, 1.0, 2.0])
def test_matches_naive(weighting, beta, Q):
    q, k = random_features(2, 7, 5, seed=int(100 * beta + 10 * Q))
    got = weight_nce(q, k, weighting=weighting, beta=beta, Q=Q, reduction="none")
    want = naive_weight_nce(q, k, weighting=weighting, beta=beta, Q=Q)
    assert got.shape == (2, 7)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("weighting", ["hard", "easy"])
@pytest.mark.parametrize("tau", [0.07, 0.3])
def test_matches_naive_batch_negatives(weighting, tau):
    q, k = random_features(3, 5, 4, seed=21)
    got = weight_nce(
        q, k, tau=tau, weighting=weighting, beta=0.2, Q=1.5, negatives="batch", reduction="none"
    )
    want = naive_weight_nce(q, k, tau=tau, weighting=weighting, beta=0.2, Q=1.5, negatives="batch")
    assert got.shape == (3, 5)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


def test_defaults():
    # defaults: tau=0.07, weighting="hard", beta=0.1, Q=1, negatives="image", reduction="mean"
    q, k = random_features(2, 6, 4, seed=22)
    want = naive_weight_nce(q, k, tau=0.07, weighting="hard", beta=0.1, Q=1.0)
    torch.testing.assert_close(weight_nce(q, k), want.mean(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("negatives", ["image", "batch"])
def test_reductions(negatives):
    q, k = random_features(2, 6, 4, seed=23)
    none = weight_nce(q, k, negatives=negatives, reduction="none")
    torch.testing.assert_close(
        weight_nce(q, k, negatives=negatives, reduction="mean"), none.mean(), rtol=RTOL, atol=ATOL
    )
    torch.testing.assert_close(
        weight_nce(q, k, negatives=negatives, reduction="sum"), none.sum(), rtol=RTOL, atol=ATOL
    )


@pytest.mark.parametrize("weighting", ["hard", "easy"])
@pytest.mark.parametrize("negatives", ["image", "batch"])
def test_infinite_beta_q1_equals_patch_nce(weighting, negatives):
    # uniform weights 1/(n−1) and Q = 1: exactly PatchNCE (up to O(1/β))
    q, k = random_features(2, 8, 5, seed=24)
    got = weight_nce(
        q, k, weighting=weighting, beta=1e9, Q=1.0, negatives=negatives, reduction="none"
    )
    torch.testing.assert_close(
        got, patch_nce(q, k, negatives=negatives, reduction="none"), rtol=1e-7, atol=1e-9
    )
    torch.testing.assert_close(
        got, naive_patch_nce(q, k, negatives=negatives), rtol=1e-7, atol=1e-9
    )


def test_hard_ge_patch_nce_ge_easy():
    # Q = 1: hard weights are increasing in s_ij and so is e^{s_ij/τ}, hence
    # (n−1) Σ w_ij e^{s_ij/τ} >= Σ e^{s_ij/τ} (Chebyshev); reversed for easy weights.
    q, k = random_features(3, 10, 4, seed=25)
    base = patch_nce(q, k, reduction="none")
    for beta in [0.05, 0.3, 3.0]:
        hard = weight_nce(q, k, weighting="hard", beta=beta, reduction="none")
        easy = weight_nce(q, k, weighting="easy", beta=beta, reduction="none")
        assert torch.all(hard >= base - 1e-12)
        assert torch.all(easy <= base + 1e-12)
        assert torch.all(hard > easy)


def test_monotone_in_beta_and_bounded_by_limits():
    # d/dθ E_{softmax(θ s)}[e^{s/τ}] = Cov(s, e^{s/τ}) >= 0, so the hard loss decreases and
    # the easy loss increases with β; both lie between the β→0 limits (max / min negative).
    q, k = random_features(2, 9, 4, seed=26)
    betas = [0.02, 0.05, 0.1, 0.5, 2.0, 1e3]
    hard = [weight_nce(q, k, weighting="hard", beta=b, reduction="none") for b in betas]
    easy = [weight_nce(q, k, weighting="easy", beta=b, reduction="none") for b in betas]
    for a, b in zip(hard[:-1], hard[1:]):
        assert torch.all(a >= b - 1e-12)
    for a, b in zip(easy[:-1], easy[1:]):
        assert torch.all(a <= b + 1e-12)
    hi = naive_weight_nce_limit(q, k, weighting="hard")
    lo = naive_weight_nce_limit(q, k, weighting="easy")
    assert torch.all(hard[0] <= hi + 1e-12)
    assert torch.all(easy[0] >= lo - 1e-12)
    # at β = 0.02 the weights are already close to one-hot: loose closeness to the limits
    assert (hard[0] - hi).abs().max() < 0.5
    assert (easy[0] - lo).abs().max() < 0.5


def test_q_scales_negatives():
    # Q multiplies the whole negative sum: e^{ℓ} − 1 − e^{−10/τ}/e^{s/τ} is linear in Q
    q, k = random_features(1, 6, 4, seed=27)
    s = (q * k).sum(-1)
    tiny = torch.exp(torch.tensor(-10.0 / 0.07, dtype=torch.float64)) / torch.exp(s / 0.07)
    r1 = torch.exp(weight_nce(q, k, Q=1.0, reduction="none")) - 1 - tiny
    r3 = torch.exp(weight_nce(q, k, Q=3.0, reduction="none")) - 1 - tiny
    torch.testing.assert_close(r3, 3 * r1, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("weighting", ["hard", "easy"])
def test_detach_weights_changes_gradient_not_value(weighting):
    q, k = random_features(2, 7, 5, seed=28)
    wts = torch.rand(2, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    q1 = q.clone().requires_grad_(True)
    l1 = weight_nce(q1, k, weighting=weighting, beta=0.1, reduction="none")
    (l1 * wts).sum().backward()
    q2 = q.clone().requires_grad_(True)
    l2 = weight_nce(q2, k, weighting=weighting, beta=0.1, detach_weights=True, reduction="none")
    (l2 * wts).sum().backward()
    torch.testing.assert_close(l1, l2, rtol=1e-12, atol=1e-12)
    assert (q1.grad - q2.grad).abs().max() > 1e-3 * q1.grad.abs().max()


@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("weighting", ["hard", "easy"])
def test_gradient_matches_naive_autograd(detach, weighting):
    # default: weights are NOT detached; detach_weights=True: weights are constants
    q, k = random_features(2, 6, 4, seed=29)
    wts = torch.rand(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    q1 = q.clone().requires_grad_(True)
    (
        weight_nce(
            q1, k, weighting=weighting, beta=0.2, Q=1.5, detach_weights=detach, reduction="none"
        )
        * wts
    ).sum().backward()
    q2 = q.clone().requires_grad_(True)
    if detach:
        # same value; weights computed from a detached copy of q
        sign = 1.0 if weighting == "hard" else -1.0
        S = torch.bmm(q2, k.transpose(1, 2))
        Sd = S.detach()
        eye = torch.eye(6, dtype=torch.bool)
        w = torch.softmax((sign * Sd / 0.2).masked_fill(eye, float("-inf")), dim=-1)
        pos = torch.exp(torch.diagonal(S, dim1=1, dim2=2) / 0.07)
        neg = (w * torch.exp(S / 0.07)).sum(-1)
        tiny = torch.exp(torch.tensor(-10.0 / 0.07, dtype=torch.float64))
        ref = -torch.log(pos / (pos + 1.5 * 5 * neg + tiny))
    else:
        ref = naive_weight_nce(q2, k, weighting=weighting, beta=0.2, Q=1.5)
    (ref * wts).sum().backward()
    torch.testing.assert_close(q1.grad, q2.grad, rtol=1e-8, atol=1e-10)


def test_keys_get_no_gradient():
    q, k = random_features(2, 6, 4, seed=30)
    q.requires_grad_(True)
    k.requires_grad_(True)
    weight_nce(q, k, weighting="hard", beta=0.1).backward()
    assert q.grad is not None and q.grad.abs().max() > 0
    assert k.grad is None or torch.count_nonzero(k.grad) == 0


@pytest.mark.parametrize("weighting", ["hard", "easy"])
@pytest.mark.parametrize("negatives", ["image", "batch"])
def test_gradcheck(weighting, negatives):
    # default (weights not detached) only: with detach_weights=True the analytic gradient is
    # deliberately not the derivative of the value (checked in test_gradient_matches_naive_*)
    q, k = random_features(2, 5, 3, seed=31)
    q.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: weight_nce(
            x,
            k,
            tau=0.2,
            weighting=weighting,
            beta=0.3,
            Q=1.5,
            negatives=negatives,
            reduction="none",
        ),
        (q,),
    )
