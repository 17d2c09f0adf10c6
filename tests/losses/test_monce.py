"""MoNCE tests.

Oracles: ``naive.official_monce`` — a vectorised re-implementation of the official MoNCE-CUT
algorithm as docs/design.md §3.3 describes it (plain-domain Sinkhorn with K = exp(M/β), −10
diagonal, u = 1/(Kv), v = 1/(Kᵀu) for 50 unrolled iterations, f = T(n−1)Q + 1e-8,
l_neg = S + τ log f with −10 diagonal, CE target 0; gradients by autograd through the plan) —
and ``naive.naive_weighted_nce_given_f`` (per-anchor loop of the weighted NCE for a given f).
"""

import pytest
import torch
from naive import (
    clustered_features,
    groups,
    naive_weighted_nce_given_f,
    official_monce,
    random_features,
)

from patchcontrast.losses import monce, patch_nce, sinkhorn

VAL_RTOL = 1e-5


def _value_and_grad(fn, q, k, wts, **kw):
    x = q.clone().requires_grad_(True)
    out = fn(x, k, reduction="none", **kw)
    (out * wts).sum().backward()
    return out.detach(), x.grad


def _assert_grad_close(got, want, rtol=1e-5):
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=rtol, atol=1e-7 * scale)


def _wts(B, N, seed=0):
    return torch.rand(B, N, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("features", ["random", "clustered"])
@pytest.mark.parametrize("weighting", ["hard", "easy"])
@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("Q", [1.0, 2.0])
def test_default_matches_official_values_and_grads(features, weighting, beta, Q):
    B, N, C = 2, 32, 16
    seed = 40 + int(10 * beta) + int(Q)
    if features == "random":
        q, k = random_features(B, N, C, seed=seed)
    else:
        q, k = clustered_features(B, N, C, seed=seed)
    wts = _wts(B, N, seed)
    got, g_got = _value_and_grad(monce, q, k, wts, weighting=weighting, beta=beta, Q=Q)
    want, g_want = _value_and_grad(official_monce, q, k, wts, weighting=weighting, beta=beta, Q=Q)
    assert got.shape == (B, N)
    torch.testing.assert_close(got, want, rtol=VAL_RTOL, atol=0)
    _assert_grad_close(g_got, g_want)


@pytest.mark.parametrize("weighting", ["hard", "easy"])
def test_default_matches_official_n64_clustered_paper_beta(weighting):
    # the paper's β = 0.1 on near-duplicate patches (large plan gradients), N = 64
    q, k = clustered_features(1, 64, 16, seed=50, n_clusters=3, spread=0.05, key_noise=0.05)
    wts = _wts(1, 64, 3)
    got, g_got = _value_and_grad(monce, q, k, wts, weighting=weighting, beta=0.1)
    want, g_want = _value_and_grad(official_monce, q, k, wts, weighting=weighting, beta=0.1)
    torch.testing.assert_close(got, want, rtol=VAL_RTOL, atol=0)
    _assert_grad_close(g_got, g_want)


@pytest.mark.parametrize("weighting", ["hard", "easy"])
def test_batch_negatives_matches_official(weighting):
    q, k = clustered_features(3, 8, 8, seed=51)
    wts = _wts(3, 8, 4)
    got, g_got = _value_and_grad(monce, q, k, wts, weighting=weighting, beta=0.5, negatives="batch")
    want, g_want = _value_and_grad(
        official_monce, q, k, wts, weighting=weighting, beta=0.5, negatives="batch"
    )
    assert got.shape == (3, 8)
    torch.testing.assert_close(got, want, rtol=VAL_RTOL, atol=0)
    _assert_grad_close(g_got, g_want)


def test_defaults_and_reductions():
    # defaults: tau 0.07, hard, beta 0.1, Q 1, 50 iterations, reduction "mean"
    q, k = random_features(2, 12, 8, seed=52)
    want = official_monce(q, k)
    torch.testing.assert_close(monce(q, k), want.mean(), rtol=VAL_RTOL, atol=0)
    torch.testing.assert_close(monce(q, k, reduction="sum"), want.sum(), rtol=VAL_RTOL, atol=0)
    torch.testing.assert_close(monce(q, k, reduction="none"), want, rtol=VAL_RTOL, atol=0)


@pytest.mark.parametrize("iters", [1, 5, 200])
@pytest.mark.parametrize("tau", [0.07, 0.2])
def test_iters_and_tau(iters, tau):
    q, k = random_features(2, 10, 8, seed=53)
    got = monce(q, k, tau=tau, beta=0.3, iters=iters, reduction="none")
    want = official_monce(q, k, tau=tau, beta=0.3, iters=iters)
    torch.testing.assert_close(got, want, rtol=VAL_RTOL, atol=0)


@pytest.mark.parametrize("weighting", ["hard", "easy"])
def test_plan_detached(weighting):
    q, k = clustered_features(2, 16, 8, seed=54)
    wts = _wts(2, 16, 5)
    got, g_got = _value_and_grad(
        monce, q, k, wts, weighting=weighting, beta=0.5, grad_through_plan=False
    )
    want, g_want = _value_and_grad(
        official_monce, q, k, wts, weighting=weighting, beta=0.5, grad_through_plan=False
    )
    _, g_default = _value_and_grad(monce, q, k, wts, weighting=weighting, beta=0.5)
    torch.testing.assert_close(got, want, rtol=VAL_RTOL, atol=0)
    _assert_grad_close(g_got, g_want)
    # the plan term is a real part of the default gradient
    assert (g_default - g_got).abs().max() > 1e-2 * g_default.abs().max()


@pytest.mark.parametrize("weighting", ["hard", "easy"])
def test_diagonal_exclude_matches_official_exclude(weighting):
    q, k = random_features(2, 12, 8, seed=55)
    wts = _wts(2, 12, 6)
    got, g_got = _value_and_grad(
        monce, q, k, wts, weighting=weighting, beta=1.0, diagonal="exclude"
    )
    want, g_want = _value_and_grad(
        official_monce, q, k, wts, weighting=weighting, beta=1.0, diagonal="exclude"
    )
    torch.testing.assert_close(got, want, rtol=VAL_RTOL, atol=0)
    _assert_grad_close(g_got, g_want)
    # at β = 1 the upstream diagonal exp(−10) is not negligible: the two modes differ
    upstream = monce(q, k, weighting=weighting, beta=1.0, reduction="none")
    assert (upstream - got).abs().max() > 1e-7


@pytest.mark.parametrize("weighting", ["hard", "easy"])
@pytest.mark.parametrize("negatives", ["image", "batch"])
def test_exclude_huge_beta_equals_patch_nce(weighting, negatives):
    # β → ∞ with an exact-zero diagonal: T → (J − I)/(n − 1), f → 1, MoNCE → PatchNCE
    q, k = random_features(2, 16, 8, seed=56)
    got = monce(
        q,
        k,
        weighting=weighting,
        beta=1e6,
        Q=1.0,
        diagonal="exclude",
        negatives=negatives,
        reduction="none",
    )
    want = patch_nce(q, k, negatives=negatives, reduction="none")
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("weighting", ["hard", "easy"])
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_plan_via_sinkhorn_and_naive_weighted_nce(weighting, beta):
    # The official plan is sinkhorn(cost = −M, eps = β) with square all-ones marginals; the
    # loss equals the naive weighted NCE with f = T (n−1) Q + 1e-8.
    B, N, C, Q = 2, 10, 6, 2.0
    q, k = clustered_features(B, N, C, seed=57)
    want, T_off = official_monce(q, k, weighting=weighting, beta=beta, Q=Q, return_plan=True)
    qg, kg = groups(q, k, "image")
    S = torch.bmm(qg, kg.transpose(1, 2))
    M = S if weighting == "hard" else 1.0 - S
    M = M.masked_fill(torch.eye(N, dtype=torch.bool), -10.0)
    T = sinkhorn(-M, eps=beta, iters=50)
    torch.testing.assert_close(T, T_off, rtol=1e-9, atol=1e-14)
    # marginals: columns exact (v updated last), rows approximately one
    torch.testing.assert_close(
        T.sum(1), torch.ones(B, N, dtype=torch.float64), rtol=1e-12, atol=1e-12
    )
    assert (T.sum(2) - 1).abs().max() < 5e-2
    f = T * (N - 1) * Q + 1e-8
    naive = naive_weighted_nce_given_f(q, k, f)
    torch.testing.assert_close(naive, want, rtol=1e-10, atol=0)
    torch.testing.assert_close(
        monce(q, k, weighting=weighting, beta=beta, Q=Q, reduction="none"),
        naive,
        rtol=VAL_RTOL,
        atol=0,
    )


@pytest.mark.parametrize("grad_through_plan", [True, False])
def test_keys_get_no_gradient(grad_through_plan):
    q, k = random_features(2, 8, 4, seed=58)
    q.requires_grad_(True)
    k.requires_grad_(True)
    monce(q, k, beta=0.5, grad_through_plan=grad_through_plan).backward()
    assert q.grad is not None and q.grad.abs().max() > 0
    assert k.grad is None or torch.count_nonzero(k.grad) == 0


def test_finite_in_float64_at_small_beta():
    q, k = clustered_features(2, 16, 8, seed=59)
    for weighting in ["hard", "easy"]:
        x = q.clone().requires_grad_(True)
        out = monce(x, k, weighting=weighting, beta=0.05)
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("weighting", ["hard", "easy"])
@pytest.mark.parametrize("diagonal", ["upstream", "exclude"])
@pytest.mark.parametrize("negatives", ["image", "batch"])
def test_gradcheck(weighting, diagonal, negatives):
    # Only the full-gradient mode can be gradchecked: with grad_through_plan=False the value
    # still depends on q through T, so finite differences would (correctly) disagree.  The
    # detached mode is checked against autograd of the official oracle in test_plan_detached.
    q, k = random_features(2, 5, 3, seed=60)
    q.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: monce(
            x,
            k,
            tau=0.2,
            weighting=weighting,
            beta=0.5,
            Q=1.5,
            iters=10,
            diagonal=diagonal,
            negatives=negatives,
            reduction="none",
        ),
        (q,),
    )


def test_detached_plan_is_not_the_full_derivative():
    # sanity check of the statement above, on the implementation: the detached-plan gradient
    # differs from a finite-difference derivative of the loss
    q, k = random_features(1, 5, 3, seed=61)
    wts = _wts(1, 5, 7)
    _, g = _value_and_grad(monce, q, k, wts, beta=0.5, tau=0.2, grad_through_plan=False)
    d = torch.zeros_like(q)
    d[0, 0, 0] = 1.0
    h = 1e-6
    fd = (
        (monce(q + h * d, k, beta=0.5, tau=0.2, reduction="none") * wts).sum()
        - (monce(q - h * d, k, beta=0.5, tau=0.2, reduction="none") * wts).sum()
    ) / (2 * h)
    _, g_full = _value_and_grad(monce, q, k, wts, beta=0.5, tau=0.2)
    torch.testing.assert_close(g_full[0, 0, 0], fd, rtol=1e-6, atol=1e-8)
    assert abs(g[0, 0, 0] - fd) > 1e-4 * abs(fd)
