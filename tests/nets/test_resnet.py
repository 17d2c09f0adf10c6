"""ResnetGenerator tests: the docs/design.md §4.1 layer table, encoder taps, single-pass features,
input checks.

Shapes at 256x256 are checked on the ``meta`` device (shape propagation only, no compute); real
forward passes use 64x64 or smaller inputs to keep the suite fast on CPU.
"""

import pytest
import torch
from torch import nn

from patchcontrast.nets import (
    CUT_LAYERS,
    GENERATORS,
    BlurPool,
    BlurUpsample,
    FourierPosition,
    ResnetBlock,
    ResnetGenerator,
)


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return ResnetGenerator()


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("antialias", [True, False])
def test_parameter_count(antialias):
    net = ResnetGenerator(antialias=antialias, antialias_up=antialias)
    assert n_params(net) == 11_378_179  # 11.378 M, docs/design.md §4.1
    assert round(n_params(net) / 1e6, 3) == 11.378


def test_layer_table(generator):
    # docs/design.md §4.1: 32 entries, taps 4/8 are the pre-norm down-sampling convs
    net = generator.net
    assert len(net) == 32
    assert isinstance(net[0], nn.ReflectionPad2d) and isinstance(net[29], nn.ReflectionPad2d)
    assert isinstance(net[4], nn.Conv2d) and isinstance(net[8], nn.Conv2d)
    assert isinstance(net[7], BlurPool) and isinstance(net[11], BlurPool)
    assert all(isinstance(net[i], ResnetBlock) for i in range(12, 21))
    assert isinstance(net[21], BlurUpsample) and isinstance(net[25], BlurUpsample)
    assert isinstance(net[31], nn.Tanh)
    norms = [m for m in generator.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and not any(m.affine or m.track_running_stats for m in norms)
    convs = [m for m in generator.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.bias is not None for m in convs)


def test_full_size_shapes_on_meta():
    net = ResnetGenerator().to("meta")
    x = torch.empty(1, 3, 256, 256, device="meta")
    assert net(x).shape == (1, 3, 256, 256)
    shapes = [tuple(f.shape[1:]) for f in net.encode(x, (0, 4, 7, 8, 11, 12, 16, 21, 25))]
    assert shapes == [
        (3, 262, 262),
        (128, 256, 256),
        (128, 128, 128),
        (256, 128, 128),
        (256, 64, 64),
        (256, 64, 64),
        (256, 64, 64),
        (256, 128, 128),
        (128, 256, 256),
    ]


def test_encode_taps_64(generator):
    x = torch.randn(2, 3, 64, 64)
    feats = generator.encode(x)
    assert [tuple(f.shape) for f in feats] == [
        (2, 3, 70, 70),
        (2, 128, 64, 64),
        (2, 256, 32, 32),
        (2, 256, 16, 16),
        (2, 256, 16, 16),
    ]
    torch.testing.assert_close(feats[0], nn.functional.pad(x, (3,) * 4, mode="reflect"))


def test_forward_with_features_equals_forward_and_encode(generator):
    x = torch.randn(2, 3, 32, 48)
    layers = [16, 0, 8]  # any order; returned in the order asked
    with torch.no_grad():
        y, feats = generator.forward_with_features(x, layers)
        assert torch.equal(y, generator(x))
        ref = generator.encode(x, layers)
    assert len(feats) == 3
    assert all(torch.equal(a, b) for a, b in zip(feats, ref))
    assert feats[1].shape == (2, 3, 38, 54)


def test_tap_values_are_not_overwritten_in_place():
    # index 8 is an InstanceNorm without anti-aliasing; the ReLU after it must not alter the tap
    net = ResnetGenerator(ngf=8, n_blocks=2, antialias=False, antialias_up=False)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        _, (tap,) = net.forward_with_features(x, [8])
        (alone,) = net.encode(x, [8])
    assert (tap < 0).any()
    assert torch.equal(tap, alone)


def test_tap_channels_match_encode():
    net = ResnetGenerator(ngf=8, n_blocks=3, antialias=False)
    layers = list(range(len(net.net)))
    with torch.no_grad():
        feats = net.encode(torch.randn(1, 3, 16, 16), layers)
    assert net.tap_channels(layers) == [f.shape[1] for f in feats]
    assert ResnetGenerator().tap_channels() == [3, 128, 256, 256, 256]
    assert ResnetGenerator().tap_channels(CUT_LAYERS) == [3, 128, 256, 256, 256]


def test_encode_stops_after_last_tap():
    net = ResnetGenerator(ngf=8)
    ran = []
    for i, layer in enumerate(net.net):
        layer.register_forward_hook(lambda *_, i=i: ran.append(i))
    net.encode(torch.randn(1, 3, 16, 16), (0, 4, 8, 12, 16))
    assert ran == list(range(17))


def test_encode_does_not_mutate_layers():
    net = ResnetGenerator(ngf=8, n_blocks=2)
    layers = [4, 0]
    net.encode(torch.randn(1, 3, 8, 8), layers)
    net.forward_with_features(torch.randn(1, 3, 8, 8), layers)
    net.tap_channels(layers)
    assert layers == [4, 0]


@pytest.mark.parametrize(
    ("antialias", "antialias_up", "length"),
    [(True, True, 32), (False, True, 30), (True, False, 30), (False, False, 28)],
)
def test_antialias_switches(antialias, antialias_up, length):
    net = ResnetGenerator(ngf=8, antialias=antialias, antialias_up=antialias_up)
    assert len(net.net) == length
    assert any(isinstance(m, BlurPool) for m in net.modules()) == antialias
    assert any(isinstance(m, BlurUpsample) for m in net.modules()) == antialias_up
    with torch.no_grad():
        assert net(torch.randn(1, 3, 16, 24)).shape == (1, 3, 16, 24)


def test_no_antialias_moves_taps():
    # docs/design.md §4.1: with both switches index 4 is the stride-2 conv, 8 an IN at 1/4 size,
    # 12/16 are the
    # 3rd and 7th residual blocks
    net = ResnetGenerator(antialias=False, antialias_up=False)
    assert isinstance(net.net[4], nn.Conv2d) and net.net[4].stride == (2, 2)
    assert isinstance(net.net[8], nn.InstanceNorm2d)
    blocks = [i for i, m in enumerate(net.net) if isinstance(m, ResnetBlock)]
    assert blocks.index(12) == 2 and blocks.index(16) == 6
    x = torch.empty(1, 3, 256, 256, device="meta")
    shapes = [tuple(f.shape[1:]) for f in net.to("meta").encode(x)]
    assert shapes == [(3, 262, 262), (128, 128, 128), (256, 64, 64), (256, 64, 64), (256, 64, 64)]


def test_init_is_deterministic():
    torch.manual_seed(3)
    a = ResnetGenerator(ngf=8, n_blocks=2)
    torch.manual_seed(3)
    b = ResnetGenerator(ngf=8, n_blocks=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert torch.count_nonzero(a.net[1].bias) == 0  # zero biases, xavier weights


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_registry_forward_backward(name):
    torch.manual_seed(0)
    net = GENERATORS[name](ngf=8)
    x = torch.randn(2, 3, 32, 48)
    y = net(x)
    assert y.shape == x.shape and torch.isfinite(y).all() and y.abs().max() <= 1
    (y * torch.randn_like(y)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_registry_block_counts():
    for name, blocks in [("resnet_9blocks", 9), ("resnet_6blocks", 6)]:
        net = GENERATORS[name](ngf=8)
        assert sum(isinstance(m, ResnetBlock) for m in net.modules()) == blocks


def test_registry_default_sizes():
    assert round(n_params(GENERATORS["resnet_9blocks"]()) / 1e6, 3) == 11.378
    assert n_params(GENERATORS["resnet_6blocks"]()) == 11_378_179 - 3 * 2 * (256 * 256 * 9 + 256)


def test_dropout_option():
    net = ResnetGenerator(ngf=8, n_blocks=2, dropout=True)
    assert sum(isinstance(m, nn.Dropout) for m in net.modules()) == 2
    assert not any(isinstance(m, nn.Dropout) for m in ResnetGenerator(ngf=8).modules())


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 1, 16, 16), r"expects \(B, 3, H, W\) images, got shape \(1, 1, 16, 16\)"),
        ((3, 16, 16), r"expects \(B, 3, H, W\) images, got shape \(3, 16, 16\)"),
        ((1, 3, 16, 18), "height and width divisible by 4 .* got 16x18"),
        ((1, 3, 30, 16), "height and width divisible by 4 .* got 30x16"),
    ],
)
@pytest.mark.parametrize("method", ["forward", "encode", "forward_with_features"])
def test_bad_input_raises(shape, message, method):
    net = ResnetGenerator(ngf=8, n_blocks=1)
    with pytest.raises(ValueError, match=message):
        getattr(net, method)(torch.randn(shape))


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ((0, 32), r"layer index 32 out of range: .* 32 entries \(valid indices 0\.\.31\)"),
        ((-1,), r"layer index -1 out of range"),
        ((), "non-empty sequence of indices"),
        (4, "non-empty sequence of indices"),
        ((1.5,), "layer indices must be integers"),
    ],
)
def test_bad_layers_raise(layers, message):
    net = ResnetGenerator(ngf=8)
    with pytest.raises(ValueError, match=message):
        net.encode(torch.randn(1, 3, 8, 8), layers)
    with pytest.raises(ValueError, match=message):
        net.tap_channels(layers)


