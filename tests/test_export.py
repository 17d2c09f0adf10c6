"""Exported model folders: ``patchcontrast export``, ``Translator``, ``translate --checkpoint
MODEL_DIR``, ONNX, torch.hub, the model card and the errors of bad folders."""

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from patchcontrast.cli import main
from patchcontrast.config import resolve_config
from patchcontrast.evaluate import evaluate_run
from patchcontrast.export import export_model, export_onnx
from patchcontrast.nets.stylegan2 import StyleGAN2Generator
from patchcontrast.pipeline import load_objective, read_input, train
from patchcontrast.translator import FORMAT, Translator

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.ngf=8",
    "model.ndf=8",
    "model.netF_nc=16",
    "model.num_patches=32",
    "model.n_blocks=2",
    "data.load_size=36",
    "data.crop_size=32",
    "data.builtin_train=4",
    "data.builtin_test=2",
    "train.batch_size=2",
    "train.log_every=1",
    "train.sample_every=100",
    "train.checkpoint_every=2",
    "train.max_steps=2",
]
# spade-gan-only trains without VGG-19 weights (no perceptual or contrastive metric)
PAIRED_TINY = [
    "model.ngf=4",
    "model.ndf=4",
    "model.n_layers_d=2",
    "data.load_size=36",
    "data.crop_size=32",
    "data.builtin_train=4",
    "data.builtin_test=2",
    "train.batch_size=2",
    "train.log_every=1",
    "train.sample_every=100",
    "train.checkpoint_every=2",
    "train.max_steps=2",
]
RUNS = {
    "plain": ("cut", TINY),
    "ema": ("cut", [*TINY, "model.ema=0.9"]),
    "residual": ("cut", [*TINY, "model.residual=true"]),
    "paired": ("spade-gan-only", PAIRED_TINY),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Four 2-step runs (RUNS) and each one's export (ROOT/NAME/model)."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATCHCONTRAST_CACHE", str(root / "cache"))
        for name, (preset, overrides) in RUNS.items():
            train(
                resolve_config(preset, "cpu", run_dir=str(root / name / "run"), overrides=overrides)
            )
            export_model(root / name / "run", root / name / "model")
    return root


@pytest.fixture(autouse=True)
def cache(runs, monkeypatch):
    monkeypatch.setenv("PATCHCONTRAST_CACHE", str(runs / "cache"))


def inputs(name: str, *shape: int) -> torch.Tensor:
    """Random generator inputs of (B, H, W) ``shape``: images, or label maps for paired runs."""
    g = torch.Generator().manual_seed(0)
    if name == "paired":
        return torch.randint(0, 8, (shape[0], 1, *shape[1:]), generator=g)
    return torch.rand(shape[0], 3, *shape[1:], generator=g) * 2 - 1


def cli_error(argv: list[str], capsys) -> str:
    """The stderr of a command that must fail with exit code 2, one line, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and err.count("\n") == 1
    return err


def test_the_folder_holds_the_translating_generator_without_pickle(runs):
    model = runs / "ema" / "model"
    assert sorted(p.name for p in model.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    raw = (model / "model.safetensors").read_bytes()
    assert not raw.startswith((b"PK", b"\x80"))  # neither torch.save's zip nor a pickle
    weights = load_file(model / "model.safetensors")
    state = torch.load(runs / "ema/run/checkpoints/step_00000002.pt", weights_only=True)
    ema = {k[len("G_ema.") :]: v for k, v in state["objective"].items() if k.startswith("G_ema.")}
    assert weights.keys() == ema.keys()
    assert all(torch.equal(weights[k], ema[k]) for k in ema)
    assert not torch.equal(weights["net.1.weight"], state["objective"]["G.net.1.weight"])
    config = json.loads((model / "config.json").read_text())
    assert (config["format"], config["generator"], config["step"]) == (FORMAT, "G_ema", 2)
    assert config["preset"] == "cut" and config["model"]["ema"] == 0.9
    assert config["data"] == {"channels": 3, "load_size": 36, "crop_size": 32, "direction": "AtoB"}
    assert "x / 127.5 - 1" in config["normalization"]["input"]
    paired = json.loads((runs / "paired/model/config.json").read_text())
    assert paired["family"] == "paired" and paired["generator"] == "G"


@pytest.mark.parametrize("name", list(RUNS))
def test_from_pretrained_translates_exactly_as_the_checkpoint(name, runs):
    translator = Translator.from_pretrained(runs / name / "model")
    objective = load_objective(runs / name / "run")[0]
    x = inputs(name, 2, 37, 50)  # odd sizes: the padding is exercised too
    assert not translator.training
    assert torch.equal(translator(x), objective.translate(x))
    assert {k.split(".")[0] for k in translator.state_dict()} == {"generator"}


def test_translate_file_reads_as_translate_does(runs, tmp_path):
    path = tmp_path / "odd.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (21, 30, 3), np.uint8)).save(path)
    translator = Translator.from_pretrained(runs / "residual" / "model")
    objective, cfg, _ = load_objective(runs / "residual" / "run")
    expected = objective.translate(read_input(path, cfg)[None])[0]
    assert torch.equal(translator.translate_file(path), expected)


def test_cli_export_then_translate_gives_the_same_pngs(runs, tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["export", str(runs / "ema" / "run"), "--output", str(model)]) == 0
    assert "wrote model.safetensors, config.json, README.md" in capsys.readouterr().out
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for name, size in (("a", (32, 32)), ("b", (37, 50)), ("c", (20, 24))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), np.uint8)).save(images / f"{name}.png")
    for checkpoint, out in ((runs / "ema" / "run", "from_run"), (model, "from_model")):
        assert (
            main(
                [
                    "translate",
                    "--checkpoint",
                    str(checkpoint),
                    "--input",
                    str(images),
                    "--output",
                    str(tmp_path / out),
                ]
            )
            == 0
        )
    for name in "abc":
        a = np.asarray(Image.open(tmp_path / "from_run" / f"{name}.png"))
        b = np.asarray(Image.open(tmp_path / "from_model" / f"{name}.png"))
        assert np.array_equal(a, b)
    record = json.loads((tmp_path / "from_model" / "translation.json").read_text())
    assert record["checkpoint"] == str(model / "model.safetensors")


# residual: atanh; every resnet: anti-aliased blur down/up-sampling, reflection padding
@pytest.mark.parametrize(
    "name, sizes",
    [
        pytest.param("residual", ((1, 32, 32), (2, 48, 40)), id="residual"),
        pytest.param("paired", ((1, 32, 32), (2, 96, 64)), id="paired", marks=pytest.mark.slow),
    ],
)
def test_onnx_matches_pytorch_on_two_sizes(name, sizes, runs, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    model = tmp_path / "model"
    assert main(["export", str(runs / name / "run"), "--output", str(model), "--onnx"]) == 0
    config = json.loads((model / "config.json").read_text())["onnx"]
    assert config["size_multiple"] == (32 if name == "paired" else 4)
    session = ort.InferenceSession(str(model / "model.onnx"), providers=["CPUExecutionProvider"])
    generator = Translator.from_pretrained(model).generator
    for batch, h, w in sizes:
        x = inputs(name, batch, h, w)
        if name == "paired":  # the graph takes one-hot maps of the 8 built-in classes
            x = torch.nn.functional.one_hot(x[:, 0], 8).permute(0, 3, 1, 2).float()
        (y,) = session.run(None, {config["input"]: x.numpy()})
        with torch.no_grad():
            expected = generator(x).numpy()
        assert y.shape == (batch, 3, h, w)
        np.testing.assert_allclose(y, expected, rtol=0, atol=1e-4)


def test_a_layer_that_does_not_export_to_onnx_is_named(tmp_path):
    pytest.importorskip("onnxscript")
    # SinCUT's noise injection draws its fixed noise at the input's (dynamic) size
    generator = StyleGAN2Generator(3, 3, ngf=2, n_downsampling=1).eval()
    with pytest.raises(ValueError) as info:
        export_onnx(generator, tmp_path / "model.onnx")
    message = str(info.value)
    assert "NoiseInjection" in message and "net." in message and "\n" not in message
    assert not (tmp_path / "model.onnx").exists()


def test_torch_hub_loads_a_model_folder_from_the_local_repository(runs):
    translator = torch.hub.load(
        str(ROOT), "translator", source="local", model_dir=str(runs / "plain" / "model")
    )
    assert isinstance(translator, Translator) and not translator.training
    x = inputs("plain", 1, 32, 32)
    assert torch.equal(translator(x), load_objective(runs / "plain" / "run")[0].translate(x))


def test_the_model_card_describes_the_run_and_its_command_resolves_to_it(runs, capsys):
    card = (runs / "ema" / "model" / "README.md").read_text()
    front, body = card.split("---\n")[1:3]
    assert "library_name: patchcontrast" in front and "- image-to-image" in front
    assert "`cut` preset" in body and "2 iterations" in body and "G_ema" in body
    assert "reconstructed" in body and "No metrics were measured" in body
    command = body.split("```bash\n")[1].split("\n")[0]
    assert command.startswith("patchcontrast train --preset cut --scale cpu")
    assert main([*shlex.split(command)[1:], "--dry-run"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    saved = json.loads((runs / "ema" / "run" / "config.json").read_text())
    for config in (resolved, saved):
        del config["train"]["run_dir"]
    assert resolved == saved


def test_the_model_card_reports_the_measured_metrics(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs / "plain" / "run", run)
    summary = evaluate_run(run, progress=False)
    card = (export_model(run, tmp_path / "model") / "README.md").read_text()
    assert "Scored by `patchcontrast evaluate --run`" in card
    assert f"| swd_avg | {summary['final']['swd_avg']:.4f} |" in card


def test_exporting_again_replaces_the_earlier_export_only(runs, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(runs / "plain" / "model", model)
    (model / "model.onnx").write_bytes(b"stale")  # would no longer match the new weights
    (model / ".gitattributes").write_text("*.safetensors filter=lfs\n")  # a Hub clone's file
    export_model(runs / "ema" / "run", model)
    assert not (model / "model.onnx").exists() and (model / ".gitattributes").is_file()
    assert json.loads((model / "config.json").read_text())["generator"] == "G_ema"


def corrupt(kind: str, model: Path) -> str:
    """Spoil the copied model folder ``model`` in a way ``kind``; returns what the error says."""
    weights = model / "model.safetensors"
    if kind in ("no weights", "no config"):
        missing = model / ("model.safetensors" if kind == "no weights" else "config.json")
        missing.unlink()
        return f"{model} is not an exported patchcontrast model: {missing} is missing"
    if kind == "unknown format":
        config = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps({**config, "format": 99}))
        return f"{model / 'config.json'} is of model format 99; this patchcontrast reads format 1"
    if kind == "missing tensors":
        tensors = load_file(weights)
        del tensors["net.1.weight"]
        save_file(tensors, weights)
        return (
            f"{weights} does not fit the generator that {model / 'config.json'} describes: "
            "missing net.1.weight"
        )
    if kind == "other shapes":  # a config of another width than the tensors'
        config = json.loads((model / "config.json").read_text())
        config["model"]["ngf"] = 16
        (model / "config.json").write_text(json.dumps(config))
        return "wrong shapes net.1.weight (8, 3, 7, 7) instead of (16, 3, 7, 7)"
    if kind == "not safetensors":
        weights.write_bytes(b"\x00" * 64)
        return f"{weights} is not a readable safetensors file"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "no weights",
        "no config",
        "unknown format",
        "missing tensors",
        "other shapes",
        "not safetensors",
    ],
)
def test_a_bad_model_folder_is_refused_in_one_line(kind, runs, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(runs / "plain" / "model", model)
    expected = corrupt(kind, model)
    err = cli_error(
        [
            "translate",
            "--checkpoint",
            str(model),
            "--input",
            str(tmp_path),
            "--output",
            str(tmp_path / "out"),
        ],
        capsys,
    )
    assert err.startswith("patchcontrast translate: error: ") and expected in err
    with pytest.raises(ValueError, match="^" + re.escape(str(model))):
        Translator.from_pretrained(model)


def test_from_pretrained_takes_local_folders_only():
    with pytest.raises(ValueError, match="^user/model is not a folder: .*nothing is downloaded"):
        Translator.from_pretrained("user/model")


def test_export_refuses_a_run_without_checkpoints_and_a_foreign_folder(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs / "plain" / "run", run)
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").mkdir()
    err = cli_error(["export", str(run), "--output", str(tmp_path / "model")], capsys)
    assert f"no checkpoint found: {run} is neither a checkpoint file nor a run folder" in err
    assert not (tmp_path / "model").exists()
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("# my project\n")
    err = cli_error(["export", str(runs / "plain" / "run"), "--output", str(project)], capsys)
    assert f"{project / 'README.md'} exists and is not from a patchcontrast export" in err
    assert (project / "README.md").read_text() == "# my project\n"
