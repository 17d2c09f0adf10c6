"""SinCUT StyleGAN2 networks (docs/design.md §4.4): parameter counts, layer taps, equalised learning
rate, demodulation, noise, input checks and the R1 penalty.

Full-size (ngf 10) shapes are checked on the ``meta`` device (no compute); real forward passes
use a narrow generator (ngf 2) and small images to keep the file fast on CPU.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from patchcontrast.nets.stylegan2 import (
    SINCUT_LAYERS,
    Blur,
    ConvLayer,
    EqualConv2d,
    EqualLinear,
    NoiseInjection,
    StyledConv,
    StyleGAN2Discriminator,
    StyleGAN2Generator,
    StyleResBlock,
    r1_penalty,
)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def small_g():
    torch.manual_seed(0)
    return StyleGAN2Generator(ngf=2)  # channels 16 @ full res, 32 @ half res


def test_parameter_counts():
    # docs/design.md §4.4 measured 3.07 M and 5.89 M (ngf 10, ndf 8, 64 px crops)
    assert n_params(StyleGAN2Generator()) == 3_068_404
    assert n_params(StyleGAN2Discriminator()) == 5_885_473
    # D's count follows the crop size through the number of down-sampling blocks and the first
    # block's width (the final linear always sees 4x4 maps)
    assert n_params(StyleGAN2Discriminator(size=32)) == 5_855_809
    assert n_params(StyleGAN2Discriminator(size=128)) == 5_892_881


def test_generator_layer_table():
    g = StyleGAN2Generator()
    net = g.net
    assert len(net) == 11 and g.n_encoder == 6
    assert isinstance(net[0], nn.Identity) and isinstance(net[1], ConvLayer)
    assert isinstance(net[2], StyleResBlock) and net[2].skip is not None  # down-sampling block
    assert all(isinstance(net[i], StyleResBlock) and net[i].skip is None for i in range(3, 9))
    assert isinstance(net[9], StyledConv) and isinstance(net[10], ConvLayer)
    assert net[10].act is not None  # fused lReLU at the output ...
    assert not any(isinstance(m, nn.Tanh) for m in g.modules())  # ... and no tanh
    assert g.tap_channels() == [3, 160, 160]
    assert g.tap_channels(range(11)) == [3, 80, 160, 160, 160, 160, 160, 160, 160, 80, 3]


@pytest.mark.parametrize("hw", [(64, 64), (96, 128), (128, 96)])
def test_full_size_shapes_on_meta(hw):
    g = StyleGAN2Generator().to("meta")
    x = torch.empty(2, 3, *hw, device="meta")
    assert g(x).shape == (2, 3, *hw)
    h, w = hw
    shapes = [tuple(f.shape) for f in g.encode(x, SINCUT_LAYERS)]
    assert shapes == [(2, 3, h, w), (2, 160, h // 2, w // 2), (2, 160, h // 2, w // 2)]
    d = StyleGAN2Discriminator().to("meta")
    assert d(torch.empty(5, 3, 64, 64, device="meta")).shape == (5, 1)


def test_two_downsamplings_shapes_and_channels():
    g = StyleGAN2Generator(ngf=10, n_downsampling=2).to("meta")
    x = torch.empty(1, 3, 64, 96, device="meta")
    assert g(x).shape == (1, 3, 64, 96)
    assert g.tap_channels([1, 2, 3, 4]) == [80, 160, 320, 320]
    assert [tuple(f.shape[2:]) for f in g.encode(x, [2, 3])] == [(32, 48), (16, 24)]


def test_real_forward_shapes_and_values(small_g):
    torch.manual_seed(1)
    d = StyleGAN2Discriminator(ndf=2, size=16)
    with torch.no_grad():
        y = small_g(torch.randn(2, 3, 24, 40))
        logits = d(torch.randn(3, 3, 16, 16))
    assert y.shape == (2, 3, 24, 40) and torch.isfinite(y).all()
    assert logits.shape == (3, 1) and torch.isfinite(logits).all()


def test_output_is_not_squashed():
    torch.manual_seed(0)
    g = StyleGAN2Generator(ngf=2)
    with torch.no_grad():
        g.net[10].act.bias.fill_(1.0)  # a tanh (or clamp) would keep every value below 1
        y = g(torch.randn(1, 3, 16, 16))
    assert y.max() > 1.0


def test_encode_matches_forward_with_features(small_g):
    small_g.eval()
    x = torch.randn(2, 3, 16, 24)
    layers = [4, 0, 9, 2]  # any order, decoder entries too
    with torch.no_grad():
        y, feats = small_g.forward_with_features(x, layers)
        ref = small_g.encode(x, layers)
        assert torch.equal(y, small_g(x))  # eval mode: deterministic noise
    small_g.train()
    assert [f.shape[1] for f in feats] == small_g.tap_channels(layers)
    assert all(torch.equal(a, b) for a, b in zip(feats, ref))
    assert torch.equal(feats[1], x)  # tap 0 is the raw image


def test_encoder_taps_are_noise_free_in_train_mode(small_g):
    small_g.train()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        small_g.net[9].noise.weight.fill_(1.0)
        _, feats = small_g.forward_with_features(x, SINCUT_LAYERS)
        ref = small_g.encode(x, SINCUT_LAYERS)
        small_g.net[9].noise.weight.zero_()
    assert all(torch.equal(a, b) for a, b in zip(feats, ref))


def test_equalised_learning_rate():
    torch.manual_seed(0)
    conv = EqualConv2d(160, 160, 3)
    w = conv.weight.detach()
    assert abs(w.mean().item()) < 0.01 and abs(w.std().item() - 1) < 0.01  # stored ~N(0, 1)
    assert conv.scale == pytest.approx(1 / math.sqrt(160 * 9))
    with torch.no_grad():
        conv.bias.normal_()
        x = torch.randn(1, 160, 6, 6)
        torch.testing.assert_close(conv(x), F.conv2d(x, w / math.sqrt(1440), conv.bias))
    lin = EqualLinear(64, 8)
    x = torch.randn(3, 64)
    with torch.no_grad():
        torch.testing.assert_close(lin(x), x @ (lin.weight / 8).T + lin.bias)
        act = EqualLinear(64, 8, activate=True)
        act.bias.fill_(0.5)
        expected = F.leaky_relu(x @ (act.weight / 8).T + 0.5, 0.2) * math.sqrt(2)
        torch.testing.assert_close(act(x), expected)


def test_demodulation_normalises_each_output_kernel():
    torch.manual_seed(0)
    conv = StyledConv(6, 4, 3, eval_noise="zero").eval()
    x = torch.randn(2, 6, 5, 7)
    with torch.no_grad():
        norms = conv.demodulated_weight().pow(2).sum(dim=(1, 2, 3)).sqrt()
        torch.testing.assert_close(norms, torch.ones(4))
        y = conv(x)
        conv.weight.mul_(torch.tensor([10.0, 0.1, 3.0, 1.0]).view(4, 1, 1, 1))
        y_scaled = conv(x)  # a per-output-channel rescaling of w is divided out again
    assert y.shape == (2, 4, 10, 14)
    torch.testing.assert_close(y, y_scaled)


def test_blur_keeps_constants_and_upsampling_gain():
    x = torch.full((1, 2, 8, 8), 3.0)
    assert Blur((2, 2))(x)[..., 2:-2, 2:-2].allclose(torch.tensor(3.0))
    # zero-stuffed 2x up-sampling keeps a quarter of the pixels: gain 4 restores the mean
    up = torch.zeros(1, 2, 16, 16)
    up[..., ::2, ::2] = 3.0
    assert Blur((2, 1), gain=4.0)(up)[..., 3:-3, 3:-3].allclose(torch.tensor(3.0))


def test_noise_modes():
    x = torch.zeros(2, 1, 4, 6)
    layer = NoiseInjection()
    with torch.no_grad():
        layer.weight.fill_(1.0)
    assert not torch.equal(layer(x), layer(x))  # train: fresh noise on every call
    layer.eval()  # "fixed": reproducible, shared by the batch
    a, b = layer(x), layer(x)
    assert torch.equal(a, b) and torch.equal(a[0], a[1]) and a.abs().sum() > 0
    layer.eval_noise = "zero"
    assert torch.equal(layer(x), x)
    layer.eval_noise = "random"
    assert not torch.equal(layer(x), layer(x))
    with pytest.raises(ValueError, match="eval_noise must be one of fixed, random, zero"):
        NoiseInjection("none")


def test_generator_noise_changes_outputs_in_train_mode_only(small_g):
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        small_g.net[9].noise.weight.fill_(0.5)
        small_g.train()
        differs = not torch.equal(small_g(x), small_g(x))
        small_g.eval()
        same = torch.equal(small_g(x), small_g(x))
        small_g.train()
        small_g.net[9].noise.weight.zero_()
    assert differs and same


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    g = StyleGAN2Generator(ngf=2)
    g(torch.randn(1, 3, 16, 16)).square().mean().backward()
    missing = [n for n, p in g.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def _quadratic_d(a: torch.Tensor):
    return lambda x: (a * x.square()).flatten(1).sum(1, keepdim=True)  # (B, 1)


def test_r1_matches_closed_form():
    torch.manual_seed(0)
    a = torch.randn(3, 4, 4, dtype=torch.float64)
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    penalty = r1_penalty(_quadratic_d(a)(x), x)
    expected = 0.5 * (2 * a * x.detach()).square().flatten(1).sum(1).mean()  # grad = 2 a x
    torch.testing.assert_close(penalty, expected)


def test_r1_matches_manual_gradients_and_trains_d():
    torch.manual_seed(0)
    d = StyleGAN2Discriminator(ndf=2, size=8).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    penalty = r1_penalty(d(x), x)
    # each image's gradient of its own logit, one autograd call per image
    grads = torch.stack([torch.autograd.grad(d(x[b : b + 1]).sum(), x)[0][b] for b in range(2)])
    torch.testing.assert_close(penalty, 0.5 * grads.square().flatten(1).sum(1).mean())
    # ... and those gradients agree with central differences along random directions
    with torch.no_grad():
        for _ in range(3):
            v = torch.randn_like(x)
            fd = (d(x + 1e-6 * v) - d(x - 1e-6 * v)).squeeze(1) / 2e-6  # (B,)
            torch.testing.assert_close(fd, (grads * v).flatten(1).sum(1))
    penalty.backward()  # create_graph=True: the penalty has gradients w.r.t. D's weights
    first = d.convs[0].conv.weight.grad
    assert first is not None and first.abs().sum() > 0


def test_r1_errors():
    d = _quadratic_d(torch.ones(3, 4, 4))
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="real_images must require grad"):
        r1_penalty(d(x), x)
    x.requires_grad_()
    with pytest.raises(ValueError, match="real_pred does not depend"):
        r1_penalty(d(x).detach(), x)


def test_input_and_argument_errors(small_g):
    with pytest.raises(ValueError, match=r"expects \(B, 3, H, W\)"):
        small_g(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="divisible by 4.*got 18x16"):
        small_g(torch.randn(1, 3, 18, 16))
    with pytest.raises(ValueError, match="divisible by 8"):
        StyleGAN2Generator(ngf=2, n_downsampling=3)(torch.randn(1, 3, 12, 16))
    with pytest.raises(ValueError, match="out of range.*11 entries"):
        small_g.encode(torch.randn(1, 3, 16, 16), [0, 11])
    with pytest.raises(ValueError, match="non-empty sequence"):
        small_g.tap_channels(4)
    with pytest.raises(ValueError, match="n_downsampling must be"):
        StyleGAN2Generator(n_downsampling=0)
    with pytest.raises(ValueError, match="size must be a power of two"):
        StyleGAN2Generator(size=48)
    with pytest.raises(ValueError, match="size must be a power of two >= 4"):
        StyleGAN2Discriminator(size=96)
    d = StyleGAN2Discriminator(ndf=2, size=16)
    with pytest.raises(ValueError, match=r"size=16\) expects \(B, 3, 16, 16\).*\(1, 3, 32, 32\)"):
        d(torch.randn(1, 3, 32, 32))
