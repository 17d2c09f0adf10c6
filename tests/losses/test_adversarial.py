"""GAN losses against their textbook definitions."""

import pytest
import torch
import torch.nn.functional as F

from patchcontrast.losses.adversarial import GAN_MODES, gan_loss


@pytest.fixture
def logits():
    return torch.randn(2, 1, 5, 5, generator=torch.Generator().manual_seed(0))


def test_lsgan(logits):
    torch.testing.assert_close(gan_loss(logits, True, mode="lsgan"), ((logits - 1) ** 2).mean())
    torch.testing.assert_close(gan_loss(logits, False, mode="lsgan"), (logits**2).mean())


@pytest.mark.parametrize("mode", ["vanilla", "nonsaturating"])
def test_cross_entropy_modes(logits, mode):
    ones, zeros = torch.ones_like(logits), torch.zeros_like(logits)
    torch.testing.assert_close(
        gan_loss(logits, True, mode=mode), F.binary_cross_entropy_with_logits(logits, ones)
    )
    torch.testing.assert_close(
        gan_loss(logits, False, mode=mode), F.binary_cross_entropy_with_logits(logits, zeros)
    )


def test_hinge(logits):
    torch.testing.assert_close(
        gan_loss(logits, True, mode="hinge"), torch.clamp(1 - logits, min=0).mean()
    )
    torch.testing.assert_close(
        gan_loss(logits, False, mode="hinge"), torch.clamp(1 + logits, min=0).mean()
    )
    torch.testing.assert_close(
        gan_loss(logits, True, mode="hinge", for_discriminator=False), -logits.mean()
    )
    with pytest.raises(ValueError, match="target_is_real=True"):
        gan_loss(logits, False, mode="hinge", for_discriminator=False)


@pytest.mark.parametrize("mode", GAN_MODES)
def test_real_target_prefers_large_logits(mode):
    low, high = torch.full((4,), -0.5), torch.full((4,), 2.0)
    assert gan_loss(high, True, mode=mode) < gan_loss(low, True, mode=mode)
    assert gan_loss(low, False, mode=mode) < gan_loss(high, False, mode=mode)


def test_unknown_mode(logits):
    with pytest.raises(ValueError, match="mode must be one of"):
        gan_loss(logits, True, mode="wgan")
