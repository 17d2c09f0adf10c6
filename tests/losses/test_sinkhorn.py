"""Sinkhorn solver tests.

Oracles: POT's ``ot.sinkhorn`` (converged plans, K = exp(−M/reg)), ``naive.naive_sinkhorn``
(plain Python loop with the same update order u = a/(Kv), v = b/(Kᵀu), hence identical iterates
for a fixed number of iterations) and ``naive.sinkhorn_vec`` (vectorised copy of the naive
loop, differentiated by autograd through every iteration).
"""

import numpy as np
import ot
import pytest
import torch
from naive import naive_sinkhorn, sinkhorn_vec

from patchcontrast.losses import sinkhorn

DT = torch.float64


def _cost(G, n, m, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.rand(G, n, m, dtype=DT, generator=g)


def _marginals(G, n, m, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(G, n, dtype=DT, generator=g) + 0.5
    b = torch.rand(G, m, dtype=DT, generator=g) + 0.5
    b = b * (a.sum(1, keepdim=True) / b.sum(1, keepdim=True))  # same total mass
    return a, b


@pytest.mark.parametrize("shape", [(1, 5, 5), (2, 4, 7), (3, 8, 3)])
@pytest.mark.parametrize("eps", [0.1, 1.0])
@pytest.mark.parametrize("given", [False, True])
def test_converged_matches_pot(shape, eps, given):
    G, n, m = shape
    C = _cost(G, n, m, seed=n * m)
    if given:
        a, b = _marginals(G, n, m, seed=n + m)
    else:
        a = torch.full((G, n), m / n, dtype=DT)
        b = torch.ones(G, m, dtype=DT)
    T = sinkhorn(C, eps=eps, a=a if given else None, b=b if given else None, iters=20000, tol=1e-13)
    assert T.shape == (G, n, m)
    for g in range(G):
        ref = ot.sinkhorn(
            a[g].numpy(), b[g].numpy(), C[g].numpy(), eps, numItermax=200000, stopThr=1e-14
        )
        torch.testing.assert_close(T[g], torch.from_numpy(np.asarray(ref)), rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("shape", [(1, 4, 4), (2, 3, 5), (2, 5, 3)])
@pytest.mark.parametrize("iters", [1, 3, 20])
@pytest.mark.parametrize("eps", [0.1, 1.0])
def test_fixed_iterations_match_naive(shape, iters, eps):
    G, n, m = shape
    C = _cost(G, n, m, seed=7 * iters + n)
    T = sinkhorn(C, eps=eps, iters=iters)
    torch.testing.assert_close(T, naive_sinkhorn(C, eps=eps, iters=iters), rtol=1e-10, atol=1e-300)


@pytest.mark.parametrize("one_d", [False, True])
def test_given_marginals_fixed_iterations(one_d):
    G, n, m = 2, 4, 6
    C = _cost(G, n, m, seed=3)
    a, b = _marginals(G, n, m, seed=4)
    if one_d:
        a, b = a[0], b[0]
    T = sinkhorn(C, eps=0.5, a=a, b=b, iters=7)
    torch.testing.assert_close(
        T, naive_sinkhorn(C, eps=0.5, a=a, b=b, iters=7), rtol=1e-10, atol=1e-300
    )
    # columns match b exactly after the final v-update
    torch.testing.assert_close(T.sum(1), b.expand(G, m), rtol=1e-12, atol=1e-12)


def test_default_iters_is_50():
    C = _cost(2, 6, 6, seed=5)
    torch.testing.assert_close(
        sinkhorn(C, eps=0.1), naive_sinkhorn(C, eps=0.1, iters=50), rtol=1e-10, atol=1e-300
    )


@pytest.mark.parametrize("shape", [(2, 6, 6), (2, 4, 9), (1, 9, 4)])
def test_marginals(shape):
    G, n, m = shape
    C = _cost(G, n, m, seed=11, scale=3.0)
    T = sinkhorn(C, eps=0.1, iters=5)
    # column sums are exact after the final v-update; default b = 1
    torch.testing.assert_close(T.sum(1), torch.ones(G, m, dtype=DT), rtol=1e-12, atol=1e-12)
    # after 5 iterations the rows are not converged yet (the test would be vacuous otherwise)
    a = torch.full((G, n), m / n, dtype=DT)
    assert (T.sum(2) - a).abs().max() > 1e-8
    # with a tolerance the row marginals converge
    C = _cost(G, n, m, seed=11)
    T = sinkhorn(C, eps=0.1, iters=20000, tol=1e-10)
    torch.testing.assert_close(T.sum(2), a, rtol=0, atol=1e-9)
    torch.testing.assert_close(T.sum(1), torch.ones(G, m, dtype=DT), rtol=1e-12, atol=1e-12)
    assert torch.all(T >= 0)


def test_tol_stops_early():
    # a loose tolerance stops before the full iteration budget: the plan differs from the
    # 5000-iteration one but still satisfies the row tolerance
    C = _cost(1, 6, 6, seed=12, scale=3.0)
    loose = sinkhorn(C, eps=0.1, iters=5000, tol=1e-3)
    full = sinkhorn(C, eps=0.1, iters=5000)
    assert (loose.sum(2) - 1).abs().max() < 1e-3
    assert (loose - full).abs().max() > 1e-9


@pytest.mark.parametrize("shape", [(1, 5, 5), (2, 4, 6)])
def test_infinite_cost_gives_exact_zeros(shape):
    G, n, m = shape
    C = _cost(G, n, m, seed=13)
    mask = torch.zeros(G, n, m, dtype=torch.bool)
    for i in range(min(n, m)):
        mask[:, i, i] = True
    mask[:, 0, -1] = True
    C = C.masked_fill(mask, float("inf"))
    T = sinkhorn(C, eps=0.1, iters=30)
    assert torch.isfinite(T).all()
    assert torch.all(T[mask] == 0)
    assert torch.all(T[~mask] > 0)
    torch.testing.assert_close(T, naive_sinkhorn(C, eps=0.1, iters=30), rtol=1e-10, atol=0)
    # gradient w.r.t. the finite entries matches autograd through the naive loop and is
    # exactly zero (the kernel is locally 0) on the infinite ones
    W = torch.rand(G, n, m, dtype=DT, generator=torch.Generator().manual_seed(0))
    c1 = C.clone().requires_grad_(True)
    (sinkhorn(c1, eps=0.1, iters=30) * W).sum().backward()
    c2 = C.clone().requires_grad_(True)
    (sinkhorn_vec(c2, eps=0.1, iters=30) * W).sum().backward()
    assert torch.isfinite(c1.grad).all()
    assert torch.all(c1.grad[mask] == 0)
    torch.testing.assert_close(c1.grad[~mask], c2.grad[~mask], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 4, 4), (1, 3, 5), (2, 5, 3)])
@pytest.mark.parametrize("iters", [1, 3, 20])
@pytest.mark.parametrize("eps", [0.1, 1.0])
def test_gradcheck(shape, iters, eps):
    G, n, m = shape
    C = _cost(G, n, m, seed=17 + iters).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: sinkhorn(c, eps=eps, iters=iters), (C,))


