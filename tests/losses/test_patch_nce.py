"""PatchNCE tests.

Oracles: ``naive.naive_patch_nce`` (per-anchor Python loop of the formula in docs/design.md §3.1)
and ``naive.official_patch_nce`` (vectorised CUT algorithm: logits [l_pos, l_neg with −10
diagonal]/τ, cross-entropy with target 0).
"""

import pytest
import torch
from naive import naive_patch_nce, official_patch_nce, random_features

from patchcontrast.losses import patch_nce

RTOL, ATOL = 1e-10, 1e-12


@pytest.mark.parametrize("negatives", ["image", "batch"])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_matches_naive_and_official(negatives, B, tau):
    q, k = random_features(B, 9, 6, seed=10 + B)
    got = patch_nce(q, k, tau=tau, negatives=negatives, reduction="none")
    assert got.shape == (B, 9)
    assert got.dtype == torch.float64
    want_naive = naive_patch_nce(q, k, tau=tau, negatives=negatives)
    want_off = official_patch_nce(q, k, tau=tau, negatives=negatives)
    torch.testing.assert_close(want_naive, want_off, rtol=RTOL, atol=ATOL)  # oracles agree
    torch.testing.assert_close(got, want_naive, rtol=RTOL, atol=ATOL)


def test_image_and_batch_grouping_differ():
    # with B > 1, "batch" adds cross-image negatives, so every per-anchor loss increases
    q, k = random_features(3, 8, 6, seed=3)
    li = patch_nce(q, k, negatives="image", reduction="none")
    lb = patch_nce(q, k, negatives="batch", reduction="none")
    assert torch.all(lb > li)


def test_batch_grouping_is_image_major():
    # permuting the images permutes the per-anchor output rows the same way
    q, k = random_features(3, 7, 5, seed=4)
    perm = torch.tensor([2, 0, 1])
    a = patch_nce(q, k, negatives="batch", reduction="none")
    b = patch_nce(q[perm], k[perm], negatives="batch", reduction="none")
    torch.testing.assert_close(b, a[perm], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("negatives", ["image", "batch"])
def test_reductions(negatives):
    q, k = random_features(2, 10, 4, seed=5)
    none = patch_nce(q, k, negatives=negatives, reduction="none")
    assert none.shape == (2, 10)
    mean = patch_nce(q, k, negatives=negatives, reduction="mean")
    total = patch_nce(q, k, negatives=negatives, reduction="sum")
    default = patch_nce(q, k, negatives=negatives)
    assert mean.dim() == 0 and total.dim() == 0
    torch.testing.assert_close(mean, none.mean(), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(total, none.sum(), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(default, mean, rtol=0, atol=0)


def test_default_tau_is_0_07():
    q, k = random_features(2, 6, 4, seed=6)
    torch.testing.assert_close(
        patch_nce(q, k, reduction="none"), naive_patch_nce(q, k, tau=0.07), rtol=RTOL, atol=ATOL
    )


def test_diagonal_term_is_minus_10():
    # identical keys for all patches: S_ij = q_i . k_0 for every j, so the denominator is
    # n e^{s_i/τ} + e^{-10/τ}; a large τ makes the −10 term visible
    B, N, C, tau = 1, 5, 3, 5.0
    g = torch.Generator().manual_seed(11)
    q = torch.nn.functional.normalize(
        torch.randn(B, N, C, dtype=torch.float64, generator=g), dim=-1
    )
    k = q[:, :1].expand(B, N, C).clone()
    got = patch_nce(q, k, tau=tau, reduction="none")
    s = (q * k).sum(-1)
    pos = torch.exp(s / tau)
    den = pos + (N - 1) * pos + torch.exp(torch.tensor(-10.0 / tau, dtype=torch.float64))
    torch.testing.assert_close(got, -torch.log(pos / den), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("negatives", ["image", "batch"])
def test_keys_get_no_gradient(negatives):
    q, k = random_features(2, 6, 4, seed=7)
    q.requires_grad_(True)
    k.requires_grad_(True)
    patch_nce(q, k, negatives=negatives).backward()
    assert q.grad is not None and q.grad.abs().max() > 0
    assert k.grad is None or torch.count_nonzero(k.grad) == 0


@pytest.mark.parametrize("negatives", ["image", "batch"])
def test_gradient_matches_official(negatives):
    q, k = random_features(2, 8, 5, seed=8)
    w = torch.rand(2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    q1 = q.clone().requires_grad_(True)
    (patch_nce(q1, k, negatives=negatives, reduction="none") * w).sum().backward()
    q2 = q.clone().requires_grad_(True)
    (official_patch_nce(q2, k, negatives=negatives) * w).sum().backward()
    torch.testing.assert_close(q1.grad, q2.grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("negatives", ["image", "batch"])
def test_gradcheck(negatives):
    q, k = random_features(2, 5, 3, seed=9)
    q.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: patch_nce(x, k, tau=0.2, negatives=negatives, reduction="none"), (q,)
    )
