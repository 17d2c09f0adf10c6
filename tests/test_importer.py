"""``patchcontrast import`` and ``translate --checkpoint FILE.pth``: generator files of the
official CUT / MoNCE / CycleGAN code (patchcontrast.importer).

The fixtures in tests/fixtures/official were made by running the official CUT code (its
README.md there has the commands): their translations of input.png are the official test
output, which ours must match within 1/255 per pixel."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from patchcontrast.cli import main
from patchcontrast.importer import (
    import_model,
    import_translator,
    infer_architecture,
    read_state_dict,
)
from patchcontrast.translator import Translator

OFFICIAL = Path(__file__).resolve().parent / "fixtures" / "official"
INPUT = OFFICIAL / "input.png"
# what the fixtures were trained as (tests/fixtures/official/README.md)
FIXTURES = {
    "cut_antialias": {
        "input_nc": 3,
        "output_nc": 3,
        "ngf": 8,
        "n_blocks": 6,
        "antialias": True,
        "antialias_up": True,
        "dropout": False,
        "norm": "instance",
    },
    "cyclegan_layout": {
        "input_nc": 3,
        "output_nc": 3,
        "ngf": 8,
        "n_blocks": 6,
        "antialias": False,
        "antialias_up": False,
        "dropout": True,
        "norm": "instance",
    },
}


def generator_file(name: str) -> Path:
    return OFFICIAL / name / "latest_net_G.pth"


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int64)


def cli_error(argv: list[str], capsys) -> str:
    """The stderr of a command that must fail with exit code 2, one line, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and err.count("\n") == 1
    return err


def binomial(taps: list[float], channels: int, total: float) -> torch.Tensor:
    t = torch.tensor(taps)
    k = torch.outer(t, t)
    return (k / k.sum() * total).expand(channels, 1, -1, -1).clone()


