"""End to end for the paired (SPADE) family: train on the built-in pairs, resume, translate
label maps, evaluate a run, side-by-side (pix2pix) data, clear errors.

A randomly initialised VGG-19 stands in for the pretrained one (``vgg_source=random``): these
tests check the pipeline, not what pretrained features would do.
"""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from patchcontrast.cli import main
from patchcontrast.config import resolve_config
from patchcontrast.data.paired import FACADES_PALETTE
from patchcontrast.evaluate import evaluate_run
from patchcontrast.pipeline import latest_checkpoint, read_input, resize_input, train, translate

TINY = [
    "model.ngf=4",
    "model.ndf=4",
    "model.n_layers_d=2",
    "model.num_patches=16",
    "model.vgg_source=random",
    "model.allow_random_vgg=true",
    "data.load_size=36",
    "data.crop_size=32",
    "data.builtin_train=6",
    "data.builtin_test=3",
    "train.batch_size=2",
    "train.log_every=1",
    "train.sample_every=2",
    "train.checkpoint_every=2",
]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHCONTRAST_CACHE", str(tmp_path / "cache"))
    warnings.filterwarnings("ignore", message=".*random.*", category=UserWarning)


def tiny(tmp_path, preset="spade-monce", *extra, run="run"):
    return resolve_config(
        preset, "cpu", run_dir=str(tmp_path / run), overrides=[*TINY, "train.max_steps=4", *extra]
    )


def test_train_translate_evaluate_and_resume(tmp_path):
    summary = train(tiny(tmp_path, "spade-monce", "train.deterministic=true"))
    assert summary["step"] == 4
    run = tmp_path / "run"
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert len(stats) == 4 and all(np.isfinite(s["G_metric"]) for s in stats)
    state = torch.load(latest_checkpoint(run), weights_only=True)
    assert not any(k.startswith("vgg.") for k in state["objective"])  # frozen VGG not saved
    labels = tmp_path / "labels"
    labels.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 8, (40, 70), np.uint8)).save(
        labels / "odd.png"
    )
    written = translate(run, labels, tmp_path / "out", progress=False)
    assert Image.open(written[0]).size == (70, 40)
    small = translate(run, labels, tmp_path / "small", progress=False, size=(20, 36))
    assert Image.open(small[0]).size == (36, 20)
    ids = torch.from_numpy(np.array(Image.open(labels / "odd.png")).astype(np.int64))[None]
    resized = resize_input(ids, (20, 36))  # nearest neighbour: class ids stay ids
    assert resized.dtype == torch.int64 and set(resized.unique().tolist()) <= set(range(8))
    summary = evaluate_run(run, progress=False)
    assert summary["n_checkpoints"] == 2 and summary["n_fake"] == 3
    assert (run / "eval/metrics.csv").is_file() and (run / "eval/metrics.png").is_file()
    # resume: half + resume == straight
    half = tiny(
        tmp_path, "spade-monce", "train.deterministic=true", "train.max_steps=2", run="half"
    )
    train(half)
    train(tiny(tmp_path, "spade-monce", "train.deterministic=true", run="half"), resume=True)
    a = torch.load(latest_checkpoint(run), weights_only=True)["objective"]
    b = torch.load(latest_checkpoint(tmp_path / "half"), weights_only=True)["objective"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _pix2pix_folder(root, n=4, size=32):
    """Side-by-side pairs: photo left, a JPEG-compressed colour label map (facades palette)."""
    rng = np.random.default_rng(1)
    palette = np.array(FACADES_PALETTE, np.uint8)
    for phase in ("train", "test"):
        (root / phase).mkdir(parents=True)
        for i in range(n):
            ids = np.repeat(np.repeat(rng.integers(0, 12, (4, 4)), size // 4, 0), size // 4, 1)
            photo = rng.integers(0, 255, (size, size, 3), np.uint8)
            pair = np.concatenate([photo, palette[ids]], 1)
            Image.fromarray(pair).save(root / phase / f"{i}.jpg", quality=90)
    return root


def test_side_by_side_pairs_train_translate_and_evaluate(tmp_path):
    root = _pix2pix_folder(tmp_path / "facades")
    cfg = tiny(
        tmp_path,
        "spade-percep",
        f"data.dataroot={root}",
        "data.layout=side_by_side",
        "data.palette=facades",
        "model.label_nc=12",
        "train.max_steps=2",
    )
    train(cfg)
    out = translate(tmp_path / "run", root / "test", tmp_path / "out", progress=False)
    assert len(out) == 4 and Image.open(out[0]).size == (32, 32)
    summary = evaluate_run(tmp_path / "run", progress=False)
    assert summary["n_real"] == 4 and (tmp_path / "run/eval/real/0.png").is_file()


def test_cli_errors_for_paired_runs(tmp_path, capsys):
    # label values outside the run's classes: named, not a CUDA/scatter assert
    data = tmp_path / "data"
    for phase in ("train", "test"):
        (data / f"{phase}_label").mkdir(parents=True)
        (data / f"{phase}_img").mkdir()
        for i in range(2):
            Image.fromarray(np.full((32, 32), 9 if i else 1, np.uint8)).save(
                data / f"{phase}_label/{i}.png"
            )
            Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(data / f"{phase}_img/{i}.png")
    argv = [
        "train",
        "--preset",
        "spade-percep",
        "--dataroot",
        str(data),
        "--run-dir",
        str(tmp_path / "run"),
        *sum((["--set", o] for o in TINY), []),
    ]
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    assert "1.png" in err and "9" in err
    with pytest.raises(SystemExit):
        main(
            [
                "train",
                "--preset",
                "spade-percep",
                "--set",
                "data.crop_size=48",
                "--run-dir",
                str(tmp_path / "r2"),
                "--dry-run",
            ]
        )
    assert "multiples of 32" in capsys.readouterr().err


def test_translate_applies_the_label_offset(tmp_path):
    cfg = resolve_config(
        "spade-monce",
        "cpu",
        overrides=[
            "model.label_nc=3",
            "model.dont_care=true",
            "data.ignore_value=0",
            "data.label_offset=1",
        ],
    )
    stored = np.array([[0, 1, 2, 3]], np.uint8)
    Image.fromarray(stored).save(tmp_path / "ade.png")
    assert read_input(tmp_path / "ade.png", cfg).tolist() == [[[3, 0, 1, 2]]]
    Image.fromarray(np.array([[5, 1]], np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"bad\.png: label values \[4\] outside 0\.\.3"):
        read_input(tmp_path / "bad.png", cfg)  # stored 5 - offset 1 = 4: not a class id
    with pytest.raises(ValueError, match="label_offset applies to layout='folders'"):
        resolve_config(
            "spade-monce",
            "cpu",
            overrides=["data.layout=side_by_side", "data.palette=facades", "data.label_offset=1"],
        )