def test_gradcheck_given_marginals():
    C = _cost(2, 3, 4, seed=19).requires_grad_(True)
    a, b = _marginals(2, 3, 4, seed=20)
    assert torch.autograd.gradcheck(lambda c: sinkhorn(c, eps=0.5, a=a, b=b, iters=5), (C,))


@pytest.mark.parametrize("shape", [(2, 6, 6), (2, 4, 7)])
@pytest.mark.parametrize("iters", [1, 3, 20, 50])
@pytest.mark.parametrize("eps", [0.1, 1.0])
def test_gradient_matches_autograd_through_naive(shape, iters, eps):
    G, n, m = shape
    C = _cost(G, n, m, seed=23 + iters)
    W = torch.randn(G, n, m, dtype=DT, generator=torch.Generator().manual_seed(iters))
    c1 = C.clone().requires_grad_(True)
    (sinkhorn(c1, eps=eps, iters=iters) * W).sum().backward()
    c2 = C.clone().requires_grad_(True)
    (sinkhorn_vec(c2, eps=eps, iters=iters) * W).sum().backward()
    torch.testing.assert_close(c1.grad, c2.grad, rtol=1e-8, atol=1e-10 * c2.grad.abs().max())


def test_naive_and_vectorised_oracles_agree():
    C = _cost(2, 3, 4, seed=29)
    torch.testing.assert_close(
        sinkhorn_vec(C, eps=0.3, iters=9), naive_sinkhorn(C, eps=0.3, iters=9), rtol=1e-12, atol=0
    )
