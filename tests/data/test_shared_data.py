"""The loaders on the real datasets of ``../shared/data`` (horse2zebra, facades, the SinCUT
Monet / Etretat pair), when that folder is present; each test skips, naming the folder, when not.
The rest of the suite uses generated data only."""

from pathlib import Path

import pytest
import torch

from patchcontrast.data.folders import UnalignedDataset
from patchcontrast.data.paired import PairedDataset
from patchcontrast.data.single_image import SingleImageDataset

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def shared(name: str) -> Path:
    folder = SHARED / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is not present (real data is optional)")
    return folder


def test_horse2zebra_counts_and_greyscale_files_load_as_rgb():
    root = shared("horse2zebra")
    train = UnalignedDataset(root, "train", load_size=72, crop_size=64)
    test = UnalignedDataset(root, "test", load_size=64, crop_size=64)
    # the published split (data README): 1067 / 1334 train, 120 / 140 test
    assert (len(train.a_paths), len(train.b_paths)) == (1067, 1334)
    assert (len(test.a_paths), len(test.b_paths)) == (120, 140)
    # 7 files are greyscale (mode L); every item is still (3, 64, 64) in [-1, 1]
    for i in range(0, len(train), 97):
        item = train[i]
        for key in "AB":
            assert item[key].shape == (3, 64, 64)
            assert -1 <= item[key].min() and item[key].max() <= 1


def test_facades_side_by_side_labels_lie_in_the_12_classes():
    root = shared("facades")
    ds = PairedDataset(
        root,
        "test",
        label_nc=12,
        layout="side_by_side",
        palette="facades",
        crop_size=64,
        train=False,
    )
    assert len(ds) == 106
    seen = torch.zeros(12, dtype=torch.bool)
    for i in range(0, len(ds), 10):
        item = ds[i]
        assert item["label"].shape == (1, 64, 64) and item["image"].shape == (3, 64, 64)
        assert 0 <= item["label"].min() and item["label"].max() < 12
        seen[item["label"].unique()] = True
    assert seen.sum() >= 8  # a facade shows most of the classes (wall, window, door, ...)


def test_monet_etretat_crops_come_from_both_images():
    root = shared("single_image_monet_etretat")
    ds = SingleImageDataset(
        root / "trainA", root / "trainB", crop_size=64, batch_size=8, virtual_size=32
    )
    assert len(ds) == 32
    batch = [ds[i] for i in range(8)]
    for key, name in (("A", "monet.jpg"), ("B", "etretat-normandy-france.jpg")):
        crops = torch.stack([item[key] for item in batch])
        assert crops.shape == (8, 3, 64, 64)
        assert Path(batch[0][f"{key}_path"]).name == name
        # distinct cells of one zoomed image: no two crops of a batch are the same
        flat = crops.flatten(1)
        assert torch.cdist(flat, flat).add(torch.eye(8) * 1e9).min() > 0
