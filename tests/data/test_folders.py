"""Image folders in the CycleGAN/CUT layout: listing, checking, loading, transform, datasets."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from patchcontrast.data import (
    CropParams,
    SingleFolderDataset,
    UnalignedDataset,
    build_transform,
    check_images,
    list_images,
    load_image,
)


def _save(path, value: int, size=(24, 24), mode="RGB", fmt=None):
    """A flat image whose red channel (or grey level) is ``value``: items can be told apart."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fill = value if mode in ("L", "P") else (value, 40, 90)[: len(mode)]
    Image.new(mode, size[::-1], fill).save(path, format=fmt)
    return path


def _make_root(root, n_a=3, n_b=5, phase="train", exts=("png", "jpg", "bmp")):
    for domain, n in (("A", n_a), ("B", n_b)):
        for i in range(n):
            _save(root / f"{phase}{domain}" / f"{domain}{i}.{exts[i % len(exts)]}", 20 * i + 10)
    return root


def _corrupt(path, data=b"this is not an image"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_list_images_sorted_formats_case_insensitive(tmp_path):
    for name, fmt in (
        ("b.PNG", "PNG"),
        ("a.jpeg", "JPEG"),
        ("c.Tif", "TIFF"),
        ("d.webp", "WEBP"),
        ("e.bmp", "BMP"),
        (".hidden.png", "PNG"),
    ):
        _save(tmp_path / name, 1, fmt=fmt)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "folder.png").mkdir()
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["a.jpeg", "b.PNG", "c.Tif", "d.webp", "e.bmp"]


def test_list_images_missing_or_empty_folder_names_the_path(tmp_path):
    with pytest.raises(ValueError, match="nowhere.*does not exist"):
        list_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no images in .*empty; accepted extensions: \.png"):
        list_images(tmp_path / "empty")


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "I;16", "CMYK", "1", "RGB"])
def test_load_image_converts_every_mode(tmp_path, mode):
    fmt = {"CMYK": "JPEG"}.get(mode, "PNG")
    path = tmp_path / f"x.{fmt.lower()}"
    Image.new(mode, (10, 6)).save(path, format=fmt)
    rgb = load_image(path)
    assert rgb.mode == "RGB" and rgb.size == (10, 6)
    grey = load_image(path, channels=1)
    assert grey.mode == "L" and grey.size == (10, 6)


def test_transparency_is_composited_on_white(tmp_path):
    pixels = np.zeros((2, 2, 4), np.uint8)
    pixels[0, 0] = (255, 0, 0, 255)  # opaque red
    pixels[0, 1] = (255, 0, 0, 128)  # half-transparent red
    Image.fromarray(pixels, "RGBA").save(tmp_path / "a.png")
    rgb = np.asarray(load_image(tmp_path / "a.png")).astype(int)
    assert rgb[0, 0].tolist() == [255, 0, 0]
    assert rgb[1, 1].tolist() == [255, 255, 255]  # fully transparent -> white, not black
    assert np.abs(rgb[0, 1] - [255, 127, 127]).max() <= 1
    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([0, 0, 0, 0, 255, 0])
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png", transparency=0)
    assert np.asarray(load_image(tmp_path / "p.png"))[0, 0].tolist() == [255, 255, 255]


def test_sixteen_bit_greyscale_is_rescaled_not_clipped(tmp_path):
    Image.fromarray(np.array([[0, 32896, 65535]], np.uint16)).save(tmp_path / "g.png")
    assert np.asarray(load_image(tmp_path / "g.png", channels=1)).tolist() == [[0, 128, 255]]


def test_load_image_rejects_bad_channels(tmp_path):
    with pytest.raises(ValueError, match="channels"):
        load_image(_save(tmp_path / "a.png", 1), channels=2)


def test_check_images_lists_all_bad_files_or_skips_with_one_warning(tmp_path):
    good = _save(tmp_path / "good.png", 5)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    garbage = _corrupt(tmp_path / "garbage.jpg")
    paths = [garbage, good, truncated]
    with pytest.raises(ValueError, match="2 unreadable") as err:
        check_images(paths)
    assert "garbage.jpg" in str(err.value) and "truncated.png" in str(err.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert check_images(paths, on_bad="skip") == [good]
    assert len(caught) == 1 and "skipping 2 unreadable" in str(caught[0].message)
    with pytest.raises(ValueError, match="on_bad"):
        check_images(paths, on_bad="ignore")


def test_train_transform_sizes_and_reproducible_randomness():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), np.uint8))
    t = build_transform((40, 72), (32, 64), train=True, flip=True)
    x = t(image, torch.Generator().manual_seed(3))
    assert x.shape == (3, 32, 64) and x.dtype == torch.float32
    assert -1 <= x.min() and x.max() <= 1
    assert torch.equal(x, t(image, torch.Generator().manual_seed(3)))
    params = {t.sample(torch.Generator().manual_seed(s)) for s in range(40)}
    assert {p.flip for p in params} == {True, False}
    assert max(p.top for p in params) <= 8 and max(p.left for p in params) <= 8
    assert len({(p.top, p.left) for p in params}) > 5
    no_flip = build_transform(36, 32, train=True, flip=False)
    assert not any(no_flip.sample(torch.Generator().manual_seed(s)).flip for s in range(20))


