"""Networks of the CUT family: ResNet generator (also the NCE encoder), PatchGAN discriminator,
patch sampler/projection head, and their building blocks (METHODS.md §2).

:data:`GENERATORS` and :data:`DISCRIMINATORS` map upstream ``netG`` / ``netD`` names to callables
that build the module from keyword options, e.g. ``GENERATORS["resnet_9blocks"](ngf=32)``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from .discriminators import PatchDiscriminator
from .layers import INIT_KINDS, BlurPool, BlurUpsample, InitKind, ResnetBlock, init_weights
from .projector import PatchSampleMLP
from .resnet import CUT_LAYERS, ResnetGenerator

GENERATORS: dict[str, Callable[..., nn.Module]] = {
    "resnet_9blocks": partial(ResnetGenerator, n_blocks=9),
    "resnet_6blocks": partial(ResnetGenerator, n_blocks=6),
}

DISCRIMINATORS: dict[str, Callable[..., nn.Module]] = {
    "basic": partial(PatchDiscriminator, n_layers=3),
}

__all__ = [
    "CUT_LAYERS",
    "DISCRIMINATORS",
    "GENERATORS",
    "INIT_KINDS",
    "BlurPool",
    "BlurUpsample",
    "InitKind",
    "PatchDiscriminator",
    "PatchSampleMLP",
    "ResnetBlock",
    "ResnetGenerator",
    "init_weights",
]
