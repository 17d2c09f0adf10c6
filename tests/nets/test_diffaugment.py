"""DiffAugment: each policy's effect, differentiability, determinism under a seed, validation."""

import pytest
import torch

from patchcontrast.nets.diffaugment import (
    POLICIES,
    check_policy,
    color,
    cutout,
    diff_augment,
    translation,
)


def images(b=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


def test_empty_policy_is_the_identity():
    x = images()
    assert diff_augment(x, ()) is x


def test_translation_shifts_whole_images_and_fills_zeros():
    x = images(b=8)
    torch.manual_seed(0)
    y = translation(x)
    for src, out in zip(x, y):
        # some integer shift (dy, dx) within 1/8 of the side maps x onto y, zeros elsewhere
        found = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                shifted = torch.zeros_like(src)
                ys, yd = (
                    (slice(0, 16 - dy), slice(dy, 16))
                    if dy >= 0
                    else (slice(-dy, 16), slice(0, 16 + dy))
                )
                xs, xd = (
                    (slice(0, 16 - dx), slice(dx, 16))
                    if dx >= 0
                    else (slice(-dx, 16), slice(0, 16 + dx))
                )
                shifted[:, yd, xd] = src[:, ys, xs]
                found |= torch.equal(shifted, out)
        assert found


def test_cutout_zeroes_one_square_of_half_the_side_at_most():
    x = images(b=16) * 0.5 + 0.6  # strictly positive, so zeros are the hole
    torch.manual_seed(1)
    y = cutout(x)
    holes = (y == 0).all(dim=1)  # (B, H, W)
    assert torch.equal(y[~holes.unsqueeze(1).expand_as(y)], x[~holes.unsqueeze(1).expand_as(x)])
    sizes = holes.sum(dim=(1, 2))
    assert sizes.max() == 64 and sizes.min() > 0  # 8x8 when inside, clipped at the borders
    for hole in holes:  # a rectangle: its bounding box is full
        rows, cols = hole.any(1).nonzero(), hole.any(0).nonzero()
        box = hole[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all()


def test_color_is_an_affine_map_per_image():
    x = images(b=3)
    torch.manual_seed(2)
    y = color(x)
    for src, out in zip(x, y):
        # brightness, saturation and contrast are affine in the pixel values of one image,
        # so a pixel's output is determined by its value and its channel mean
        assert not torch.allclose(src, out)
    constant = torch.full((2, 3, 8, 8), 0.25)
    torch.manual_seed(3)
    out = color(constant)
    assert torch.allclose(out, out[:, :, :1, :1].expand_as(out))  # flat stays flat


@pytest.mark.parametrize("policy", [(p,) for p in POLICIES] + [POLICIES])
def test_differentiable_and_seeded(policy):
    x = images().requires_grad_()
    torch.manual_seed(5)
    y = diff_augment(x, policy)
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    torch.manual_seed(5)
    assert torch.equal(diff_augment(x.detach(), policy), y.detach())


def test_policy_validation():
    assert check_policy(["color", "cutout"]) == ("color", "cutout")
    for bad in (["colour"], ["cutout", "cutout"]):
        with pytest.raises(ValueError, match="diffaugment policies"):
            check_policy(bad)