def test_test_transform_resizes_straight_to_crop_size():
    image = Image.new("RGB", (70, 50), (255, 0, 0))
    t = build_transform(286, (32, 48), train=False, flip=True)
    assert t.sample(torch.Generator().manual_seed(0)) == CropParams()
    x = t(image)
    assert x.shape == (3, 32, 48)
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    assert build_transform(8, 8, train=False, flip=False)(Image.new("L", (5, 5))).shape == (1, 8, 8)


def test_mask_follows_the_crop_and_flip_of_its_image():
    # load_size = image size, so the resize is the identity and the check is exact.
    rng = np.random.default_rng(1)
    mask = rng.random((24, 40)) < 0.3
    image = Image.fromarray(np.where(mask[..., None], 255, 0).astype(np.uint8).repeat(3, -1))
    t = build_transform((24, 40), (16, 24), train=True, flip=True)
    for params in (CropParams(3, 5, True), CropParams(8, 16, False)):
        x = t.apply(image, params)
        m = t.apply_mask(Image.fromarray(mask), params)
        assert m.shape == (1, 16, 24) and m.dtype == torch.bool
        assert torch.equal(m[0], x[0] > 0)


def test_transform_rejects_bad_sizes():
    with pytest.raises(ValueError, match="multiples of 4"):
        build_transform(286, 254, train=True, flip=True)
    with pytest.raises(ValueError, match="multiples of 4"):
        build_transform(286, (256, 30), train=False, flip=True)
    with pytest.raises(ValueError, match="smaller than crop_size"):
        build_transform(200, 256, train=True, flip=True)
    with pytest.raises(ValueError, match="load_size"):
        build_transform(-3, 256, train=True, flip=True)


def test_length_and_pairing_rules(tmp_path):
    root = _make_root(tmp_path)
    ds = UnalignedDataset(root, load_size=28, crop_size=24, serial=True)
    assert len(ds) == 5
    for i in range(5):
        item = ds[i]
        assert item["A_path"].endswith(f"trainA/A{i % 3}.{('png', 'jpg', 'bmp')[i % 3]}")
        assert f"trainB/B{i}." in item["B_path"]
        assert item["A"].shape == item["B"].shape == (3, 24, 24)
        assert "A_mask" not in item and "B_mask" not in item
    with pytest.raises(IndexError):
        ds[5]
    # Swapped sizes: |A| = 5 > |B| = 3, B wraps around.
    ds = UnalignedDataset(_make_root(tmp_path / "r2", n_a=5, n_b=3), crop_size=24, serial=True)
    assert len(ds) == 5 and "trainB/B1." in ds[4]["B_path"]


def test_random_pairing_is_reproducible_per_seed_and_epoch(tmp_path):
    root = _make_root(tmp_path, n_a=8, n_b=8)

    def items(ds):
        return [(ds[i]["B_path"], ds[i]["A"]) for i in range(len(ds))]

    def same(x, y):
        return all(p == q and torch.equal(a, b) for (p, a), (q, b) in zip(x, y))

    kwargs = dict(load_size=32, crop_size=24)
    ds = UnalignedDataset(root, seed=5, **kwargs)
    first = items(ds)
    assert same(first, items(UnalignedDataset(root, seed=5, **kwargs)))
    assert len({p for p, _ in first}) > 1  # not serial
    assert [p for p, _ in first] != [p for p, _ in items(UnalignedDataset(root, seed=6, **kwargs))]
    ds.set_epoch(1)
    assert [p for p, _ in items(ds)] != [p for p, _ in first]
    ds.set_epoch(0)
    assert same(first, items(ds))


def test_direction_btoa_swaps_folders(tmp_path):
    ds = UnalignedDataset(_make_root(tmp_path), direction="BtoA", crop_size=24, serial=True)
    assert ds.folder_a.name == "trainB" and len(ds) == 5
    assert "trainB/B0." in ds[0]["A_path"] and "trainA/A0." in ds[0]["B_path"]
    with pytest.raises(ValueError, match="direction"):
        UnalignedDataset(tmp_path, direction="A2B")


