"""Bad model files given to translate, evaluate --run, diagnose and train --resume: one line
naming the file and what was expected, exit code 2, no traceback, no code from the file run."""

import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from fault_helpers import RunsCode, tiny_train_args

from patchcontrast.cli import main
from patchcontrast.diagnostics import diagnose
from patchcontrast.evaluate import evaluate_run
from patchcontrast.pipeline import load_objective, translate
from patchcontrast.runstate import read_checkpoint

# kind -> (what the file holds, given a real checkpoint's dict and a marker path; the message)
BAD = {
    "truncated": (None, "(truncated or corrupt zip archive)"),
    "empty": (lambda state, marker: b"", "(empty file)"),
    "random bytes": (lambda state, marker: bytes(range(256)) * 8, "no zip archive"),
    "code, torch.save": (
        lambda state, marker: {**state, "objective": RunsCode(marker)},
        "(posix.system) that the weights-only loader refuses; nothing in it was run",
    ),
    "code, plain pickle": (
        lambda state, marker: pickle.dumps(RunsCode(marker), protocol=2),
        "no zip archive",
    ),
    "another zip": (None, "a zip archive that torch cannot read"),
    "state dict": (
        lambda state, marker: state["objective"],
        "it holds a dict with keys 'G.net.1.weight', 'G.net.1.bias'",
    ),
    "optimizer state": (
        lambda state, marker: state["optimizers"]["G"],
        "it holds a dict with keys 'state', 'param_groups'",
    ),
    "discriminator only": (
        lambda state, marker: {
            "D": {k: v for k, v in state["objective"].items() if k.startswith("D.")}
        },
        "it holds a dict with keys 'D', not the dict with keys 'objective', 'config', 'step'",
    ),
}


@pytest.fixture(autouse=True)
def cache(trained, monkeypatch):
    monkeypatch.setenv("PATCHCONTRAST_CACHE", str(trained / "cache"))


def write_bad(kind: str, trained: Path, folder: Path) -> Path:
    """A bad file of ``kind`` in ``folder``, named like a checkpoint."""
    good = trained / "run" / "checkpoints" / "step_00000002.pt"
    path, marker = folder / "step_00000002.pt", folder / "marker"
    folder.mkdir(parents=True, exist_ok=True)
    content = BAD[kind][0]
    if kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "another zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("notes.txt", "not a model")
    else:
        made = content(torch.load(good, weights_only=True), marker)
        if isinstance(made, bytes):
            path.write_bytes(made)
        else:
            torch.save(made, path)
    return path


def test_a_good_checkpoint_reads(trained):
    path = trained / "run" / "checkpoints" / "step_00000002.pt"
    assert read_checkpoint(path)["step"] == 2
    objective, cfg, found = load_objective(trained / "run")
    assert found == path and not objective.training


@pytest.mark.parametrize("kind", list(BAD))
def test_the_library_refuses_with_the_file_and_the_problem(kind, trained, tmp_path):
    path = write_bad(kind, trained, tmp_path / "bad")
    for load in (
        read_checkpoint,
        load_objective,
        lambda p: translate(p, trained / "cache", tmp_path / "out", progress=False),
    ):
        with pytest.raises(ValueError) as info:
            load(path)
        message = str(info.value)
        assert message.startswith(f"{path} is not a ") and BAD[kind][1] in message
        assert "\n" not in message and "weights_only=False" not in message
    assert not (tmp_path / "bad" / "marker").exists()  # nothing from the file ran


@pytest.mark.parametrize("kind", list(BAD))
def test_cli_translate_exits_2_with_one_line(kind, trained, tmp_path, capsys):
    path = write_bad(kind, trained, tmp_path / "bad")
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "translate",
                "--checkpoint",
                str(path),
                "--input",
                str(tmp_path),
                "--output",
                str(tmp_path / "out"),
            ]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and err.count("\n") == 1
    assert err.startswith(f"patchcontrast translate: error: {path} is not a ")
    assert BAD[kind][1] in err
    assert not (tmp_path / "bad" / "marker").exists()


@pytest.mark.parametrize("command", ["translate", "evaluate", "diagnose", "train"])
@pytest.mark.parametrize("kind", ["truncated", "code, torch.save"])
def test_every_command_that_reads_a_checkpoint_refuses_it(command, kind, trained, tmp_path, capsys):
    run = tmp_path / "run"  # a copy of the run whose newest checkpoint is bad
    shutil.copytree(trained / "run", run)
    path = write_bad(kind, trained, run / "checkpoints")
    images = trained / "cache"
    argv = {
        "translate": [
            "translate",
            "--checkpoint",
            str(run),
            "--input",
            str(images),
            "--output",
            str(tmp_path / "out"),
        ],
        "evaluate": ["evaluate", "--run", str(run)],
        "diagnose": [
            "diagnose",
            "--checkpoint",
            str(run),
            "--images",
            str(images),
            "--output",
            str(tmp_path / "out"),
        ],
        "train": [*tiny_train_args(run, "train.max_steps=4"), "--resume"],
    }[command]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert f"error: {path} is not a readable patchcontrast checkpoint (" in err
    assert BAD[kind][1] in err
    assert not (run / "checkpoints" / "marker").exists()


def test_library_functions_of_every_command_refuse(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    path = write_bad("truncated", trained, run / "checkpoints")
    for call in (
        lambda: evaluate_run(run, progress=False),
        lambda: diagnose(run, trained / "cache", tmp_path / "out", progress=False),
    ):
        with pytest.raises(ValueError, match=f"{path} is not a readable patchcontrast"):
            call()


def test_the_code_payload_is_live(tmp_path):
    """The marker checks above mean something: a plain unpickler does run the payload."""
    pickle.loads(pickle.dumps(RunsCode(tmp_path / "marker")))
    assert (tmp_path / "marker").exists()