def test_residual_generator_starts_as_the_identity_and_learns():
    torch.manual_seed(0)
    g = ResnetGenerator(ngf=8, n_blocks=2, residual=True)
    x = torch.rand(2, 3, 16, 16) * 1.9 - 0.95
    assert torch.allclose(g(x), x, atol=1e-5)
    out, feats = g.forward_with_features(x, (0, 4))
    assert torch.allclose(out, x, atol=1e-5) and len(feats) == 2
    assert len(g.net) == len(ResnetGenerator(ngf=8, n_blocks=2).net)  # taps keep their indices
    (g(x) - 1).square().mean().backward()
    last = g.net[-2]
    assert last.weight.grad.abs().sum() > 0  # the zero conv gets a gradient and moves
    g.zero_grad()
    with torch.no_grad():
        last.weight.normal_(0, 0.05)
    y = g(x)
    assert not torch.allclose(y, x, atol=1e-3) and y.abs().max() < 1  # tanh keeps the range


def test_residual_needs_matching_channels():
    with pytest.raises(ValueError, match="input_nc == output_nc"):
        ResnetGenerator(3, 1, residual=True)


def test_positional_features_start_off_keep_the_taps_and_learn():
    torch.manual_seed(0)
    plain = ResnetGenerator(ngf=8, n_blocks=2)
    g = ResnetGenerator(ngf=8, n_blocks=2, positional=3)
    x = torch.randn(2, 3, 16, 16)
    assert len(g.net) == len(plain.net) + 1
    assert g.tap_channels() == plain.tap_channels()
    at = next(i for i, m in enumerate(g.net) if isinstance(m, FourierPosition))
    assert at == len(g.net) - 4  # just before the output pad, conv and Tanh
    shared = {k: v for k, v in plain.state_dict().items() if int(k.split(".")[1]) < at}
    g.load_state_dict(shared, strict=False)
    for a, b in zip(g.encode(x), plain.encode(x)):  # same weights, same taps
        assert torch.equal(a, b)
    pos = g.net[at]
    assert torch.equal(pos.proj.weight, torch.zeros_like(pos.proj.weight))
    (g(x) - 1).square().mean().backward()
    assert pos.proj.weight.grad.abs().sum() > 0  # the zero projection gets a gradient


