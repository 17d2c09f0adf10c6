"""Property-based checks (hypothesis) over random shapes and hyper-parameters."""

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from patchcontrast.losses import monce, patch_nce, put, sinkhorn, weight_nce

shapes = st.tuples(st.integers(1, 3), st.integers(2, 12), st.integers(1, 6))
SETTINGS = settings(max_examples=25, deadline=None)


def _features(shape, seed):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(shape, generator=g, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(shape, generator=g, dtype=torch.float64), dim=-1)
    return q, k


@SETTINGS
@given(shape=shapes, seed=st.integers(0, 2**16), negatives=st.sampled_from(["image", "batch"]))
def test_put_with_all_negatives_is_patch_nce(shape, seed, negatives):
    q, k = _features(shape, seed)
    n = shape[1] if negatives == "image" else shape[0] * shape[1]
    torch.testing.assert_close(
        put(q, k, k_neg=n - 1, negatives=negatives, reduction="none"),
        patch_nce(q, k, negatives=negatives, reduction="none"),
        rtol=1e-12,
        atol=1e-12,
    )


@SETTINGS
@given(
    shape=shapes,
    seed=st.integers(0, 2**16),
    beta=st.floats(1e-3, 10.0),
    Q=st.floats(0.1, 10.0),
    weighting=st.sampled_from(["hard", "easy"]),
)
def test_losses_are_finite_and_non_negative(shape, seed, beta, Q, weighting):
    q, k = _features(shape, seed)
    for loss in (
        weight_nce(q, k, weighting=weighting, beta=beta, Q=Q, reduction="none"),
        monce(q, k, weighting=weighting, beta=beta, Q=Q, reduction="none"),
    ):
        assert loss.shape == shape[:2]
        assert torch.isfinite(loss).all() and (loss >= 0).all()


@SETTINGS
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_hard_weighting_never_below_easy(shape, seed):
    # hard puts the negative mass on the most similar keys, so its denominator is larger
    q, k = _features(shape, seed)
    hard = weight_nce(q, k, weighting="hard", beta=0.3, reduction="none")
    easy = weight_nce(q, k, weighting="easy", beta=0.3, reduction="none")
    assert (hard >= easy - 1e-12).all()


@SETTINGS
@given(
    g=st.integers(1, 3),
    n=st.integers(1, 9),
    m=st.integers(1, 9),
    seed=st.integers(0, 2**16),
    eps=st.floats(1e-3, 10.0),
    iters=st.integers(1, 30),
)
def test_sinkhorn_columns_exact_and_plan_non_negative(g, n, m, seed, eps, iters):
    cost = torch.rand(g, n, m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    plan = sinkhorn(cost, eps=eps, iters=iters)
    assert torch.isfinite(plan).all() and (plan >= 0).all()
    torch.testing.assert_close(
        plan.sum(1), torch.ones(g, m, dtype=torch.float64), rtol=1e-9, atol=1e-9
    )
