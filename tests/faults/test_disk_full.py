"""A checkpoint write that fails (disk full, I/O error): the temporary file is removed, the
previous checkpoint stays intact, the error names the file and the cause, the CLI exits 3."""

import errno
import os

import pytest
import torch
from fault_helpers import tiny_train_args, toy_trainer

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


@pytest.mark.parametrize("where, error, reason", [
    ("save", ENOSPC, "No space left on device"),
    ("save", TORCH_ERROR, "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs "
     "598 (is the disk full?)"),
    ("fsync", OSError(errno.EIO, os.strerror(errno.EIO)), "Input/output error"),
])
def test_a_failed_write_keeps_the_previous_checkpoint(where, error, reason, tmp_path,
                                                      monkeypatch):
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
    assert err.endswith(f"patchcontrast train: error: could not write "
                        f"{run / 'checkpoints' / 'step_00000004.pt'}: No space left on device\n")
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000002.pt"]
    assert read_checkpoint(run / "checkpoints" / "step_00000002.pt")["step"] == 2


@pytest.mark.parametrize("code, error", [
    (errno.ENOSPC, "No space left on device"), (errno.EIO, "Input/output error")])
def test_cli_exits_3_on_any_storage_error(code, error, tmp_path, monkeypatch, capsys):
    def train(cfg, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / "run" / "stats.jsonl"))

    monkeypatch.setattr(pipeline, "train", train)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 3 and error in err and "stats.jsonl" in err
    assert "Traceback" not in err