def official_state(
    ngf=4,
    n_blocks=2,
    antialias=True,
    antialias_up=True,
    dropout=False,
    input_nc=3,
    output_nc=3,
    prefix="",
) -> dict:
    """A state dict with the keys and shapes that the official ResnetGenerator saves, written
    from its layer list (independently of patchcontrast.importer's own mapping)."""
    g = torch.Generator().manual_seed(0)
    sd = {}

    def conv(index, out, inp, k, name="model"):
        sd[f"{name}.{index}.weight"] = torch.randn(out, inp, k, k, generator=g) * 0.1
        sd[f"{name}.{index}.bias"] = torch.randn(out, generator=g) * 0.1

    conv(1, ngf, input_nc, 7)  # 0 pad, 1 conv, 2 norm, 3 relu
    i, c = 4, ngf
    for _ in range(2):
        conv(i, 2 * c, c, 3)
        if antialias:  # conv, norm, relu, Downsample
            sd[f"model.{i + 3}.filt"] = binomial([1, 2, 1], 2 * c, 1)
            i += 4
        else:  # stride-2 conv, norm, relu
            i += 3
        c *= 2
    for _ in range(n_blocks):  # pad, conv, norm, relu, [dropout], pad, conv, norm
        conv(1, c, c, 3, name=f"model.{i}.conv_block")
        conv(6 if dropout else 5, c, c, 3, name=f"model.{i}.conv_block")
        i += 1
    for _ in range(2):
        if antialias_up:  # Upsample, conv, norm, relu
            sd[f"model.{i}.filt"] = binomial([1, 3, 3, 1], c, 4)
            conv(i + 1, c // 2, c, 3)
            i += 4
        else:  # transposed conv (weight: in, out, k, k), norm, relu
            sd[f"model.{i}.weight"] = torch.randn(c, c // 2, 3, 3, generator=g) * 0.1
            sd[f"model.{i}.bias"] = torch.randn(c // 2, generator=g) * 0.1
            i += 3
        c //= 2
    conv(i + 1, output_nc, ngf, 7)  # pad, conv, tanh
    return {prefix + k: v for k, v in sd.items()}


# -- parity with the official test output ------------------------------------------------------
@pytest.mark.parametrize("name", list(FIXTURES))
def test_translation_equals_the_official_test_output_within_one_level(name, tmp_path):
    """translate --checkpoint FILE.pth writes PNGs within 1/255 of the official test.py's
    (which truncates (y + 1) / 2 * 255, where ours rounds); truncated like upstream, ours are
    within 1/255 too (float noise across machines), and equal for nearly every pixel."""
    assert (
        main(
            [
                "translate",
                "--checkpoint",
                str(generator_file(name)),
                "--input",
                str(INPUT),
                "--output",
                str(tmp_path),
            ]
        )
        == 0
    )
    official = png(OFFICIAL / name / "official_fake_B.png")
    ours = png(tmp_path / "input.png")
    assert ours.shape == official.shape == (64, 64, 3)
    assert np.abs(ours - official).max() <= 1
    translator, _ = import_translator(generator_file(name))
    y = translator.translate_file(INPUT).clamp(-1, 1)
    truncated = ((y + 1) / 2 * 255).permute(1, 2, 0).numpy().astype(np.uint8).astype(np.int64)
    assert np.abs(truncated - official).max() <= 1
    assert (truncated == official).mean() > 0.99
    assert official.std() > 10  # a real translation, not a constant image


@pytest.mark.parametrize("name", list(FIXTURES))
def test_the_architecture_is_read_from_the_official_files(name):
    state = read_state_dict(generator_file(name))
    assert all(not k.startswith("module.") for k in state)  # saved with the prefix, stripped
    assert infer_architecture(state, "f").__dict__ == FIXTURES[name]


@pytest.mark.parametrize(
    "settings",
    [
        {"antialias": True, "antialias_up": False},
        {"antialias": False, "antialias_up": True},
        {"dropout": True, "n_blocks": 3},
        {"ngf": 6, "n_blocks": 1},
        {"input_nc": 1, "output_nc": 3},
        {"input_nc": 3, "output_nc": 1, "antialias": False},
    ],
)
def test_every_attribute_is_inferred(settings, tmp_path):
    state = official_state(**settings)
    expected = {
        "input_nc": 3,
        "output_nc": 3,
        "ngf": 4,
        "n_blocks": 2,
        "antialias": True,
        "antialias_up": True,
        "dropout": False,
        "norm": "instance",
        **settings,
    }
    assert infer_architecture(state, "f").__dict__ == expected
    torch.save(state, tmp_path / "latest_net_G.pth")
    translator, config = import_translator(tmp_path / "latest_net_G.pth")
    x = torch.rand(1, expected["input_nc"], 20, 28) * 2 - 1
    y = translator.translate(x)
    assert y.shape == (1, expected["output_nc"], 20, 28) and y.abs().max() <= 1
    assert config["imported_from"]["architecture"] == expected
    assert config["data"]["channels"] == expected["input_nc"]


def test_the_module_prefix_is_optional_and_gives_the_same_translation(tmp_path):
    with_prefix = torch.load(generator_file("cut_antialias"), weights_only=True)
    assert all(k.startswith("module.") for k in with_prefix)
    torch.save({k[len("module.") :]: v for k, v in with_prefix.items()}, tmp_path / "G.pth")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    a, config_a = import_translator(generator_file("cut_antialias"))
    b, config_b = import_translator(tmp_path / "G.pth")
    assert torch.equal(a.translate(x), b.translate(x))
    assert config_a["imported_from"]["module_prefix"] is True
    assert config_b["imported_from"]["module_prefix"] is False


def test_the_direction_defaults_from_the_file_name_and_can_be_given(tmp_path):
    torch.save(official_state(), tmp_path / "latest_net_G_B.pth")
    assert import_translator(tmp_path / "latest_net_G_B.pth")[1]["data"]["direction"] == "BtoA"
    assert import_translator(generator_file("cut_antialias"))[1]["data"]["direction"] == "AtoB"
    config = import_translator(generator_file("cut_antialias"), direction="BtoA")[1]
    assert config["data"]["direction"] == "BtoA"


# -- the model folder and the CLI ---------------------------------------------------------------
def test_import_writes_a_model_folder_that_translates_as_the_file(tmp_path, capsys):
    source = generator_file("cyclegan_layout")
    model = tmp_path / "model"
    assert main(["import", str(source), "--output", str(model)]) == 0
    assert "wrote model.safetensors" in capsys.readouterr().out
    assert sorted(p.name for p in model.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    config = json.loads((model / "config.json").read_text())
    assert config["imported_from"]["file"] == "latest_net_G.pth"
    card = (model / "README.md").read_text()
    assert "Imported by `patchcontrast import`" in card and "latest_net_G.pth" in card
    assert "stride-2 convs" in card and "dropout" in card
    for checkpoint, out in ((model, "a"), (source, "b")):
        assert (
            main(
                [
                    "translate",
                    "--checkpoint",
                    str(checkpoint),
                    "--input",
                    str(INPUT),
                    "--output",
                    str(tmp_path / out),
                ]
            )
            == 0
        )
    assert np.array_equal(png(tmp_path / "a" / "input.png"), png(tmp_path / "b" / "input.png"))
    loaded = Translator.from_pretrained(model)
    direct = import_translator(source)[0]
    x = torch.rand(2, 3, 24, 36) * 2 - 1
    assert torch.equal(loaded.translate(x), direct.translate(x))
    import_model(source, model)  # an earlier import is replaced, like an earlier export


def test_import_refuses_to_overwrite_foreign_files(tmp_path, capsys):
    (tmp_path / "README.md").write_text("mine")
    err = cli_error(
        ["import", str(generator_file("cut_antialias")), "--output", str(tmp_path)], capsys
    )
    assert "is not from a patchcontrast export" in err
    assert (tmp_path / "README.md").read_text() == "mine"


# -- files that are not an official generator ---------------------------------------------------
class RunsCode:
    """Unpickling runs ``Path(marker).touch()`` if the loader allowed it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Each kind of wrong file and a phrase its error must contain."""
    raw = generator_file("cut_antialias").read_bytes()
    files = {}

    def add(name, content, phrase, *, save=False):
        path = folder / f"{name}.pth"
        if save:
            torch.save(content, path)
        else:
            path.write_bytes(content)
        files[name] = (path, phrase)

    files["discriminator"] = (OFFICIAL / "cut_antialias" / "latest_net_D.pth", "discriminator")
    files["feature network"] = (OFFICIAL / "cut_antialias" / "latest_net_F.pth", "network F")
    add("truncated", raw[: len(raw) // 2], "truncated")
    for seed in range(8):  # the legacy unpickler fails on random bytes in various ways
        random = np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes()
        add(f"random bytes {seed}", random, "not a file written by torch.save")
    add("empty", b"", "empty")
    add("code", {"a": RunsCode(folder / "marker")}, "nothing in it was run", save=True)
    with open(folder / "code_legacy.pth", "wb") as f:  # a bare pickle (the legacy format)
        pickle.dump({"a": RunsCode(folder / "marker")}, f)
    files["legacy code"] = (folder / "code_legacy.pth", "not a file written by torch.save")
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))])
    opt.step()
    add("optimizer", opt.state_dict(), "optimizer state", save=True)
    add("not tensors", {"epoch": 3}, "not a state dict of tensors", save=True)
    unet = {"model.model.0.weight": torch.zeros(4, 3, 4, 4)}
    add("u-net", unet, "U-Net", save=True)
    state = official_state()
    del state["model.8.weight"]
    add("missing layer", state, "missing model.8.weight", save=True)
    state = official_state()
    state["model.30.weight"] = torch.zeros(1)
    add("extra layer", state, "unexpected model.30.weight", save=True)
    add("stylegan", {"mapping.0.weight": torch.zeros(2, 2)}, "not an official ResNet", save=True)
    add("two channels", official_state(input_nc=2), "2 input channels", save=True)
    state = official_state()
    state["model.2.running_mean"] = torch.zeros(4)
    add("batch norm", state, "batch norm", save=True)
    add(
        "no norm",
        {k: v for k, v in official_state().items() if not k.endswith(".bias")},
        "without normalisation",
        save=True,
    )
    state = official_state()
    state["model.7.filt"] = state["model.7.filt"] * 2
    add("other filter", state, "anti-aliasing filter model.7.filt", save=True)
    return files


def test_every_wrong_file_is_refused_with_a_one_line_error(tmp_path, capsys):
    for name, (path, phrase) in bad_files(tmp_path).items():
        for argv in (
            ["import", str(path), "--output", str(tmp_path / "out")],
            [
                "translate",
                "--checkpoint",
                str(path),
                "--input",
                str(INPUT),
                "--output",
                str(tmp_path / "out"),
            ],
        ):
            err = cli_error(argv, capsys)
            assert str(path) in err and phrase in err, (name, err)
    assert not (tmp_path / "marker").exists()  # the pickled code never ran
    assert not (tmp_path / "out").exists()


def test_a_patchcontrast_checkpoint_named_pth_is_read_as_a_checkpoint(tmp_path):
    from patchcontrast.pipeline import load_objective

    with pytest.raises(ValueError, match="patchcontrast checkpoint, not an official"):
        read_state_dict(_fake_checkpoint(tmp_path / "ours.pth"))
    # translate hands it to the checkpoint reader, whose error is about the checkpoint itself
    with pytest.raises(ValueError) as err:
        load_objective(tmp_path / "ours.pth")
    assert "official" not in str(err.value)


def _fake_checkpoint(path: Path) -> Path:
    torch.save({"objective": {}, "config": {"preset": "nope"}}, path)
    return path
