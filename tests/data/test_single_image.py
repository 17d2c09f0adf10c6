"""SinCUT single-image data (docs/design.md §4.4): per-batch zoom, distinct grid cells, independent
flips, determinism per (seed, epoch, index), errors, and the generated single-image pair."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from patchcontrast.data.single_image import SingleImageDataset, write_generated_single_pair


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_generated_single_pair(tmp_path_factory.mktemp("single"), size=(256, 320))


def make(pair, **kwargs):
    options = {"crop_size": 32, "batch_size": 8, "virtual_size": 64} | kwargs
    return SingleImageDataset(pair / "trainA" / "a.png", pair / "trainB" / "b.png", **options)


def test_items_shapes_values_and_paths(pair):
    ds = make(pair)
    assert len(ds) == 64
    item = ds[3]
    assert set(item) == {"A", "B", "A_path", "B_path"}
    for key in "AB":
        x = item[key]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.01
    assert item["A_path"] == str(pair / "trainA" / "a.png")
    assert item["B_path"] == str(pair / "trainB" / "b.png")
    # folders holding one image are accepted too (upstream's trainA/trainB layout)
    by_folder = SingleImageDataset(
        pair / "trainA", pair / "trainB", crop_size=32, batch_size=8, virtual_size=64
    )
    assert torch.equal(by_folder[3]["A"], item["A"])


def test_item_equals_zoom_crop_flip_by_hand(pair):
    ds = make(pair)
    for index in range(8):
        item, params = ds[index], ds.crop_params(index)
        for key in "AB":
            p = params[key]
            zoomed = np.asarray(
                Image.open(pair / f"train{key}" / f"{key.lower()}.png").resize(
                    p.size[::-1], Image.Resampling.BILINEAR
                )
            )
            crop = zoomed[p.top : p.top + 32, p.left : p.left + 32]
            crop = crop[:, ::-1] if p.flip else crop
            expected = torch.from_numpy(crop.copy()).permute(2, 0, 1).float() / 127.5 - 1
            assert torch.equal(item[key], expected)


def test_deterministic_per_seed_epoch_index(pair):
    ds, again = make(pair, seed=5), make(pair, seed=5)
    order = [9, 0, 17, 3]
    first = {i: ds[i] for i in order}
    second = {i: again[i] for i in reversed(order)}  # access order does not matter
    assert all(torch.equal(first[i][k], second[i][k]) for i in order for k in "AB")
    other_seed = make(pair, seed=6)
    assert not torch.equal(other_seed[9]["A"], first[9]["A"])
    again.set_epoch(1)
    assert not torch.equal(again[9]["A"], first[9]["A"])
    again.set_epoch(0)
    assert torch.equal(again[9]["A"], first[9]["A"])


def test_batch_shares_zoom_and_uses_distinct_cells(pair):
    ds = make(pair, batch_size=8, virtual_size=400, random_scale_max=1.5)
    zooms = set()
    for batch in range(50):
        params = [ds.crop_params(8 * batch + j) for j in range(8)]
        for key in "AB":
            ps = [p[key] for p in params]
            assert len({(p.zoom, p.size, p.grid) for p in ps}) == 1  # one zoom per batch
            h, w = ps[0].size
            rows, cols = ps[0].grid
            assert rows * cols >= 8  # 256x320 zoomed by >= 2/3 holds >= 5x6 cells of 32
            assert len({p.cell for p in ps}) == 8  # distinct cells ...
            for p in ps:  # ... that lie inside the zoomed image on one shared grid
                assert 0 <= p.top <= h - 32 and 0 <= p.left <= w - 32
                assert p.top - p.cell[0] * 32 == ps[0].top - ps[0].cell[0] * 32
                assert p.left - p.cell[1] * 32 == ps[0].left - ps[0].cell[1] * 32
            zooms.add(ps[0].zoom)
        assert params[0]["A"].zoom != params[0]["B"].zoom  # domains zoom independently
    factors = np.array(sorted(zooms))
    assert len(zooms) == 100 and factors.min() >= 1 / 1.5 and factors.max() <= 1
    assert not np.allclose(factors[:, 0], factors[:, 1])  # anisotropic


def test_zoom_never_below_crop(pair):
    ds = make(pair, crop_size=128, random_scale_max=3.0, virtual_size=200)
    sizes = [ds.crop_params(i)["A"].size for i in range(0, 200, 8)]
    assert min(min(s) for s in sizes) == 128  # 256 / 3 < 128 gets clamped to the crop
    assert ds[0]["A"].shape == (3, 128, 128)


def test_flips_independent_and_optional(pair):
    ds = make(pair, virtual_size=400)
    flips = np.array([[ds.crop_params(i)[k].flip for k in "AB"] for i in range(400)])
    assert 0.4 < flips.mean() < 0.6
    assert (flips[:, 0] != flips[:, 1]).any()  # A and B flip independently
    per_batch = flips[:, 0].reshape(50, 8)
    assert (per_batch.any(1) & ~per_batch.all(1)).mean() > 0.9  # mixed within batches
    ds_no_flip = make(pair, virtual_size=400, flip=False)
    assert not any(ds_no_flip.crop_params(i)["A"].flip for i in range(400))


def test_load_size_scales_the_longer_side(pair):
    ds = make(pair, load_size=160)
    assert ds.images["A"].size == (160, 128)  # (W, H): 320x256 -> 160x128
    assert make(pair, load_size=None).images["A"].size == (320, 256)
    assert make(pair, load_size=1024).images["A"].size == (320, 256)  # never enlarged


def test_errors(pair, tmp_path):
    a, b = pair / "trainA" / "a.png", pair / "trainB" / "b.png"
    missing = tmp_path / "nope.png"
    with pytest.raises(ValueError, match=f"image_b: image file {missing} does not exist"):
        SingleImageDataset(a, missing)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="image_a: cannot read image .*broken.png"):
        SingleImageDataset(broken, b)
    two = tmp_path / "two"
    two.mkdir()
    for name in ("x.png", "y.png"):
        (two / name).write_bytes(a.read_bytes())
    with pytest.raises(ValueError, match="exactly one image.*found 2"):
        SingleImageDataset(two, b)
    scaled = r"is 128x160 \(scaled from 256x320 to load_size=160\), smaller than crop_size=144"
    with pytest.raises(ValueError, match=scaled):
        SingleImageDataset(a, b, crop_size=144, load_size=160)
    with pytest.raises(ValueError, match="is 256x320, smaller than crop_size=288"):
        SingleImageDataset(a, b, crop_size=288, load_size=None)
    with pytest.raises(ValueError, match="crop_size must be a positive multiple of 4"):
        SingleImageDataset(a, b, crop_size=30)
    with pytest.raises(ValueError, match="load_size must be None or an int >= crop_size"):
        SingleImageDataset(a, b, crop_size=64, load_size=32)
    with pytest.raises(ValueError, match="random_scale_max must be >= 1"):
        SingleImageDataset(a, b, random_scale_max=0.5)
    with pytest.raises(ValueError, match="batch_size and virtual_size must be >= 1"):
        SingleImageDataset(a, b, batch_size=0)
    with pytest.raises(IndexError, match="out of range for 64 items"):
        make(pair)[64]


def test_write_generated_single_pair_layout_and_resume(tmp_path):
    root = write_generated_single_pair(tmp_path / "pair", size=(48, 64), seed=1)
    a, b, test_a = root / "trainA" / "a.png", root / "trainB" / "b.png", root / "testA" / "a.png"
    assert Image.open(a).size == (64, 48) and Image.open(b).size == (64, 48)
    assert test_a.read_bytes() == a.read_bytes()
    assert a.read_bytes() != b.read_bytes()
    assert json.loads((root / "generated_single.json").read_text())["size"] == [48, 64]
    # a second call keeps existing files and only fills in what is missing
    a.write_bytes(test_a.read_bytes()[:-1] + b"\0")  # mark a.png as "ours"
    marked = a.read_bytes()
    b_bytes = b.read_bytes()
    b.unlink()
    write_generated_single_pair(root, size=(48, 64), seed=1)
    assert a.read_bytes() == marked and b.read_bytes() == b_bytes
    assert not list(root.rglob("*.tmp"))
    with pytest.raises(ValueError, match="made with .* use another root"):
        write_generated_single_pair(root, size=(48, 64), seed=2)
