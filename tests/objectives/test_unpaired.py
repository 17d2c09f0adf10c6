"""The CUT-family objective: every preset steps, feature reuse, flip equivariance, sizes,
the F/LSeSim host.

SeSim presets run on a randomly initialised VGG-19 here (no pretrained weights offline): the
tests check the objective's plumbing, not what pretrained features would do.
"""

import warnings

import pytest
import torch

from patchcontrast.config import PRESETS, CUTConfig, resolve_config
from patchcontrast.nets import FourierPosition
from patchcontrast.objectives.unpaired import UnpairedObjective

TINY = {"ngf": 8, "ndf": 8, "n_blocks": 6, "netF_nc": 16, "num_patches": 32}


def tiny(preset: str = "cut", **model) -> CUTConfig:
    cfg = resolve_config(preset, "cpu", overrides=[f"model.{k}={v}" for k, v in TINY.items()])
    if cfg.model.sesim != "none":
        model = {"vgg_source": "random", **model}
        warnings.filterwarnings("ignore", message=".*random.*", category=UserWarning)
    return CUTConfig(**{**cfg.model.__dict__, **model})


def batch(b=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "A": torch.rand(b, 3, size, size, generator=g) * 2 - 1,
        "B": torch.rand(b, 3, size, size, generator=g) * 2 - 1,
    }


def grads(loss, module):
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_steps_with_finite_losses(preset):
    torch.manual_seed(0)
    obj = UnpairedObjective(tiny(preset), crop_size=32)
    optims = {
        p.name: torch.optim.Adam(
            [q for m in p.modules for q in getattr(obj, m).parameters()], lr=1e-3
        )
        for p in obj.phases
    }
    stats = {}
    for _ in range(2):
        obj.prepare(batch())
        for phase in obj.phases:
            loss, phase_stats = obj.loss(phase.name)
            assert torch.isfinite(loss) and all(v == v for v in phase_stats.values())
            stats.update(phase_stats)
            optims[phase.name].zero_grad()
            loss.backward()
            optims[phase.name].step()
        obj.release()
    names = {name for name, _ in obj.named_children()}
    if obj.cfg.sesim != "none":
        assert "SeSim" in stats and "F" not in names
        assert ("H_NCE" in stats) == (obj.cfg.sesim == "learned")
        assert not any(k.startswith("sesim.backbone.") for k in obj.state_dict())
    if preset.startswith("sincut"):
        assert {"D_R1", "G_idt"} <= set(stats) and obj.nce.options["negatives"] == "batch"
    if preset == "cycle":
        assert {"G_BA", "D_A"} <= names and "F" not in names
    elif preset == "gan-only" or obj.cfg.sesim != "none":
        assert "F" not in names
    else:
        assert "F" in names and "NCE" in stats
    assert ("NCE_Y" in stats) == (obj.cfg.nce_idt and "F" in names)


def test_upstream_parameter_counts():
    obj = UnpairedObjective(CUTConfig())
    count = {
        name: sum(p.numel() for p in getattr(obj, name).parameters()) for name in ("G", "D", "F")
    }
    assert round(count["G"] / 1e6, 3) == 11.378
    assert round(count["D"] / 1e6, 3) == 2.765
    assert round(count["F"] / 1e6, 3) == 0.560


@pytest.mark.parametrize("preset", ["cut", "cut-monce"])
def test_reused_keys_equal_recomputed_keys(preset):
    torch.manual_seed(0)
    obj = UnpairedObjective(tiny(preset))
    data = batch()
    torch.manual_seed(1)
    obj.prepare(data)
    reused, _ = obj.loss("G")
    g_reused = grads(reused, obj)
    torch.manual_seed(1)
    obj.prepare(data)
    # upstream path: encode the real images again for the keys
    obj._cache["keys_a"] = [f.detach() for f in obj.G.encode(data["A"], obj.cfg.nce_layers)]
    obj._cache["keys_b"] = [f.detach() for f in obj.G.encode(data["B"], obj.cfg.nce_layers)]
    recomputed, _ = obj.loss("G")
    g_recomputed = grads(recomputed, obj)
    torch.testing.assert_close(reused, recomputed, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_reused, g_recomputed):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_flip_equivariance_uses_unflipped_keys_and_flips_queries_back():
    torch.manual_seed(0)
    obj = UnpairedObjective(tiny("fastcut"))
    obj._coin = lambda: True
    data = batch()
    torch.manual_seed(2)
    obj.prepare(data)
    _, stats = obj.loss("G")
    assert obj._cache["flipped"]
    # the same loss written out as upstream computes it
    torch.manual_seed(2)
    layers = obj.cfg.nce_layers
    with torch.no_grad():
        fake = obj.G(data["A"].flip(-1))
        torch.testing.assert_close(fake, obj._cache["fake_b"])
        queries = [q.flip(-1) for q in obj.G.encode(fake, layers)]
        keys = obj.G.encode(data["A"], layers)
        k, ids = obj.F(keys, obj.cfg.num_patches)
        q, _ = obj.F(queries, patch_ids=ids)
        expected = sum(obj.nce(qq, kk) for qq, kk in zip(q, k)) / len(layers)
    assert stats["NCE"] == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("size", [(33, 47), (64, 64), (5, 9)])
def test_translate_any_size(size):
    obj = UnpairedObjective(tiny("cut"))
    out = obj.translate(torch.rand(2, 3, *size) * 2 - 1)
    assert out.shape == (2, 3, *size) and out.abs().max() <= 1


