"""Tests of the building blocks: anti-aliased resampling, ResnetBlock, init_weights
(docs/design.md §4.1, §4.7).

Oracles for the resampling layers are the recipes of docs/design.md §4.1 written out literally
(pad, fixed filter, strided (transposed) convolution, crop), independent of how the modules fold
the crops.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from patchcontrast.nets import BlurPool, BlurUpsample, ResnetBlock, init_weights


def spec_down(x):
    # reflect pad 1, [1,2,1]x[1,2,1]/16 depthwise, stride 2 (docs/design.md §4.1, index 7)
    t = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype)
    k = (torch.outer(t, t) / 16).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), k, stride=2, groups=x.shape[1])


def spec_up(x):
    # replicate pad 1, [1,3,3,1]x[1,3,3,1] scaled to sum 4, transposed conv s2, crop 1 px per side
    t = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=x.dtype)
    k = torch.outer(t, t)
    k = (k * 4 / k.sum()).expand(x.shape[1], 1, 4, 4)
    y = F.conv_transpose2d(
        F.pad(x, (1, 1, 1, 1), mode="replicate"), k, stride=2, padding=2, groups=x.shape[1]
    )
    return y[:, :, 1:-1, 1:-1]


def test_blur_filters_normalised():
    assert BlurPool(5).kernel.shape == (5, 1, 3, 3)
    torch.testing.assert_close(BlurPool(5).kernel.sum(dim=(1, 2, 3)), torch.ones(5))
    assert BlurUpsample(5).kernel.shape == (5, 1, 4, 4)
    torch.testing.assert_close(BlurUpsample(5).kernel.sum(dim=(1, 2, 3)), torch.full((5,), 4.0))


def test_filters_are_fixed_buffers():
    for layer in (BlurPool(4), BlurUpsample(4)):
        assert not list(layer.parameters())
        assert "kernel" not in layer.state_dict()  # non-persistent: not saved in checkpoints
        assert layer.to(torch.float64).kernel.dtype == torch.float64  # but follows .to()


@pytest.mark.parametrize("size", [(8, 8), (6, 10), (7, 5)])
def test_blurpool_matches_spec_and_halves(size):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    y = BlurPool(3).double()(x)
    assert y.shape == (2, 3, math.ceil(size[0] / 2), math.ceil(size[1] / 2))
    torch.testing.assert_close(y, spec_down(x))


@pytest.mark.parametrize("size", [(4, 4), (3, 6)])
def test_upsample_matches_spec_and_doubles(size):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    y = BlurUpsample(3).double()(x)
    assert y.shape == (2, 3, 2 * size[0], 2 * size[1])
    torch.testing.assert_close(y, spec_up(x))


def test_resampling_preserves_constants():
    x = torch.full((1, 2, 6, 8), 0.37, dtype=torch.float64)
    torch.testing.assert_close(
        BlurPool(2).double()(x), torch.full((1, 2, 3, 4), 0.37, dtype=torch.float64)
    )
    torch.testing.assert_close(
        BlurUpsample(2).double()(x), torch.full((1, 2, 12, 16), 0.37, dtype=torch.float64)
    )


def test_upsample_interpolates_between_neighbours():
    # 1-D ramp 0, 1, 2, 3 -> quarter-pixel interpolation, edges replicated
    x = torch.arange(4.0, dtype=torch.float64).view(1, 1, 1, 4).expand(1, 1, 4, 4)
    row = BlurUpsample(1).double()(x)[0, 0, 0]
    want = torch.tensor([0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3], dtype=torch.float64)
    torch.testing.assert_close(row, want)


@pytest.mark.parametrize("dropout", [False, True])
def test_resnet_block_is_residual(dropout):
    block = ResnetBlock(8, dropout=dropout)
    assert any(isinstance(m, nn.Dropout) for m in block.modules()) == dropout
    assert sum(p.numel() for p in block.parameters()) == 2 * (8 * 8 * 9 + 8)
    x = torch.randn(2, 8, 6, 10)
    block.eval()
    torch.testing.assert_close(block(x), x + block.block(x))
    assert not any(isinstance(m, nn.ReLU) for m in list(block.block)[-2:])  # no ReLU at the end


def test_xavier_init_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1000, 1000), nn.Conv2d(64, 32, 3), nn.BatchNorm2d(500))
    init_weights(net)  # xavier, gain 0.02
    lin, conv, bn = net
    assert lin.weight.std().item() == pytest.approx(0.02 * math.sqrt(2 / 2000), rel=0.02)
    assert conv.weight.std().item() == pytest.approx(0.02 * math.sqrt(2 / (576 + 288)), rel=0.05)
    assert bn.weight.mean().item() == pytest.approx(1.0, abs=0.005)
    assert bn.weight.std().item() == pytest.approx(0.02, rel=0.15)
    for bias in (lin.bias, conv.bias, bn.bias):
        assert torch.count_nonzero(bias) == 0


@pytest.mark.parametrize(("kind", "std"), [("normal", 0.02), ("kaiming", math.sqrt(2 / 1000))])
def test_other_init_kinds(kind, std):
    torch.manual_seed(0)
    lin = init_weights(nn.Linear(1000, 1000), kind)
    assert lin.weight.std().item() == pytest.approx(std, rel=0.02)


def test_orthogonal_init():
    lin = init_weights(nn.Linear(50, 40), "orthogonal", gain=0.5)
    torch.testing.assert_close(lin.weight @ lin.weight.T, 0.25 * torch.eye(40), atol=1e-5, rtol=0)


def test_init_deterministic_and_leaves_buffers():
    def build(seed):
        torch.manual_seed(seed)
        return init_weights(nn.Sequential(nn.Conv2d(3, 4, 3), BlurPool(4), nn.Linear(4, 2)))

    a, b, c = build(1), build(1), build(2)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a[0].weight, c[0].weight)
    torch.testing.assert_close(a[1].kernel, BlurPool(4).kernel)


def test_init_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown init kind 'uniform'; choose one of normal"):
        init_weights(nn.Linear(2, 2), "uniform")
