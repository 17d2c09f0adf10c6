"""The built-in generated paired set: determinism, label/texture content, layout on disk."""

import json
import time

import numpy as np
import pytest
from PIL import Image

from patchcontrast.data.generated import TEST_OFFSET, write_generated_dataset
from patchcontrast.data.generated_paired import (
    GENERATED_CLASSES,
    GENERATED_LABEL_NC,
    render_paired_sample,
    write_generated_paired,
)
from patchcontrast.data.paired import PairedDataset


def test_same_key_gives_identical_bytes_and_other_keys_differ():
    label, image = render_paired_sample(5, size=64, seed=3)
    again_label, again_image = render_paired_sample(5, size=64, seed=3)
    assert label.tobytes() == again_label.tobytes() and image.tobytes() == again_image.tobytes()
    for other in (render_paired_sample(6, size=64, seed=3), render_paired_sample(5, size=64)):
        assert not np.array_equal(other[1], image)
    order = [render_paired_sample(i, size=32)[1] for i in (2, 0, 1)]
    assert np.array_equal(order[1], render_paired_sample(0, size=32)[1])


@pytest.mark.parametrize("size", [32, (48, 80), (80, 48), 8])
def test_shapes_dtypes_and_ranges(size):
    h, w = (size, size) if isinstance(size, int) else size
    for index in range(6):
        label, image = render_paired_sample(index, size=size)
        assert label.shape == (h, w) and label.dtype == np.uint8
        assert image.shape == (h, w, 3) and image.dtype == np.uint8
        assert label.max() < GENERATED_LABEL_NC
    assert GENERATED_LABEL_NC == len(GENERATED_CLASSES) == 8


def test_every_class_appears_across_a_few_samples():
    seen = set()
    for index in range(12):
        seen |= set(np.unique(render_paired_sample(index, size=32)[0]).tolist())
    assert seen == set(range(GENERATED_LABEL_NC))


def test_two_sizes_show_the_same_scene():
    small = render_paired_sample(4, size=64)[0]
    large = render_paired_sample(4, size=128)[0][::2, ::2]
    assert (small == large).mean() > 0.95


def _region_stats(n_images: int = 24, size: int = 64) -> list[tuple[int, np.ndarray, float]]:
    """(class, mean colour (3,), mean per-channel std) of every region with >= 40 pixels."""
    out = []
    for index in range(n_images):
        label, image = render_paired_sample(index, size=size)
        for cls in np.unique(label):
            pixels = image[label == cls].astype(np.float64)
            if len(pixels) >= 40:
                out.append((int(cls), pixels.mean(0), float(pixels.std(0).mean())))
    return out


def test_classes_look_different_but_vary_between_images():
    stats = _region_stats()
    classes = np.array([c for c, _, _ in stats])
    means = np.stack([m for _, m, _ in stats])
    assert set(classes.tolist()) == set(range(GENERATED_LABEL_NC))
    centroids = np.stack([means[classes == c].mean(0) for c in range(GENERATED_LABEL_NC)])
    # A region's mean colour tells its class (nearest class centroid) ...
    predicted = np.linalg.norm(means[:, None] - centroids[None], axis=-1).argmin(1)
    assert (predicted == classes).mean() >= 0.9
    # ... yet one class's colour varies from image to image (hue / brightness jitter) ...
    for c in range(GENERATED_LABEL_NC):
        if (classes == c).sum() >= 3:
            assert means[classes == c].std(0).max() > 5, GENERATED_CLASSES[c]
    # ... and inside one region (texture), well beyond the sensor noise (std 3).
    texture = {c: np.mean([s for k, _, s in stats if k == c]) for c in range(GENERATED_LABEL_NC)}
    assert min(texture.values()) > 6, texture


def test_render_is_cheap():
    render_paired_sample(0, size=64)
    start = time.perf_counter()
    for index in range(20):
        render_paired_sample(index, size=64)
    per_image = (time.perf_counter() - start) / 20
    assert per_image < 0.025, per_image  # about 2.5 ms on a busy 2-core CPU


def test_bad_arguments():
    with pytest.raises(ValueError, match="index and seed must be >= 0"):
        render_paired_sample(-1)
    with pytest.raises(ValueError, match="size must be a positive int"):
        render_paired_sample(0, size=0)


def test_written_layout_reads_back_with_paired_dataset(tmp_path):
    root = write_generated_paired(tmp_path / "g", n_train=3, n_test=2, size=32, progress=False)
    for split, n in (("train", 3), ("test", 2)):
        for kind in ("label", "img"):
            assert sorted(p.name for p in (root / f"{split}_{kind}").iterdir()) == [
                f"{i:06d}.png" for i in range(n)
            ]
    assert json.loads((root / "generated.json").read_text())["kind"] == "paired"
    ds = PairedDataset(
        root, "test", label_nc=GENERATED_LABEL_NC, load_size=32, crop_size=32, train=False
    )
    label, image = render_paired_sample(TEST_OFFSET + 1, size=32)
    item = ds[1]
    assert np.array_equal(item["label"][0].numpy(), label)
    assert np.array_equal(
        ((item["image"] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy(), image
    )


def test_writing_is_resumable_and_settings_must_match(tmp_path):
    root = write_generated_paired(tmp_path, n_train=3, n_test=1, size=16, progress=False)
    removed = root / "train_img" / "000001.png"
    removed.unlink()
    kept = root / "train_label" / "000002.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(kept)  # a file present must be kept
    write_generated_paired(root, n_train=3, n_test=1, size=16, progress=False)
    assert np.array_equal(np.asarray(Image.open(removed)), render_paired_sample(1, size=16)[1])
    assert np.asarray(Image.open(kept)).max() == 0
    assert not list(root.rglob("*.tmp"))
    write_generated_paired(root, n_train=5, n_test=1, size=16, progress=False)  # grow: fine
    assert len(list((root / "train_label").iterdir())) == 5
    for other in ({"seed": 1}, {"size": 32}):
        with pytest.raises(ValueError, match="holds a generated dataset made with"):
            write_generated_paired(
                root, **{"n_train": 3, "n_test": 1, "size": 16, "progress": False, **other}
            )
    unpaired = write_generated_dataset(tmp_path / "u", n_train=1, n_test=1, size=16, progress=False)
    with pytest.raises(ValueError, match="holds a generated dataset made with"):
        write_generated_paired(unpaired, n_train=1, n_test=1, size=16, progress=False)
    with pytest.raises(ValueError, match="need 0 < n_train"):
        write_generated_paired(tmp_path / "x", n_train=0, progress=False)
