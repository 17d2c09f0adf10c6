"""Perceptual (feature-matching) L1 loss on a fixed network's features (pix2pixHD / SPADE)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# pix2pixHD / SPADE weights of the five VGG-19 layers, shallow to deep
SPADE_LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


def perceptual_loss(
    fake: Sequence[Tensor], real: Sequence[Tensor], weights: Sequence[float] = SPADE_LAYER_WEIGHTS
) -> Tensor:
    r"""Weighted L1 distance between feature maps (Johnson et al. 2016; SPADE's "VGG loss").

    .. math:: L = \sum_l w_l \, \operatorname{mean} |\phi_l(\hat y) - \phi_l(y)|

    ``fake[l]``, ``real[l]``: ``(B, C_l, H_l, W_l)`` features of the generated and the real
    image; the real ones are detached (they are the target).
    """
    if not (len(fake) == len(real) == len(weights)) or not fake:
        raise ValueError(
            f"need as many fake ({len(fake)}) and real ({len(real)}) feature maps "
            f"as weights ({len(weights)}), at least one"
        )
    for l, (f, r) in enumerate(zip(fake, real)):
        if f.shape != r.shape:
            raise ValueError(f"layer {l}: fake {tuple(f.shape)} and real {tuple(r.shape)} differ")
    terms = [w * (f - r.detach()).abs().mean() for w, f, r in zip(weights, fake, real)]
    return torch.stack(terms).sum()
