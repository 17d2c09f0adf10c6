"""The released MoNCE-SPADE last-layer loss (docs/design.md §3.4) and ``detach_keys=False``.

Oracle: a per-anchor loop written from docs/design.md §3.4 on top of ``naive.official_plan`` (the
official plain-domain Sinkhorn, 'hard' kernel exp(S / eps), -10 diagonal, 50 iterations):
f = ot_weight T + 1e-8, l_pos = s_ii + tau log max_j f_ij, l_neg_ij = s_ij + tau log f_ij with
the diagonal at -10, cross-entropy with target 0.
"""

import math

import pytest
import torch
from naive import clustered_features, groups, official_plan, random_features

from patchcontrast.losses import CONTRASTIVE_LOSSES, build_loss, patch_nce
from patchcontrast.losses.monce import MoNCESpadeOfficialLoss, monce_spade_official


def naive_spade_official(q, k, *, tau=0.07, eps=1.0, ot_weight=128.0, negatives="image"):
    qg, kg = groups(q, k, negatives)
    plan = official_plan(qg, kg, weighting="hard", beta=eps, iters=50)
    out = torch.empty(qg.shape[:2], dtype=q.dtype)
    for g in range(qg.shape[0]):
        for i in range(qg.shape[1]):
            f = plan[g, i] * ot_weight + 1e-8
            pos = qg[g, i] @ kg[g, i] + tau * torch.log(f.max())
            terms = [pos / tau]
            for j in range(qg.shape[1]):
                s = (
                    torch.tensor(-10.0, dtype=q.dtype)
                    if j == i
                    else (qg[g, i] @ kg[g, j] + tau * torch.log(f[j]))
                )
                terms.append(s / tau)
            out[g, i] = -(terms[0] - torch.logsumexp(torch.stack(terms), 0))
    return out.reshape(q.shape[:2])


@pytest.mark.parametrize("features", [random_features, clustered_features])
@pytest.mark.parametrize("eps", [1.0, 0.3])
def test_matches_the_spec_loop(features, eps):
    q, k = features(2, 12, 6, seed=3)
    ours = monce_spade_official(q, k, eps=eps, tol=None, reduction="none")
    torch.testing.assert_close(ours, naive_spade_official(q, k, eps=eps), rtol=1e-7, atol=1e-9)


def test_batch_negatives_and_ot_weight():
    q, k = clustered_features(2, 6, 5, seed=4)
    ours = monce_spade_official(q, k, ot_weight=30.0, negatives="batch", reduction="none")
    ref = naive_spade_official(q, k, ot_weight=30.0, negatives="batch")
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-8)


def test_gradcheck_and_gradient_through_the_plan():
    q, k = random_features(2, 5, 3, seed=5)
    q.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: monce_spade_official(
            x, k, tau=0.2, eps=0.7, ot_weight=4.0, iters=10, tol=None, reduction="none"
        ),
        (q,),
    )


def test_module_equals_function_and_validates():
    q, k = random_features(1, 8, 4, seed=6)
    module = MoNCESpadeOfficialLoss(eps=0.5, ot_weight=16.0)
    assert module(q, k) == monce_spade_official(q, k, eps=0.5, ot_weight=16.0)
    with pytest.raises(ValueError, match="ot_weight"):
        MoNCESpadeOfficialLoss(ot_weight=0.0)
    with pytest.raises(ValueError, match="eps"):
        monce_spade_official(q, k, eps=-1.0)


def test_positive_term_differs_from_paper_monce_form():
    # with a flat plan (huge eps) f = ot_weight / n everywhere off the diagonal, so the loss is
    # PatchNCE with every logit (positive included) shifted by tau log f: shift cancels.
    q, k = random_features(2, 8, 4, seed=7)
    n = 8
    loss = monce_spade_official(q, k, eps=1e6, ot_weight=float(n), reduction="none")
    torch.testing.assert_close(loss, patch_nce(q, k, reduction="none"), rtol=1e-5, atol=1e-6)
    assert math.isfinite(float(loss.mean()))


@pytest.mark.parametrize("name", list(CONTRASTIVE_LOSSES))
def test_detach_keys_false_lets_gradient_reach_keys(name):
    q, k = random_features(2, 6, 4, seed=8)
    q.requires_grad_(True)
    options = {"k_neg": 3} if name == "put" else {"beta": 0.5} if name != "patchnce" else {}
    for detach, expect_grad in ((True, False), (False, True)):
        kk = k.clone().requires_grad_(True)
        build_loss(name, detach_keys=detach, **options)(q, kk).backward()
        has = kk.grad is not None and bool(kk.grad.abs().max() > 0)
        assert has == expect_grad


@pytest.mark.parametrize("name", ["patchnce", "weightnce", "monce"])
def test_gradcheck_with_respect_to_keys(name):
    q, k = random_features(2, 5, 3, seed=9)
    k.requires_grad_(True)
    options = {} if name == "patchnce" else {"beta": 0.5}
    if name == "monce":
        options.update(iters=10, tol=None)
    loss = build_loss(name, tau=0.2, detach_keys=False, reduction="none", **options)
    assert torch.autograd.gradcheck(lambda x: loss(q, x), (k,))