def test_any_input_mode_becomes_the_requested_channels(tmp_path):
    _save(tmp_path / "trainA" / "grey.png", 100, mode="L")
    _save(tmp_path / "trainA" / "rgba.png", 100, mode="RGBA")
    _save(tmp_path / "trainA" / "palette.png", 3, mode="P")
    _save(tmp_path / "trainB" / "rgb.jpg", 100)
    for channels in (3, 1):
        ds = UnalignedDataset(tmp_path, crop_size=16, load_size=20, channels=channels, serial=True)
        assert all(ds[i]["A"].shape == (channels, 16, 16) for i in range(3))
        assert ds[0]["B"].shape == (channels, 16, 16)


def test_missing_or_empty_folders_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="dataset root .*absent"):
        UnalignedDataset(tmp_path / "absent")
    _make_root(tmp_path, n_b=0)
    with pytest.raises(ValueError, match="trainB"):
        UnalignedDataset(tmp_path)
    (tmp_path / "trainB").mkdir()
    with pytest.raises(ValueError, match=r"no images in .*trainB"):
        UnalignedDataset(tmp_path)


def test_corrupt_files_fail_fast_or_are_skipped(tmp_path):
    root = _make_root(tmp_path)
    _corrupt(root / "trainA" / "broken1.png")
    _corrupt(root / "trainB" / "broken2.jpg")
    with pytest.raises(ValueError, match="2 unreadable") as err:
        UnalignedDataset(root, crop_size=24)
    assert "broken1.png" in str(err.value) and "broken2.jpg" in str(err.value)
    with pytest.warns(UserWarning, match="skipping 2 unreadable") as record:
        ds = UnalignedDataset(root, crop_size=24, on_bad="skip")
    assert len(record) == 1
    assert len(ds.a_paths) == 3 and len(ds) == 5
    assert all(ds[i]["A"].shape == (3, 24, 24) for i in range(len(ds)))


def test_only_bad_files_left_is_an_error(tmp_path):
    _make_root(tmp_path, n_a=0)
    _corrupt(tmp_path / "trainA" / "bad.png")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no readable images.*trainA"):
        UnalignedDataset(tmp_path, on_bad="skip")


def test_test_phase_falls_back_to_val_and_is_serial(tmp_path):
    root = _make_root(tmp_path, phase="val")
    ds = UnalignedDataset(root, "test", crop_size=16)
    assert ds.folder_a.name == "valA" and ds.serial
    item = ds[4]
    assert item["A"].shape == (3, 16, 16) and "valB/B4." in item["B_path"]
    _make_root(root, phase="test")
    assert UnalignedDataset(root, "test", crop_size=16).folder_a.name == "testA"


def test_masks_are_read_when_their_folder_exists(tmp_path):
    root = _make_root(tmp_path, n_a=2, n_b=2, exts=("jpg",))
    for i in range(2):
        _save(root / "trainA_masks" / f"A{i}.png", 255 * i, mode="L")
    ds = UnalignedDataset(root, load_size=24, crop_size=24, serial=True)
    assert ds[1]["A_mask"].dtype == torch.bool and ds[1]["A_mask"].all()
    assert not ds[0]["A_mask"].any() and "B_mask" not in ds[0]
    (root / "trainA_masks" / "A1.png").unlink()
    with pytest.raises(ValueError, match="lacks masks for 1 image.*A1.jpg"):
        UnalignedDataset(root)


def test_single_folder_dataset(tmp_path):
    for i, ext in enumerate(("png", "jpg", "bmp")):
        _save(tmp_path / "photos" / f"{i}.{ext}", 10 * i, size=(30, 50))
    ds = SingleFolderDataset(tmp_path / "photos", crop_size=(32, 48))
    assert len(ds) == 3
    item = ds[2]
    assert set(item) == {"A", "A_path"} and item["A"].shape == (3, 32, 48)
    assert item["A_path"].endswith("2.bmp")
    assert SingleFolderDataset(tmp_path / "photos", crop_size=8, channels=1)[0]["A"].shape == (
        1,
        8,
        8,
    )
    with pytest.raises(ValueError, match="missing"):
        SingleFolderDataset(tmp_path / "missing")


def test_batches_through_a_dataloader(tmp_path):
    ds = UnalignedDataset(_make_root(tmp_path), load_size=28, crop_size=24)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True)))
    assert batch["A"].shape == (4, 3, 24, 24) and len(batch["B_path"]) == 4
