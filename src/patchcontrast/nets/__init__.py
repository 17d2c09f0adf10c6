"""Networks: the CUT family's ResNet generator (also the NCE encoder), PatchGAN discriminator,
patch sampler/projection head; SPADE's generator and multi-scale discriminator; VGG-19 features
with real weight sources (docs/design.md §4).

:data:`GENERATORS` and :data:`DISCRIMINATORS` map upstream ``netG`` / ``netD`` names to callables
that build the module from keyword options, e.g. ``GENERATORS["resnet_9blocks"](ngf=32)``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from .discriminators import PatchDiscriminator
from .layers import (
    INIT_KINDS,
    BlurPool,
    BlurUpsample,
    FourierPosition,
    InitKind,
    ResnetBlock,
    init_weights,
)
from .projector import PatchSampleMLP
from .resnet import CUT_LAYERS, ResnetGenerator
from .spade import (
    SPADE,
    MultiscaleDiscriminator,
    SPADEGenerator,
    SPADEResBlock,
    feature_matching_loss,
    one_hot_labels,
)
from .vgg import (
    PAPER_LAYERS,
    UPSTREAM_LAYERS,
    VGG_LAYERS,
    VGG_SOURCES,
    MissingVGGWeightsError,
    VGGFeatures,
    load_vgg19,
)

GENERATORS: dict[str, Callable[..., nn.Module]] = {
    "resnet_9blocks": partial(ResnetGenerator, n_blocks=9),
    "resnet_6blocks": partial(ResnetGenerator, n_blocks=6),
}

DISCRIMINATORS: dict[str, Callable[..., nn.Module]] = {
    "basic": partial(PatchDiscriminator, n_layers=3),
}

__all__ = [
    "CUT_LAYERS",
    "PAPER_LAYERS",
    "SPADE",
    "UPSTREAM_LAYERS",
    "VGG_LAYERS",
    "VGG_SOURCES",
    "MissingVGGWeightsError",
    "MultiscaleDiscriminator",
    "SPADEGenerator",
    "SPADEResBlock",
    "VGGFeatures",
    "feature_matching_loss",
    "load_vgg19",
    "one_hot_labels",
    "DISCRIMINATORS",
    "GENERATORS",
    "INIT_KINDS",
    "BlurPool",
    "BlurUpsample",
    "FourierPosition",
    "InitKind",
    "PatchDiscriminator",
    "PatchSampleMLP",
    "ResnetBlock",
    "ResnetGenerator",
    "init_weights",
]
