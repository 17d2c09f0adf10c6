"""The built-in generated horse -> zebra-like dataset: determinism, content, layout on disk."""

import numpy as np
import pytest
import torch
from PIL import Image

from patchcontrast.data import (
    GeneratedUnpaired,
    UnalignedDataset,
    render_sample,
    write_generated_dataset,
)
from patchcontrast.data.generated import TEST_OFFSET


def _gradient_energy(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean |horizontal| + |vertical| grey-level difference over pixels well inside ``mask``."""
    grey = image.astype(np.float32).mean(-1)
    inner = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    gx = np.abs(grey[1:-1, 2:] - grey[1:-1, :-2])
    gy = np.abs(grey[2:, 1:-1] - grey[:-2, 1:-1])
    return float((gx + gy)[inner].mean())


def test_same_key_gives_identical_bytes_and_other_keys_differ():
    image, mask = render_sample("A", 5, size=(64, 64), seed=3)
    again, mask_again = render_sample("A", 5, size=(64, 64), seed=3)
    assert image.tobytes() == again.tobytes() and np.array_equal(mask, mask_again)
    for other in (
        render_sample("A", 6, size=(64, 64), seed=3),
        render_sample("A", 5, size=(64, 64), seed=4),
        render_sample("B", 5, size=(64, 64), seed=3),
    ):
        assert not np.array_equal(other[0], image)


def test_render_does_not_depend_on_order():
    keys = [(d, i) for i in range(4) for d in "AB"]
    forward = {k: render_sample(*k, size=32)[0] for k in keys}
    backward = {k: render_sample(*k, size=32)[0] for k in reversed(keys)}
    assert all(np.array_equal(forward[k], backward[k]) for k in keys)


@pytest.mark.parametrize("size", [32, (64, 64), (48, 80), (80, 48), (8, 8)])
@pytest.mark.parametrize("domain", ["A", "B"])
def test_shapes_dtypes_and_non_empty_masks(domain, size):
    h, w = (size, size) if isinstance(size, int) else size
    for index in range(12):
        image, mask = render_sample(domain, index, size=size)
        assert image.shape == (h, w, 3) and image.dtype == np.uint8
        assert mask.shape == (h, w) and mask.dtype == bool
        assert 0 < mask.mean() < 0.7


def test_b_is_striped_and_a_is_plain():
    energy = {
        d: np.mean([_gradient_energy(*render_sample(d, i, size=128)) for i in range(8)])
        for d in "AB"
    }
    assert energy["B"] > 5 * energy["A"]
    # Zebras are black and white: their pixels are grey (R ~ G ~ B) and far from mid-grey.
    image, mask = render_sample("B", 0, size=128)
    pixels = image[mask].astype(np.float32)
    assert np.abs(pixels - pixels.mean(1, keepdims=True)).mean() < 12
    assert np.abs(pixels.mean(1) - 128).mean() > 60


def test_backgrounds_are_grass_and_savanna():
    for index in range(6):
        image, mask = render_sample("A", index, size=64)
        r, g, b = image[~mask].astype(np.float32).mean(0)
        assert g > r and g > b  # green grass
        image, mask = render_sample("B", index, size=64)
        r, g, b = image[~mask].astype(np.float32).mean(0)
        assert r > g > b + 20  # tan / yellow


def test_render_rejects_bad_arguments():
    with pytest.raises(ValueError, match="domain"):
        render_sample("C", 0)
    with pytest.raises(ValueError, match=">= 0"):
        render_sample("A", -1)
    with pytest.raises(ValueError, match="size"):
        render_sample("A", 0, size=(0, 16))


def test_dataset_items_match_render_sample():
    ds = GeneratedUnpaired("train", n_train=6, size=(32, 48), serial=True)
    assert len(ds) == 6
    item = ds[2]
    assert item["A"].shape == item["B"].shape == (3, 32, 48)
    assert item["A"].dtype == torch.float32 and item["A_mask"].dtype == torch.bool
    assert item["A"].min() >= -1 and item["A"].max() <= 1
    image, mask = render_sample("A", 2, size=(32, 48))
    expected = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(item["A"], expected)
    assert torch.equal(item["A_mask"][0], torch.from_numpy(mask))
    assert item["B_path"] == "generated/trainB/000002.png"
    with pytest.raises(IndexError):
        ds[6]


def test_train_and_test_splits_are_disjoint():
    train = GeneratedUnpaired("train", n_train=4, size=32)
    test = GeneratedUnpaired("test", n_test=4, size=32)
    assert len(test) == 4 and test.serial and not train.serial
    assert not torch.equal(train[0]["A"], test[0]["A"])
    image, _ = render_sample("A", TEST_OFFSET + 1, size=32)
    assert torch.equal(test[1]["A"], torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1)


def test_random_pairing_is_seeded_per_epoch():
    def pairing(ds):
        return [ds[i]["B_path"] for i in range(len(ds))]

    a = GeneratedUnpaired(n_train=12, size=16, seed=1)
    b = GeneratedUnpaired(n_train=12, size=16, seed=1)
    assert pairing(a) == pairing(b)
    first = pairing(a)
    a.set_epoch(1)
    assert pairing(a) != first
    a.set_epoch(0)
    assert pairing(a) == first


def test_direction_btoa_swaps_domains():
    ds = GeneratedUnpaired(n_train=3, size=64, direction="BtoA", serial=True)
    item = ds[0]
    assert item["A_path"] == "generated/trainB/000000.png"
    zebra = (item["A"].numpy().transpose(1, 2, 0) + 1) * 127.5
    horse = (item["B"].numpy().transpose(1, 2, 0) + 1) * 127.5
    assert _gradient_energy(zebra, item["A_mask"][0].numpy()) > 3 * _gradient_energy(
        horse, item["B_mask"][0].numpy()
    )


def test_dataset_rejects_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        GeneratedUnpaired("val")
    with pytest.raises(ValueError, match="n_train"):
        GeneratedUnpaired(n_train=0)
    with pytest.raises(ValueError, match="direction"):
        GeneratedUnpaired(direction="AB")


def test_write_layout_masks_and_idempotence(tmp_path, capsys):
    root = write_generated_dataset(tmp_path / "gen", n_train=3, n_test=2, size=(32, 40), seed=2)
    assert "generating" in capsys.readouterr().err  # the tqdm bar
    for folder, n in (("trainA", 3), ("trainB", 3), ("testA", 2), ("testB", 2)):
        names = sorted(p.name for p in (root / folder).iterdir())
        assert names == [f"{i:06d}.png" for i in range(n)]
        assert sorted(p.name for p in (root / f"{folder}_masks").iterdir()) == names
    image, mask = render_sample("B", TEST_OFFSET + 1, size=(32, 40), seed=2)
    assert np.array_equal(np.asarray(Image.open(root / "testB" / "000001.png")), image)
    saved_mask = np.asarray(Image.open(root / "testB_masks" / "000001.png"))
    assert set(np.unique(saved_mask)) <= {0, 255} and np.array_equal(saved_mask > 0, mask)

    # A second call keeps existing files and only fills in what is missing.
    kept = root / "trainA" / "000000.png"
    kept.write_bytes(kept.read_bytes() + b"marker")
    (root / "trainB" / "000002.png").unlink()
    write_generated_dataset(root, n_train=3, n_test=2, size=(32, 40), seed=2, progress=False)
    assert kept.read_bytes().endswith(b"marker")
    assert (root / "trainB" / "000002.png").exists()
    assert not list(root.rglob("*.tmp"))
    with pytest.raises(ValueError, match="another root"):
        write_generated_dataset(root, n_train=3, n_test=2, size=(32, 40), seed=3, progress=False)


def test_a_writer_beside_us_keeps_its_temporary_files(tmp_path):
    """Two sweeps that generate the same cache at once: each renames only its own temporary
    files (a shared ``NNNNNN.tmp`` let one move the other's half-written PNG away)."""
    root = tmp_path / "gen"
    others = [
        root / "trainA" / "000000.tmp",
        root / "trainA" / ".000000.png.1.tmp",
        root / ".generated.json.1.tmp",
    ]
    for path in others:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"another process is writing this")
    write_generated_dataset(root, n_train=1, n_test=1, size=(32, 32), seed=0, progress=False)
    assert [p.read_bytes() for p in others] == [b"another process is writing this"] * 3
    Image.open(root / "trainA" / "000000.png").load()  # a whole PNG
    assert sorted(root.rglob("*.tmp")) == sorted(others)


def test_written_dataset_reads_back_through_the_folder_pipeline(tmp_path):
    root = write_generated_dataset(tmp_path, n_train=4, n_test=3, size=32, progress=False)
    test = UnalignedDataset(root, "test", crop_size=32)
    assert len(test) == 3
    # Test transform at the written size is the identity, so items equal the renders exactly.
    image, mask = render_sample("A", TEST_OFFSET + 2, size=32)
    item = test[2]
    assert torch.equal(item["A"], torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1)
    assert torch.equal(item["A_mask"][0], torch.from_numpy(mask))
    train = UnalignedDataset(root, "train", load_size=36, crop_size=32)
    item = train[1]
    assert item["A_mask"].shape == item["B_mask"].shape == (1, 32, 32)
    assert item["A_mask"].any()
