"""Process-level plumbing of a training run, apart from the loop itself: RNG states that a
checkpoint can carry, determinism flags, graceful Ctrl-C/SIGTERM, the run-folder lock, atomic
file writes whose failures name the file, checkpoint files (safe reads, lookup by step) and
sample grids."""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import signal
import socket
import threading
import time
import warnings
import zipfile
from collections.abc import Iterator
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
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if cuda else [],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
    }


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
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
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
        tqdm.write(
            f"{signal.Signals(signum).name}: finishing the iteration, then saving a "
            "checkpoint (Ctrl-C again to abort at once)"
        )

    # a signal the process was told to ignore (nohup, background jobs) stays ignored
    previous = {
        s: signal.signal(s, handler)
        for s in (signal.SIGINT, signal.SIGTERM)
        if signal.getsignal(s) is not signal.SIG_IGN
    }
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is (see :func:`sigterm_raises`)."""

    signum = signal.SIGTERM

    def __init__(self):
        super().__init__("stopped by SIGTERM")


@contextmanager
def sigterm_raises():
    """SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) instead of ending the process at
    once, so that it unwinds like Ctrl-C: ``finally`` blocks remove temporary files and release
    the run lock. Only where SIGTERM has its default action (not ignored, no handler of the
    program around us) and in the main thread; the training loop sets its own handlers inside."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def handler(signum, frame):
        raise Terminated

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class RunFolderInUse(ValueError):
    """Another live process (or thread) trains in the run folder (see :func:`run_lock`)."""


# lock files taken by this process -> the thread that holds each (see run_lock)
_HELD: dict[Path, int] = {}


