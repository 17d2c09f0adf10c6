"""MoNCE Fig. 2-style diagnostics: similarities, transport plan, plots, the diagnose report."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from patchcontrast.config import resolve_config
from patchcontrast.diagnostics import (
    NO_CONTRAST,
    diagnose,
    patch_similarities,
    plan_options,
    plan_stats,
    plot_similarity_histograms,
    plot_transport_plan,
    similarity_stats,
    transport_plan,
)
from patchcontrast.losses import monce_cost, sinkhorn
from patchcontrast.objectives.unpaired import UnpairedObjective
from patchcontrast.pipeline import load_objective, train

TINY = [
    "model.ngf=8",
    "model.ndf=8",
    "model.netF_nc=16",
    "model.num_patches=32",
    "data.load_size=36",
    "data.crop_size=32",
    "data.builtin_train=4",
    "data.builtin_test=2",
    "train.batch_size=2",
    "train.log_every=1",
    "train.sample_every=100",
    "train.checkpoint_every=100",
]
PNG = b"\x89PNG\r\n\x1a\n"


def tiny(root, preset, *extra):
    return resolve_config(
        preset, "cpu", run_dir=str(root / "run"), overrides=[*TINY, "train.max_steps=2", *extra]
    )


def tiny_model(preset, *extra):
    return resolve_config(preset, "cpu", overrides=[*TINY, *extra]).model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step cut-monce run at 32 px, shared by the tests (the trained nets are not trivial)."""
    root = tmp_path_factory.mktemp("monce")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATCHCONTRAST_CACHE", str(root / "cache"))
        train(tiny(root, "cut-monce", "model.loss_options={weighting: hard, beta: 0.2, Q: 1.0}"))
    return root / "run"


@pytest.fixture(scope="module")
def objective(run):
    return load_objective(run)[0]


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def reference_samples(objective, images, num_patches, seed):
    """The NCE loss's sampling re-done by hand: ids drawn on the keys, reused for queries."""
    cfg, G = objective.cfg, objective.G
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        keys, ids = objective.F(
            G.encode(images, cfg.nce_layers),
            num_patches,
            generator=generator,
            per_image=cfg.per_image_patches,
        )
        queries, _ = objective.F(G.encode(G(images), cfg.nce_layers), patch_ids=ids)
    return queries, keys


@pytest.mark.parametrize("which", ["trained", "per-image ids"])
def test_similarities_shapes_range_and_naive_values(which, objective, images):
    if which != "trained":  # untrained net with independent patch positions per image
        objective = UnpairedObjective(tiny_model("cut", "model.per_image_patches=true")).eval()
    sims = patch_similarities(objective, images, num_patches=16, seed=3)
    assert list(sims) == list(objective.cfg.nce_layers)
    b, n = images.shape[0], 16
    for pair in sims.values():
        assert pair["positive"].shape == (b * n,)
        assert pair["negative"].shape == (b * n * (n - 1),)
        for values in pair.values():
            assert values.min() >= -1 and values.max() <= 1
    queries, keys = reference_samples(objective, images, n, seed=3)
    for l, layer in enumerate(objective.cfg.nce_layers):
        q, k = queries[l], keys[l]
        for bi, i, j in [(0, 0, 1), (1, 5, 2), (2, 15, 14), (2, 3, 9)]:
            pos = sims[layer]["positive"][bi * n + i]
            neg = sims[layer]["negative"][(bi * n + i) * (n - 1) + j - (j > i)]
            torch.testing.assert_close(pos, q[bi, i] @ k[bi, i])
            torch.testing.assert_close(neg, q[bi, i] @ k[bi, j])


def test_same_seed_same_patches_other_seed_other_patches(objective, images):
    a = patch_similarities(objective, images, num_patches=8, seed=0)
    b = patch_similarities(objective, images, num_patches=8, seed=0)
    c = patch_similarities(objective, images, num_patches=8, seed=1)
    last = objective.cfg.nce_layers[-1]
    assert torch.equal(a[last]["negative"], b[last]["negative"])
    assert not torch.equal(a[last]["negative"], c[last]["negative"])


def test_keys_as_queries_give_unit_positives(objective, images):
    sims = patch_similarities(objective, images, num_patches=16, translations=images)
    for pair in sims.values():
        # q.q = |x|^2 / (|x| + 1e-7)^2 (F's normaliser): 1 up to 2e-7 / |x|, and the barely
        # trained head still has tiny outputs (|x| ~ 1e-3)
        torch.testing.assert_close(
            pair["positive"], torch.ones_like(pair["positive"]), rtol=0, atol=1e-3
        )
        assert pair["positive"].mean() > pair["negative"].mean()
        stats = similarity_stats(pair["positive"], pair["negative"])
        assert stats["auc"] > 0.99 and stats["negatives_above_median_positive"] < 0.01


def test_transport_plan_is_monce_sinkhorn_plan(objective, images):
    plan = transport_plan(objective, images[0], num_patches=64, seed=5)
    assert plan.shape == (64, 64) and torch.isfinite(plan).all() and (plan >= 0).all()
    # monce uses unit marginals: columns exact (v is updated last), rows within tol
    torch.testing.assert_close(plan.sum(0), torch.ones(64), rtol=0, atol=1e-5)
    torch.testing.assert_close(plan.sum(1), torch.ones(64), rtol=0, atol=2e-3)
    queries, keys = reference_samples(objective, images[:1], 64, seed=5)
    s = queries[-1][0] @ keys[-1][0].T
    ones = torch.ones(64)
    expected = sinkhorn(
        monce_cost(s, weighting="hard", diagonal="upstream"),
        eps=0.2,
        a=ones,
        b=ones,
        iters=50,
        tol=1e-5,
    )  # the run's beta, monce's auto tol
    torch.testing.assert_close(plan, expected, rtol=0, atol=1e-7)
    assert plan_options(objective)[1] == "checkpoint"


