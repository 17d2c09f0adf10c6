"""SIGTERM and Ctrl-C during translate, evaluate and sweep: exit 143 / 130, every file written
so far complete (the one being written absent), nothing temporary left, and the same command
run again finishes the job."""

import functools
import os
import shutil
import signal

import pytest
import yaml
from fault_helpers import TINY
from PIL import Image

from patchcontrast import evaluate, pipeline
from patchcontrast.cli import main


@pytest.fixture(autouse=True)
def cache(trained, monkeypatch):
    monkeypatch.setenv("PATCHCONTRAST_CACHE", str(trained / "cache"))


@pytest.fixture(autouse=True)
def default_handlers():
    """Both signals as in a foreground process: a test run in the background inherits SIGINT
    ignored, which the command line rightly leaves ignored."""
    previous = {
        s: signal.signal(s, h)
        for s, h in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL))
    }
    yield
    for s, h in previous.items():
        signal.signal(s, h)


def assert_whole(folder) -> None:
    """Every PNG in ``folder`` (recursively) reads; no temporary file is left."""
    assert not list(folder.rglob(".*.tmp"))
    for path in folder.rglob("*.png"):
        with Image.open(path) as image:
            image.load()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_translate_writes_an_image(sig, trained, tmp_path, monkeypatch, capsys):
    images = next((trained / "cache").glob("*/testA"))
    names = sorted(p.name for p in images.glob("*.png"))
    out = tmp_path / "out"
    argv = [
        "translate",
        "--checkpoint",
        str(trained / "run"),
        "--input",
        str(images),
        "--output",
        str(out),
        "--batch-size",
        "1",
    ]
    real_save, calls = pipeline.save_image, []

    def save(tensor, f, **kwargs):  # the second image: half written when the signal comes
        calls.append(f.name)
        if len(calls) == 2:
            f.write(b"\x89PNG\r\n\x1a\n half an image")
            os.kill(os.getpid(), sig)
        return real_save(tensor, f, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "save_image", save)
        assert main(argv) == 128 + sig
    assert "interrupted" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == names[:1]  # the first whole, the second absent
    assert_whole(out)
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "translation.json"])
    assert_whole(out)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_evaluate_run_then_again(sig, trained, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    real = evaluate.evaluate_folders

    def stopped(*args, **kwargs):  # after the translations, before any metric
        os.kill(os.getpid(), sig)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "_plot", lambda rows, path: None)
    with monkeypatch.context() as patch:
        patch.setattr(evaluate, "evaluate_folders", stopped)
        assert main(["evaluate", "--run", str(run)]) == 128 + sig
    assert not (run / "eval" / "summary.json").exists()
    assert not (run / "eval" / "metrics.csv").exists()
    assert_whole(run / "eval")
    monkeypatch.setattr(evaluate, "evaluate_folders", functools.partial(real, swd_size=32))
    assert main(["evaluate", "--run", str(run)]) == 0
    assert (run / "eval" / "summary.json").is_file() and (run / "eval" / "metrics.csv").is_file()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_sweep_then_the_sweep_resumes(sig, tmp_path, monkeypatch):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "seeds": [0],
                "metrics": ["swd"],
                "overrides": TINY,
                "runs": [{"presets": ["gan-only"], "grid": {"model.lambda_gan": [1, 0.5]}}],
            }
        )
    )
    argv = ["sweep", str(spec), "--root", str(tmp_path / "sweeps"), "--max-steps", "1"]
    real, calls = evaluate.evaluate_run, []

    def stopped(run_dir, **kwargs):  # the first run trained, its evaluation under way
        calls.append(run_dir)
        if len(calls) == 1:
            os.kill(os.getpid(), sig)
        return real(run_dir, **kwargs)

    monkeypatch.setattr(evaluate, "_plot", lambda rows, path: None)
    monkeypatch.setattr(
        evaluate, "evaluate_folders", functools.partial(evaluate.evaluate_folders, swd_size=32)
    )
    with monkeypatch.context() as patch:
        patch.setattr(evaluate, "evaluate_run", stopped)
        assert main(argv) == 128 + sig
    status = yaml.safe_load((tmp_path / "sweeps" / "tiny" / "status.json").read_text())
    assert [s["status"] for s in status.values()] == ["interrupted", "pending"]
    first = calls[0]
    assert not (first / ".lock").exists()  # released on the way out
    assert main(argv) == 0
    status = yaml.safe_load((tmp_path / "sweeps" / "tiny" / "status.json").read_text())
    assert [s["status"] for s in status.values()] == ["done", "done"]
    assert (first / "eval" / "summary.json").is_file()
