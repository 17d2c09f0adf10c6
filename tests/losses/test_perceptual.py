"""Perceptual L1 loss: value from the formula, detached target, shape checks."""

import pytest
import torch

from patchcontrast.losses.perceptual import SPADE_LAYER_WEIGHTS, perceptual_loss


def test_value_is_the_weighted_mean_l1_and_the_target_gets_no_gradient():
    g = torch.Generator().manual_seed(0)
    fake = [
        torch.randn(2, c, s, s, generator=g, requires_grad=True)
        for c, s in ((4, 8), (8, 4), (8, 2), (16, 2), (16, 1))
    ]
    real = [torch.randn(f.shape, generator=g, requires_grad=True) for f in fake]
    loss = perceptual_loss(fake, real)
    expected = sum(
        w * float((f - r).abs().sum()) / f.numel()
        for w, f, r in zip(SPADE_LAYER_WEIGHTS, fake, real)
    )
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert all(f.grad is not None for f in fake)
    assert all(r.grad is None for r in real)


def test_errors_name_the_problem():
    x = [torch.zeros(1, 2, 4, 4)]
    with pytest.raises(ValueError, match="as many fake"):
        perceptual_loss(x, x)  # 5 default weights for one layer
    with pytest.raises(ValueError, match="layer 0"):
        perceptual_loss(x, [torch.zeros(1, 2, 2, 2)], weights=(1.0,))
