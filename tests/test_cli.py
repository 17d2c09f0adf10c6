"""The ``patchcontrast`` command: help, the loss demo, clear errors."""

import json
import subprocess
import sys

import pytest

from patchcontrast.cli import main
from patchcontrast.loss_demo import LossDemoConfig, run_loss_demo


def test_help_lists_commands():
    out = subprocess.run(
        [sys.executable, "-m", "patchcontrast", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "demo" in out and "MoNCE" in out


def test_demo_help_explains_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["loss-demo", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--losses" in out and "retrieval accuracy" in out


def test_demo_learns_and_writes_results(tmp_path, capsys):
    assert (
        main(
            [
                "loss-demo",
                "--steps",
                "40",
                "--losses",
                "patchnce",
                "monce",
                "--patches",
                "64",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "results.json").read_text())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["steps"] == 40 and [r["loss"] for r in results] == ["patchnce", "monce"]
    for r in results:  # training must improve patch retrieval over the untrained head
        assert r["top1_after"] > r["top1_before"] + 0.05
    assert "| monce" in capsys.readouterr().out


def test_demo_is_deterministic():
    cfg = LossDemoConfig(losses=("put",), steps=5, patches=32)
    first, second = run_loss_demo(cfg), run_loss_demo(cfg)
    for r in first + second:
        r.pop("ms_per_step")
    assert first == second


@pytest.mark.parametrize(
    "argv, message",
    [
        (["loss-demo", "--steps", "0"], "steps must be >= 1"),
        (["loss-demo", "--patches", "1"], "patches must be >= 2"),
    ],
)
def test_demo_bad_input_is_a_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_loss_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["loss-demo", "--losses", "infonce"])
    assert "invalid choice: 'infonce'" in capsys.readouterr().err


def test_download_offline_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "download",
                "horse2zebra",
                "--root",
                str(tmp_path),
                "--url",
                "http://127.0.0.1:9/horse2zebra.zip",
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "cannot reach" in err and "Traceback" not in err


def test_download_help_lists_datasets(capsys):
    with pytest.raises(SystemExit):
        main(["download", "--help"])
    assert "horse2zebra" in capsys.readouterr().out