@contextmanager
def run_lock(run_dir: Path) -> Iterator[Path]:
    """Hold ``RUN_DIR/.lock`` (JSON: pid, host, started) while a process trains there: a second
    process would interleave its checkpoints and stats.jsonl lines with the first one's. Refused
    with a ValueError naming the holder while that process lives; a lock left behind by a dead
    process (killed, out of memory, a restarted container) is taken over with a warning. The
    lock is removed on exit, also on exceptions and KeyboardInterrupt. Yields the lock file;
    raises :class:`RunFolderInUse` (a ValueError) when refused.

    Liveness can only be checked on this host: a lock of another host name counts as stale, so
    two hosts training into one shared folder are not kept apart. The thread that holds the lock
    may enter it again (a sweep holds its run's folder around the training that locks it too);
    another thread of the same process is refused like another process.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = (run_dir / ".lock").absolute()
    if _HELD.get(path) == threading.get_ident():
        yield path  # the outer holder removes the lock
        return
    mine = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    # O_EXCL creation is atomic: of two processes starting together exactly one gets the lock
    while not _create_exclusive(path, json.dumps(mine)):
        holder = _lock_holder(path)
        if holder is None:  # released between our attempt and the read
            continue
        stale = _stale_because(holder, path)
        if stale is None:
            raise RunFolderInUse(
                f"{run_dir} is in use by process {holder['pid']} (started "
                f"{holder['started']}); wait for it or choose another --run-dir "
                f"(if no such run is going on, delete {run_dir / '.lock'})"
            )
        warnings.warn(f"{run_dir}: taking over the run folder's lock, as {stale}", stacklevel=3)
        path.unlink(missing_ok=True)
    _HELD[path] = threading.get_ident()
    try:
        yield path
    finally:
        del _HELD[path]
        if _lock_holder(path) == mine:  # not a lock that another process took over meanwhile
            path.unlink(missing_ok=True)


def _create_exclusive(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text``; False if it exists already."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return True


def _lock_holder(path: Path) -> dict | None:
    """A lock's content; None when it is gone, {} when unreadable. An empty lock is read again
    for up to a second: its creator writes it right after creating it."""
    for _ in range(20):
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        if text:
            break
        time.sleep(0.05)
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _stale_because(holder: dict, path: Path) -> str | None:
    """Why the process that wrote a lock cannot be training any more; None if it may be."""
    pid, host = holder.get("pid"), holder.get("host")
    if not isinstance(pid, int) or pid <= 0 or "started" not in holder:
        return "its lock file is unreadable (a crash while writing it)"
    process = f"process {pid} (started {holder['started']})"
    if host != socket.gethostname():
        return f"{process} ran on host {host!r}, whose processes cannot be checked from here"
    if pid == os.getpid():
        # our pid but not our lock: an earlier process with the same pid (a restarted container
        # gives its entry point the same pid again)
        return None if path in _HELD else f"{process} was an earlier process with this pid"
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return f"{process} is not running any more"
    except PermissionError:  # it exists, under another user
        return None
    return None


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


# the keys every checkpoint written by Trainer has (the rest are the Trainer's own business)
CHECKPOINT_KEYS = ("objective", "config", "step")


def read_checkpoint(path: Path) -> dict:
    """A checkpoint's dict, loaded onto the CPU; a ValueError naming the file when it is not one.

    Read by :func:`load_weights_only`: a pickle that would run code is refused, never executed.
    Damaged files (empty, truncated, random bytes, refused objects) and readable files of another
    kind (a bare state dict, an optimizer state) are told apart in the message.
    """
    try:
        state = load_weights_only(path)
    except UnreadableFile as err:
        raise ValueError(
            f"{path} is not a readable patchcontrast checkpoint ({err}): copy "
            "it again, or move it aside to use the run's previous checkpoint"
        ) from None
    if not isinstance(state, dict) or not set(CHECKPOINT_KEYS) <= state.keys():
        raise ValueError(
            f"{path} is not a patchcontrast checkpoint: it holds {_kind(state)}, not "
            f"the dict with keys {', '.join(map(repr, CHECKPOINT_KEYS))} that "
            "`patchcontrast train` writes to RUN_DIR/checkpoints/step_*.pt"
        )
    return state


class UnreadableFile(ValueError):
    """What makes a file unreadable by :func:`load_weights_only` (the message, without the
    file's name, for the caller's one-line error)."""


ZIP_MAGIC = b"PK\x03\x04"  # a zip archive's first local file header
NOT_TORCH = "not a file written by torch.save"
NOT_TENSORS = f"{NOT_TORCH}, nor a pickle of tensors; nothing in it was run"


def load_weights_only(path: Path, *, legacy: bool = False) -> object:
    """``torch.load`` onto the CPU with torch's weights-only unpickler, so a pickle that would
    run code is refused, never run; :class:`UnreadableFile` says what is wrong otherwise.

    Only zip archives (what ``torch.save`` writes) reach the unpickler, checked first; with
    ``legacy`` also the plain pickles of torch < 1.6 (old official CycleGAN releases)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise UnreadableFile("empty file")
    is_zip = head == ZIP_MAGIC
    if not is_zip and not legacy:
        raise UnreadableFile(f"{NOT_TORCH}: no zip archive")
    if is_zip and not zipfile.is_zipfile(path):  # its directory, at the end, is missing/broken
        raise UnreadableFile("truncated or corrupt zip archive")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message suggests weights_only=False, i.e. running the file: not repeated
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        problem = (
            "it holds pickled Python objects"
            + (f" ({found[1]})" if found else "")
            + " that the weights-only loader refuses; nothing in it was run"
        )
        raise UnreadableFile(problem if found or is_zip else NOT_TENSORS) from None
    except Exception as err:  # noqa: BLE001 - damaged bytes raise RuntimeError, IndexError, ...
        problem = f"a zip archive that torch cannot read: {_first_line(err)}"
        raise UnreadableFile(problem if is_zip else NOT_TENSORS) from None


def _first_line(err: BaseException) -> str:
    """An exception's message for a one-line error (its type if it has none)."""
    return (str(err) or type(err).__name__).splitlines()[0]


def _kind(obj: object) -> str:
    """A short description of a loaded object, for error messages."""
    if not isinstance(obj, dict):
        return f"a {type(obj).__name__}"
    if not obj:
        return "an empty dict"
    keys = [repr(k) for k in list(obj)[:4]]
    return f"a dict with keys {', '.join(keys)}{', ...' if len(obj) > 4 else ''}"


class FileWriteError(OSError):
    """A file could not be written (disk full, I/O error, no permission): the message names it
    and the OS's reason. Files written by :func:`write_atomically` keep their previous content
    and leave no temporary file behind. ``errno`` is the OS's, when known."""

    def __init__(self, path: Path, cause: BaseException):
        os_error = _os_error(cause)
        reason = (
            os_error.strerror
            if os_error is not None
            else f"{_first_line(cause)} (is the disk full?)"
        )
        super().__init__(f"could not write {path}: {reason}")
        self.path, self.errno = path, None if os_error is None else os_error.errno