def test_transport_plan_options_and_errors(objective, images):
    sharp = plan_stats(transport_plan(objective, images[0], beta=0.05))
    flat = plan_stats(transport_plan(objective, images[0], beta=5.0))
    # a larger beta spreads the weight over more negatives (-> N-1 = 63 as beta -> inf)
    assert sharp["effective_negatives"] < flat["effective_negatives"] <= 63 + 1e-9
    assert flat["effective_negatives"] > 60
    exclude = transport_plan(objective, images[0], diagonal="exclude")
    assert float(exclude.diagonal().abs().max()) == 0.0
    with pytest.raises(ValueError, match="invalid option for loss 'monce'"):
        transport_plan(objective, images[0], bogus=1)
    with pytest.raises(ValueError, match="weighting must be one of"):
        transport_plan(objective, images[0], weighting="medium")
    with pytest.raises(ValueError, match="layer must be one of the run's nce_layers"):
        transport_plan(objective, images[0], layer=3)
    with pytest.raises(ValueError, match=r"image must be \(C, H, W\)"):
        transport_plan(objective, images)


def test_other_losses_use_monce_defaults_and_headless_runs_are_refused(images):
    patchnce = UnpairedObjective(tiny_model("cut"))
    options, source = plan_options(patchnce)
    assert source == "MoNCE defaults" and options["beta"] == 0.1
    assert options["weighting"] == "hard" and options["iters"] == 50
    for preset in ("gan-only", "cycle"):
        with pytest.raises(ValueError, match=NO_CONTRAST):
            patch_similarities(UnpairedObjective(tiny_model(preset)), images)


def test_similarity_stats_known_values():
    stats = similarity_stats(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.5, 3.0]))
    assert stats["auc"] == pytest.approx(3 / 6)  # pairs with pos > neg: (1,0), (2,0), (2,1.5)
    assert stats["negatives_above_median_positive"] == pytest.approx(2 / 3)
    assert stats["positive"] == {"count": 2, "mean": 1.5, "std": pytest.approx(2**-0.5)}
    assert similarity_stats(torch.ones(1), torch.ones(4))["auc"] == 0.5  # ties count 1/2


def test_plots_write_pngs(tmp_path):
    sims = {
        4: {"positive": torch.rand(50), "negative": torch.rand(500) * 2 - 1},
        8: {"positive": torch.rand(50), "negative": torch.rand(500) * 2 - 1},
    }
    hist = plot_similarity_histograms(sims, tmp_path / "a/h.png")
    plan = plot_transport_plan(torch.rand(8, 8), tmp_path / "p.png", title="t")
    for path in (hist, plan):
        assert path.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="square"):
        plot_transport_plan(torch.rand(3, 4), tmp_path / "x.png")


def test_diagnose_writes_report(run, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 44, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    report = diagnose(run, folder, tmp_path / "out", num_images=5, num_patches=16, progress=False)
    out = tmp_path / "out"
    for name in ("similarity_histograms.png", "transport_plan.png"):
        data = (out / name).read_bytes()
        assert len(data) > 1000 and data[:8] == PNG
    assert json.loads((out / "diagnostics.json").read_text()) == report
    assert set(report) == {"checkpoint", "images", "settings", "layers", "transport_plan"}
    assert report["settings"]["num_images"] == 5 and report["settings"]["size"] == [32, 32]
    assert list(report["layers"]) == ["0", "4", "8", "12", "16"]
    for stats in report["layers"].values():
        assert stats["positive"]["count"] == 5 * 16
        assert stats["negative"]["count"] == 5 * 16 * 15
        assert 0 <= stats["auc"] <= 1 and 0 <= stats["negatives_above_median_positive"] <= 1
    plan = report["transport_plan"]
    assert plan["patches"] == 16 and plan["options_from"] == "checkpoint"
    assert plan["options"]["beta"] == 0.2 and plan["column_sum_max_error"] < 1e-5


def test_diagnose_errors(run, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images in"):
        diagnose(run, tmp_path / "empty", tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        diagnose(run, tmp_path / "missing", tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="size must have sides that are multiples of 4"):
        diagnose(run, tmp_path / "empty", tmp_path / "out", size=30, progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATCHCONTRAST_CACHE", str(tmp_path / "cache"))
        train(tiny(tmp_path, "gan-only", "train.max_steps=1"))
    with pytest.raises(ValueError, match=NO_CONTRAST):
        diagnose(tmp_path / "run", tmp_path / "empty", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_diagnose_from_the_cli(run, tmp_path, capsys):
    from patchcontrast.cli import main

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(folder / f"{i}.png")
    assert (
        main(
            [
                "diagnose",
                "--checkpoint",
                str(run),
                "--images",
                str(folder),
                "--output",
                str(tmp_path / "out"),
                "--num-patches",
                "8",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("AUC") == 5 and (tmp_path / "out/transport_plan.png").is_file()
    with pytest.raises(SystemExit):
        main(
            [
                "diagnose",
                "--checkpoint",
                str(run),
                "--images",
                str(tmp_path / "nope"),
                "--output",
                str(tmp_path / "out2"),
            ]
        )
    assert "does not exist" in capsys.readouterr().err
