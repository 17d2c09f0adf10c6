"""PatchDiscriminator tests (docs/design.md §4.2): size, output maps of both variants, registry."""

import pytest
import torch
from torch import nn

from patchcontrast.nets import DISCRIMINATORS, BlurPool, PatchDiscriminator


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("antialias", [True, False])
def test_parameter_count(antialias):
    net = PatchDiscriminator(antialias=antialias)
    assert n_params(net) == 2_764_737
    assert round(n_params(net) / 1e6, 3) == 2.765


@pytest.mark.parametrize("antialias", [True, False])
def test_30x30_map_for_256_input(antialias):
    net = PatchDiscriminator(antialias=antialias).to("meta")
    assert net(torch.empty(2, 3, 256, 256, device="meta")).shape == (2, 1, 30, 30)


@pytest.mark.parametrize("antialias", [True, False])
def test_small_and_non_square_inputs(antialias):
    # 64x96: anti-aliased 63->32->31->16->15->8->7->6 (and 95->...->10); stride-2 gives the same
    net = PatchDiscriminator(ndf=8, antialias=antialias)
    with torch.no_grad():
        out = net(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 1, 6, 10)


def test_layer_sequence():
    aa = PatchDiscriminator()
    assert sum(isinstance(m, BlurPool) for m in aa.modules()) == 3
    convs = [m for m in aa.modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == [64, 128, 256, 512, 1]
    assert all(m.stride == (1, 1) and m.kernel_size == (4, 4) for m in convs)
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in aa.modules()) == 3  # not after conv 1
    plain = PatchDiscriminator(antialias=False)
    assert not any(isinstance(m, BlurPool) for m in plain.modules())
    strides = [m.stride[0] for m in plain.modules() if isinstance(m, nn.Conv2d)]
    assert strides == [2, 2, 2, 1, 1]


def test_channel_multiplier_capped_at_8():
    net = PatchDiscriminator(ndf=4, n_layers=5)
    convs = [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [4, 8, 16, 32, 32, 32, 1]


def test_init_is_deterministic():
    torch.manual_seed(5)
    a = PatchDiscriminator(ndf=8)
    torch.manual_seed(5)
    b = PatchDiscriminator(ndf=8)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("name", sorted(DISCRIMINATORS))
def test_registry_forward_backward(name):
    torch.manual_seed(0)
    net = DISCRIMINATORS[name](ndf=8)
    out = net(torch.randn(2, 3, 64, 64))
    assert out.shape[:2] == (2, 1) and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_registry_default_size():
    assert round(n_params(DISCRIMINATORS["basic"]()) / 1e6, 3) == 2.765


def test_bad_input_raises():
    net = PatchDiscriminator(ndf=8)
    with pytest.raises(ValueError, match=r"expects \(B, 3, H, W\) images, got shape \(1, 4, 64"):
        net(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match="n_layers must be >= 1, got 0"):
        PatchDiscriminator(n_layers=0)
