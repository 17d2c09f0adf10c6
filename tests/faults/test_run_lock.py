"""One live process per run folder: a second one is refused with the first one's pid, a lock
left by a dead process is taken over with a warning, the lock never outlives its run."""

import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading

import pytest
from fault_helpers import TINY, Toy, hold_lock, tiny_train_args, toy_trainer

from patchcontrast import evaluate
from patchcontrast.cli import main
from patchcontrast.runstate import RunFolderInUse, checkpoint_files, run_lock
from patchcontrast.sweep import load_spec, plan, run_sweep
from patchcontrast.trainer import TrainingInterrupted


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHCONTRAST_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def holder(tmp_path):
    """A live child process holding the lock of tmp_path/run."""
    child = hold_lock(tmp_path / "run")
    yield child
    child.kill()
    child.wait()


def lock_of(pid: int, host: str | None = None) -> str:
    return json.dumps(
        {"pid": pid, "host": host or socket.gethostname(), "started": "2026-12-07 19:40:01"}
    )


def test_a_live_process_keeps_the_folder_until_it_dies(tmp_path, holder, capsys):
    run, message = tmp_path / "run", f"in use by process {holder.pid} (started "
    held = (run / ".lock").read_text()
    with pytest.raises(ValueError, match=re.escape(message)):
        toy_trainer(run).fit()
    with pytest.raises(SystemExit) as exit_info:  # the CLI: one line, exit code 2
        main(tiny_train_args(run, "train.max_steps=1"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "choose another --run-dir" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert (run / ".lock").read_text() == held and not (run / "checkpoints").exists()

    holder.send_signal(signal.SIGKILL)  # dies holding the lock: no clean-up
    holder.wait()
    assert (run / ".lock").read_text() == held
    with pytest.warns(UserWarning, match=f"process {holder.pid} .* is not running any more"):
        assert toy_trainer(run).fit()["step"] == 4
    assert not (run / ".lock").exists()


@pytest.mark.parametrize("stale", ["exited", "other host", "unreadable", "earlier self"])
def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, stale):
    if stale == "exited":
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        child.wait()
        content, reason = lock_of(child.pid), f"process {child.pid} .* not running any more"
    elif stale == "other host":
        content, reason = lock_of(os.getpid(), "elsewhere"), "ran on host 'elsewhere'"
    elif stale == "unreadable":  # a crash between creating the lock and writing it
        content, reason = '{"pid": 12', "lock file is unreadable"
    else:  # this pid, left by an earlier process (a restarted container's entry point)
        content, reason = lock_of(os.getpid()), "an earlier process with this pid"
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(content)
    toy = Toy(lock=run / ".lock")
    with pytest.warns(UserWarning, match=reason):
        toy_trainer(run, toy).fit()
    assert {json.loads(seen)["pid"] for seen in toy.seen_locks} == {os.getpid()}
    assert not (run / ".lock").exists()


def test_the_lock_is_held_while_training_and_gone_afterwards(tmp_path):
    run = tmp_path / "run"
    toy = Toy(lock=run / ".lock")
    toy_trainer(run, toy).fit()
    held = [json.loads(seen) for seen in toy.seen_locks]
    assert len(held) == 4 and all(h["pid"] == os.getpid() for h in held)
    assert held[0]["host"] == socket.gethostname() and not (run / ".lock").exists()
    toy_trainer(run).fit(resume=True)  # the next run of the folder takes it without a word
    assert not (run / ".lock").exists()


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_the_lock_is_removed_after_an_exception(tmp_path, error):
    run = tmp_path / "run"
    expected = TrainingInterrupted if isinstance(error, KeyboardInterrupt) else RuntimeError
    with pytest.raises(expected):
        toy_trainer(run, Toy(raise_at=3, error=error)).fit()
    assert [p.name for p in checkpoint_files(run / "checkpoints")] == ["step_00000002.pt"]
    assert not (run / ".lock").exists()


def test_another_thread_of_the_process_is_refused_the_holder_may_reenter(tmp_path):
    with run_lock(tmp_path) as path:
        with run_lock(tmp_path) as again:  # the same thread: a sweep around its run's training
            assert again == path
        assert path.exists()  # the inner exit leaves the lock to the outer holder
        errors = []

        def second():
            try:
                with run_lock(tmp_path):
                    pass
            except RunFolderInUse as err:
                errors.append(str(err))

        thread = threading.Thread(target=second)
        thread.start()
        thread.join()
        assert len(errors) == 1 and f"in use by process {os.getpid()}" in errors[0]
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_a_sweep_leaves_a_folder_in_use_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate, "_plot", lambda rows, path: None)
    monkeypatch.setattr(
        evaluate, "evaluate_folders", functools.partial(evaluate.evaluate_folders, swd_size=32)
    )
    spec = {
        "name": "tiny",
        "seeds": [0],
        "metrics": ["swd"],
        "overrides": TINY,
        "runs": [{"presets": ["gan-only"], "grid": {"model.lambda_gan": [1, 0.5]}}],
    }
    locked, free = (tmp_path / "tiny" / run.name for run in plan(load_spec(spec)))
    child = hold_lock(locked)
    # the live run's record, which a second sweep must neither rewrite nor append to
    live = json.dumps({"name": locked.name, "seed": 0, "status": "running"})
    (locked / "sweep_run.json").write_text(live)
    try:
        result = run_sweep(spec, root=tmp_path, max_steps=1, progress=False)
    finally:
        child.kill()
        child.wait()
    assert [r["status"] for r in result["runs"]] == ["failed", "done"]
    assert result["runs"][0]["error"].startswith(
        f"ValueError: {locked} is in use by process {child.pid}"
    )
    assert (locked / "sweep_run.json").read_text() == live
    # nothing else written there (the lock is the killed holder's)
    assert sorted(p.name for p in locked.iterdir()) == [".lock", "sweep_run.json"]
    assert json.loads((free / "sweep_run.json").read_text())["status"] == "done"
