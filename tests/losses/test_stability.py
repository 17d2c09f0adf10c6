"""Numerical robustness where the official code fails: small beta, float32, autocast, fp16.

Reference values are our own float64 results, whose parity with the official algorithm is
established in test_monce.py; the official algorithm itself (test oracle) is shown to fail here.
"""

import importlib

import pytest
import torch
from naive import clustered_features, official_monce

from patchcontrast.losses import monce, sinkhorn, weight_nce


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def realistic():
    # near-duplicate patches (a few tight clusters), as real encoder features
    return clustered_features(2, 256, 64, seed=1)


@pytest.mark.parametrize("weighting", ["hard", "easy"])
@pytest.mark.parametrize("beta", [1e-3, 1e-2, 0.1, 1.0])
def test_monce_float32_is_finite_and_accurate(realistic, weighting, beta):
    q, k = realistic
    q64 = q.clone().requires_grad_()
    ref = monce(q64, k, weighting=weighting, beta=beta, reduction="none")
    ref.sum().backward()
    q32 = q.float().requires_grad_()
    got = monce(q32, k.float(), weighting=weighting, beta=beta, reduction="none")
    got.sum().backward()
    assert torch.isfinite(got).all() and torch.isfinite(q32.grad).all()
    assert _rel(got.mean(), ref.mean()) <= 1e-3
    assert _rel(got, ref) <= 1e-3  # per-anchor losses as a vector
    assert _rel(q32.grad, q64.grad) <= 1e-3


@pytest.mark.parametrize("weighting", ["hard", "easy"])
def test_official_algorithm_overflows_where_ours_does_not(realistic, weighting):
    q, k = (x.float() for x in realistic)
    assert not torch.isfinite(official_monce(q, k, weighting=weighting, beta=1e-3)).all()
    assert torch.isfinite(monce(q, k, weighting=weighting, beta=1e-3, reduction="none")).all()


def test_sinkhorn_float32_tiny_eps_marginals(realistic):
    q, k = realistic
    cost = -(q @ k.transpose(1, 2))
    plan64 = sinkhorn(cost, eps=1e-3, iters=200)
    plan32 = sinkhorn(cost.float(), eps=1e-3, iters=200)
    assert torch.isfinite(plan32).all()
    torch.testing.assert_close(plan32.sum(1), torch.ones(2, 256), rtol=0, atol=1e-4)
    assert (plan32.double() - plan64).abs().max() <= 1e-3


def test_weight_nce_tiny_beta_float32(realistic):
    q, k = (x.float() for x in realistic)
    for weighting in ("hard", "easy"):
        out = weight_nce(q, k, weighting=weighting, beta=1e-4, reduction="none")
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_keeps_losses_in_float32(realistic, dtype):
    q, k = (x.float() for x in realistic)
    expected = monce(q, k, beta=0.05)
    with torch.autocast("cpu", dtype=dtype):
        under_autocast = monce(q, k, beta=0.05)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_are_promoted(realistic, dtype):
    q, k = (x.to(dtype) for x in realistic)
    q.requires_grad_()
    out = monce(q, k, beta=0.05)
    out.backward()
    assert out.dtype == torch.float32 and torch.isfinite(out)
    assert q.grad.dtype == dtype and torch.isfinite(q.grad.float()).all()
    torch.testing.assert_close(out, monce(q.detach().float(), k.float(), beta=0.05))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sinkhorn_first_column_step_paths_agree(realistic, monkeypatch, dtype):
    """The linear-domain shortcut for the first column update equals the log-domain one."""
    sinkhorn_module = importlib.import_module("patchcontrast.losses.sinkhorn")

    q, k = (x.to(dtype) for x in realistic)
    results = []
    for safe_sum in (0.0, float("inf")):  # always the shortcut / always the log domain
        monkeypatch.setitem(sinkhorn_module._SAFE_SUM, dtype, safe_sum)
        cost = (-(q @ k.transpose(1, 2))).requires_grad_()
        plan = sinkhorn(cost, eps=0.05, iters=20)
        (plan * torch.linspace(0, 1, plan.numel(), dtype=dtype).view_as(plan)).sum().backward()
        results.append((plan.detach(), cost.grad))
    # float32: both paths are ~1.5e-4 (of the largest entry) from float64 in the gradient here
    tol = 1e-3 if dtype == torch.float32 else 1e-12
    for fast, log_domain in zip(results[0], results[1]):  # plan, then gradient
        scale = log_domain.abs().max().item()
        torch.testing.assert_close(fast, log_domain, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("weighting", ["hard", "easy"])
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_monce_tol_none_runs_the_official_iterations_exactly(weighting, beta):
    q, k = clustered_features(2, 32, 16, seed=5)
    x, y = q.clone().requires_grad_(), q.clone().requires_grad_()
    ours = monce(x, k, weighting=weighting, beta=beta, tol=None, reduction="none")
    official = official_monce(y, k, weighting=weighting, beta=beta)
    torch.testing.assert_close(ours, official, rtol=1e-10, atol=1e-14)
    ours.sum().backward()
    official.sum().backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-13)
