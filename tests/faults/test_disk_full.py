"""Writes that fail (disk full, I/O error) of checkpoints, sample grids, stats.jsonl,
TensorBoard events, exported models, translations and metrics: the error names the file and
the cause, the CLI exits 3, no temporary file stays behind, the previous checkpoint (or
export, or result) stays intact and a resumed run finishes."""

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from fault_helpers import fail_writes, tiny_train_args, toy_trainer
from PIL import Image

from patchcontrast import pipeline
from patchcontrast.cli import main
from patchcontrast.runstate import CheckpointWriteError, atomic_save, read_checkpoint

real_save, real_fsync = torch.save, os.fsync


def failing_save(error: BaseException, victim: str):
    """torch.save that writes part of ``victim`` (a checkpoint's name), then raises ``error``."""

    def save(obj, f, *args, **kwargs):
        if victim not in getattr(f, "name", ""):
            return real_save(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04 half a checkpoint")
        raise error

    return save


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHCONTRAST_CACHE", str(tmp_path / "cache"))


ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
# torch's own report when the stream under it fails (torch 2.x, inline_container.cc)
TORCH_ERROR = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


@pytest.mark.parametrize(
    "where, error, reason",
    [
        ("save", ENOSPC, "No space left on device"),
        (
            "save",
            TORCH_ERROR,
            "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs "
            "598 (is the disk full?)",
        ),
        ("fsync", OSError(errno.EIO, os.strerror(errno.EIO)), "Input/output error"),
    ],
)
def test_a_failed_write_keeps_the_previous_checkpoint(where, error, reason, tmp_path, monkeypatch):
    run = tmp_path / "run"
    target = run / "checkpoints" / "step_00000004.pt"
    if where == "save":
        monkeypatch.setattr(torch, "save", failing_save(error, target.name))
    else:
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")  # atomic_save's

        def fsync(fd):
            if temporary.exists() and os.path.samestat(os.fstat(fd), temporary.stat()):
                raise error
            return real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(CheckpointWriteError) as info:
        toy_trainer(run).fit()
    assert str(info.value) == f"could not write {target}: {reason}"
    assert info.value.errno == getattr(error, "errno", None) and info.value.path == target
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000002.pt"]
    assert read_checkpoint(run / "checkpoints" / "step_00000002.pt")["step"] == 2
    assert not (run / ".lock").exists()


def test_atomic_save_leaves_an_older_file_alone(tmp_path, monkeypatch):
    path = tmp_path / "step_00000002.pt"
    atomic_save({"step": 1}, path)
    monkeypatch.setattr(torch, "save", failing_save(ENOSPC, path.name))
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        atomic_save({"step": 2}, path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert torch.load(path, weights_only=True) == {"step": 1}


def test_cli_exits_3_with_one_line(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setattr(torch, "save", failing_save(ENOSPC, "step_00000004.pt"))
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_train_args(run, "train.max_steps=4"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 3 and "Traceback" not in err
    assert err.endswith(
        f"patchcontrast train: error: could not write "
        f"{run / 'checkpoints' / 'step_00000004.pt'}: No space left on device\n"
    )
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000002.pt"]
    assert read_checkpoint(run / "checkpoints" / "step_00000002.pt")["step"] == 2


@pytest.mark.parametrize(
    "code, error", [(errno.ENOSPC, "No space left on device"), (errno.EIO, "Input/output error")]
)
def test_cli_exits_3_on_any_storage_error(code, error, tmp_path, monkeypatch, capsys):
    def train(cfg, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / "run" / "stats.jsonl"))

    monkeypatch.setattr(pipeline, "train", train)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 3 and error in err and "stats.jsonl" in err
    assert "Traceback" not in err


# what the disk refuses after the run's first checkpoint (step 2 of 4): the file whose name
# holds this, the path the error names, the errno
RUN_FILES = {
    "sample grid": ("step_00000004.png", "samples/step_00000004.png", errno.ENOSPC),
    "stats.jsonl": ("stats.jsonl", "stats.jsonl", errno.EIO),
    "TensorBoard events": ("events.out.tfevents", "tb", errno.ENOSPC),
}


@pytest.mark.parametrize("kind", list(RUN_FILES))
# TensorBoard's writer thread ends with the error after handing it to the training loop
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_failed_write_of_a_run_file_exits_3(kind, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    name, path, code = RUN_FILES[kind]
    first = run / "checkpoints" / "step_00000002.pt"
    with monkeypatch.context() as patch:
        failed = fail_writes(patch, name, code, when=first.exists)
        with pytest.raises(SystemExit) as exit_info:
            main(tiny_train_args(run, "train.max_steps=4"))
    err = capsys.readouterr().err.splitlines()[-1]
    assert exit_info.value.code == 3 and failed
    assert err == f"patchcontrast train: error: could not write {run / path}: {os.strerror(code)}"
    assert [p.name for p in (run / "checkpoints").iterdir()] == [first.name]
    assert read_checkpoint(first)["step"] == 2
    assert not list(run.rglob(".*.tmp"))
    if kind == "stats.jsonl":  # the resumed run drops the half-written line of step 3
        assert main([*tiny_train_args(run, "train.max_steps=4"), "--resume"]) == 0
        records = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2, 3, 4]


def builtin_test_images(trained: Path) -> Path:
    """The trained run's built-in testA folder."""
    return next((trained / "cache").glob("*/testA"))


@pytest.mark.parametrize(
    "name, code",
    [("model.safetensors", errno.ENOSPC), ("config.json", errno.EIO), ("README.md", errno.ENOSPC)],
)
def test_a_failed_export_leaves_the_earlier_export_whole(
    name, code, trained, tmp_path, monkeypatch, capsys
):
    model = tmp_path / "model"
    argv = ["export", str(trained / "run"), "--output", str(model)]
    assert main(argv) == 0
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    fail_writes(monkeypatch, name, code)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 3
    assert (
        err == f"patchcontrast export: error: could not write {model / name}: {os.strerror(code)}\n"
    )
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before  # no temporary files


def test_a_failed_translation_write_exits_3_without_a_partial_image(
    trained, tmp_path, monkeypatch, capsys
):
    images = sorted(builtin_test_images(trained).glob("*.png"))
    out = tmp_path / "out"
    fail_writes(monkeypatch, images[1].name, errno.ENOSPC)
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "translate",
                "--checkpoint",
                str(trained / "run"),
                "--input",
                str(builtin_test_images(trained)),
                "--output",
                str(out),
                "--batch-size",
                "1",
            ]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 3
    assert err.endswith(f"error: could not write {out / images[1].name}: No space left on device\n")
    assert [p.name for p in out.iterdir()] == [images[0].name]  # whole, the other absent
    with Image.open(out / images[0].name) as image:
        image.load()


def test_a_failed_metrics_write_exits_3(trained, tmp_path, monkeypatch, capsys):
    target = tmp_path / "metrics.json"
    target.write_text("{}")  # an earlier result, kept
    fail_writes(monkeypatch, target.name, errno.EIO)
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "evaluate",
                "--real",
                str(builtin_test_images(trained)),
                "--fake",
                str(builtin_test_images(trained)),
                "--size",
                "32",
                "--output",
                str(target),
            ]
        )
    assert exit_info.value.code == 3
    assert capsys.readouterr().err.endswith(f"could not write {target}: Input/output error\n")
    assert [p.name for p in tmp_path.iterdir()] == [target.name] and target.read_text() == "{}"
