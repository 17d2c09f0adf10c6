"""Segmentation metrics: perfect and known-wrong "models" on generated label maps, hand-computed
numbers, the ignore index, resolution handling, TorchScript files."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from patchcontrast.metrics import confusion_matrix, segmentation_metrics

K = 4


def _encode(
    labels: torch.Tensor, corrupt: torch.Tensor | None = None, num_classes: int = K
) -> torch.Tensor:
    """Images that carry their label map: channel 0 = label / K (ignored pixels -> class 0),
    channel 1 = 1 where a model should get the pixel wrong. (N, H, W) -> (N, 3, H, W)."""
    known = torch.where(labels == 255, 0, labels).float() / num_classes
    wrong = torch.zeros_like(known) if corrupt is None else corrupt.float()
    return torch.stack([known, wrong, torch.zeros_like(known)], 1)


class Decoder(nn.Module):
    """The "model": one-hot logits of the encoded label, shifted to the next class where the
    image says so; optionally at 1/factor resolution (block-averaged logits)."""

    def __init__(self, num_classes: int = K, factor: int = 1):
        super().__init__()
        self.num_classes, self.factor = num_classes, factor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        label = torch.round(images[:, 0] * self.num_classes).long()
        label = (label + (images[:, 1] > 0.5).long()) % self.num_classes
        logits = F.one_hot(label, self.num_classes).permute(0, 3, 1, 2).float()
        if self.factor > 1:
            logits = F.avg_pool2d(logits, self.factor)
        return logits


def _label_maps(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Blobby random label maps with K classes and a void (255) strip."""
    g = torch.Generator().manual_seed(seed)
    field = F.interpolate(torch.randn(n, K, 4, 4, generator=g), size=size, mode="bilinear")
    labels = field.argmax(1)
    labels[:, :, :3] = 255
    return labels


def test_perfect_model_scores_one():
    labels = _label_maps()
    result = segmentation_metrics(Decoder(), _encode(labels), labels, K)
    assert result["miou"] == result["pixel_accuracy"] == result["mean_class_accuracy"] == 1.0
    assert result["num_pixels"] == int((labels != 255).sum())
    assert torch.equal(result["confusion"], torch.diag(result["confusion"].diagonal()))


def test_known_errors_give_hand_computed_numbers():
    labels = torch.tensor(
        [
            [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2]],
            [[1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 2, 2], [255] * 4],
        ]
    )
    corrupt = torch.zeros_like(labels, dtype=torch.bool)
    corrupt[0, 0, :2] = True  # two 0s predicted as 1
    corrupt[0, 3, 0] = True  # one 2 predicted as 0 (2 + 1 = 3 -> 0 with 3 classes)
    corrupt[1, 2, 3] = True  # another 2 predicted as 0
    corrupt[1, 3] = True  # void pixels: whatever is predicted there must not count
    result = segmentation_metrics(Decoder(3), _encode(labels, corrupt, 3), labels, 3)
    # C[true, pred] = [[6, 2, 0], [0, 12, 0], [2, 0, 6]]
    assert result["confusion"].tolist() == [[6, 2, 0], [0, 12, 0], [2, 0, 6]]
    assert result["pixel_accuracy"] == pytest.approx(24 / 28)
    assert result["per_class_iou"] == pytest.approx([6 / 10, 12 / 14, 6 / 8])
    assert result["miou"] == pytest.approx((6 / 10 + 12 / 14 + 6 / 8) / 3)
    assert result["mean_class_accuracy"] == pytest.approx((6 / 8 + 1 + 6 / 8) / 3)
    assert result["num_pixels"] == 28


def test_classes_absent_from_both_are_skipped_and_false_positives_count():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 2:] = 1  # classes 0 and 1 present; 2 and 3 absent from the labels
    corrupt = torch.zeros_like(labels, dtype=torch.bool)
    corrupt[0, 3] = True  # the last row of 1s is predicted as 2 (absent from the labels)
    result = segmentation_metrics(Decoder(), _encode(labels, corrupt), labels, K)
    iou = result["per_class_iou"]
    assert iou[:3] == [1.0, 0.5, 0.0] and np.isnan(iou[3])
    assert result["miou"] == pytest.approx(1.5 / 3)  # class 3: in neither, so not averaged
    acc = result["per_class_accuracy"]
    assert acc[:2] == [1.0, 0.5] and np.isnan(acc[2]) and np.isnan(acc[3])
    assert result["mean_class_accuracy"] == pytest.approx(0.75)


