"""Runtime of each evaluation metric on 120 vs 140 images at 256 px (the horse2zebra test split).

Data: ``../shared/data/horse2zebra`` testA (120) vs testB (140) when present, else the built-in
generated data at 256 px (120 A vs 140 B). The content and domain scores need the built-in data's
masks and always run on it (120 A images scored against their masks).

FID/KID: the FID Inception network of pytorch-fid is built with its real architecture, but its
weights file cannot be downloaded here, so the timed network has pytorch-fid's architecture with
*random* weights. The compute is the same, so the time is representative; the FID value printed
from it is meaningless and is not reported. Usage: ``python benchmarks/metrics.py``
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from patchcontrast.data import list_images, load_image, write_generated_dataset
from patchcontrast.metrics import content_score, domain_score, fid_from_folders, swd_from_folders

H2Z = Path(__file__).resolve().parents[2] / "shared" / "data" / "horse2zebra"


def random_fid_inception():
    """pytorch-fid's FID Inception-v3 blocks assembled as its ``fid_inception_v3`` does, but
    without loading the weights file (random init)."""
    from pytorch_fid import inception as fi

    net = fi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b, net.Mixed_5c = fi.FIDInceptionA(192, 32), fi.FIDInceptionA(256, 64)
    net.Mixed_5d = fi.FIDInceptionA(288, 64)
    net.Mixed_6b, net.Mixed_6c = fi.FIDInceptionC(768, 128), fi.FIDInceptionC(768, 160)
    net.Mixed_6d, net.Mixed_6e = fi.FIDInceptionC(768, 160), fi.FIDInceptionC(768, 192)
    net.Mixed_7b, net.Mixed_7c = fi.FIDInceptionE_1(1280), fi.FIDInceptionE_2(2048)
    return net


class RandomFIDInception(torch.nn.Module):
    """pytorch-fid's InceptionV3 pool3 feature extractor (its resize and normalisation) around
    the randomly initialised FID architecture."""

    name = "FID Inception-v3 architecture, RANDOM weights (timing only)"

    def __init__(self) -> None:
        super().__init__()
        from pytorch_fid import inception

        with mock.patch.object(inception, "fid_inception_v3", random_fid_inception):
            self.net = inception.InceptionV3(
                [3], resize_input=True, normalize_input=True, use_fid_inception=True
            )
        self.eval()

    def forward(self, x):
        return self.net(x)[0].flatten(1)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        gen = write_generated_dataset(
            Path(tmp) / "gen", n_train=1, n_test=140, size=256, progress=False
        )
        if H2Z.is_dir():
            real, fake, source = H2Z / "testB", H2Z / "testA", "horse2zebra testB vs testA"
        else:
            fake = Path(tmp) / "A120"
            fake.mkdir()
            for p in list_images(gen / "testA")[:120]:
                os.link(p, fake / p.name)
            real, source = gen / "testB", "built-in testB vs testA[:120]"
        n_real, n_fake = len(list_images(real)), len(list_images(fake))
        print(
            f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}; {source} "
            f"({n_real} vs {n_fake} images, 256 px)"
        )
        rows = []
        seconds, _ = timed(lambda: swd_from_folders(real, fake, size=256, progress=False))
        rows.append(("SWD (x1e3, 5 levels, 256 px)", seconds))
        seconds, net = timed(RandomFIDInception)
        rows.append(("FID network construction", seconds))
        for method in ("sqrtm", "eigh"):
            seconds, _ = timed(
                lambda m=method: fid_from_folders(
                    real, fake, model=net, fid_method=m, progress=False
                )
            )
            rows.append((f"FID + KID, features + {method} (Inception arch.)", seconds))
        masks = list_images(gen / "testA_masks")[:120]
        images = list_images(gen / "testA")[:120]
        as_uint8 = [torch.from_numpy(np.array(load_image(p, 3))).permute(2, 0, 1) for p in images]
        sources = [torch.from_numpy(np.array(load_image(p, 1)) > 127) for p in masks]
        seconds, _ = timed(lambda: content_score(sources, as_uint8))
        rows.append(("content IoU (built-in, 120 images)", seconds))
        cache = Path(tmp) / "cache"
        with mock.patch.dict(os.environ, {"PATCHCONTRAST_CACHE": str(cache)}):
            seconds, _ = timed(lambda: domain_score(as_uint8))
            rows.append(("domain score incl. classifier training", seconds))
            seconds, _ = timed(lambda: domain_score(as_uint8))
            rows.append(("domain score, classifier cached", seconds))
    print(f"| {'metric':48s} | {'seconds':>8s} |\n|{'-' * 50}|{'-' * 10}|")
    for name, seconds in rows:
        print(f"| {name:48s} | {seconds:8.2f} |")


if __name__ == "__main__":
    main()
