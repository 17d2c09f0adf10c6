"""Shared by the fault tests: a toy objective the Trainer runs in milliseconds, the tiny real
config of the CLI tests, a child process that holds a run folder's lock, and writes that fail
as on a full or failing disk."""

import builtins
import io
import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from patchcontrast.config import resolve_config
from patchcontrast.objectives.base import Objective, Phase
from patchcontrast.trainer import TrainConfig, Trainer

# the smallest CUT that trains through the real pipeline (as in tests/test_sweep.py)
TINY = [
    "model.ngf=8",
    "model.ndf=8",
    "model.netF_nc=16",
    "model.num_patches=32",
    "model.n_blocks=1",
    "model.n_layers_d=1",
    "model.nce_layers=[0, 4]",
    "data.load_size=36",
    "data.crop_size=32",
    "data.builtin_train=4",
    "data.builtin_test=2",
    "train.batch_size=1",
    "train.log_every=1",
    "train.sample_every=100",
    "train.checkpoint_every=2",
]


def tiny_config(run_dir: Path, *extra: str):
    return resolve_config("cut", "cpu", run_dir=str(run_dir), overrides=[*TINY, *extra])


def tiny_train_args(run_dir: Path, *extra: str) -> list[str]:
    """``patchcontrast train`` arguments of :func:`tiny_config`."""
    args = ["train", "--preset", "cut", "--scale", "cpu", "--run-dir", str(run_dir)]
    for item in [*TINY, *extra]:
        args += ["--set", item]
    return args


class RunsCode:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class Images(Dataset):
    """Four random 8x8 RGB images under key "A"."""

    def __init__(self):
        self.a = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def __len__(self):
        return len(self.a)

    def __getitem__(self, i):
        return {"A": self.a[i]}


class Toy(Objective):
    """One conv learning the identity; ``raise_at``: an exception raised in that iteration's
    prepare (1-based); ``seen_locks``: the lock file's content in every iteration."""

    phases = (Phase("G", ("G",)),)

    def __init__(
        self,
        lock: Path | None = None,
        raise_at: int | None = None,
        error: BaseException | None = None,
    ):
        super().__init__()
        self.G = nn.Conv2d(3, 3, 3, padding=1)
        self.lock, self.raise_at, self.error = lock, raise_at, error
        self.calls, self.seen_locks = 0, []

    def prepare(self, batch):
        self.calls += 1
        if self.lock is not None:
            self.seen_locks.append(self.lock.read_text() if self.lock.exists() else None)
        if self.calls == self.raise_at:
            raise self.error
        self.real, self.fake = batch["A"], self.G(batch["A"])  # (B, 3, 8, 8) each

    def loss(self, phase):
        return (self.fake - self.real).abs().mean(), {}

    def release(self):
        self.real = self.fake = None

    def samples(self, batch):
        return {"input": batch["A"], "translation": self.G(batch["A"])}


def toy_trainer(run_dir: Path, toy: Toy | None = None, **settings) -> Trainer:
    """4 iterations (batch 1), checkpoints every 2."""
    torch.manual_seed(0)
    cfg = TrainConfig(
        run_dir=str(run_dir),
        **{
            "n_epochs": 1,
            "n_epochs_decay": 0,
            "batch_size": 1,
            "device": "cpu",
            "log_every": 1,
            "sample_every": 100,
            "checkpoint_every": 2,
            **settings,
        },
    )
    return Trainer(toy or Toy(), Images(), cfg)


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """A child process that takes ``run_dir``'s lock with ``run_lock`` and sleeps; returns once
    the lock is held. Kill it (and wait) when done."""
    code = (
        "import sys, time; from pathlib import Path; "
        "from patchcontrast.runstate import run_lock\n"
        "with run_lock(Path(sys.argv[1])):\n"
        "    print('locked', flush=True); time.sleep(120)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert child.stdout.readline().strip() == "locked"
    return child


class FailingFile:
    """A file opened for writing whose first write() puts half of its data on disk and then
    fails with OSError(code), as a disk that fills up (ENOSPC) or fails (EIO) under a write."""

    def __init__(self, file, code: int):
        self._file, self._code = file, code

    def write(self, data):
        self._file.write(data[: len(data) // 2])
        self._file.flush()
        raise OSError(self._code, os.strerror(self._code))

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def fail_writes(monkeypatch, name: str, code: int, when=lambda: True) -> list[str]:
    """Files whose path contains ``name``, opened for writing through ``open`` (Python code,
    pathlib, PIL, TensorBoard) while ``when()`` is true: their writes fail with ``code``.
    Returns the list that collects the paths that failed."""
    real_open, failed = builtins.open, []

    def opener(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if (
            isinstance(file, int)
            or not set(mode) & set("wax")
            or name not in os.fsdecode(file)
            or not when()
        ):
            return f
        failed.append(os.fsdecode(file))
        return FailingFile(f, code)

    monkeypatch.setattr(builtins, "open", opener)
    monkeypatch.setattr(io, "open", opener)
    return failed
