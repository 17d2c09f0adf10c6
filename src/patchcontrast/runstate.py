"""Process-level plumbing of a training run, apart from the loop itself: RNG states that a
checkpoint can carry, determinism flags, graceful Ctrl-C/SIGTERM, and checkpoint files (atomic
writes, lookup by step) and sample grids."""

from __future__ import annotations

import os
import random
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from tqdm import tqdm


def derived_seed(*key: int) -> int:
    """A well-mixed 32-bit seed from a tuple of ints (seed, epoch, purpose)."""
    return int(np.random.SeedSequence(list(key)).generate_state(1)[0])


def ignore_sigint(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: workers must survive it so that the main process
    # can finish its iteration and checkpoint (it shuts the workers down itself).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def rng_state(cuda: bool) -> dict:
    """All global RNG states, in types that ``torch.load(weights_only=True)`` accepts."""
    # numpy's legacy global RNG is the one third-party augmentation code draws from
    _, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    version, py_state, py_gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if cuda else [],
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "state": list(py_state), "gauss": py_gauss}}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
        torch.cuda.set_rng_state(s, i)
    n, p = state["numpy"], state["python"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["gauss"]))  # noqa: NPY002
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


@contextmanager
def rng_preserved(cuda: bool):
    """Side work (samples, the sample batch) must not shift the training trajectory."""
    state = rng_state(cuda)
    try:
        yield
    finally:
        set_rng_state(state)


@contextmanager
def determinism(enabled: bool):
    """Global torch flags for the duration of ``fit`` only (restored afterwards)."""
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = enabled, not enabled
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2:]


@contextmanager
def graceful_signals():
    """The first SIGINT/SIGTERM only sets ``stop.signum`` (the loop finishes its iteration and
    checkpoints); a second Ctrl-C raises KeyboardInterrupt at once. Handlers can only be set in
    the main thread; the previous ones are restored on exit."""
    stop = SimpleNamespace(signum=None)
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if signum == signal.SIGINT and stop.signum is not None:
            raise KeyboardInterrupt
        stop.signum = signum
        tqdm.write(f"{signal.Signals(signum).name}: finishing the iteration, then saving a "
                   "checkpoint (Ctrl-C again to abort at once)")

    # a signal the process was told to ignore (nohup, background jobs) stays ignored
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)


def checkpoint_step(path: Path) -> int:
    """The step of a ``step_XXXXXXXX.pt`` checkpoint file."""
    return int(path.stem[5:])


def checkpoint_files(folder: Path) -> list[Path]:
    """The ``step_*.pt`` files of a folder, lowest step first."""
    found = [p for p in folder.glob("step_*.pt") if p.stem[5:].isdigit()]
    return sorted(found, key=checkpoint_step)


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file, or a run folder's highest ``step_*.pt``; FileNotFoundError if none."""
    if path.is_dir():
        found = checkpoint_files(path / "checkpoints") or checkpoint_files(path)
        path = found[-1] if found else path / "checkpoints" / "step_*.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume: {path}")
    return path


def atomic_save(obj: dict, path: Path) -> None:
    """torch.save to a temp file in the same folder, fsync, rename: a crash or a kill never
    leaves a truncated checkpoint under the final name."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        fd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_sample_grid(images: dict[str, torch.Tensor], path: Path) -> None:
    """One row per image, one column per entry (in order); [-1, 1] -> [0, 1], grey -> RGB."""
    from torchvision.utils import make_grid, save_image  # ~1 s import, only needed here

    columns = []
    for name, x in images.items():
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"samples()[{name!r}] must be (B, 1 or 3, H, W), got {tuple(x.shape)}")
        columns.append(x.detach().float().cpu().add(1).div(2).clamp(0, 1).expand(-1, 3, -1, -1))
    save_image(make_grid(torch.stack(columns, dim=1).flatten(0, 1), nrow=len(columns)), path)