def test_fourier_features_follow_the_formula_at_any_size():
    pos = FourierPosition(4, octaves=3)
    for h, w in ((8, 8), (12, 20)):
        feats = pos.features(h, w, like=torch.empty(0))
        assert feats.shape == (1, 12, h, w)
        u = torch.linspace(-1, 1, w)
        v = torch.linspace(-1, 1, h)
        k = 2  # the finest octave: 4 periods across the image
        assert torch.allclose(feats[0, k, 0], torch.sin(torch.pi * 4 * u), atol=1e-5)
        assert torch.allclose(feats[0, 3 + k, 5 % h], torch.cos(torch.pi * 4 * u), atol=1e-5)
        assert torch.allclose(feats[0, 6 + k, :, 1], torch.sin(torch.pi * 4 * v), atol=1e-5)
        assert torch.allclose(feats[0, 9, :, 0], torch.cos(torch.pi * v), atol=1e-5)
    with pytest.raises(ValueError, match="octaves"):
        FourierPosition(4, octaves=0)


def test_grad_checkpointing_switches_every_block_and_changes_no_gradient():
    torch.manual_seed(0)
    g = ResnetGenerator(ngf=8, n_blocks=3)
    x = torch.randn(2, 3, 16, 16)

    def grads():
        g.zero_grad()
        out, feats = g.forward_with_features(x)
        (out.square().mean() + sum(f.mean() for f in feats)).backward()
        return [p.grad.clone() for p in g.parameters()]

    plain = grads()
    assert g.set_grad_checkpointing(True) == 3
    assert all(b.grad_checkpointing for b in g.net if isinstance(b, ResnetBlock))
    for a, b in zip(plain, grads()):
        assert torch.allclose(a, b, atol=1e-6)
    assert g.set_grad_checkpointing(False) == 3
    assert not any(b.grad_checkpointing for b in g.net if isinstance(b, ResnetBlock))
