"""End to end: train on the built-in data, resume, translate, the CLI around them."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from patchcontrast.cli import main
from patchcontrast.config import resolve_config
from patchcontrast.data import write_generated_dataset
from patchcontrast.evaluate import evaluate_run
from patchcontrast.pipeline import comparison_grid, latest_checkpoint, train, translate

TINY = [
    "model.ngf=8",
    "model.ndf=8",
    "model.netF_nc=16",
    "model.num_patches=32",
    "data.load_size=36",
    "data.crop_size=32",
    "data.builtin_train=8",
    "data.builtin_test=4",
    "train.batch_size=2",
    "train.log_every=1",
    "train.sample_every=2",
    "train.checkpoint_every=2",
]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHCONTRAST_CACHE", str(tmp_path / "cache"))


def tiny(tmp_path, preset="cut-monce", *extra):
    return resolve_config(
        preset, "cpu", run_dir=str(tmp_path / "run"), overrides=[*TINY, "train.max_steps=4", *extra]
    )


def test_train_then_translate_any_size(tmp_path):
    summary = train(tiny(tmp_path))
    assert summary["step"] == 4
    run = tmp_path / "run"
    assert latest_checkpoint(run).name == "step_00000004.pt"
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert len(stats) == 4 and all(np.isfinite(s["NCE"]) for s in stats)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((37, 50, 3), 90, np.uint8)).save(images / "odd.jpg")
    Image.fromarray(np.full((20, 24), 200, np.uint8), mode="L").save(images / "grey.png")
    Image.fromarray(np.zeros((16, 16, 4), np.uint8), mode="RGBA").save(images / "alpha.png")
    written = translate(run, images, tmp_path / "out", progress=False)
    sizes = {p.name: Image.open(p).size for p in written}
    assert sizes == {"odd.png": (50, 37), "grey.png": (24, 20), "alpha.png": (16, 16)}
    assert json.loads((tmp_path / "out/translation.json").read_text())["images"] == 3
    grid = comparison_grid(images, tmp_path / "out", tmp_path / "grid.png")
    assert grid.is_file()


def test_resume_continues_to_the_same_weights(tmp_path):
    straight = train(tiny(tmp_path / "a", "cut", "train.deterministic=true"))
    half = tiny(tmp_path / "b", "cut", "train.deterministic=true", "train.max_steps=2")
    train(half)
    resumed = train(tiny(tmp_path / "b", "cut", "train.deterministic=true"), resume=True)
    assert straight["step"] == resumed["step"] == 4
    a = torch.load(latest_checkpoint(tmp_path / "a/run"), weights_only=True)["objective"]
    b = torch.load(latest_checkpoint(tmp_path / "b/run"), weights_only=True)["objective"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_train_on_a_folder_dataset(tmp_path):
    write_generated_dataset(tmp_path / "data", n_train=4, n_test=2, size=(36, 36), progress=False)
    summary = train(
        tiny(
            tmp_path,
            "cut-put",
            f"data.dataroot={tmp_path / 'data'}",
            "train.max_steps=2",
            "model.loss_options={k_neg: 4}",
        )
    )
    assert summary["step"] == 2


def test_cli_dry_run_prints_the_config(capsys):
    assert main(["train", "--preset", "fastcut", "--dry-run", "--set", "train.n_epochs=3"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["preset"] == "fastcut" and cfg["train"]["n_epochs"] == 3
    assert cfg["model"]["flip_equivariance"] is True


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--set", "train.batch_size=0"], "batch_size must be an integer >= 1"),
        (["train", "--set", "model.contrastive=infonce"], "contrastive must be one of"),
        (["train", "--dataroot", "/nonexistent/folder", "--max-steps", "1"], "/nonexistent/folder"),
        (
            ["translate", "--checkpoint", "/nonexistent", "--input", ".", "--output", "out"],
            "no checkpoint found",
        ),
    ],
)
def test_cli_errors_are_clear(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, *(["--run-dir", str(tmp_path / "r")] if argv[0] == "train" else [])])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_train_and_translate(tmp_path, capsys):
    run = str(tmp_path / "run")
    args = ["train", "--preset", "cut", "--run-dir", run, "--max-steps", "2"]
    for item in TINY:
        args += ["--set", item]
    assert main(args) == 0
    write_generated_dataset(tmp_path / "data", n_train=1, n_test=2, size=(40, 44), progress=False)
    assert (
        main(
            [
                "translate",
                "--checkpoint",
                run,
                "--input",
                str(tmp_path / "data/testA"),
                "--output",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    assert "wrote 2 images" in capsys.readouterr().out
    assert (
        main(
            [
                "translate",
                "--checkpoint",
                run,
                "--input",
                str(tmp_path / "data/testA"),
                "--output",
                str(tmp_path / "small"),
                "--size",
                "24",
                "28",
            ]
        )
        == 0
    )
    assert {Image.open(p).size for p in (tmp_path / "small").glob("*.png")} == {(28, 24)}
    with pytest.raises(SystemExit):
        main(
            [
                "translate",
                "--checkpoint",
                run,
                "--input",
                str(tmp_path / "data/testA"),
                "--output",
                str(tmp_path / "bad"),
                "--size",
                "1",
                "2",
                "3",
            ]
        )
    assert "--size takes one side or HEIGHT WIDTH" in capsys.readouterr().err


def test_train_non_square(tmp_path):
    summary = train(
        tiny(
            tmp_path,
            "cut",
            "data.load_size=[36, 52]",
            "data.crop_size=[32, 48]",
            "train.max_steps=1",
        )
    )
    assert summary["step"] == 1
    grid = next((tmp_path / "run/samples").glob("*.png"))
    from PIL import Image

    width, height = Image.open(grid).size
    assert width > height  # columns of 48-px-wide images side by side


def test_sincut_on_the_built_in_single_image_pair(tmp_path):
    cfg = resolve_config(
        "sincut",
        "cpu",
        run_dir=str(tmp_path / "run"),
        overrides=[
            "model.ngf=4",
            "model.ndf=4",
            "model.netF_nc=16",
            "data.crop_size=32",
            "data.virtual_size=8",
            "train.batch_size=4",
            "train.max_steps=2",
            "train.checkpoint_every=2",
            "train.sample_every=2",
        ],
    )
    summary = train(cfg)
    assert summary["step"] == 2
    stats = [json.loads(line) for line in (tmp_path / "run/stats.jsonl").read_text().splitlines()]
    assert all(np.isfinite(s["NCE"]) and np.isfinite(s["D_R1"]) for s in stats)
    # SinCUT translates the full-resolution image, any size
    image = tmp_path / "a.png"
    Image.fromarray(np.full((70, 90, 3), 120, np.uint8)).save(image)
    (out,) = translate(tmp_path / "run", image, tmp_path / "out", progress=False)
    assert Image.open(out).size == (90, 70)
    # evaluation judges the run on its own pair: the A image translated, against the B image
    summary = evaluate_run(tmp_path / "run", metrics=("swd",), progress=False)
    assert summary["n_fake"] == 1 and summary["n_real"] == 1
    assert summary["settings"]["translated_at"] is None  # full resolution
    assert np.isfinite(summary["final"]["swd_avg"])


def test_time_budget_plans_the_schedule_and_resume_keeps_it(tmp_path, capsys, monkeypatch):
    from patchcontrast import pipeline

    monkeypatch.setattr(
        pipeline.Trainer,
        "time_iterations",
        lambda self, n=8, warmup=2: {"iteration": 0.5, "sample": 1.0, "checkpoint": 2.0},
    )
    cfg = resolve_config(
        "cut",
        "cpu",
        run_dir=str(tmp_path / "run"),
        overrides=[*TINY, "train.n_epochs=1", "train.n_epochs_decay=3"],
    )
    planned, plan = pipeline.plan_time_budget(cfg, 20.0)
    # 20 s * 0.9 safety / (0.5 + 1.0 / 2 + 2.0 / 2) s per iteration, minus the planning time
    assert plan["iterations"] in (8, 9) and plan["constant"] == round(plan["iterations"] / 4)
    t = planned.train
    assert (t.schedule_unit, t.n_epochs + t.n_epochs_decay, t.time_budget_s) == (
        "step",
        plan["iterations"],
        20.0,
    )
    with pytest.raises(ValueError, match="give a larger budget"):
        pipeline.plan_time_budget(cfg, 1.0)
    summary = train(replace_steps(cfg, 3), time_budget_s=20.0)
    assert "time budget 20 s" in capsys.readouterr().out and summary["step"] == 3
    saved = json.loads((tmp_path / "run/config.json").read_text())["train"]
    monkeypatch.setattr(
        pipeline.Trainer,
        "time_iterations",
        lambda self, n=8, warmup=2: pytest.fail("a resume must not re-plan"),
    )
    resumed = train(replace_steps(cfg, None), resume=True, time_budget_s=999.0)
    assert "keeping the run's plan" in capsys.readouterr().out
    assert resumed["step"] == saved["n_epochs"] + saved["n_epochs_decay"]
    with pytest.raises(ValueError, match="not planned with a time budget"):
        train(tiny(tmp_path / "other"), resume=True, time_budget_s=10.0)


def replace_steps(cfg, max_steps):
    from patchcontrast.config import replace

    return replace(cfg, train={"max_steps": max_steps})


def test_time_iterations_measures_a_throwaway_trainer(tmp_path):
    from patchcontrast.pipeline import build_datasets, build_objective
    from patchcontrast.trainer import Trainer

    cfg = tiny(tmp_path)
    trainer = Trainer(build_objective(cfg), build_datasets(cfg)[0], cfg.train)
    timing = trainer.time_iterations(n=2, warmup=1)
    assert set(timing) == {"iteration", "sample", "checkpoint"}
    assert all(0 < v < 60 for v in timing.values())


@pytest.mark.parametrize(
    "text, seconds", [("30m", 1800), ("90s", 90), ("1h30m", 5400), ("2.5h", 9000), ("600", 600)]
)
def test_parse_duration(text, seconds):
    from patchcontrast.cli import parse_duration

    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30x", "m", "1h 30m", "0", "0s"])
def test_parse_duration_errors(text):
    from patchcontrast.cli import parse_duration

    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_demo_reports_the_baseline_and_runs_again(tmp_path, capsys):
    from patchcontrast.pipeline import demo, format_demo

    cfg = tiny(tmp_path, "cut-monce", "train.max_steps=2")
    first = demo(cfg)
    scores = first["metrics"]
    assert set(scores) == {"translated", "untranslated"}
    for key in ("swd_avg", "content_iou", "domain_b"):
        assert key in scores["translated"] and key in scores["untranslated"]
    assert scores["untranslated"]["domain_b"] <= 0.25  # the inputs are A images
    assert first["swd_ratio_to_untranslated"] == pytest.approx(
        scores["translated"]["swd_avg"] / scores["untranslated"]["swd_avg"]
    )
    saved = json.loads((tmp_path / "run/metrics.json").read_text())
    assert saved["metrics"]["translated"] == pytest.approx(scores["translated"])
    assert "untranslated" in format_demo(first)
    capsys.readouterr()
    again = demo(cfg)  # the same config: the finished run is reused, nothing retrains
    assert "holds this demo's run" in capsys.readouterr().out
    assert again["metrics"] == first["metrics"]
    other = tiny(tmp_path, "cut", "train.max_steps=2")
    demo(other)  # another config: starts afresh instead of failing on the old checkpoints
    assert "another configuration" in capsys.readouterr().out
    assert json.loads((tmp_path / "run/config.json").read_text())["preset"] == "cut"


def test_cli_demo_twice(tmp_path, capsys):
    args = ["demo", "--run-dir", str(tmp_path / "demo"), "--max-steps", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "untranslated" in out and "SWD of the translations / SWD of the inputs" in out
    assert main(args) == 0  # a second run in the same folder works
    assert (tmp_path / "demo/demo_grid.png").is_file()


def test_cli_used_run_folder_and_resume_without_checkpoints_are_one_line(tmp_path, capsys):
    args = ["train", "--preset", "cut", "--run-dir", str(tmp_path / "run"), "--max-steps", "1"]
    for item in TINY:
        args += ["--set", item]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--resume"])  # nothing to resume yet
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "no checkpoint to resume" in err
    assert "Traceback" not in err
    assert main(args) == 0
    with pytest.raises(SystemExit) as exit_info:
        main(args)  # the folder holds that run now
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--resume" in err and "Traceback" not in err
