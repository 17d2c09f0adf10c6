"""Paired label -> photo datasets: pairing, shared geometry, label checks, side-by-side palettes."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from patchcontrast.data.paired import (
    FACADES_CLASSES,
    FACADES_PALETTE,
    PALETTES,
    PairedDataset,
    colours_to_labels,
    remap_label_ids,
    resolve_palette,
    split_pair,
)

FACADES = Path(__file__).resolve().parents[3] / "shared" / "data" / "facades"


def _write_folders(
    root: Path,
    labels: dict[str, np.ndarray],
    phase: str = "train",
    photos: dict[str, np.ndarray] | None = None,
) -> Path:
    """root/{phase}_label/NAME.png (ids) + root/{phase}_img/NAME.png (photo; grey if not given)."""
    (root / f"{phase}_label").mkdir(parents=True, exist_ok=True)
    (root / f"{phase}_img").mkdir(parents=True, exist_ok=True)
    for name, ids in labels.items():
        Image.fromarray(ids).save(root / f"{phase}_label" / f"{name}.png")
        photo = (photos or {}).get(name, np.full((*ids.shape, 3), 128, np.uint8))
        Image.fromarray(photo).save(root / f"{phase}_img" / f"{name}.png")
    return root


def _blocks(h: int = 16, w: int = 16, n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, (h, w)).astype(np.uint8)


def test_items_pair_by_stem_with_shapes_dtypes_and_ranges(tmp_path):
    labels = {"b": _blocks(seed=1), "a": _blocks(seed=2), "c": _blocks(seed=3)}
    photos = {k: np.full((16, 16, 3), 40 * i, np.uint8) for i, k in enumerate("abc")}
    root = _write_folders(tmp_path, labels, photos=photos)
    (root / "train_img" / "a.png").unlink()  # photos may have another extension than labels
    Image.fromarray(photos["a"]).save(root / "train_img" / "a.jpg")
    ds = PairedDataset(root, label_nc=3, load_size=16, crop_size=16, train=False)
    assert len(ds) == 3
    for i, name in enumerate("abc"):
        item = ds[i]
        assert Path(item["path"]).stem == name
        assert item["label"].dtype == torch.int64 and item["label"].shape == (1, 16, 16)
        assert np.array_equal(item["label"][0].numpy(), labels[name])
        assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 16, 16)
        assert item["image"].mean().item() == pytest.approx(40 * i / 127.5 - 1, abs=0.02)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["label"].shape == (2, 1, 16, 16) and batch["image"].shape == (2, 3, 16, 16)


def test_missing_partners_are_listed_with_counts(tmp_path):
    root = _write_folders(tmp_path, {n: _blocks() for n in ("a", "b", "c")})
    (root / "train_img" / "b.png").unlink()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "train_img" / "z.png")
    with pytest.raises(ValueError) as err:
        PairedDataset(root, label_nc=3)
    message = str(err.value)
    assert "1 of 3 files in" in message and "train_label have no partner: b.png" in message
    assert "train_img have no partner: z.png" in message


def test_missing_folders_and_duplicate_stems_are_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        PairedDataset(tmp_path / "nope", label_nc=3)
    (tmp_path / "train_label").mkdir()
    with pytest.raises(ValueError, match=r"missing: .*train_img"):
        PairedDataset(tmp_path, label_nc=3)
    (tmp_path / "train_img").mkdir()
    with pytest.raises(ValueError, match="no images in .*train_label"):
        PairedDataset(tmp_path, label_nc=3)
    root = _write_folders(tmp_path, {"a": _blocks()})
    Image.fromarray(_blocks()).save(root / "train_label" / "a.bmp")
    with pytest.raises(ValueError, match="two files with stem 'a'"):
        PairedDataset(root, label_nc=3)


def test_label_and_photo_share_crop_and_flip_exactly(tmp_path):
    # 16-bit label id = 40 y + x; photo R = 6 x, G = 6 y. load_size = file size, so the only
    # geometry is the crop and the flip, which must put the same (y, x) at every output pixel.
    y, x = np.mgrid[0:40, 0:40]
    label = (40 * y + x).astype(np.uint16)
    photo = np.stack([6 * x, 6 * y, np.zeros_like(x)], -1).astype(np.uint8)
    root = _write_folders(
        tmp_path, {f"p{i}": label for i in range(6)}, photos={f"p{i}": photo for i in range(6)}
    )
    ds = PairedDataset(root, label_nc=1600, load_size=40, crop_size=32)
    flips, corners = 0, set()
    for i in range(len(ds)):
        item = ds[i]
        ly, lx = np.divmod(item["label"][0].numpy(), 40)
        pixels = ((item["image"].numpy() + 1) * 127.5).round()
        assert np.array_equal(pixels[0] / 6, lx) and np.array_equal(pixels[1] / 6, ly)
        flips += int(lx[0, 0] > lx[0, -1])
        corners.add((int(ly[0, 0]), int(lx[0, :].min())))
    assert 0 < flips < len(ds) and len(corners) > 1  # both flip states and several crops seen


def test_alignment_survives_resizing(tmp_path):
    # 8x8-pixel blocks; photo R/G encode the block's column/row, label id encodes both.
    y, x = np.mgrid[0:48, 0:64] // 8
    label = (8 * y + x).astype(np.uint8)
    photo = np.stack([30 * x, 30 * y, np.zeros_like(x)], -1).astype(np.uint8)
    root = _write_folders(tmp_path, {"a": label, "b": label}, photos={"a": photo, "b": photo})
    ds = PairedDataset(root, label_nc=64, load_size=(56, 72), crop_size=(40, 52))
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(2):
            item = ds[i]
            ids = item["label"][0].numpy()
            assert item["image"].shape == (3, 40, 52) and ids.shape == (40, 52)
            # Compare inside blocks only: bicubic and nearest differ within a pixel of edges.
            inner = ndimage.minimum_filter(ids, 5) == ndimage.maximum_filter(ids, 5)
            pixels = (item["image"].numpy() + 1) * 127.5
            assert inner.mean() > 0.2
            assert np.abs(pixels[0][inner] / 30 - ids[inner] % 8).max() < 0.2
            assert np.abs(pixels[1][inner] / 30 - ids[inner] // 8).max() < 0.2


@pytest.mark.parametrize("train", [True, False])
def test_nearest_resampling_keeps_only_ids_of_the_file(tmp_path, train):
    ids = np.random.default_rng(0).choice(np.array([0, 3, 7], np.uint8), (30, 45))
    root = _write_folders(tmp_path, {"a": ids})
    ds = PairedDataset(root, label_nc=8, load_size=(37, 53), crop_size=(20, 28), train=train)
    out = ds[0]["label"]
    assert set(out.unique().tolist()) == {0, 3, 7}
    assert out.shape == ((1, 20, 28))


def test_bad_label_values_name_files_and_values(tmp_path):
    good, bad_a, bad_b = _blocks(n=12), _blocks(n=12), _blocks(n=12)
    bad_a[0, 0], bad_a[1, 1] = 12, 255
    bad_b[3, 3] = 200
    root = _write_folders(tmp_path, {"a": bad_a, "b": bad_b, "c": good})
    with pytest.raises(ValueError) as err:
        PairedDataset(root, label_nc=12)
    assert "labels outside 0..11 in 2 files: a.png {12, 255}; b.png {200}" in str(err.value)
    lazy = PairedDataset(root, label_nc=12, validate=False, train=False, crop_size=16)
    with pytest.raises(ValueError, match=r"labels outside 0\.\.11 in 1 file: b\.png \{200\}"):
        lazy[1]
    assert np.array_equal(lazy[2]["label"][0].numpy(), good)  # good files still load


def test_dont_care_and_ignore_value(tmp_path):
    ids = _blocks(n=5)
    ids[:4, :4] = 255
    ids[-1, -1] = 5  # already the don't-care id
    root = _write_folders(tmp_path, {"a": ids})
    kw = {"load_size": 16, "crop_size": 16, "train": False}
    with pytest.raises(ValueError, match=r"outside 0\.\.4 in 1 file: a\.png \{5, 255\}"):
        PairedDataset(root, label_nc=5, **kw)
    with pytest.raises(ValueError, match=r"outside 0\.\.5 in 1 file: a\.png \{255\}"):
        PairedDataset(root, label_nc=5, dont_care=True, **kw)
    out = PairedDataset(root, label_nc=5, dont_care=True, ignore_value=255, **kw)[0]["label"][0]
    expected = ids.astype(np.int64)
    expected[expected == 255] = 5
    assert np.array_equal(out.numpy(), expected)
    with pytest.raises(ValueError, match="ignore_value=255 needs dont_care=True"):
        PairedDataset(root, label_nc=5, ignore_value=255)


def test_label_offset_reads_ade20k_style_labels(tmp_path):
    # ADE20K stores 0 = unlabelled, 1..K = classes; SPADE trains ids 0..K-1 + don't care K
    stored = np.array([[0, 1], [2, 3]], np.uint8).repeat(8, 0).repeat(8, 1)
    root = _write_folders(tmp_path, {"a": stored})
    kw = {"load_size": 16, "crop_size": 16, "train": False}
    out = PairedDataset(root, label_nc=3, dont_care=True, ignore_value=0, label_offset=1, **kw)[0][
        "label"
    ][0]
    assert np.array_equal(out.numpy(), np.choose(stored, [3, 0, 1, 2]))
    assert np.array_equal(remap_label_ids(stored, 3, ignore_value=0, label_offset=1), out.numpy())
    with pytest.raises(ValueError, match=r"outside 0\.\.1 in 1 file: a\.png \{-1, 2\}"):
        PairedDataset(root, label_nc=2, label_offset=1, **kw)  # 0 - 1 and 3 - 1 are not ids
    with pytest.raises(ValueError, match="label_offset applies to layout='folders'"):
        PairedDataset(root, label_nc=12, layout="side_by_side", palette="facades", label_offset=1)


def test_crops_depend_only_on_seed_epoch_and_index(tmp_path):
    y, x = np.mgrid[0:40, 0:40]
    root = _write_folders(
        tmp_path,
        {f"p{i}": ((y + x) % 8).astype(np.uint8) for i in range(4)},
        photos={f"p{i}": np.stack([6 * x, 6 * y, 0 * x], -1).astype(np.uint8) for i in range(4)},
    )

    def images(seed: int, epoch: int, order=range(4)) -> dict[int, torch.Tensor]:
        ds = PairedDataset(root, label_nc=8, load_size=40, crop_size=24, seed=seed)
        ds.set_epoch(epoch)
        return {i: ds[i]["image"] for i in order}

    base = images(0, 0)
    again = images(0, 0, order=[3, 1, 0, 2])
    assert all(torch.equal(base[i], again[i]) for i in range(4))
    for other in (images(0, 1), images(1, 0)):
        assert any(not torch.equal(base[i], other[i]) for i in range(4))


def test_argument_errors_are_clear(tmp_path):
    root = _write_folders(tmp_path, {"a": _blocks()})
    cases = [
        ({"layout": "pix2pix"}, "layout must be"),
        ({"photo_side": "top"}, "photo_side must be"),
        ({"label_nc": 0}, "label_nc must be a positive int"),
        ({"palette": "facades"}, "palette only applies"),
        ({"layout": "side_by_side"}, "needs palette="),
        ({"crop_size": 30}, "multiples of 4"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            PairedDataset(root, **{"label_nc": 3, **kwargs})
    with pytest.raises(ValueError, match="must be one of"):
        resolve_palette("cityscapes")
    with pytest.raises(ValueError, match="palette has 12 colours but label_nc is 3"):
        PairedDataset(root, "train", label_nc=3, layout="side_by_side", palette="facades")
    for bad in ([], [(0, 0)], [(0, 0, 300)]):
        with pytest.raises(ValueError, match="palette must be a non-empty list"):
            resolve_palette(bad)


def test_colour_labels_and_damaged_files_are_named(tmp_path):
    root = _write_folders(tmp_path, {"a": _blocks(), "b": _blocks()})
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "train_label" / "a.png")
    with pytest.raises(ValueError, match=r"a\.png: labels must be single-channel .* got mode RGB"):
        PairedDataset(root, label_nc=3)
    _write_folders(tmp_path, {"a": _blocks()})
    (root / "train_img" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match=r"(?s)unreadable image file.*b\.png"):
        PairedDataset(root, label_nc=3)
    lazy = PairedDataset(root, label_nc=3, validate=False)
    with pytest.raises(ValueError, match=r"b\.png is not a readable image"):
        lazy[1]


def _coded_pairs(root: Path, n: int, size: int, photo_side: str = "left") -> list[np.ndarray]:
    """Write n pix2pix pairs (JPEG quality 75) of rectangles in facade colours; return the ids."""
    palette = np.array(FACADES_PALETTE, np.uint8)
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    truths = []
    for i in range(n):
        ids = np.ones((size, size), np.int64)
        for _ in range(5):
            y, x = rng.integers(0, size * 3 // 4, 2)
            h, w = rng.integers(size // 8, size // 3, 2)
            ids[y : y + h, x : x + w] = rng.integers(12)
        yy, xx = np.mgrid[0:size, 0:size] * 255 // size
        photo = np.stack([xx, yy, np.full_like(xx, 128)], -1).astype(np.uint8)
        halves = [photo, palette[ids]] if photo_side == "left" else [palette[ids], photo]
        Image.fromarray(np.concatenate(halves, 1)).save(root / "train" / f"{i}.jpg", quality=75)
        truths.append(ids)
    return truths


@pytest.mark.parametrize("photo_side", ["left", "right"])
def test_side_by_side_split_and_palette_recover_jpeg_labels(tmp_path, photo_side):
    truths = _coded_pairs(tmp_path, 4, 128, photo_side)
    ds = PairedDataset(
        tmp_path,
        label_nc=12,
        layout="side_by_side",
        palette="facades",
        photo_side=photo_side,
        load_size=128,
        crop_size=128,
        train=False,
    )
    correct = 0
    for i, truth in enumerate(truths):
        item = ds[i]
        correct += (item["label"][0].numpy() == truth).sum()
        # The photo half is the gradient: R grows to the right, G downwards.
        image = item["image"]
        assert image[0, :, -8:].mean() > image[0, :, :8].mean() + 1.5
        assert image[1, -8:].mean() > image[1, :8].mean() + 1.5
    accuracy = correct / (len(truths) * 128 * 128)
    assert accuracy >= 0.99, accuracy


def test_boundary_blends_take_a_neighbouring_class_not_a_third_one():
    palette = resolve_palette("facades")
    rgb = np.zeros((8, 9, 3), np.uint8)
    rgb[:, :4] = FACADES_PALETTE[1]  # facade blue
    rgb[:, 5:] = FACADES_PALETTE[9]  # molding orange
    rgb[:, 4] = (128, 64, 128)  # their blend, nearest to "shop" dark red
    assert (colours_to_labels(rgb, palette, snap_distance=None)[:, 4] == 11).all()
    repaired = colours_to_labels(rgb, palette)
    assert set(np.unique(repaired[:, 4])) <= {1, 9}
    assert (repaired[:, :4] == 1).all() and (repaired[:, 5:] == 9).all()


def test_split_pair_halves_and_odd_width():
    image = Image.fromarray(
        np.concatenate([np.zeros((4, 5, 3)), np.full((4, 6, 3), 255)], 1).astype(np.uint8)
    )  # width 11: left 0..4 black, 5..10 white
    left, right = split_pair(image, "left")
    assert left.size == right.size == (5, 4)
    assert np.asarray(left).max() == 0 and np.asarray(right).min() == 255
    photo, label = split_pair(image, "right")
    assert np.asarray(photo).min() == 255 and np.asarray(label).max() == 0
    with pytest.raises(ValueError, match="cannot be split"):
        split_pair(Image.new("RGB", (1, 4)), "left")


def test_facades_palette_constant():
    assert len(FACADES_PALETTE) == len(FACADES_CLASSES) == 12 and PALETTES["facades"] is not None
    assert len(set(FACADES_PALETTE)) == 12


@pytest.mark.skipif(not FACADES.is_dir(), reason="facades data not present")
def test_facades_palette_covers_real_label_renders():
    files = sorted((FACADES / "train").glob("*.jpg"))[::20]  # 20 of 400, for speed
    palette = resolve_palette("facades").astype(np.float32)
    near = total = near_inner = inner = 0
    for path in files:
        with Image.open(path) as img:
            _, coded = split_pair(img.convert("RGB"), "left")
        rgb = np.asarray(coded, np.float32)
        dist = np.sqrt(((rgb[:, :, None] - palette) ** 2).sum(-1)).min(-1)
        ids = colours_to_labels(np.asarray(coded), resolve_palette("facades"), snap_distance=None)
        flat = ndimage.maximum_filter(ids, 3) == ndimage.minimum_filter(ids, 3)
        near, total = near + (dist <= 30).sum(), total + dist.size
        near_inner, inner = near_inner + (dist[flat] <= 30).sum(), inner + flat.sum()
    # Measured on all 400: 80.3 % of all pixels and 96.9 % off class boundaries (docstring of
    # FACADES_PALETTE); boundary pixels are blends of two colours, far from both.
    assert near_inner / inner >= 0.95, near_inner / inner
    assert near / total >= 0.75, near / total
    ds = PairedDataset(FACADES, "val", label_nc=12, layout="side_by_side", palette="facades")
    item = ds[0]
    assert item["label"].shape == (1, 256, 256) and len(item["label"].unique()) >= 4
