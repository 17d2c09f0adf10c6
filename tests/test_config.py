"""Config resolution: presets, scales, files, overrides, validation."""

import json

import pytest

from patchcontrast.config import (
    PRESETS,
    SCALES,
    CUTConfig,
    DataConfig,
    config_from_dict,
    resolve_config,
)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("scale", sorted(SCALES))
def test_every_preset_and_scale_resolves_and_round_trips(preset, scale):
    cfg = resolve_config(preset, scale)
    assert cfg.preset == preset and cfg.scale == scale
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_presets_follow_the_papers():
    assert resolve_config("cut", "paper").model == CUTConfig()
    fast = resolve_config("fastcut", "paper")
    assert (fast.model.nce_idt, fast.model.lambda_nce, fast.model.flip_equivariance) == (
        False,
        10.0,
        True,
    )
    assert (fast.train.n_epochs, fast.train.n_epochs_decay) == (150, 50)
    monce = resolve_config("cut-monce", "paper")
    assert monce.model.contrastive == "monce" and monce.train.batch_size == 12
    assert monce.model.loss_options == {"weighting": "hard", "beta": 0.1, "Q": 1.0}
    assert resolve_config("cut-put", "paper").model.loss_options == {"k_neg": 5}
    assert resolve_config("gan-only", "paper").model.contrastive == "none"


def test_default_is_cpu_monce_on_builtin_data():
    cfg = resolve_config()
    assert cfg.preset == "cut-monce" and cfg.scale == "cpu"
    assert cfg.data.dataroot == "builtin" and cfg.data.crop_size == 64
    assert cfg.train.batch_size == 4


def test_file_then_overrides(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("model:\n  lambda_nce: 2\ntrain:\n  n_epochs: 7\n")
    cfg = resolve_config(
        "cut",
        "cpu",
        file=yaml_file,
        overrides=["train.n_epochs=9", "model.loss_options={}", "model.nce_layers=[0, 4, 8]"],
    )
    assert cfg.model.lambda_nce == 2.0 and isinstance(cfg.model.lambda_nce, float)
    assert cfg.train.n_epochs == 9 and cfg.model.nce_layers == (0, 4, 8)
    json_file = tmp_path / "run.json"
    json_file.write_text(json.dumps({"data": {"crop_size": 32, "load_size": 40}}))
    assert resolve_config("cut", "cpu", file=json_file).data.crop_size == 32


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"preset": "cut-infonce"}, "preset must be one of"),
        ({"scale": "tiny"}, "scale must be one of"),
        ({"overrides": ["n_epochs=3"]}, "must look like section.key=value"),
        ({"overrides": ["train.epochs=3"]}, "unknown train option"),
        ({"overrides": ["optim.lr=3"]}, "unknown config section 'optim'"),
        ({"overrides": ["model.gan_mode=wgan"]}, "gan_mode must be one of"),
        (
            {"overrides": ["model.contrastive=monce", "model.loss_options={beta: -1}"]},
            "beta must be a positive",
        ),
        ({"overrides": ["model.loss_options={beta: 0.5}"]}, "invalid option for loss 'patchnce'"),
        ({"overrides": ["data.crop_size=30", "data.load_size=30"]}, "multiples of 4"),
        ({"overrides": ["model.nce_layers=[4, 0]"]}, "nce_layers must be distinct increasing"),
    ],
)
def test_bad_configs_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resolve_config(**{"preset": "cut", "scale": "cpu", **kwargs})


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["data.label_offset=abc"], "data.label_offset must be an int; got 'abc'"),
        (["data.label_offset=true"], "data.label_offset must be an int; got True"),
        (
            ["model.dont_care=true", "data.ignore_value=abc"],
            "data.ignore_value must be an int or null; got 'abc'",
        ),
    ],
)
def test_bad_paired_label_settings_are_clear_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        resolve_config("spade-monce", "cpu", overrides=overrides)


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        resolve_config(file=tmp_path / "nope.yaml")
    bad = tmp_path / "run.toml"
    bad.write_text("x = 1")
    with pytest.raises(ValueError, match="must end in .yaml"):
        resolve_config(file=bad)


def test_data_config_validation():
    with pytest.raises(ValueError, match="load_size .* must be >= crop_size"):
        DataConfig(load_size=32, crop_size=64)
    with pytest.raises(ValueError, match="channels must be one of"):
        DataConfig(channels=2)


def test_non_square_sizes():
    cfg = resolve_config(
        "cut", "cpu", overrides=["data.load_size=[72, 136]", "data.crop_size=[64, 128]"]
    )
    assert cfg.data.crop_size == (64, 128) and cfg.data.load_size == (72, 136)
    with pytest.raises(ValueError, match="multiples of 4"):
        DataConfig(load_size=(72, 136), crop_size=(64, 126))
    with pytest.raises(ValueError, match="must be >= crop_size"):
        DataConfig(load_size=(60, 136), crop_size=(64, 128))
    with pytest.raises(ValueError, match="an int or \\[height, width\\]"):
        DataConfig(crop_size="64")


def test_floats_written_without_a_dot_are_numbers():
    # YAML 1.1 reads "1e-3" as a string; a float field takes it as the number
    cfg = resolve_config("cut", "cpu", overrides=["model.lr=1e-3", "model.lr_d=2e-4"])
    assert cfg.model.lr == 1e-3 and cfg.model.lr_d == 2e-4
    with pytest.raises(ValueError, match="model.lr must be a number"):
        resolve_config("cut", "cpu", overrides=["model.lr=fast"])
