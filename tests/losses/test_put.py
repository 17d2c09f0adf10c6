"""PUT negative-pruning tests.

Oracles: ``naive.naive_put`` (per-anchor loop: keep the k largest / smallest S_ij, j ≠ i, CE over
[S_ii, kept]/τ without −10 term), ``naive.official_put`` (PUT's dim-0 column sort across all
anchors, docs/design.md §3.5) and PatchNCE (k = n−1 hardest keeps every negative).
"""

import pytest
import torch
from naive import naive_patch_nce, naive_put, official_put, random_features

from patchcontrast.losses import patch_nce, put

RTOL, ATOL = 1e-10, 1e-12


@pytest.mark.parametrize("negatives", ["image", "batch"])
@pytest.mark.parametrize("B", [1, 3])
def test_hardest_all_negatives_equals_patch_nce(negatives, B):
    N = 7
    n = N if negatives == "image" else B * N
    q, k = random_features(B, N, 5, seed=70 + B)
    got = put(q, k, k_neg=n - 1, selection="hardest", negatives=negatives, reduction="none")
    torch.testing.assert_close(
        got, patch_nce(q, k, negatives=negatives, reduction="none"), rtol=1e-9, atol=0
    )
    torch.testing.assert_close(got, naive_patch_nce(q, k, negatives=negatives), rtol=1e-9, atol=0)


@pytest.mark.parametrize("selection", ["hardest", "easiest"])
@pytest.mark.parametrize("k_neg", [1, 3, 6])
@pytest.mark.parametrize("negatives", ["image", "batch"])
@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_matches_naive(selection, k_neg, negatives, tau):
    q, k = random_features(2, 7, 5, seed=72 + k_neg)
    got = put(
        q, k, tau=tau, k_neg=k_neg, selection=selection, negatives=negatives, reduction="none"
    )
    assert got.shape == (2, 7)
    want = naive_put(q, k, tau=tau, k_neg=k_neg, selection=selection, negatives=negatives)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


