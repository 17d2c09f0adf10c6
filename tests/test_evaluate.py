"""``patchcontrast evaluate`` on the built-in data (SWD, content, domain; FID needs weights)."""

import json

import numpy as np
import pytest
from PIL import Image

from patchcontrast.cli import main
from patchcontrast.data import write_generated_dataset
from patchcontrast.evaluate import evaluate_folders


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    write_generated_dataset(root, n_train=1, n_test=6, size=(64, 64), progress=False)
    return root


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PATCHCONTRAST_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_swd_content_domain_on_ground_truth(data):
    # "translations" = the B images themselves: real-vs-real SWD is 0, the domain score 1
    result = evaluate_folders(data / "testB", data / "testB", metrics=("swd", "domain"),
                              swd_size=64, progress=False)
    assert result["metrics"]["swd_avg"] == pytest.approx(0.0, abs=1e-9)
    assert result["metrics"]["domain_b"] == 1.0
    assert result["n_real"] == result["n_fake"] == 6
    # source A images scored against their own masks: the objects are where the masks say
    result = evaluate_folders(data / "testB", data / "testA", metrics=("swd", "content"),
                              masks=data / "testA_masks", swd_size=64, progress=False)
    assert result["metrics"]["content_iou"] > 0.9
    assert result["metrics"]["swd_avg"] > 10  # plain horses vs striped zebras
    assert result["settings"]["swd"]["size"] == 64


def test_errors_are_clear(data, tmp_path):
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_folders(data / "testB", data / "testA", metrics=("lpips",))
    with pytest.raises(ValueError, match="needs --masks"):
        evaluate_folders(data / "testB", data / "testA", metrics=("content",))
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(other / "unknown.png")
    with pytest.raises(ValueError, match="no mask"):
        evaluate_folders(data / "testB", other, metrics=("content",),
                         masks=data / "testA_masks")


def test_cli_writes_json_and_reports_missing_weights(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.json"
    assert main(["evaluate", "--real", str(data / "testB"), "--fake", str(data / "testA"),
                 "--metrics", "swd", "--output", str(out)]) == 0
    assert "swd_avg" in json.loads(out.read_text())["metrics"]
    assert "| swd_avg" in capsys.readouterr().out
    import torch

    monkeypatch.delenv("PATCHCONTRAST_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--real", str(data / "testB"), "--fake", str(data / "testA"),
              "--metrics", "fid"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "pt_inception-2015-12-05-6726825d.pth" in err and "Traceback" not in err


def test_evaluate_run_over_checkpoints(tmp_path, capsys):
    import csv

    from patchcontrast.config import resolve_config
    from patchcontrast.pipeline import train

    overrides = ["model.ngf=8", "model.ndf=8", "model.netF_nc=16", "model.num_patches=32",
                 "data.load_size=36", "data.crop_size=32", "data.builtin_train=4",
                 "data.builtin_test=3", "train.batch_size=2", "train.checkpoint_every=2",
                 "train.max_steps=4", "train.sample_every=4"]
    run = tmp_path / "run"
    train(resolve_config("cut", "cpu", run_dir=str(run), overrides=overrides))
    assert main(["evaluate", "--run", str(run), "--metrics", "swd,content"]) == 0
    rows = list(csv.DictReader(open(run / "eval/metrics.csv")))
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert {"swd_avg", "content_iou"} <= set(rows[0])
    summary = json.loads((run / "eval/summary.json").read_text())
    assert summary["final"]["step"] == 4 and summary["best_selected_on_test_set"]["by"] == "swd_avg"
    assert (run / "eval/metrics.png").stat().st_size > 0
    assert "best_selected_on_test_set" in capsys.readouterr().out


def test_evaluate_needs_folders_or_a_run(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--real", "x"])
    assert "give --real and --fake folders, or --run" in capsys.readouterr().err
