"""A domain classifier for any unpaired dataset: does a translation look like domain B?

For real data (e.g. horse2zebra) there is no ground-truth renderer, so the classifier is trained
on the dataset's own ``trainA`` (label 0) and ``trainB`` (label 1) images and checked on
``testA`` / ``testB``, whose accuracy is reported with every score. It is never used to train a
translator: it only judges translations. Images are resized to ``size`` (64 px by default, the
CPU recipes' resolution), so a translation is judged at the size it was made.

Architecture: four stride-2 3x3 convolutions (32, 64, 128, 128 channels, batch norm, ReLU),
global average pooling, linear; Adam, random flips and random 7/8 crops resized back. Trained
once per (dataset, settings) and cached under ``$PATCHCONTRAST_CACHE/folder_classifier/``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.folders import list_images, load_image
from .content import _cache_dir

_VERSION = 1  # bump when the architecture or training changes (invalidates caches)


class FolderClassifier(nn.Module):
    """``(B, 3, S, S)`` images in ``[0, 1]`` -> ``(B,)`` logits of "domain B"."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in (32, 64, 128, 128):
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c_in, 1)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images * 2 - 1))[:, 0]


def load_folder(folder: str | Path, size: int) -> Tensor:
    """Every image of ``folder`` as float ``(N, 3, size, size)`` in ``[0, 1]``."""
    images = [
        torch.from_numpy(np.array(load_image(p, 3))).permute(2, 0, 1)[None].float() / 255
        for p in list_images(folder)
    ]
    if not images:
        raise ValueError(f"{folder} holds no images")
    return torch.cat(
        [
            F.interpolate(
                x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
            for x in images
        ]
    )


def _augment(x: Tensor, g: torch.Generator) -> Tensor:
    """Random horizontal flips and a random crop of 7/8 of each side, resized back."""
    flip = torch.rand(len(x), generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    size, crop = x.shape[-1], x.shape[-1] * 7 // 8
    top, left = (int(v) for v in torch.randint(0, size - crop + 1, (2,), generator=g))
    return F.interpolate(
        x[..., top : top + crop, left : left + crop],
        size=(size, size),
        mode="bilinear",
        align_corners=False,
    )


@torch.no_grad()
def probabilities(model: FolderClassifier, images: Tensor) -> Tensor:
    """P(domain B) per image ``(N,)`` for float images ``(N, 3, S, S)`` in ``[0, 1]``."""
    model.eval()
    return torch.cat([torch.sigmoid(model(b)) for b in images.split(256)])


def _train(root: Path, settings: dict) -> tuple[FolderClassifier, dict]:
    size = settings["size"]
    a, b = load_folder(root / "trainA", size), load_folder(root / "trainB", size)
    images = torch.cat([a, b])
    labels = torch.cat([torch.zeros(len(a)), torch.ones(len(b))])
    # balanced batches: each domain is drawn with probability 1/2, whatever the counts
    weights = torch.cat([torch.full((len(a),), 0.5 / len(a)), torch.full((len(b),), 0.5 / len(b))])
    g = torch.Generator().manual_seed(settings["seed"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings["seed"])
        model = FolderClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    model.train()
    for _ in range(settings["steps"]):
        idx = torch.multinomial(weights, settings["batch_size"], replacement=True, generator=g)
        loss = F.binary_cross_entropy_with_logits(model(_augment(images[idx], g)), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test = {}
    for domain, label in (("A", 0.0), ("B", 1.0)):
        folder = root / f"test{domain}"
        if folder.is_dir():
            called_b = probabilities(model, load_folder(folder, size)) > 0.5
            test[f"test{domain}_accuracy"] = float((called_b == bool(label)).float().mean())
    return model, test


def folder_classifier(
    root: str | Path,
    *,
    size: int = 64,
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> tuple[FolderClassifier, dict]:
    """The A-vs-B classifier of the dataset folder ``root`` (``trainA/``, ``trainB/``, and for
    the reported accuracy ``testA/``, ``testB/``) and its info: settings and test accuracies.
    Trained once (about a minute on 2 cores for horse2zebra at 64 px), then loaded from cache.
    """
    root = Path(root)
    for split in ("trainA", "trainB"):
        if not (root / split).is_dir():
            raise ValueError(
                f"the domain classifier trains on {root}/trainA and {root}/trainB; "
                f"{root / split} is missing"
            )
    files = [
        f"{p.parent.name}/{p.name}:{p.stat().st_size}"
        for split in ("trainA", "trainB")
        for p in list_images(root / split)
    ]
    settings = {
        "version": _VERSION,
        "size": size,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "files": hashlib.sha256("\n".join(files).encode()).hexdigest()[:16],
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = _cache_dir(cache_dir) / "folder_classifier" / f"{key}.pt"
    model = FolderClassifier()
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved["settings"] == settings:
            model.load_state_dict(saved["state_dict"])
            return model.eval(), {"settings": settings, **saved["test"]}
    model, test = _train(root, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"settings": settings, "state_dict": model.state_dict(), "test": test}, tmp)
    os.replace(tmp, path)
    return model, {"settings": settings, **test}


def folder_domain_score(root: str | Path, images: str | Path, *, size: int = 64) -> dict:
    """Fraction of the images in folder ``images`` that the classifier of dataset ``root``
    calls B, with the classifier's test accuracies."""
    model, info = folder_classifier(root, size=size)
    called_b = float((probabilities(model, load_folder(images, size)) > 0.5).float().mean())
    return {"domain_b": called_b, **{k: v for k, v in info.items() if k != "settings"}}