def test_defaults_and_reductions():
    # defaults: tau 0.07, k_neg 5, selection "hardest", negatives "image", reduction "mean"
    q, k = random_features(2, 8, 4, seed=74)
    want = naive_put(q, k, tau=0.07, k_neg=5, selection="hardest")
    torch.testing.assert_close(put(q, k), want.mean(), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(put(q, k, reduction="sum"), want.sum(), rtol=RTOL, atol=ATOL)


def test_hardest_ge_easiest():
    q, k = random_features(2, 9, 4, seed=75)
    hard = put(q, k, k_neg=3, selection="hardest", reduction="none")
    easy = put(q, k, k_neg=3, selection="easiest", reduction="none")
    assert torch.all(hard >= easy)
    assert torch.any(hard > easy + 1e-3)


@pytest.mark.parametrize("negatives", ["image", "batch"])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("k_neg", [1, 5])
def test_official_matches_official_oracle(negatives, B, k_neg):
    q, k = random_features(B, 8, 5, seed=76 + B)
    wts = torch.rand(B, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    q1 = q.clone().requires_grad_(True)
    got = put(q1, k, k_neg=k_neg, selection="official", negatives=negatives, reduction="none")
    (got * wts).sum().backward()
    q2 = q.clone().requires_grad_(True)
    want = official_put(q2, k, k_neg=k_neg, negatives=negatives)
    (want * wts).sum().backward()
    assert got.shape == (B, 8)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(q1.grad, q2.grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("negatives", ["image", "batch"])
@pytest.mark.parametrize("tau", [0.07, 5.0])
def test_official_last_G_anchors_only_get_minus_10(negatives, tau):
    # every column holds G masked diagonals (−10) which sort to the bottom, so the last G
    # anchors (in image-major order) see only −10 negatives:
    # ℓ = −log(e^{s/τ} / (e^{s/τ} + k e^{−10/τ}))
    B, N, k_neg = 3, 6, 4
    G = B if negatives == "image" else 1
    q, k = random_features(B, N, 4, seed=78)
    got = put(
        q, k, tau=tau, k_neg=k_neg, selection="official", negatives=negatives, reduction="none"
    ).reshape(-1)
    s = (q * k).sum(-1).reshape(-1)
    # = log(1 + k e^{(−10 − s)/τ}), written with log1p so that it stays accurate at τ = 0.07
    expect = torch.log1p(k_neg * torch.exp((-10.0 - s) / tau))
    # (at τ = 0.07 the value is ~1e-58; a log-sum-exp implementation may round it to 0)
    torch.testing.assert_close(got[-G:], expect[-G:], rtol=1e-10, atol=1e-12)
    if tau == 0.07:
        assert torch.all(got[-G:] < 1e-50)
    # every other anchor's k kept values are real similarities (>= −1), never −10
    lower = torch.log1p(k_neg * torch.exp((-1.0 - s) / tau))
    assert torch.all(got[:-G] >= lower[:-G] * (1 - 1e-12))


def test_official_differs_from_per_anchor_topk():
    q, k = random_features(2, 8, 5, seed=79)
    a = put(q, k, k_neg=5, selection="official", reduction="none")
    b = put(q, k, k_neg=5, selection="hardest", reduction="none")
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("negatives", ["image", "batch"])
def test_random_between_easiest_and_hardest(negatives):
    q, k = random_features(2, 9, 5, seed=80)
    torch.manual_seed(0)
    kw = dict(k_neg=4, negatives=negatives, reduction="none")
    rnd = put(q, k, selection="random", **kw)
    lo = put(q, k, selection="easiest", **kw)
    hi = put(q, k, selection="hardest", **kw)
    assert rnd.shape == (2, 9)
    assert torch.isfinite(rnd).all()
    assert torch.all(rnd >= lo - 1e-12)
    assert torch.all(rnd <= hi + 1e-12)
    # k_neg = n − 1 leaves no randomness: random == hardest == easiest
    n = 9 if negatives == "image" else 18
    full = dict(k_neg=n - 1, negatives=negatives, reduction="none")
    torch.testing.assert_close(
        put(q, k, selection="random", **full),
        put(q, k, selection="hardest", **full),
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.parametrize("selection", ["hardest", "easiest", "official", "random"])
@pytest.mark.parametrize("bad", [0, -1, 8, 9])
def test_invalid_k_neg_raises(selection, bad):
    q, k = random_features(1, 8, 4, seed=81)
    with pytest.raises(ValueError):
        put(q, k, k_neg=bad, selection=selection)


def test_invalid_k_neg_raises_batch_negatives():
    # with batch negatives the group has B*N patches, so k_neg = B*N − 1 is allowed
    q, k = random_features(2, 4, 4, seed=82)
    put(q, k, k_neg=7, negatives="batch")
    with pytest.raises(ValueError):
        put(q, k, k_neg=8, negatives="batch")
    with pytest.raises(ValueError):
        put(q, k, k_neg=4, negatives="image")


def test_keys_get_no_gradient():
    q, k = random_features(2, 6, 4, seed=83)
    for selection in ["hardest", "easiest", "official", "random"]:
        x = q.clone().requires_grad_(True)
        y = k.clone().requires_grad_(True)
        put(x, y, k_neg=3, selection=selection).backward()
        assert x.grad is not None and x.grad.abs().max() > 0
        assert y.grad is None or torch.count_nonzero(y.grad) == 0


@pytest.mark.parametrize("selection", ["hardest", "easiest", "official"])
@pytest.mark.parametrize("negatives", ["image", "batch"])
def test_gradcheck(selection, negatives):
    q, k = random_features(2, 5, 3, seed=84)
    q.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: put(
            x, k, tau=0.2, k_neg=2, selection=selection, negatives=negatives, reduction="none"
        ),
        (q,),
    )
