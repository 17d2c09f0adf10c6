"""SPADE generator / multi-scale discriminator tests (docs/design.md §4.5, §4.7, §5.4).

Full-size networks are only built on the ``meta`` device (shapes and parameter counts, no
compute); forward/backward passes use ngf/ndf <= 4 and inputs <= 128 px to stay fast on CPU.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from patchcontrast.nets.spade import (
    SPADE,
    MultiscaleDiscriminator,
    SPADEGenerator,
    SPADEResBlock,
    feature_matching_loss,
    one_hot_labels,
)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def random_seg(b, label_nc, h, w):
    return one_hot_labels(torch.randint(0, label_nc, (b, h, w)), label_nc)


def is_spectral(conv):
    return parametrize.is_parametrized(conv, "weight") and any(
        type(p).__name__ == "_SpectralNorm" for p in conv.parametrizations.weight
    )


# ---- parameter counts: formulas derived from the layer description ----


def spade_count(c, label_nc, hidden=128):
    # shared 3x3 (label_nc -> hidden) + two 3x3 (hidden -> c), all with bias
    return 9 * label_nc * hidden + hidden + 2 * (9 * hidden * c + c)


def block_count(fin, fout, label_nc):
    fmid = min(fin, fout)
    n = 9 * fin * fmid + fmid + 9 * fmid * fout + fout
    n += spade_count(fin, label_nc) + spade_count(fmid, label_nc)
    if fin != fout:
        n += fin * fout + spade_count(fin, label_nc)  # 1x1 shortcut, no bias
    return n


def generator_count(label_nc, nf, most=False):
    n = 9 * label_nc * 16 * nf + 16 * nf
    chans = [16 * nf] * 4 + [8 * nf, 4 * nf, 2 * nf, nf] + ([nf // 2] if most else [])
    n += sum(block_count(a, b, label_nc) for a, b in zip(chans[:-1], chans[1:]))
    return n + 9 * chans[-1] * 3 + 3


def discriminator_count(in_channels, ndf=64, n_layers=4, num_d=2):
    n, c = 16 * in_channels * ndf + ndf, ndf
    for _ in range(1, n_layers):
        n += 16 * c * min(2 * c, 512)  # no bias: instance norm follows
        c = min(2 * c, 512)
    return num_d * (n + 16 * c + 1)


@pytest.fixture(scope="module")
def full_size():
    with torch.device("meta"):
        return SPADEGenerator(151), MultiscaleDiscriminator(151 + 3)


def test_full_size_parameter_counts(full_size):
    g, d = full_size
    # ADE20K: 150 classes + don't-care; SPADE reports 96.5M for this G
    assert n_params(g) == generator_count(151, 64) == 96_492_483
    assert n_params(d) == discriminator_count(154) == 5_836_930
    # SPADE's "5.6M" D is the Cityscapes one: 35 labels + instance edges + RGB = 39 channels
    assert discriminator_count(39) == 5_601_410


def test_tiny_parameter_counts():
    assert n_params(SPADEGenerator(3, ngf=4)) == generator_count(3, 4)
    assert n_params(SPADEGenerator(3, ngf=4, num_upsampling_layers="most")) == generator_count(
        3, 4, most=True
    )
    assert n_params(MultiscaleDiscriminator(5, ndf=4, n_layers=3, num_d=3)) == (
        discriminator_count(5, ndf=4, n_layers=3, num_d=3)
    )


def test_full_size_discriminator_map(full_size):
    _, d = full_size
    out = d(torch.empty(1, 154, 256, 256, device="meta"))
    assert [o.shape[1] for o in out[0]] == [64, 128, 256, 512, 1]
    assert out[0][-1].shape[2:] == (35, 35) and out[1][-1].shape[2:] == (19, 19)


# ---- generator ----


@pytest.mark.parametrize("mode,k", [("normal", 5), ("more", 6), ("most", 7)])
def test_generator_output_shapes(mode, k):
    torch.manual_seed(0)
    g = SPADEGenerator(3, ngf=2, num_upsampling_layers=mode)
    assert g.size_multiple == 2**k
    with torch.no_grad():
        out = g(random_seg(2, 3, 2**k, 2**k))
    assert out.shape == (2, 3, 2**k, 2**k)
    assert out.abs().max() <= 1


def test_generator_non_square_and_output_nc():
    g = SPADEGenerator(4, ngf=4, output_nc=1)
    with torch.no_grad():
        assert g(random_seg(2, 4, 64, 96)).shape == (2, 1, 64, 96)  # start grid 2x3


def test_generator_input_errors():
    g = SPADEGenerator(3, ngf=2)
    with pytest.raises(ValueError, match="divisible by 32, got 48x64"):
        g(random_seg(1, 3, 48, 64))
    with pytest.raises(ValueError, match="divisible by 64"):
        SPADEGenerator(3, ngf=2, num_upsampling_layers="more")(random_seg(1, 3, 32, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\), got \(1, 4, 32, 32\)"):
        g(random_seg(1, 4, 32, 32))
    with pytest.raises(ValueError, match="float one-hot"):
        g(torch.zeros(1, 3, 32, 32, dtype=torch.long))
    with pytest.raises(ValueError, match="num_upsampling_layers must be one of"):
        SPADEGenerator(3, num_upsampling_layers="huge")
    with pytest.raises(ValueError, match="norm must be one of 'batch', 'instance', got 'group'"):
        SPADEGenerator(3, norm="group")


def test_gradient_reaches_all_parameters():
    torch.manual_seed(0)
    g = SPADEGenerator(3, ngf=4)
    d = MultiscaleDiscriminator(3 + 3, ndf=4)
    seg = random_seg(2, 3, 32, 64)
    fake = g(seg)
    sum(scale[-1].mean() for scale in d(torch.cat([seg, fake], 1))).backward()
    for name, p in [*g.named_parameters(), *d.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        # conv_0's bias is followed by norm_1's mean subtraction: its gradient is zero in training
        if not name.endswith("conv_0.bias"):
            assert p.grad.abs().sum() > 0, name


def test_spectral_norm_where_expected():
    g = SPADEGenerator(3, ngf=4)
    block_convs = [
        m for n, m in g.named_modules() if n.split(".")[-1] in ("conv_0", "conv_1", "conv_s")
    ]
    assert len(block_convs) == 7 * 2 + 4  # 7 blocks, 4 with a learned shortcut
    assert all(is_spectral(c) for c in block_convs)
    spectral = [m for m in g.modules() if isinstance(m, nn.Conv2d) and is_spectral(m)]
    assert len(spectral) == len(block_convs)  # fc, conv_img and SPADE's MLP convs are plain
    plain = SPADEGenerator(3, ngf=4, spectral=False)
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    assert n_params(plain) == n_params(g)


@pytest.mark.parametrize("norm", ["spectralinstance", "instance", "none"])
def test_discriminator_norm_variants(norm):
    d = MultiscaleDiscriminator(5, ndf=4, norm=norm)
    convs = [m for m in d.scales[0].modules() if isinstance(m, nn.Conv2d)]
    assert [is_spectral(c) for c in convs] == [False] + [norm == "spectralinstance"] * 3 + [False]
    assert [c.bias is not None for c in convs] == [True] + [norm == "none"] * 3 + [True]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    assert all(c.kernel_size == (4, 4) and c.padding == (2, 2) for c in convs)
    n_in = sum(isinstance(m, nn.InstanceNorm2d) for m in d.scales[0].modules())
    assert n_in == (0 if norm == "none" else 3)


def test_init_plain_xavier_spectral_default():
    torch.manual_seed(0)
    g = SPADEGenerator(3, ngf=4)
    fc = g.fc.weight  # (64, 3, 3, 3): xavier-normal, gain 0.02
    xavier_std = 0.02 * (2 / (27 + 576)) ** 0.5
    assert abs(fc.std().item() / xavier_std - 1) < 0.1
    # spectral conv keeps PyTorch's kaiming-uniform default, std = 1 / sqrt(3 * fan_in)
    w = g.head_0.conv_0.parametrizations.weight.original  # (64, 64, 3, 3)
    assert abs(w.std().item() * (3 * 576) ** 0.5 - 1) < 0.1
    assert all(
        (m.bias == 0).all() for m in g.modules() if isinstance(m, nn.Conv2d) and m.bias is not None
    )
    # u/v were estimated for the kept weight, so sigma(W_eff) ~ 1 even without a power iteration
    g.eval()
    for name in ("head_0.conv_0", "up_0.conv_s", "up_3.conv_1"):
        w_eff = g.get_submodule(name).weight.flatten(1)
        assert 0.9 < torch.linalg.matrix_norm(w_eff, 2).item() < 1.1, name


def test_eval_uses_running_statistics():
    torch.manual_seed(0)
    g = SPADEGenerator(3, ngf=4)
    seg = random_seg(3, 3, 32, 32)
    with torch.no_grad():
        train_out = g(seg)
        g.eval()
        eval_out = g(seg)
        single = g(seg[:1])
    assert not torch.allclose(train_out, eval_out, atol=1e-4)
    # test mode: no coupling across the batch, a sample's output does not depend on the others
    torch.testing.assert_close(single, eval_out[:1], atol=1e-5, rtol=1e-4)


def test_sync_batchnorm_conversion():
    g = SPADEGenerator(3, ngf=2)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in g.modules())
    assert n_bn == 7 * 2 + 4  # one per SPADE layer
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(g)
    assert sum(isinstance(m, nn.SyncBatchNorm) and not m.affine for m in synced.modules()) == n_bn


# ---- SPADE layer and block ----


def zero_modulation(layer):
    for conv in (layer.mlp_gamma, layer.mlp_beta):
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_spade_zero_modulation_is_plain_norm(norm):
    torch.manual_seed(0)
    layer = SPADE(6, 3, norm=norm, hidden=8)
    zero_modulation(layer)
    x = torch.randn(2, 6, 8, 8) * 2 + 3
    out = layer(x, random_seg(2, 3, 16, 16))
    ref = F.batch_norm(x, None, None, training=True) if norm == "batch" else F.instance_norm(x)
    torch.testing.assert_close(out, ref)
    nn.init.constant_(layer.mlp_beta.bias, 0.5)
    nn.init.constant_(layer.mlp_gamma.bias, 1.0)  # scale 1 + 1 = 2
    torch.testing.assert_close(layer(x, random_seg(2, 3, 16, 16)), 2 * ref + 0.5)


def test_spade_label_map_resized_nearest():
    torch.manual_seed(0)
    layer = SPADE(4, 3, hidden=8, norm="instance")
    x, seg = torch.randn(2, 4, 8, 8), random_seg(2, 3, 4, 4)
    upsampled = seg.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(layer(x, seg), layer(x, upsampled))
    # the modulation really depends on the labels
    assert not torch.allclose(layer(x, seg), layer(x, random_seg(2, 3, 4, 4)))


def test_spade_batch_norm_train_vs_eval():
    torch.manual_seed(0)
    layer = SPADE(4, 3, hidden=8)
    zero_modulation(layer)
    x, seg = torch.randn(4, 4, 8, 8) * 2 + 3, random_seg(4, 3, 8, 8)
    train_out = layer(x, seg)
    layer.eval()
    bn = layer.param_free_norm
    expected = (x - bn.running_mean[:, None, None]) / (bn.running_var[:, None, None] + 1e-5).sqrt()
    torch.testing.assert_close(layer(x, seg), expected)
    assert not torch.allclose(layer(x, seg), train_out, atol=1e-2)
    inorm = SPADE(4, 3, hidden=8, norm="instance")
    torch.testing.assert_close(inorm(x, seg), inorm.eval()(x, seg))


def test_spade_argument_errors():
    with pytest.raises(ValueError, match="norm must be one of"):
        SPADE(4, 3, norm="layer")
    with pytest.raises(ValueError, match="kernel_size must be a positive odd number, got 4"):
        SPADE(4, 3, kernel_size=4)


def test_resblock_shapes_and_shortcut():
    seg = random_seg(2, 3, 8, 8)
    same = SPADEResBlock(6, 6, 3)
    assert not hasattr(same, "conv_s")
    down = SPADEResBlock(6, 4, 3)
    assert down.conv_0.out_channels == 4 and down.conv_s.bias is None
    assert down.conv_s.kernel_size == (1, 1)
    assert down(torch.randn(2, 6, 8, 8), seg).shape == (2, 4, 8, 8)
    up = SPADEResBlock(4, 6, 3, spectral=False)
    assert up.conv_0.out_channels == 4 and up.norm_1.mlp_gamma.out_channels == 4
    assert up(torch.randn(2, 4, 4, 4), seg).shape == (2, 6, 4, 4)


# ---- discriminator ----


def test_discriminator_scales_and_pooled_input():
    torch.manual_seed(0)
    d = MultiscaleDiscriminator(5, ndf=4, n_layers=4, num_d=3)
    seen = []
    for scale in d.scales:
        scale.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(2, 5, 40, 30)
    with torch.no_grad():
        out = d(x)
    assert len(out) == 3 and all(len(o) == 5 for o in out)
    assert [o.shape[1] for o in out[0]] == [4, 8, 16, 32, 1]
    # k4 p2: stride 2 maps n -> n // 2 + 1, stride 1 maps n -> n + 1
    assert [tuple(o.shape[2:]) for o in out[0]] == [(21, 16), (11, 9), (6, 5), (7, 6), (8, 7)]
    pooled = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
    assert seen[1].shape == (2, 5, 20, 15)
    torch.testing.assert_close(seen[1], pooled)
    torch.testing.assert_close(seen[2], F.avg_pool2d(pooled, 3, 2, 1, count_include_pad=False))


def test_discriminator_errors():
    d = MultiscaleDiscriminator(5, ndf=4)
    with pytest.raises(ValueError, match=r"\(B, 5, H, W\) inputs, got shape \(1, 4, 32, 32\)"):
        d(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="norm must be one of 'spectralinstance'"):
        MultiscaleDiscriminator(5, norm="batch")
    with pytest.raises(ValueError, match="num_d must be >= 1"):
        MultiscaleDiscriminator(5, num_d=0)


# ---- feature matching ----


def naive_feature_matching(fake, real, reduce):
    total = 0.0
    for f_s, r_s in zip(fake, real):
        per_layer = [(f - r).abs().mean() for f, r in zip(f_s[:-1], r_s[:-1])]
        total = total + (sum(per_layer) if reduce == "sum" else sum(per_layer) / len(per_layer))
    return total / len(fake)


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_feature_matching_matches_loop_and_detaches_real(reduce):
    torch.manual_seed(0)
    shapes = [
        [(2, 4, 9, 9), (2, 8, 5, 5), (2, 1, 6, 6)],
        [(2, 4, 5, 5), (2, 8, 3, 3), (2, 1, 4, 4)],
    ]
    fake = [[torch.randn(s, requires_grad=True) for s in scale] for scale in shapes]
    real = [[torch.randn(s, requires_grad=True) for s in scale] for scale in shapes]
    loss = feature_matching_loss(fake, real, layer_reduction=reduce)
    torch.testing.assert_close(loss, naive_feature_matching(fake, real, reduce))
    loss.backward()
    assert all(r.grad is None for scale in real for r in scale)
    assert all(f.grad is not None for scale in fake for f in scale[:-1])
    assert all(scale[-1].grad is None for scale in fake)  # final predictions are excluded


def test_feature_matching_on_discriminator_outputs():
    torch.manual_seed(0)
    d = MultiscaleDiscriminator(4, ndf=4)
    fake, real = d(torch.randn(2, 4, 32, 32)), d(torch.randn(2, 4, 32, 32))
    loss = feature_matching_loss(fake, real)
    assert loss.dim() == 0 and loss > 0
    torch.testing.assert_close(loss, naive_feature_matching(fake, real, "sum"))
    assert feature_matching_loss(real, real).item() == 0


def test_feature_matching_errors():
    a = [[torch.zeros(1, 2, 3, 3), torch.zeros(1, 1, 2, 2)]]
    with pytest.raises(ValueError, match="same, non-zero number of scales, got 1 and 2"):
        feature_matching_loss(a, a + a)
    with pytest.raises(ValueError, match="scale 0: .* got 2 and 1"):
        feature_matching_loss(a, [a[0][1:]])
    with pytest.raises(ValueError, match="scale 0: feature shapes differ"):
        feature_matching_loss(a, [[torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 2, 2)]])
    with pytest.raises(ValueError, match="layer_reduction must be one of"):
        feature_matching_loss(a, a, layer_reduction="max")


# ---- one-hot labels ----


def test_one_hot_labels():
    labels = torch.randint(0, 3, (2, 4, 5))
    oh = one_hot_labels(labels, 3)
    assert oh.shape == (2, 3, 4, 5) and oh.dtype == torch.float32
    assert torch.equal(oh.sum(1), torch.ones(2, 4, 5)) and torch.equal(oh.argmax(1), labels)
    torch.testing.assert_close(one_hot_labels(labels[:, None], 3), oh)


def test_one_hot_dont_care():
    labels = torch.tensor([[[0, 3], [2, 3]]])
    oh = one_hot_labels(labels, 3, dont_care=True)
    assert oh.shape == (1, 4, 2, 2)
    assert torch.equal(oh[0, 3], torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    assert torch.equal(oh.argmax(1), labels)


def test_one_hot_errors():
    with pytest.raises(
        ValueError,
        match=r"\[0, 2\] \(label_nc=3, dont_care=False\); "
        r"found invalid values -1, 3, 7",
    ):
        one_hot_labels(torch.tensor([[[0, 3], [-1, 7]]]), 3)
    with pytest.raises(ValueError, match="found invalid values 4"):
        one_hot_labels(torch.tensor([[[3, 4]]]), 3, dont_care=True)
    with pytest.raises(ValueError, match="integer tensor, got dtype torch.float32"):
        one_hot_labels(torch.zeros(1, 2, 2), 3)
    with pytest.raises(ValueError, match=r"\(B, H, W\) or \(B, 1, H, W\), got \(1, 2, 2, 2\)"):
        one_hot_labels(torch.zeros(1, 2, 2, 2, dtype=torch.long), 3)
