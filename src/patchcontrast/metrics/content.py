"""Content-preservation and domain scores for the built-in generated data (no paper counterpart).

The generated set (``patchcontrast.data.generated``) has plain brown/grey animals on green grass
(A) and black/white striped animals on tan savanna (B), with ground-truth object masks. A good
A -> B translation keeps the animal where it is (content) and looks like B (domain):

- ``content_score``: IoU between the *source* image's ground-truth mask and the object that
  ``detect_objects`` finds in its translation.
- ``domain_score``: the fraction of translations that a small CNN, trained once on real A vs real
  B renders (and cached), calls B. The backgrounds differ in colour and the animals in texture,
  so it checks both but may be satisfied by the background alone: read it with the content score.

The detector is fixed and training-free, so the score cannot drift with a model: the background
colour is modelled from the image border (robust mean and covariance of the border pixels), every
pixel gets its Mahalanobis distance to it, and the object is what is far from the background
(hysteresis: pixels with distance > ``low`` connected to a seed whose 3x3-averaged distance is
> ``high``, then holes filled). It works for both domains and for translations without knowing
which background to expect. The thresholds were tuned on generated images; on the first 50
generated test images per domain the mean IoU with the true masks is 0.992 (A) / 0.994 (B) at
64 px, 0.995 / 0.995 at 128 px and 0.997 / 0.998 at 256 px (worst single image 0.85). Its blind
spot: an object whose colour is close to the background's can be partly missed (A horses pasted
unchanged onto B savanna: mean IoU 0.96 over 20 images, worst 0.40), which the content score
then counts as lost content.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.generated import RENDER_VERSION, TEST_OFFSET, render_sample

Images = Tensor | np.ndarray | Sequence[Tensor | np.ndarray]
Masks = Tensor | np.ndarray | Sequence[Tensor | np.ndarray]

BORDER = 0.04  # width of the border ring that models the background, as a fraction of min(H, W)
LOW, HIGH = 4.5, 6.0  # hysteresis thresholds on the Mahalanobis distance (see the docstring)
CLASSIFIER_SIZE = 64
_CLASSIFIER_VERSION = 1  # bump when the classifier or its training changes (invalidates caches)


# ------------------------------------------------------------------------------------------------
# Inputs


def _as_images(images: Images, name: str = "images") -> list[Tensor]:
    """Images as a list of float64 (3, H, W) CPU tensors on the 0-255 scale.

    Accepts a tensor (N, 3, H, W) / (3, H, W) (uint8, or float in [0, 1]), a uint8 NumPy array
    (N, H, W, 3) / (H, W, 3) as ``render_sample`` returns, or a list of these.
    """
    if (
        isinstance(images, np.ndarray)
        and images.ndim == 4
        or (isinstance(images, Tensor) and images.dim() == 4)
    ):
        images = list(images)
    elif isinstance(images, (np.ndarray, Tensor)):
        images = [images]
    out = []
    for i, image in enumerate(images):
        image = image.detach().cpu() if isinstance(image, Tensor) else image
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
                raise ValueError(
                    f"{name}[{i}]: NumPy images must be uint8 (H, W, 3), got "
                    f"{image.dtype} {image.shape}"
                )
            image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(
                f"{name}[{i}] must be a (3, H, W) tensor or (H, W, 3) array, got {shape}"
            )
        if image.dtype == torch.uint8:
            out.append(image.to(torch.float64))
        elif image.is_floating_point():
            lo, hi = float(image.min()), float(image.max())
            if lo < -1e-3 or hi > 1 + 1e-3:
                raise ValueError(
                    f"{name}[{i}]: float images must be in [0, 1], got values in "
                    f"[{lo:.3g}, {hi:.3g}]; map generator outputs with (x + 1) / 2"
                )
            out.append(image.to(torch.float64).clamp(0, 1) * 255)
        else:
            raise ValueError(f"{name}[{i}] must be uint8 or float, got {image.dtype}")
    if not out:
        raise ValueError(f"{name} is empty")
    return out


def _as_masks(masks: Masks, name: str = "masks") -> list[Tensor]:
    """Masks as a list of bool (H, W) tensors: (N, H, W), (N, 1, H, W), (H, W) or a list."""
    if isinstance(masks, (np.ndarray, Tensor)):
        masks = torch.as_tensor(masks)
        masks = masks[None] if masks.dim() == 2 else masks
        masks = masks[:, 0] if masks.dim() == 4 and masks.shape[1] == 1 else masks
        masks = list(masks) if masks.dim() == 3 else [masks]
    out = []
    for i, mask in enumerate(masks):
        mask = torch.as_tensor(mask)
        mask = mask[0] if mask.dim() == 3 and mask.shape[0] == 1 else mask
        if mask.dim() != 2:
            raise ValueError(f"{name}[{i}] must be (H, W) or (1, H, W), got {tuple(mask.shape)}")
        out.append(mask.bool())
    if not out:
        raise ValueError(f"{name} is empty")
    return out


# ------------------------------------------------------------------------------------------------
# Object detector


def _background_distance(image: Tensor, border: float) -> Tensor:
    """Mahalanobis distance (H, W) of every pixel of a (3, H, W) image to the border colours.

    The border ring's colours give a median; the 80 % of border pixels closest to it (so that an
    animal touching the border does not count) give the mean and covariance (+1 on the diagonal:
    a flat background must not make 1-level noise look like an object).
    """
    h, w = image.shape[-2:]
    b = max(1, round(border * min(h, w)))
    ring = torch.ones(h, w, dtype=torch.bool)
    ring[b : h - b, b : w - b] = False
    pixels = image[:, ring].T  # (R, 3)
    spread = (pixels - pixels.median(0).values).square().sum(1)
    kept = pixels[spread <= spread.quantile(0.8)]
    mean = kept.mean(0)
    cov = torch.cov(kept.T) + torch.eye(3, dtype=kept.dtype)
    diff = image.permute(1, 2, 0) - mean
    return torch.einsum("hwi,ij,hwj->hw", diff, torch.linalg.inv(cov), diff).clamp_min(0).sqrt()


def _dilate(masks: Tensor) -> Tensor:
    """3x3 binary dilation of (N, H, W) bool masks (shifted ORs: far faster than max-pooling)."""
    p = F.pad(masks, (1, 1, 1, 1))
    rows = p[..., :-2] | p[..., 1:-1] | p[..., 2:]
    return rows[..., :-2, :] | rows[..., 1:-1, :] | rows[..., 2:, :]


def _grow(seed: Tensor, allowed: Tensor) -> Tensor:
    """Pixels of ``allowed`` 8-connected to ``seed`` within ``allowed``; (N, H, W) bool each."""
    reached = seed & allowed
    while True:
        before = reached
        for _ in range(8):  # check for convergence every few steps only
            reached = _dilate(reached) & allowed
        if torch.equal(reached, before):
            return reached


def _fill_holes(masks: Tensor) -> Tensor:
    """Background not connected to the image edge becomes object; (N, H, W) bool."""
    edge = torch.ones_like(masks)
    edge[:, 1:-1, 1:-1] = False
    return ~_grow(edge, ~masks)


def detect_objects(
    images: Images, *, low: float = LOW, high: float = HIGH, border: float = BORDER
) -> list[Tensor]:
    """Object masks, bool (H, W) each, for images of any domain (see the module docstring).

    ``images``: uint8 or [0, 1] float (N, 3, H, W) / (3, H, W) tensors, uint8 (H, W, 3) arrays,
    or lists of them. Example::

        image, mask = render_sample("B", 0, size=128)
        found = detect_objects(image)[0]  # mask_iou(found, mask) ~ 0.99
    """
    out = []
    for image in _as_images(images):
        distance = _background_distance(image, border)[None]  # (1, H, W)
        smooth = F.avg_pool2d(F.pad(distance[None], (1, 1, 1, 1), mode="replicate"), 3, stride=1)[0]
        out.append(_fill_holes(_grow(smooth > high, distance > low))[0])
    return out


def mask_iou(pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> float:
    """Intersection over union of two bool masks of one shape; 1.0 if both are empty."""
    pred, target = torch.as_tensor(pred).bool(), torch.as_tensor(target).bool()
    if pred.shape != target.shape:
        raise ValueError(f"mask shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    union = int((pred | target).sum())
    return 1.0 if union == 0 else int((pred & target).sum()) / union


def content_score(source_masks: Masks, translated_images: Images) -> dict[str, float | list]:
    """IoU between each source object's ground-truth mask and the object detected in its
    translation: ``{"mean_iou": float, "per_image": [float, ...]}``.

    Pairs are taken in order. A detection at another resolution than its mask is resized to the
    mask's size (nearest neighbour) before the IoU.
    """
    masks = _as_masks(source_masks, "source_masks")
    found = detect_objects(translated_images)
    if len(masks) != len(found):
        raise ValueError(f"{len(masks)} source masks but {len(found)} translated images")
    per_image = []
    for mask, det in zip(masks, found):
        if det.shape != mask.shape:
            det = (
                F.interpolate(det[None, None].float(), size=tuple(mask.shape), mode="nearest")[0, 0]
                > 0.5
            )
        per_image.append(mask_iou(det, mask))
    return {"mean_iou": float(np.mean(per_image)), "per_image": per_image}


# ------------------------------------------------------------------------------------------------
# Domain classifier


class DomainClassifier(nn.Module):
    """Tiny CNN: (B, 3, 64, 64) in [0, 1] -> (B,) logit of "domain B".

    Three stride-2 3x3 convolutions (16, 32, 64 channels, ReLU), global average pooling, linear.
    """

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(64, 1)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images * 2 - 1))[:, 0]


def _classifier_batch(images: Images) -> Tensor:
    """Any images -> float32 (N, 3, 64, 64) in [0, 1] (bilinear, antialiased)."""
    out = [
        F.interpolate(
            x[None] / 255,
            size=(CLASSIFIER_SIZE, CLASSIFIER_SIZE),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        for x in _as_images(images)
    ]
    return torch.cat(out).float()


def _renders(n: int, offset: int, seed: int) -> tuple[Tensor, Tensor]:
    """n A and n B renders (half at 64 px, half at 256 px shrunk to 64) and labels (0 = A)."""
    images, labels = [], []
    for label, domain in enumerate("AB"):
        for i in range(n):
            size = CLASSIFIER_SIZE if i % 2 == 0 else 4 * CLASSIFIER_SIZE
            images.append(render_sample(domain, offset + i, size=size, seed=seed)[0])
            labels.append(label)
    return _classifier_batch(images), torch.tensor(labels, dtype=torch.float32)


@torch.enable_grad()  # the first call may come from inside no_grad (domain_probabilities)
def _train(settings: dict) -> DomainClassifier:
    """Train on generated train renders: Adam, random flips, fixed seed."""
    images, labels = _renders(settings["n_train"], 0, settings["data_seed"])
    g = torch.Generator().manual_seed(settings["seed"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings["seed"])
        model = DomainClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    for _ in range(settings["steps"]):
        idx = torch.randint(len(images), (settings["batch_size"],), generator=g)
        x = images[idx]
        flip = torch.rand(len(x), generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = F.binary_cross_entropy_with_logits(model(x), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _cache_dir(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("PATCHCONTRAST_CACHE", Path.home() / ".cache" / "patchcontrast"))


def domain_classifier(
    *,
    seed: int = 0,
    data_seed: int = 0,
    n_train: int = 256,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 2e-3,
    cache_dir: str | Path | None = None,
) -> DomainClassifier:
    """The A-vs-B classifier for these settings: trained once (a few seconds on a CPU), then
    loaded from ``<cache_dir>/domain_classifier/<hash of the settings>.pt``.

    ``cache_dir`` defaults to ``$PATCHCONTRAST_CACHE`` or ``~/.cache/patchcontrast``.
    ``data_seed`` is the generated dataset's seed; ``seed`` drives initialisation and batches.
    """
    settings = {
        "version": _CLASSIFIER_VERSION,
        "render_version": RENDER_VERSION,
        "size": CLASSIFIER_SIZE,
        "seed": seed,
        "data_seed": data_seed,
        "n_train": n_train,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = _cache_dir(cache_dir) / "domain_classifier" / f"{key}.pt"
    model = DomainClassifier()
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved["settings"] == settings:
            model.load_state_dict(saved["state_dict"])
            return model.eval()
    model = _train(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"settings": settings, "state_dict": model.state_dict()}, tmp)
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one
    return model


@torch.no_grad()
def domain_probabilities(
    images: Images, classifier: DomainClassifier | None = None, **settings
) -> Tensor:
    """P(domain B) per image, float (N,); ``settings`` go to ``domain_classifier``."""
    model = classifier if classifier is not None else domain_classifier(**settings)
    x = _classifier_batch(images)
    return torch.cat([torch.sigmoid(model(b)) for b in x.split(256)])


def domain_score(
    translated_images: Images, classifier: DomainClassifier | None = None, **settings
) -> float:
    """Fraction of images the domain classifier calls B (probability > 0.5)."""
    return float(
        (domain_probabilities(translated_images, classifier, **settings) > 0.5).float().mean()
    )


def held_out_accuracy(classifier: DomainClassifier, n: int = 100, data_seed: int = 0) -> float:
    """Accuracy on ``n`` A and ``n`` B generated *test* renders (never seen in training)."""
    images, labels = _renders(n, TEST_OFFSET, data_seed)
    return float(
        ((domain_probabilities(images, classifier) > 0.5).float() == labels).float().mean()
    )
