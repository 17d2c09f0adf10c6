"""Public API of the loss library: input validation, modules == functions, registry, layers.

The correctness of each formula is checked against independent oracles in the per-loss files;
this file checks the contract every loss shares (parametrised over all of them).
"""

import functools

import pytest
import torch
import torch.nn.functional as F

from patchcontrast.losses import (
    CONTRASTIVE_LOSSES,
    build_loss,
    monce,
    multilayer_loss,
    patch_nce,
    put,
    sinkhorn,
    weight_nce,
)

FUNCTIONS = {"patchnce": patch_nce, "weightnce": weight_nce, "monce": monce, "put": put}


def features(B=2, N=16, C=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, N, C, generator=g, dtype=dtype), dim=-1)
    k = F.normalize(q + 0.3 * torch.randn(B, N, C, generator=g, dtype=dtype), dim=-1)
    return q, k


def test_registry_covers_every_function():
    assert set(CONTRASTIVE_LOSSES) == set(FUNCTIONS)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("negatives", ["image", "batch"])
def test_module_equals_function(name, reduction, negatives):
    q, k = features()
    module = build_loss(name, tau=0.1, negatives=negatives, reduction=reduction)
    fn = FUNCTIONS[name]
    expected = fn(q, k, tau=0.1, negatives=negatives, reduction=reduction)
    torch.testing.assert_close(module(q, k), expected, rtol=0, atol=0)
    assert expected.shape == ((2, 16) if reduction == "none" else ())


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_reductions_are_consistent(name):
    q, k = features()
    fn = FUNCTIONS[name]
    per_anchor = fn(q, k, reduction="none")
    assert per_anchor.shape == (2, 16) and torch.isfinite(per_anchor).all()
    torch.testing.assert_close(fn(q, k, reduction="mean"), per_anchor.mean())
    torch.testing.assert_close(fn(q, k, reduction="sum"), per_anchor.sum())


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_keys_get_no_gradient_and_queries_do(name):
    q, k = features()
    q.requires_grad_(True)
    k.requires_grad_(True)
    FUNCTIONS[name](q, k).backward()
    assert k.grad is None
    assert q.grad is not None and q.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize(
    "q_shape, k_shape, match",
    [
        ((16, 8), (16, 8), "q must have shape \\(B, N, C\\)"),
        ((2, 16, 8), (2, 16), "k must have shape \\(B, N, C\\)"),
        ((2, 16, 8), (2, 15, 8), "q and k must have the same shape"),
        ((2, 1, 8), (2, 1, 8), "at least 2 patches per group"),
    ],
)
def test_bad_shapes_raise(name, q_shape, k_shape, match):
    with pytest.raises(ValueError, match=match):
        FUNCTIONS[name](torch.randn(q_shape), torch.randn(k_shape))


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("which", ["q", "k"])
def test_non_finite_inputs_raise(name, bad, which):
    q, k = features()
    (q if which == "q" else k)[0, 3, 1] = bad
    with pytest.raises(ValueError, match=f"{which} contains NaN or infinite"):
        FUNCTIONS[name](q, k)


def test_integer_input_raises():
    with pytest.raises(ValueError, match="q must be a floating-point tensor"):
        patch_nce(torch.ones(1, 4, 2, dtype=torch.long), torch.ones(1, 4, 2, dtype=torch.long))


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tau": 0.0}, "tau must be a positive"),
        ({"tau": -1.0}, "tau must be a positive"),
        ({"tau": float("nan")}, "tau must be a positive"),
        ({"reduction": "avg"}, "reduction must be one of"),
        ({"negatives": "all"}, "negatives must be one of"),
    ],
)
def test_common_hyperparameters_validated(name, kwargs, match):
    q, k = features()
    with pytest.raises(ValueError, match=match):
        FUNCTIONS[name](q, k, **kwargs)
    with pytest.raises(ValueError, match=match):
        build_loss(name, **kwargs)


@pytest.mark.parametrize("name", ["weightnce", "monce"])
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"beta": 0.0}, "beta must be a positive"),
        ({"beta": -0.1}, "beta must be a positive"),
        ({"Q": 0.0}, "Q must be a positive"),
        ({"weighting": "medium"}, "weighting must be one of 'hard', 'easy'"),
    ],
)
def test_weighting_hyperparameters_validated(name, kwargs, match):
    q, k = features()
    with pytest.raises(ValueError, match=match):
        FUNCTIONS[name](q, k, **kwargs)
    with pytest.raises(ValueError, match=match):
        build_loss(name, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"iters": 0}, "iters must be >= 1"),
        ({"iters": 2.5}, "iters must be an integer"),
        ({"tol": 0.0}, "tol must be a positive"),
        ({"diagonal": "zero"}, "diagonal must be one of"),
    ],
)
def test_monce_options_validated(kwargs, match):
    q, k = features()
    with pytest.raises(ValueError, match=match):
        monce(q, k, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k_neg": 0}, "k_neg must be in \\[1, 15\\]; got 0"),
        ({"k_neg": 16}, "k_neg must be in \\[1, 15\\]; got 16"),
        ({"selection": "best"}, "selection must be one of"),
    ],
)
def test_put_options_validated(kwargs, match):
    q, k = features()
    with pytest.raises(ValueError, match=match):
        put(q, k, **kwargs)


