"""Every other file the command line reads, damaged or of the wrong kind: a run folder's
config.json, a sweep spec, an exported model's config.json and model.safetensors, an image to
translate, a label map to score. Truncated, empty, random bytes, code (a pickle; for the YAML
spec a python tag) or a readable file of another kind: exit 2, one line naming the file and
what was expected, nothing from the file run. (Checkpoints: test_bad_files.py.)"""

import functools
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fault_helpers import TINY, RunsCode
from PIL import Image
from safetensors.torch import save

from patchcontrast import evaluate
from patchcontrast.cli import main

CORRUPTIONS = ("truncated", "empty", "random bytes", "code", "wrong kind")
# file kind -> what the message says was expected (one of these)
EXPECTED = {
    "run config.json": ("is not the config.json of a patchcontrast run",),
    "sweep spec": ("sweep spec",),
    "model config.json": ("exported patchcontrast model", "export the model again"),
    "model.safetensors": ("is not a readable safetensors file", "does not fit the generator that"),
    "image": ("is not a readable image",),
    "label map": ("is not a readable image", "label maps must be single-channel"),
}


@pytest.fixture(autouse=True)
def cache(trained, monkeypatch):
    monkeypatch.setenv("PATCHCONTRAST_CACHE", str(trained / "cache"))


@pytest.fixture(scope="module")
def model(trained, tmp_path_factory):
    """The trained run exported as a model folder."""
    folder = tmp_path_factory.mktemp("model") / "model"
    assert main(["export", str(trained / "run"), "--output", str(folder)]) == 0
    return folder


def spec_text() -> str:
    return yaml.safe_dump(
        {
            "name": "tiny",
            "seeds": [0],
            "metrics": ["swd"],
            "overrides": TINY,
            "runs": [{"presets": ["cut"], "grid": {"model.lambda_gan": [1, 2]}}],
        }
    )


def case(kind: str, trained: Path, model: Path, tmp: Path) -> tuple[Path, bytes, bytes, list]:
    """(the file to damage, its good content, a readable file of another kind, the command)."""
    images = next((trained / "cache").glob("*/testA"))
    run_config = (trained / "run" / "config.json").read_bytes()
    if kind == "run config.json":
        shutil.copytree(trained / "run", tmp / "run")
        return (
            tmp / "run" / "config.json",
            run_config,
            (model / "config.json").read_bytes(),
            ["evaluate", "--run", str(tmp / "run")],
        )
    if kind == "sweep spec":
        return (
            tmp / "spec.yaml",
            spec_text().encode(),
            run_config,
            ["sweep", str(tmp / "spec.yaml"), "--root", str(tmp), "--dry-run"],
        )
    if kind.startswith("model"):
        shutil.copytree(model, tmp / "model")
        name = kind.split()[-1]
        state = torch.load(trained / "run" / "checkpoints" / "step_00000002.pt", weights_only=True)[
            "objective"
        ]
        wrong = (
            run_config
            if name == "config.json"
            else save(  # a discriminator's weights
                {k: v.contiguous() for k, v in state.items() if k.startswith("D.")}
            )
        )
        return (
            tmp / "model" / name,
            (model / name).read_bytes(),
            wrong,
            [
                "translate",
                "--checkpoint",
                str(tmp / "model"),
                "--input",
                str(images),
                "--output",
                str(tmp / "out"),
            ],
        )
    checkpoint = (trained / "run" / "checkpoints" / "step_00000002.pt").read_bytes()
    photo = sorted(images.glob("*.png"))[0]
    if kind == "image":
        (tmp / "in").mkdir()
        return (
            tmp / "in" / photo.name,
            photo.read_bytes(),
            checkpoint,
            [
                "translate",
                "--checkpoint",
                str(trained / "run"),
                "--input",
                str(tmp / "in"),
                "--output",
                str(tmp / "out"),
            ],
        )
    (tmp / "fake").mkdir()
    (tmp / "labels").mkdir()
    shutil.copy(photo, tmp / "fake" / photo.name)
    Image.fromarray(np.arange(32 * 32, dtype=np.uint8).reshape(32, 32) % 3).save(
        tmp / "labels" / photo.name
    )
    return (
        tmp / "labels" / photo.name,
        (tmp / "labels" / photo.name).read_bytes(),
        photo.read_bytes(),  # a colour photo
        [
            "evaluate",
            "--fake",
            str(tmp / "fake"),
            "--labels",
            str(tmp / "labels"),
            "--metrics",
            "segmentation",
            "--seg-model",
            "no_such_module:model",
            "--num-classes",
            "3",
            "--output",
            str(tmp / "metrics.json"),
        ],
    )


def damaged(corruption: str, good: bytes, wrong: bytes, kind: str, marker: Path) -> bytes:
    if corruption == "truncated":
        return good[: len(good) * 2 // 3]
    if corruption == "empty":
        return b""
    if corruption == "random bytes":
        return bytes(np.random.default_rng(23).integers(0, 256, 4096, dtype=np.uint8))
    if corruption == "code":
        if kind == "sweep spec":  # YAML's own way to run code when loaded unsafely
            return f"!!python/object/apply:os.system ['touch {marker}']\n".encode()
        return pickle.dumps(RunsCode(marker), protocol=2)
    return wrong


@pytest.mark.parametrize("corruption", CORRUPTIONS)
@pytest.mark.parametrize("kind", list(EXPECTED))
def test_one_line_naming_the_file(kind, corruption, trained, model, tmp_path, capsys):
    path, good, wrong, argv = case(kind, trained, model, tmp_path)
    marker = tmp_path / "marker"
    path.write_bytes(damaged(corruption, good, wrong, kind, marker))
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    *progress, line = err.rstrip("\n").split("\n")  # above it at most a progress bar
    assert all("%|" in p for p in progress), err
    assert line.startswith(f"patchcontrast {argv[0]}: error: ") and str(path) in line, err
    assert any(e in line for e in EXPECTED[kind]), err
    assert not marker.exists()


def test_the_yaml_payload_is_live(tmp_path):
    """The marker check means something for the spec: an unsafe YAML loader runs the tag."""
    yaml.unsafe_load(damaged("code", b"", b"", "sweep spec", tmp_path / "marker"))
    assert (tmp_path / "marker").exists()


def test_the_good_files_work(trained, model, tmp_path, monkeypatch):
    """The cases differ from working commands only in the damaged file."""
    monkeypatch.setattr(evaluate, "_plot", lambda rows, path: None)
    monkeypatch.setattr(
        evaluate, "evaluate_folders", functools.partial(evaluate.evaluate_folders, swd_size=32)
    )
    for kind in ("run config.json", "sweep spec", "model config.json", "image"):
        folder = tmp_path / kind.replace(" ", "_")
        folder.mkdir()
        path, good, _, argv = case(kind, trained, model, folder)
        path.write_bytes(good)
        assert main(argv) == 0, kind
