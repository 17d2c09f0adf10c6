"""kill -9 at random moments of a training run, once for sure inside a checkpoint write, three
times in a row with a resume in between: every resume succeeds, every checkpoint and sample
grid on disk stays readable, and the final state equals a straight run's bit for bit."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from train_child import ITERATIONS, build

from patchcontrast.runstate import checkpoint_files, checkpoint_step, read_checkpoint

CHILD = Path(__file__).with_name("train_child.py")


def start(run_dir: Path, *args: str, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    """train_child.py in a process of its own; its stderr goes to RUN_DIR.stderr."""
    with open(run_dir.with_suffix(".stderr"), "ab") as log:
        return subprocess.Popen(
            [sys.executable, str(CHILD), str(run_dir), *args],
            stdout=stdout,
            stderr=log,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )


def newest_step(run_dir: Path) -> int:
    found = checkpoint_files(run_dir / "checkpoints")
    return checkpoint_step(found[-1]) if found else 0


def wait_until(condition, seconds: float = 60) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "the training process made no progress"
        time.sleep(0.005)


def assert_all_readable(run_dir: Path) -> None:
    for path in checkpoint_files(run_dir / "checkpoints"):
        read_checkpoint(path)  # raises on a damaged file
    for path in (run_dir / "samples").glob("*.png"):
        with Image.open(path) as image:
            image.load()  # raises on a truncated PNG


def assert_identical(a, b, where: str = "checkpoint") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.fixture
def one_thread():
    """The straight run computes as the killed processes do (OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_kill_9_three_times_then_resume_equals_a_straight_run(tmp_path, one_thread):
    rng = random.Random(23)
    run = tmp_path / "run"
    for cycle in range(3):
        before = newest_step(run)
        pause = before + 3 if cycle == 1 else None  # this time the kill lands inside a write
        args = ["--resume"] if before else []
        args += ["--pause-in-save", str(pause)] if pause else []
        child = start(run, *args, stdout=subprocess.PIPE if pause else subprocess.DEVNULL)
        if pause:
            line = ""
            while not line.startswith("mid-write "):
                line = child.stdout.readline()
                assert line, f"the child ended early: {run.with_suffix('.stderr').read_text()}"
            temporary = Path(line.split(" ", 1)[1].strip())
        else:
            wait_until(lambda before=before: newest_step(run) > before)  # it got somewhere
            time.sleep(rng.uniform(0, 0.2))
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout:
            child.stdout.close()
        assert child.returncode == -signal.SIGKILL, "the run ended before the kill"
        if pause:
            # half a checkpoint in the temporary file, nothing under the final name
            assert temporary.stat().st_size > 0 and temporary.name.startswith(".step_")
            assert not temporary.with_name(f"step_{pause:08d}.pt").exists()
            assert newest_step(run) == pause - 1
        assert_all_readable(run)
        assert newest_step(run) >= before

    final = start(run, "--resume", stdout=subprocess.PIPE)
    out, _ = final.communicate(timeout=120)
    stderr = run.with_suffix(".stderr").read_text()
    assert final.returncode == 0 and f"done {ITERATIONS}" in out, stderr
    assert stderr.count("taking over the run folder's lock") == 3  # one per killed process
    build(tmp_path / "straight").fit()

    last = f"step_{ITERATIONS:08d}.pt"
    mine, theirs = (
        read_checkpoint(folder / "checkpoints" / last) for folder in (run, tmp_path / "straight")
    )
    for key in ("objective", "optimizers", "schedulers", "rng", "step", "epoch", "position"):
        assert_identical(mine[key], theirs[key], key)
    # the half-written files of the killed processes were cleared away by the resumes
    assert not [p.name for p in run.rglob(".*.tmp")]
    assert_all_readable(run)
    steps = [
        int(line.split('"step": ')[1].split(",")[0])
        for line in (run / "stats.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(1, ITERATIONS + 1))  # each logged once, none lost
