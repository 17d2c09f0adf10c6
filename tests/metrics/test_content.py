"""Content and domain scores on the generated data: detector accuracy against the true masks,
content IoU of faithful vs broken translations, the cached A-vs-B classifier."""

import numpy as np
import pytest
import torch

from patchcontrast.data import render_sample
from patchcontrast.data.generated import TEST_OFFSET
from patchcontrast.metrics import content as content_module
from patchcontrast.metrics import (
    content_score,
    detect_objects,
    domain_classifier,
    domain_score,
    mask_iou,
)
from patchcontrast.metrics.content import held_out_accuracy


def _test_sample(domain: str, i: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    return render_sample(domain, TEST_OFFSET + i, size=size)


def _fake_translation(source_mask: np.ndarray, j: int) -> np.ndarray:
    """A "perfect" A -> B translation of an image with ``source_mask``: savanna of B image ``j``
    (its own zebra painted over with savanna-coloured noise) and black/white stripes exactly
    where the source object is."""
    savanna, zebra = _test_sample("B", j, source_mask.shape[0])
    out = savanna.astype(np.float32)
    rng = np.random.default_rng(j)
    colour = np.median(out[~zebra], axis=0)
    out[zebra] = colour + rng.normal(0, 6, (zebra.sum(), 1))  # luminance noise only
    stripes = (np.arange(source_mask.shape[1]) // 3) % 2 == 0  # 6-px period, vertical
    bw = np.where(stripes, 235.0, 25.0)[None, :, None]
    out = np.where(source_mask[..., None], np.broadcast_to(bw, out.shape), out)
    return np.clip(out, 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize("size", [64, 256])
@pytest.mark.parametrize("domain", ["A", "B"])
def test_detector_finds_generated_objects(domain, size):
    # Measured on the first 50 test images: mean IoU 0.992 / 0.994 (A / B) at 64 px and
    # 0.997 / 0.998 at 256 px; the worst single image 0.85.
    n = 20 if size == 64 else 8
    ious = [
        mask_iou(detect_objects(image)[0], mask)
        for image, mask in (_test_sample(domain, i, size) for i in range(n))
    ]
    assert np.mean(ious) > 0.97
    assert min(ious) > 0.8


def test_detector_accepts_tensors_batches_and_float():
    image, mask = _test_sample("A", 0, 64)
    as_tensor = torch.from_numpy(image).permute(2, 0, 1)
    from_array = detect_objects(image)[0]
    assert from_array.dtype == torch.bool and from_array.shape == (64, 64)
    batch = detect_objects(torch.stack([as_tensor, as_tensor.flip(-1)]))
    assert torch.equal(batch[0], from_array) and torch.equal(batch[1], from_array.flip(-1))
    assert torch.equal(detect_objects(as_tensor.float() / 255)[0], from_array)
    with pytest.raises(ValueError, match=r"float images must be in \[0, 1\].*\(x \+ 1\) / 2"):
        detect_objects(as_tensor.float() / 127.5 - 1)
    with pytest.raises(ValueError, match="must be uint8 .H, W, 3."):
        detect_objects(image.astype(np.float32))


def test_mask_iou():
    a = torch.zeros(4, 4, dtype=torch.bool)
    b = a.clone()
    a[:2] = True  # 8 pixels
    b[1:3] = True  # 8 pixels, 4 shared
    assert mask_iou(a, b) == pytest.approx(4 / 12)
    assert mask_iou(a, a) == 1.0 and mask_iou(a, ~a) == 0.0
    assert mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0
    with pytest.raises(ValueError, match="mask shapes differ"):
        mask_iou(a, b[:3])


def test_content_score_separates_faithful_from_broken_translations():
    sources = [_test_sample("A", i, 128) for i in range(6)]
    masks = np.stack([m for _, m in sources])
    faithful = np.stack([_fake_translation(m, j) for j, (_, m) in enumerate(sources)])
    good = content_score(masks, faithful)
    assert len(good["per_image"]) == 6 and good["mean_iou"] > 0.95  # measured 0.989
    shifted = content_score(masks, np.roll(faithful, 40, axis=2))
    assert shifted["mean_iou"] < 0.5
    blank = np.broadcast_to(faithful[:, :1, :1], faithful.shape).copy()  # one savanna colour
    assert content_score(masks, blank)["mean_iou"] == 0.0
    # The untranslated source keeps its content too: the score is about shape, not domain.
    assert content_score(masks, np.stack([s for s, _ in sources]))["mean_iou"] > 0.95
    # Detections at another resolution are compared at the mask's resolution.
    small = (
        torch.nn.functional.interpolate(
            torch.from_numpy(faithful).permute(0, 3, 1, 2).float(), size=64, mode="area"
        )
        .round()
        .byte()
    )
    assert content_score(torch.from_numpy(masks)[:, None], small)["mean_iou"] > 0.85
    with pytest.raises(ValueError, match="6 source masks but 5 translated images"):
        content_score(masks, faithful[:5])


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return domain_classifier(cache_dir=tmp_path_factory.mktemp("cache"))


def test_domain_classifier_is_accurate_on_held_out_renders(classifier):
    # Measured: 1.0 on 100 A + 100 B test renders (half at 64 px, half 256 px shrunk to 64).
    assert held_out_accuracy(classifier, n=40) >= 0.98


def test_domain_score(classifier):
    a_images = [_test_sample("A", i, 128)[0] for i in range(8)]
    b_images = [_test_sample("B", i, 128)[0] for i in range(8)]
    assert domain_score(b_images, classifier) == 1.0
    assert domain_score(a_images, classifier) == 0.0
    faithful = [_fake_translation(_test_sample("A", i, 128)[1], i) for i in range(8)]
    assert domain_score(faithful, classifier) >= 0.875  # measured 1.0


def test_classifier_is_cached_and_not_retrained(tmp_path, monkeypatch):
    settings = {"steps": 5, "n_train": 4, "cache_dir": tmp_path}
    first = domain_classifier(**settings)
    assert len(list((tmp_path / "domain_classifier").glob("*.pt"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the cache holds these settings")

    monkeypatch.setattr(content_module, "_train", no_training)
    again = domain_classifier(**settings)
    for key, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])
    with pytest.raises(AssertionError, match="retrained"):
        domain_classifier(**settings, seed=1)  # other settings, other file


def test_classifier_training_is_seeded(tmp_path):
    settings = {"steps": 5, "n_train": 4}
    a = domain_classifier(**settings, cache_dir=tmp_path / "a").state_dict()
    b = domain_classifier(**settings, cache_dir=tmp_path / "b").state_dict()
    c = domain_classifier(**settings, seed=1, cache_dir=tmp_path / "c").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_domain_score_trains_the_classifier_on_first_use(tmp_path):
    # the first call happens inside domain_probabilities' no_grad: training must still work
    from patchcontrast.data import render_sample
    from patchcontrast.metrics import domain_score

    images = [
        torch.from_numpy(render_sample("B", i, size=64)[0]).permute(2, 0, 1) for i in range(4)
    ]
    assert domain_score(images, cache_dir=tmp_path) == 1.0
    assert list((tmp_path / "domain_classifier").glob("*.pt"))
