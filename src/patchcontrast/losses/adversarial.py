"""GAN losses on discriminator outputs (any shape of logits, e.g. PatchGAN maps)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import check_choice

GanMode = Literal["lsgan", "vanilla", "hinge", "nonsaturating"]
GAN_MODES = ("lsgan", "vanilla", "hinge", "nonsaturating")


def gan_loss(
    prediction: Tensor, target_is_real: bool, *, mode: GanMode, for_discriminator: bool = True
) -> Tensor:
    """Mean GAN loss of ``prediction`` (raw discriminator outputs) for one target.

    * ``lsgan`` (CUT default, Mao et al. 2017): ``(D - 1)^2`` / ``D^2``; G uses target real.
    * ``vanilla`` (Goodfellow et al. 2014): binary cross-entropy on logits.
    * ``nonsaturating`` (SinCUT, StyleGAN2): ``softplus(-D)`` for real, ``softplus(D)`` for fake;
      numerically the same as ``vanilla``.
    * ``hinge`` (SPADE): D: ``relu(1 - D)`` real, ``relu(1 + D)`` fake; G: ``-D``.

    For the generator pass ``target_is_real=True, for_discriminator=False``.
    """
    check_choice("mode", mode, GAN_MODES)
    if mode == "lsgan":
        target = torch.ones_like(prediction) if target_is_real else torch.zeros_like(prediction)
        return F.mse_loss(prediction, target)
    if mode in ("vanilla", "nonsaturating"):
        return F.softplus(-prediction if target_is_real else prediction).mean()
    if not for_discriminator:
        if not target_is_real:
            raise ValueError("the hinge generator loss is only defined for target_is_real=True")
        return -prediction.mean()
    return F.relu(1.0 - prediction if target_is_real else 1.0 + prediction).mean()