def test_sesim_loss_is_zero_for_the_source_itself_and_heads_train_only_in_their_phase():
    obj = UnpairedObjective(tiny("lsesim-monce"))
    x = batch()["A"]
    assert float(obj.sesim_loss(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(obj.sesim_loss(x, x.flip(-1))) > 1e-4  # another structure costs
    g_phase = obj.phases[-1]
    assert [p.name for p in obj.phases] == ["D", "H", "G"] and "sesim" in g_phase.frozen
    assert all(not p.requires_grad for p in obj.sesim.backbone.parameters())
    inference = UnpairedObjective(obj.cfg, inference=True)
    own = inference.state_dict().keys()
    inference.load_state_dict({k: v for k, v in obj.state_dict().items() if k in own})
    assert not hasattr(inference, "sesim")


def test_fast_recipe_levers_step_and_keep_the_paper_defaults():
    paper = tiny("cut")
    assert (paper.residual, paper.diffaugment, paper.ema, paper.lr_d, paper.positional) == (
        False,
        (),
        0.0,
        None,
        0,
    )
    torch.manual_seed(0)
    cfg = tiny(
        "cut",
        residual=True,
        diffaugment=("color", "translation", "cutout"),
        ema=0.9,
        lr_d=1e-4,
        gan_mode="nonsaturating",
        positional=2,
    )
    obj = UnpairedObjective(cfg, crop_size=32)
    assert any(isinstance(m, FourierPosition) for m in obj.G.net)
    assert {p.name: p.lr for p in obj.phases} == {"D": 1e-4, "G": cfg.lr}
    x = batch()
    assert torch.allclose(obj.translate(x["A"]), x["A"].clamp(-0.999, 0.999), atol=1e-5)
    opt = {
        p.name: torch.optim.Adam(
            [q for m in p.modules for q in getattr(obj, m).parameters()], lr=1e-2
        )
        for p in obj.phases
    }
    for _ in range(2):
        obj.prepare(batch())
        for phase in obj.phases:
            loss, _ = obj.loss(phase.name)
            opt[phase.name].zero_grad()
            loss.backward()
            opt[phase.name].step()
        obj.after_step()
        obj.release()
    # G_ema = 0.9 (0.9 G0 + 0.1 G1) + 0.1 G2, and translation uses it
    g_weight = dict(obj.G.named_parameters())["net.1.weight"]
    ema_weight = dict(obj.G_ema.named_parameters())["net.1.weight"]
    assert not torch.equal(g_weight, ema_weight) and not ema_weight.requires_grad
    assert "G_ema.net.1.weight" in obj.state_dict()
    assert obj.translator is obj.G_ema
    assert torch.allclose(obj.translate(x["A"]), obj.G_ema(x["A"]))


def test_ema_follows_the_formula():
    torch.manual_seed(0)
    obj = UnpairedObjective(tiny("cut", ema=0.75), crop_size=32)
    before = {k: v.clone() for k, v in obj.G_ema.state_dict().items()}
    with torch.no_grad():
        for p in obj.G.parameters():
            p.add_(1.0)
    obj.after_step()
    for k, v in obj.G.state_dict().items():
        expected = before[k] if "filt" in k else 0.75 * before[k] + 0.25 * v
        assert torch.allclose(obj.G_ema.state_dict()[k], expected, atol=1e-6)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("ema", 1.0, "ema must be in"),
        ("lr_d", 0.0, "lr_d must be"),
        ("diffaugment", ("flip",), "diffaugment policies"),
        ("residual", True, "residual needs"),
        ("positional", 3, "positional needs"),
        ("positional", -1, "positional"),
    ],
)
def test_fast_recipe_levers_are_validated(field, value, message):
    extra = {"netG": "stylegan2"} if field in ("residual", "positional") and value != -1 else {}
    with pytest.raises(ValueError, match=message):
        tiny("cut", **{field: value, **extra})


def test_projected_discriminator_trains_its_heads_only_and_is_not_saved():
    torch.manual_seed(0)
    obj = UnpairedObjective(
        tiny("cut", netD="projected", vgg_source="random", diffaugment=("translation",)),
        crop_size=32,
    )
    vgg_before = {k: v.clone() for k, v in obj.D.vgg.state_dict().items()}
    head = obj.D.heads[0][0].weight_orig
    head_before = head.detach().clone()
    d_params = [p for p in obj.D.parameters() if p.requires_grad]
    opt = torch.optim.Adam(d_params, lr=1e-2)
    obj.prepare(batch())
    loss, _ = obj.loss("D")
    opt.zero_grad()
    loss.backward()
    opt.step()
    g_loss, stats = obj.loss("G")
    assert torch.isfinite(g_loss) and "G_GAN" in stats
    obj.release()
    assert not torch.equal(head, head_before)
    for k, v in obj.D.vgg.state_dict().items():
        assert torch.equal(v, vgg_before[k])
    assert not any(k.startswith("D.vgg.") for k in obj.state_dict())
    assert any(k.startswith("D.heads.") for k in obj.state_dict())
    logits = obj.D(batch()["A"])
    assert logits.shape == (2, 16 * 16 + 8 * 8)  # relu2_2 and relu3_2 maps of a 32 px image
    inference = UnpairedObjective(
        tiny("cut", netD="projected", vgg_source="torchvision", vgg_weights="/nonexistent.pth"),
        crop_size=32,
        inference=True,
    )  # translation needs no VGG weights
    assert not hasattr(inference, "D")
    inference.load_state_dict({k: v for k, v in obj.state_dict().items() if not k.startswith("D.")})