def test_ignore_index_is_excluded():
    labels = _label_maps(seed=1)
    everything_wrong = torch.ones_like(labels, dtype=torch.bool)
    images = _encode(labels, everything_wrong & (labels == 255))  # wrong only where void
    assert segmentation_metrics(Decoder(), images, labels, K)["miou"] == 1.0
    other_void = torch.where(labels == 255, 7, labels)
    result = segmentation_metrics(Decoder(), images, other_void, K, ignore_index=7)
    assert result["miou"] == 1.0
    with pytest.raises(ValueError, match=r"labels hold values \[255\] outside 0..3"):
        segmentation_metrics(Decoder(), images, labels, K, ignore_index=7)


def test_low_resolution_logits_are_scored_at_label_resolution():
    # Column stripes of 4 px: bilinear upsampling then weights a pixel's own block by >= 0.625
    # (at block corners of a 2-D layout two neighbours together could outweigh it).
    blocks = _label_maps(n=2, size=8, seed=2)[:, :1].expand(2, 8, 8)
    labels = blocks.repeat_interleave(4, 1).repeat_interleave(4, 2)  # 32 x 32
    images = _encode(labels)
    result = segmentation_metrics(Decoder(factor=4), images, labels, K)
    assert result["miou"] == 1.0 and result["num_pixels"] == int((labels != 255).sum())
    # resolution="prediction": labels shrink (nearest) to the 8 x 8 logits instead
    small = segmentation_metrics(Decoder(factor=4), images, labels, K, resolution="prediction")
    assert small["miou"] == 1.0 and small["num_pixels"] == int((blocks != 255).sum())


def test_lists_of_mixed_sizes_numpy_labels_and_uint8():
    maps = [_label_maps(1, 16, 3)[0], _label_maps(1, 24, 4)[0], _label_maps(1, 16, 5)[0]]
    images = [(_encode(m[None])[0] * 255).round().byte() for m in maps]  # uint8 -> / 255
    result = segmentation_metrics(Decoder(), images, [m.numpy() for m in maps], K, batch_size=2)
    assert result["miou"] == 1.0
    assert result["num_pixels"] == sum(int((m != 255).sum()) for m in maps)


@pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")  # deprecated, still the format
def test_torchscript_round_trip(tmp_path):
    labels = _label_maps(seed=6)
    corrupt = torch.zeros_like(labels, dtype=torch.bool)
    corrupt[:, 10:14] = True
    images = _encode(labels, corrupt)
    direct = segmentation_metrics(Decoder(), images, labels, K)
    assert direct["miou"] < 1
    scripted = tmp_path / "decoder.pt"
    torch.jit.save(torch.jit.script(Decoder()), scripted)
    for model in (scripted, str(scripted)):
        loaded = segmentation_metrics(model, images, labels, K)
        assert torch.equal(loaded["confusion"], direct["confusion"])
    # A traced network whose output is a dict (torchvision style) or a tuple (DRN style).
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, K, 1)).eval()
    traced = tmp_path / "net.pt"
    torch.jit.save(torch.jit.trace(net, images[:1]), traced)
    expected = segmentation_metrics(net, images, labels, K)
    assert torch.equal(
        segmentation_metrics(traced, images, labels, K)["confusion"], expected["confusion"]
    )
    for wrap in (lambda x: {"out": net(x)}, lambda x: (net(x), None)):
        assert torch.equal(
            segmentation_metrics(wrap, images, labels, K)["confusion"], expected["confusion"]
        )


def test_confusion_matrix_function():
    target = torch.tensor([0, 1, 1, 2, 255])
    pred = torch.tensor([0, 1, 2, 2, 0])
    assert confusion_matrix(pred, target, 3).tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]


def test_errors(tmp_path):
    labels = _label_maps(n=2, size=8)
    images = _encode(labels)
    with pytest.raises(ValueError, match="does not exist"):
        segmentation_metrics(tmp_path / "missing.pt", images, labels, K)
    with pytest.raises(ValueError, match="must be a TorchScript file path or a callable"):
        segmentation_metrics(42, images, labels, K)
    with pytest.raises(ValueError, match=r"expected \(B, num_classes=5, H', W'\)"):
        segmentation_metrics(Decoder(), images, labels, 5)
    with pytest.raises(ValueError, match="2 images but 1 label maps"):
        segmentation_metrics(Decoder(), images, labels[:1], K)
    with pytest.raises(ValueError, match=r"float images must be in \[0, 1\]"):
        segmentation_metrics(Decoder(), images * 2 - 1, labels, K)
    with pytest.raises(ValueError, match="resolution must be one of"):
        segmentation_metrics(Decoder(), images, labels, K, resolution="native")
    with pytest.raises(ValueError, match="no images"):
        segmentation_metrics(Decoder(), [], [], K)
