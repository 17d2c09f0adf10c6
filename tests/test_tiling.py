"""Translation in overlapping tiles (patchcontrast.tiling, ``translate --tile``)."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from patchcontrast import tiling
from patchcontrast.cli import main
from patchcontrast.importer import import_translator
from patchcontrast.tiling import blend_weights, tile_starts, translate_tiled

OFFICIAL = Path(__file__).resolve().parent / "fixtures" / "official"
GENERATOR = OFFICIAL / "cut_antialias" / "latest_net_G.pth"


@pytest.fixture(scope="module")
def translator():
    """A small trained generator (ngf 8, 6 blocks, anti-aliased) of the official CUT code."""
    return import_translator(GENERATOR)[0]


def image(h: int, w: int) -> torch.Tensor:
    """A (1, 3, h, w) input in [-1, 1]: the fixture's input image, stretched."""
    x = torch.from_numpy(np.asarray(Image.open(OFFICIAL / "input.png"), dtype=np.float32))
    x = x.permute(2, 0, 1)[None] / 127.5 - 1
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("shape", [(64, 64), (67, 131), (200, 97), (33, 300), (5, 9)])
@pytest.mark.parametrize("tile, overlap", [(32, 8), (64, 16), (48, 40), (16, 0)])
def test_the_blend_weights_sum_to_one(shape, tile, overlap):
    total = torch.zeros(shape, dtype=torch.float64)
    for top, left, weight in blend_weights(*shape, tile, overlap, multiple=4):
        assert weight.min() > 0
        total[top : top + weight.shape[0], left : left + weight.shape[1]] += weight
    assert torch.allclose(total, torch.ones(shape, dtype=torch.float64), atol=1e-6)


def test_tiles_cover_the_image_with_the_overlap_asked_for():
    assert tile_starts(64, 64, 16) == [0] and tile_starts(40, 64, 16) == [0]
    starts = tile_starts(4096, 1024, 256, 4)
    assert starts[0] == 0 and starts[-1] == 4096 - 1024
    assert all(b - a <= 1024 - 256 for a, b in zip(starts, starts[1:]))
    assert all(s % 4 == 0 for s in starts)
    starts = tile_starts(1001, 256, 64, 4)  # an odd size: only the last start is off the grid
    assert starts[-1] == 1001 - 256 and all(s % 4 == 0 for s in starts[:-1])


def test_an_identity_translation_survives_tiling_exactly():
    x = torch.rand(2, 3, 67, 131) * 2 - 1
    y = translate_tiled(lambda t: t.clone(), x, tile=32, overlap=12, multiple=4)
    assert torch.allclose(y, x, atol=1e-6)


def test_a_tile_as_large_as_the_image_is_the_whole_pass(translator):
    x = image(64, 96)
    whole = translator.translate(x)
    for tile in (96, 100, 256):
        assert torch.equal(translate_tiled(translator.translate, x, tile=tile), whole)


@pytest.mark.parametrize("shape", [(128, 128), (67, 131)])
def test_tiles_with_the_image_statistics_match_the_whole_pass(translator, shape):
    """Tiles of 64 px (16 px overlap; 16 px at the bottleneck, so the borders' padding reaches
    most of a tile) with the whole image's instance-norm statistics, measured here: mean
    |diff| 0.8-1.7 and max 14-17 in 8-bit levels; with each tile's own statistics mean 18-26
    and max 109-153 (this small, briefly trained generator reacts strongly to them). Larger
    tiles come much closer (benchmarks/tiling.py); asserted loosely."""
    x = image(*shape)
    whole = translator.translate(x)
    kwargs = {"tile": 64, "overlap": 16, "multiple": 4, "generator": translator.generator}
    exact = translate_tiled(translator.translate, x, stats="image", **kwargs)
    own = translate_tiled(translator.translate, x, stats="tile", **kwargs)
    assert exact.shape == own.shape == whole.shape
    diff = (exact - whole).abs() * 127.5  # in 8-bit levels
    assert diff.mean() < 3 and diff.max() < 40
    assert ((own - whole).abs() * 127.5).mean() > 5 * diff.mean()  # what the statistics fix
    assert ((own - whole).abs() * 127.5).max() < 255
    # the generator's norms are restored afterwards
    assert torch.equal(translator.translate(x), whole)


def test_bad_tile_sizes_are_refused():
    x = torch.zeros(1, 3, 64, 64)
    with pytest.raises(ValueError, match="--tile must be at least 8"):
        translate_tiled(lambda t: t, x, tile=6, multiple=4)
    with pytest.raises(ValueError, match="--tile-overlap"):
        translate_tiled(lambda t: t, x, tile=32, overlap=32, multiple=4)
    with pytest.raises(ValueError, match="'tile' or 'image'"):
        translate_tiled(lambda t: t, x, tile=32, stats="mean")


def test_translate_tile_on_the_command_line(tmp_path, capsys):
    source = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)).save(
        source
    )
    for name, extra in (
        ("whole", ["--tile", "0"]),
        ("tiled", ["--tile", "32"]),
        ("big", ["--tile", "512"]),
    ):
        assert (
            main(
                [
                    "translate",
                    "--checkpoint",
                    str(GENERATOR),
                    "--input",
                    str(source),
                    "--output",
                    str(tmp_path / name),
                    *extra,
                ]
            )
            == 0
        )
    out = {
        n: np.asarray(Image.open(tmp_path / n / "in.png"), dtype=np.int64)
        for n in ("whole", "tiled", "big")
    }
    assert out["tiled"].shape == out["whole"].shape == (70, 90, 3)
    assert np.array_equal(out["big"], out["whole"])
    assert not np.array_equal(out["tiled"], out["whole"])
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "translate",
                "--checkpoint",
                str(GENERATOR),
                "--input",
                str(source),
                "--output",
                str(tmp_path / "bad"),
                "--tile",
                "4",
            ]
        )
    assert exit_info.value.code == 2 and "--tile must be at least" in capsys.readouterr().err


def test_large_batches_are_tiled_automatically(tmp_path, monkeypatch):
    calls = []
    real = tiling.translate_tiled

    def spy(*args, **kwargs):
        calls.append(kwargs["tile"])
        return real(*args, **kwargs)

    monkeypatch.setattr(tiling, "translate_tiled", spy)
    monkeypatch.setattr(tiling, "AUTO_TILE_PIXELS", 64 * 64)
    monkeypatch.setattr(tiling, "AUTO_TILE", 32)
    source = tmp_path / "in.png"
    Image.fromarray(np.zeros((64, 65, 3), dtype=np.uint8)).save(source)
    main(
        [
            "translate",
            "--checkpoint",
            str(GENERATOR),
            "--input",
            str(source),
            "--output",
            str(tmp_path / "a"),
        ]
    )
    assert calls == [32]
    main(
        [
            "translate",
            "--checkpoint",
            str(GENERATOR),
            "--input",
            str(source),
            "--output",
            str(tmp_path / "b"),
            "--tile",
            "0",
        ]
    )
    assert calls == [32]