def test_put_batch_negatives_allow_more_negatives():
    q, k = features()  # 2 x 16 patches: 31 negatives per anchor with batch negatives
    assert torch.isfinite(put(q, k, k_neg=31, negatives="batch"))
    with pytest.raises(ValueError, match="k_neg must be in \\[1, 31\\]"):
        put(q, k, k_neg=32, negatives="batch")


def test_build_loss_rejects_unknown_name_and_option():
    with pytest.raises(ValueError, match="unknown contrastive loss 'infonce'.*patchnce"):
        build_loss("infonce")
    with pytest.raises(ValueError, match="invalid option for loss 'patchnce'"):
        build_loss("patchnce", beta=0.1)


def test_put_random_selection_is_reproducible_with_a_generator():
    q, k = features()
    a = put(q, k, selection="random", generator=torch.Generator().manual_seed(3))
    b = put(q, k, selection="random", generator=torch.Generator().manual_seed(3))
    c = put(q, k, selection="random", generator=torch.Generator().manual_seed(4))
    assert a == b and a != c


def test_multilayer_loss_mean_and_weights():
    layers = [features(seed=s) for s in range(3)]
    qs, ks = [q for q, _ in layers], [k for _, k in layers]
    per_layer = torch.stack([patch_nce(q, k) for q, k in layers])
    torch.testing.assert_close(multilayer_loss(patch_nce, qs, ks), per_layer.mean())
    weighted = multilayer_loss(patch_nce, qs, ks, weights=[0.25, 0.5, 1.0])
    torch.testing.assert_close(
        weighted, (per_layer * torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64)).sum()
    )
    loss = functools.partial(monce, beta=0.5)
    torch.testing.assert_close(
        multilayer_loss(loss, qs, ks), torch.stack([loss(q, k) for q, k in layers]).mean()
    )


def test_multilayer_loss_errors():
    q, k = features()
    with pytest.raises(ValueError, match="same non-zero number"):
        multilayer_loss(patch_nce, [q, q], [k])
    with pytest.raises(ValueError, match="weights has 1 entries for 2 layers"):
        multilayer_loss(patch_nce, [q, q], [k, k], weights=[1.0])
    with pytest.raises(ValueError, match="returns a scalar per layer"):
        multilayer_loss(functools.partial(patch_nce, reduction="none"), [q], [k])


def test_sinkhorn_input_errors():
    with pytest.raises(ValueError, match="cost must be a floating-point tensor"):
        sinkhorn(torch.zeros(4), eps=0.1)
    with pytest.raises(ValueError, match="eps must be a positive"):
        sinkhorn(torch.zeros(4, 4), eps=0.0)
    with pytest.raises(ValueError, match="cost contains NaN"):
        sinkhorn(torch.full((4, 4), float("nan")), eps=0.1)
    infeasible = torch.zeros(4, 4)
    infeasible[2] = float("inf")
    with pytest.raises(ValueError, match="row or column that is \\+inf everywhere"):
        sinkhorn(infeasible, eps=0.1)
    with pytest.raises(ValueError, match="equal totals"):
        sinkhorn(torch.zeros(4, 4), eps=0.1, a=torch.ones(4), b=2 * torch.ones(4))
    with pytest.raises(ValueError, match="a must be positive"):
        sinkhorn(torch.zeros(4, 4), eps=0.1, a=torch.tensor([1.0, 1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="b must have shape"):
        sinkhorn(torch.zeros(4, 4), eps=0.1, b=torch.ones(3))


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_repr_shows_hyperparameters(name):
    assert "tau=0.07" in repr(build_loss(name))


@pytest.mark.parametrize(
    "name, options",
    [
        ("patchnce", {}),
        ("weightnce", {"weighting": "easy"}),
        ("monce", {"beta": 0.05}),
        ("put", {"k_neg": 3}),
        ("put", {"selection": "official"}),
        ("monce", {"negatives": "batch"}),
    ],
)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_multilayer_loss_stacked_path_equals_layer_loop(name, options, reduction):
    module = build_loss(name, reduction=reduction, **options)
    layers = [features(seed=s) for s in range(3)]
    weights = [0.5, 0.25, 2.0]
    qs = [q.clone().requires_grad_() for q, _ in layers]
    ks = [k for _, k in layers]
    stacked = multilayer_loss(module, qs, ks, weights)
    stacked.backward()
    loop_qs = [q.detach().clone().requires_grad_() for q in qs]
    loop = sum(w * module(q, k) for w, q, k in zip(weights, loop_qs, ks))
    loop.backward()
    torch.testing.assert_close(stacked, loop, rtol=1e-12, atol=0)
    for a, b in zip(qs, loop_qs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-14)


def test_stackable_only_when_images_are_independent():
    assert build_loss("monce").stackable
    assert not build_loss("monce", negatives="batch").stackable
    assert build_loss("put", selection="random").stackable
    assert not build_loss("put", selection="official").stackable