class CheckpointWriteError(FileWriteError):
    """A checkpoint could not be written: the checkpoints already on disk are untouched."""


def _os_error(err: BaseException | None) -> OSError | None:
    """The first OSError with an OS reason in an exception chain: a failed write inside
    torch.save surfaces as torch's RuntimeError ("[enforce fail at inline_container.cc] ...")
    or as the OSError of closing the file, chained to each other."""
    while err is not None:
        if isinstance(err, OSError) and err.strerror:
            return err
        err = err.__cause__ or err.__context__
    return None


@contextmanager
def writing(path: Path):
    """OSErrors raised inside become a :class:`FileWriteError` naming ``path``: a failed
    write() or flush() reports only the OS's reason, not the file."""
    try:
        yield
    except FileWriteError:
        raise
    except OSError as err:
        raise FileWriteError(path, err) from err


def temporary_name(path: Path) -> Path:
    """Where :func:`write_atomically` writes ``path`` first (hidden, of this process)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete the temporary files of :func:`write_atomically` in ``folder``: left by a process
    killed while writing (kill -9, out of memory). Only call it while holding the folder's
    run lock, or on a folder no other process writes to."""
    found = [p for p in folder.glob(".*.tmp") if p.is_file()]
    for p in found:
        p.unlink(missing_ok=True)
    return found


def write_atomically(
    path: Path,
    write,
    *,
    durable: bool = False,
    error: type[FileWriteError] = FileWriteError,
    errors: tuple[type[BaseException], ...] = (OSError,),
) -> None:
    """``write(file)`` into a temporary file of the same folder, then rename it to ``path``: a
    kill or a full disk never leaves a part-written file under the final name (the previous
    file, if any, stays as it was). ``durable``: fsync the file and the rename (power loss).
    Exceptions of the types ``errors`` raise ``error`` naming ``path``; the temporary file is
    removed in every case but a kill (see :func:`remove_leftovers`)."""
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable and hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
            fd = os.open(path.parent, os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except errors as err:
        if isinstance(err, FileWriteError):
            raise
        raise error(path, err) from err
    finally:
        tmp.unlink(missing_ok=True)


def write_together(files: dict[Path, bytes]) -> None:
    """Write several files so that either all of them get their new content or none does (a
    set that must match, such as a model's weights and config): each goes to its temporary
    file first, the renames come last. A failure raises :class:`FileWriteError` naming the file
    and leaves the files as they were."""
    staged = []
    try:
        for path, data in files.items():
            staged.append(temporary_name(path))
            with writing(path), open(staged[-1], "wb") as f:
                f.write(data)
        for tmp, path in zip(staged, files):
            with writing(path):
                os.replace(tmp, path)
    finally:
        for tmp in staged:
            tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """``path.write_text(text)`` through :func:`write_atomically`."""
    write_atomically(path, lambda f: f.write(text.encode()))


def atomic_save(obj: dict, path: Path) -> None:
    """torch.save to a temp file in the same folder, fsync, rename: a crash, a kill or a full
    disk never leaves a truncated checkpoint under the final name. A failed write (OSError, or
    torch's RuntimeError around it) raises :class:`CheckpointWriteError`."""
    write_atomically(
        path,
        lambda f: torch.save(obj, f),
        durable=True,
        error=CheckpointWriteError,
        errors=(OSError, RuntimeError),
    )


def save_sample_grid(images: dict[str, torch.Tensor], path: Path) -> None:
    """One row per image, one column per entry (in order); [-1, 1] -> [0, 1], grey -> RGB."""
    from torchvision.utils import make_grid, save_image  # ~1 s import, only needed here

    columns = []
    for name, x in images.items():
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"samples()[{name!r}] must be (B, 1 or 3, H, W), got {tuple(x.shape)}")
        columns.append(x.detach().float().cpu().add(1).div(2).clamp(0, 1).expand(-1, 3, -1, -1))
    grid = make_grid(torch.stack(columns, dim=1).flatten(0, 1), nrow=len(columns))
    write_atomically(path, lambda f: save_image(grid, f, format="png"))
