"""Differentiable augmentation of discriminator inputs (DiffAugment).

Zhao et al., "Differentiable Augmentation for Data-Efficient GAN Training", NeurIPS 2020: the
same kind of random, differentiable transform is applied to real *and* generated images every
time the discriminator sees them, in its own step and in the generator's, so D cannot memorise
the few training images and G still gets gradients through the transform. Written from the
paper's description of its three policies:

* ``color``: per image, brightness ``+ U(-0.5, 0.5)``, saturation ``x U(0, 2)`` around the
  pixel's channel mean, contrast ``x U(0.5, 1.5)`` around the image mean;
* ``translation``: per image, an integer shift of up to 1/8 of each side, zero-filled;
* ``cutout``: per image, one square of half each side set to zero, its centre anywhere.

Images are ``(B, C, H, W)`` in ``[-1, 1]``; randomness comes from torch's global RNG, which the
Trainer seeds and checkpoints, so augmented runs resume exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

POLICIES = ("color", "translation", "cutout")


def _uniform(x: Tensor, low: float, high: float) -> Tensor:
    """One draw per image, shaped ``(B, 1, 1, 1)`` to broadcast over an image."""
    return torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) * (high - low) + low


def color(x: Tensor) -> Tensor:
    x = x + _uniform(x, -0.5, 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * _uniform(x, 0.0, 2.0) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _uniform(x, 0.5, 1.5) + mean


def translation(x: Tensor, ratio: float = 0.125) -> Tensor:
    b, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sy, sy + 1, (b, 1, 1), device=x.device)
    dx = torch.randint(-sx, sx + 1, (b, 1, 1), device=x.device)
    padded = F.pad(x, (sx, sx, sy, sy)).permute(0, 2, 3, 1)  # (B, H + 2 sy, W + 2 sx, C)
    rows = torch.arange(h, device=x.device)[None, :, None] + sy - dy  # (B, H, 1)
    cols = torch.arange(w, device=x.device)[None, None, :] + sx - dx  # (B, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded[batch, rows, cols].permute(0, 3, 1, 2)


def cutout(x: Tensor, ratio: float = 0.5) -> Tensor:
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device)
    ys = torch.arange(h, device=x.device)[None, :, None] - cy + ch // 2  # (B, H, 1)
    xs = torch.arange(w, device=x.device)[None, None, :] - cx + cw // 2  # (B, 1, W)
    hole = (ys >= 0) & (ys < ch) & (xs >= 0) & (xs < cw)  # (B, H, W)
    return x * (~hole).unsqueeze(1).to(x.dtype)


_OPS = {"color": color, "translation": translation, "cutout": cutout}


def check_policy(policy: Sequence[str]) -> tuple[str, ...]:
    """The policy as a tuple, each entry one of :data:`POLICIES` at most once."""
    policy = tuple(policy)
    bad = [p for p in policy if p not in POLICIES]
    if bad or len(set(policy)) != len(policy):
        raise ValueError(
            f"diffaugment policies must be distinct entries of {', '.join(POLICIES)}"
            f"; got {list(policy)!r}"
        )
    return policy


def diff_augment(x: Tensor, policy: Sequence[str]) -> Tensor:
    """Apply the policies in order; an empty policy returns ``x`` itself."""
    for name in check_policy(policy):
        x = _OPS[name](x)
    return x
