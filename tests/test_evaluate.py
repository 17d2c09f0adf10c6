"""``patchcontrast evaluate`` on the built-in data (SWD, content, domain; FID needs weights)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
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
    result = evaluate_folders(
        data / "testB", data / "testB", metrics=("swd", "domain"), swd_size=64, progress=False
    )
    assert result["metrics"]["swd_avg"] == pytest.approx(0.0, abs=1e-9)
    assert result["metrics"]["domain_b"] == 1.0
    assert result["n_real"] == result["n_fake"] == 6
    # source A images scored against their own masks: the objects are where the masks say
    result = evaluate_folders(
        data / "testB",
        data / "testA",
        metrics=("swd", "content"),
        masks=data / "testA_masks",
        swd_size=64,
        progress=False,
    )
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
        evaluate_folders(data / "testB", other, metrics=("content",), masks=data / "testA_masks")


def test_cli_writes_json_and_reports_missing_weights(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.json"
    assert (
        main(
            [
                "evaluate",
                "--real",
                str(data / "testB"),
                "--fake",
                str(data / "testA"),
                "--metrics",
                "swd",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    assert "swd_avg" in json.loads(out.read_text())["metrics"]
    assert "| swd_avg" in capsys.readouterr().out
    import torch

    monkeypatch.delenv("PATCHCONTRAST_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "evaluate",
                "--real",
                str(data / "testB"),
                "--fake",
                str(data / "testA"),
                "--metrics",
                "fid",
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "pt_inception-2015-12-05-6726825d.pth" in err and "Traceback" not in err


def test_cli_size_scores_at_that_size(data, tmp_path, capsys):
    # the CLI at --size 64 reproduces the library's 64 px figure, not the default 256 px one
    args = [
        "evaluate",
        "--real",
        str(data / "testB"),
        "--fake",
        str(data / "testA"),
        "--metrics",
        "swd",
    ]
    at = {}
    for size in (None, "64"):
        out = tmp_path / f"{size}.json"
        assert main([*args, "--output", str(out), *(["--size", size] if size else [])]) == 0
        at[size] = json.loads(out.read_text())
    expected = evaluate_folders(data / "testB", data / "testA", swd_size=64, progress=False)
    assert at["64"]["metrics"] == pytest.approx(expected["metrics"])
    assert at["64"]["settings"]["swd"]["size"] == 64 and at[None]["settings"]["swd"]["size"] == 256
    assert at[None]["metrics"]["swd_avg"] != pytest.approx(expected["metrics"]["swd_avg"])
    with pytest.raises(SystemExit):
        main(["evaluate", "--run", str(tmp_path), "--size", "64"])
    assert "--size applies to --real/--fake" in capsys.readouterr().err


def test_evaluate_run_over_checkpoints(tmp_path, capsys):
    import csv

    from patchcontrast.config import resolve_config
    from patchcontrast.pipeline import train

    overrides = [
        "model.ngf=8",
        "model.ndf=8",
        "model.netF_nc=16",
        "model.num_patches=32",
        "data.load_size=36",
        "data.crop_size=32",
        "data.builtin_train=4",
        "data.builtin_test=3",
        "train.batch_size=2",
        "train.checkpoint_every=2",
        "train.max_steps=4",
        "train.sample_every=4",
    ]
    run = tmp_path / "run"
    train(resolve_config("cut", "cpu", run_dir=str(run), overrides=overrides))
    assert main(["evaluate", "--run", str(run), "--metrics", "swd,content"]) == 0
    rows = list(csv.DictReader(open(run / "eval/metrics.csv")))
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert {"swd_avg", "content_iou"} <= set(rows[0])
    summary = json.loads((run / "eval/summary.json").read_text())
    assert summary["final"]["step"] == 4 and summary["best_selected_on_test_set"]["by"] == "swd_avg"
    # the built-in images are written at the load size (36 px); the run trained on 32 px crops
    # and is judged at 32 px
    assert summary["settings"]["translated_at"] == [32, 32]
    assert summary["settings"]["swd"]["size"] == [32, 32]
    from PIL import Image

    assert {Image.open(p).size for p in (run / "eval/step_00000004").glob("*.png")} == {(32, 32)}
    assert (run / "eval/metrics.png").stat().st_size > 0
    assert "best_selected_on_test_set" in capsys.readouterr().out


def test_evaluate_needs_folders_or_a_run(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--real", "x"])
    assert "give --real and --fake folders" in capsys.readouterr().err


class _Brightness(torch.nn.Module):
    """A fixed 'segmenter' for the tests: class 1 where the image is darker than its mean."""

    def forward(self, x):
        grey = x.mean(1, keepdim=True)
        dark = grey.mean((2, 3), keepdim=True) - grey
        return torch.cat([-dark, dark], 1) * 10


def _expected_miou(data, stems):
    """mIoU of _Brightness on the B images vs their masks, straight from numpy."""
    confusion = np.zeros((2, 2), np.int64)
    for stem in stems:
        image = np.asarray(Image.open(data / "testB" / f"{stem}.png"), np.float64) / 255
        grey = image.mean(2)
        pred = (grey < grey.mean()).astype(np.int64)
        true = (np.asarray(Image.open(data / "testB_masks" / f"{stem}.png")) > 127).astype(int)
        np.add.at(confusion, (true.ravel(), pred.ravel()), 1)
    tp = np.diag(confusion)
    return float(np.mean(tp / (confusion.sum(0) + confusion.sum(1) - tp)))


@pytest.fixture(scope="module")
def labels(data):
    folder = data / "testB_labels"
    folder.mkdir(exist_ok=True)
    for mask in sorted((data / "testB_masks").glob("*.png")):
        ids = (np.asarray(Image.open(mask)) > 127).astype(np.uint8)
        Image.fromarray(ids).save(folder / mask.name)  # class ids 0/1, mode L
    return folder


def test_segmentation_from_the_cli_torchscript_and_entry_point(
    data, labels, tmp_path, monkeypatch, capsys
):
    stems = [p.stem for p in sorted((data / "testB").glob("*.png"))]
    expected = _expected_miou(data, stems)
    scripted = tmp_path / "seg.pt"
    torch.jit.save(torch.jit.trace(_Brightness(), torch.rand(1, 3, 8, 8)), scripted)
    (tmp_path / "my_segmenter.py").write_text(
        "import torch\ndef build():\n    return torch.jit.load(" + repr(str(scripted)) + ")\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    exported = tmp_path / "seg.pt2"
    dynamic = {"x": {0: torch.export.Dim.DYNAMIC}}  # any batch size
    torch.export.save(
        torch.export.export(_Brightness(), (torch.rand(2, 3, 64, 64),), dynamic_shapes=dynamic),
        exported,
    )
    for model in (str(scripted), "my_segmenter:build", str(exported)):
        out = tmp_path / f"seg-{Path(model).suffix or 'entry'}.json"
        assert (
            main(
                [
                    "evaluate",
                    "--fake",
                    str(data / "testB"),
                    "--metrics",
                    "segmentation",
                    "--labels",
                    str(labels),
                    "--seg-model",
                    model,
                    "--num-classes",
                    "2",
                    "--output",
                    str(out),
                ]
            )
            == 0
        )
        result = json.loads(out.read_text())
        assert result["metrics"]["seg_miou"] == pytest.approx(expected, abs=1e-12)
        assert 0 < result["metrics"]["seg_pixel_accuracy"] <= 1
        assert result["settings"]["segmentation"]["num_classes"] == 2
    assert "seg_miou" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--metrics", "segmentation"], "needs --labels"),
        (
            [
                "--metrics",
                "segmentation",
                "--labels",
                "{labels}",
                "--seg-model",
                "nope.missing:fn",
                "--num-classes",
                "2",
            ],
            "cannot load segmentation model entry point",
        ),
        (
            [
                "--metrics",
                "segmentation",
                "--labels",
                "{data}/testB",
                "--seg-model",
                "x.pt",
                "--num-classes",
                "2",
            ],
            "single-channel class ids",
        ),
        (["--metrics", "swd"], "give --real and --fake"),
    ],
)
def test_segmentation_errors_are_clear(data, labels, argv, message, capsys):
    argv = [a.format(labels=labels, data=data) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--fake", str(data / "testB"), *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
