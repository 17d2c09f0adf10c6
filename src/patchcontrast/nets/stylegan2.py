"""SinCUT networks: a StyleGAN2-style encoder-decoder generator and a global discriminator.

Blocks follow StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of
StyleGAN") as CUT's single-image model uses them (docs/design.md §4.4):

- equalised learning rate: weights stored as N(0, 1) draws, multiplied at run time by
  ``1/sqrt(fan_in)``, so Adam's step sizes are alike in every layer;
- resampling with the separable ``[1, 3, 3, 1]`` blur filter;
- "fused" leaky ReLU ``sqrt(2) * leaky_relu(x + b, 0.2)``, learned per-channel bias ``b``;
- residual blocks ``(block(x) + skip(x)) / sqrt(2)``;
- a modulated/demodulated convolution whose style is fixed to ones (SinCUT has no latent code),
  followed by noise injection.

These nets keep their own initialisation; do not pass them through ``init_weights``.

Generator sequence for ``ngf=10``, ``n_downsampling=1``, ``size=64`` (shapes for a 64x64 crop)::

    idx  entry                                      output
    0    Identity                                   3 x 64 x 64    <- nce layer 0
    1    1x1 ConvLayer 3->80                         80 x 64 x 64
    2    StyleResBlock 80->160, blur down            160 x 32 x 32  <- nce layer 2
    3-5  3 StyleResBlocks 160                        160 x 32 x 32  <- nce layer 4 = index 4
    6-8  3 StyleResBlocks 160                        160 x 32 x 32
    9    StyledConv 3x3 160->80, x2 up, noise        80 x 64 x 64
    10   1x1 ConvLayer 80->3 + fused lReLU, no tanh  3 x 64 x 64

Entries 0-5 are the encoder (upstream ``StyleGAN2Encoder``), 6-10 the decoder.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import TappedGenerator

SINCUT_LAYERS = (0, 2, 4)
EvalNoise = Literal["fixed", "random", "zero"]
EVAL_NOISE = ("fixed", "random", "zero")
_BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)
_EQUAL_SKIP = 1 / math.sqrt(2)  # residual sum of two unit-variance branches keeps variance 1


def fused_leaky_relu(x: Tensor, bias: Tensor, slope: float = 0.2) -> Tensor:
    """``sqrt(2) * leaky_relu(x + bias, slope)``; ``bias`` broadcasts over dim 1 of ``x``."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    return F.leaky_relu(x + bias.view(shape), slope) * math.sqrt(2)


class FusedLeakyReLU(nn.Module):
    """Learned bias + leaky ReLU (slope 0.2) + gain sqrt(2); ``(B, C, ...)`` in and out."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, self.bias)


class Blur(nn.Module):
    """Depthwise FIR filter ``outer(k, k)`` with ``k = [1, 3, 3, 1]``, zero padding ``pad``.

    ``(B, C, H, W) -> (B, C, H + pad0 + pad1 - 3, W + pad0 + pad1 - 3)``. The filter sums to
    ``gain`` (1, or 4 after a stride-2 transposed conv that spreads each pixel over 4 outputs).
    It is symmetric, so correlation (``conv2d``) equals the paper's convolution.
    """

    def __init__(self, pad: tuple[int, int], gain: float = 1.0) -> None:
        super().__init__()
        taps = torch.tensor(_BLUR_TAPS)
        kernel = torch.outer(taps, taps)
        self.register_buffer("kernel", kernel * (gain / kernel.sum()), persistent=False)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        x = F.pad(x, (self.pad[0], self.pad[1], self.pad[0], self.pad[1]))
        weight = self.kernel.to(x.dtype).expand(c, 1, *self.kernel.shape)
        return F.conv2d(x, weight, groups=c)


class EqualConv2d(nn.Module):
    """Conv with equalised learning rate: ``conv(x, w / sqrt(C_in k^2)) + b``, ``w ~ N(0, 1)``."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        *,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = 1 / math.sqrt(in_ch * kernel * kernel)
        self.stride, self.padding = stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        out_ch, in_ch, k, _ = self.weight.shape
        return f"{in_ch}, {out_ch}, {k}, stride={self.stride}, padding={self.padding}"


class EqualLinear(nn.Module):
    """Equalised linear ``(B, in) -> (B, out)``: ``x (w / sqrt(in))^T + b``, ``w ~ N(0, 1)``;
    ``activate`` applies the fused leaky ReLU (with ``b`` as its bias)."""

    def __init__(self, in_features: int, out_features: int, *, activate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = 1 / math.sqrt(in_features)
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        if self.activate:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias)
        return F.linear(x, self.weight * self.scale, self.bias)


class ConvLayer(nn.Module):
    """[blur] -> equalised conv -> [fused leaky ReLU]: StyleGAN2's plain conv layer.

    ``downsample=True`` blurs (pad so that the output is exactly half) then convolves with
    stride 2: ``(B, C_in, H, W) -> (B, C_out, H/2, W/2)`` for even H, W; otherwise "same"
    padding. With ``activate`` the bias lives in the activation; without it the conv has a bias
    only if ``bias``.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        *,
        downsample: bool = False,
        activate: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        # blur (4 taps) + conv (k taps) at stride 2 needs 4 - 2 + k - 1 padding to halve H
        p = 2 + kernel - 1
        self.blur = Blur(((p + 1) // 2, p // 2)) if downsample else None
        self.conv = EqualConv2d(
            in_ch,
            out_ch,
            kernel,
            stride=2 if downsample else 1,
            padding=0 if downsample else kernel // 2,
            bias=bias and not activate,
        )
        self.act = FusedLeakyReLU(out_ch) if activate else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x if self.blur is None else self.blur(x))
        return x if self.act is None else self.act(x)


class StyleResBlock(nn.Module):
    """``(conv2(conv1(x)) + skip(x)) / sqrt(2)`` with 3x3 ConvLayers.

    ``skip`` is a bias-free 1x1 ConvLayer (blur-downsampled like ``conv2``) when the shape
    changes, the identity otherwise. ``(B, C_in, H, W) -> (B, C_out, H', W')``, H' = H/2 when
    ``downsample``.
    """

    def __init__(self, in_ch: int, out_ch: int, downsample: bool) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_ch, in_ch, 3)
        self.conv2 = ConvLayer(in_ch, out_ch, 3, downsample=downsample)
        change = downsample or in_ch != out_ch
        self.skip = (
            ConvLayer(in_ch, out_ch, 1, downsample=downsample, activate=False, bias=False)
            if change
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.skip is None else self.skip(x)
        return (self.conv2(self.conv1(x)) + skip) * _EQUAL_SKIP


class NoiseInjection(nn.Module):
    """``x + w * n`` with one learned weight ``w`` (initially 0) and ``n ~ N(0, 1)`` of shape
    ``(B, 1, H, W)``, drawn at run time so any image size works.

    Training mode draws fresh noise on every call (upstream does so in every mode). In eval mode
    ``eval_noise`` decides: ``"fixed"`` (default) uses one ``(1, 1, H, W)`` draw from a generator
    seeded with 0, shared by the batch, so test outputs are reproducible and independent of the
    batch while the layer still sees noise of its training statistics; ``"random"`` keeps
    upstream's fresh draws; ``"zero"`` adds nothing (the noise's mean).
    """

    def __init__(self, eval_noise: EvalNoise = "fixed") -> None:
        super().__init__()
        if eval_noise not in EVAL_NOISE:
            raise ValueError(
                f"eval_noise must be one of {', '.join(EVAL_NOISE)}, got {eval_noise!r}"
            )
        self.weight = nn.Parameter(torch.zeros(1))
        self.eval_noise = eval_noise

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        mode = "random" if self.training else self.eval_noise
        if mode == "zero":
            return x
        if mode == "random":
            return x + self.weight * torch.randn(b, 1, h, w, device=x.device, dtype=x.dtype)
        fixed = torch.randn(1, 1, h, w, generator=torch.Generator().manual_seed(0))
        return x + self.weight * fixed.to(x.device, x.dtype)


class StyledConv(nn.Module):
    """Modulated + demodulated 3x3 conv (style fixed to ones), noise, fused leaky ReLU.

    StyleGAN2 scales input channel i of the kernel by a style ``s_i`` and then rescales each
    output channel o to unit norm: ``w'_oikk = s_i w_oikk / sqrt(sum_ikk (s_i w_oikk)^2 + 1e-8)``.
    SinCUT has no style code, so ``s = 1`` and modulation is the identity; the demodulated
    kernel is then shared by the batch and a plain (ungrouped) convolution suffices. With
    ``upsample`` the conv is transposed with stride 2 and followed by a blur (gain 4):
    ``(B, C_in, H, W) -> (B, C_out, 2H, 2W)``.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 3,
        *,
        upsample: bool = True,
        eval_noise: EvalNoise = "fixed",
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.scale = 1 / math.sqrt(in_ch * kernel * kernel)
        # transposed conv gives 2H + k - 2 pixels; the 4-tap blur must bring that back to 2H
        p = 2 - (kernel - 1)
        self.blur = Blur(((p + 1) // 2 + 1, p // 2 + 1), gain=4.0) if upsample else None
        self.noise = NoiseInjection(eval_noise)
        self.act = FusedLeakyReLU(out_ch)

    def demodulated_weight(self) -> Tensor:
        """The effective kernel ``(C_out, C_in, k, k)``; each output slice has norm ~1."""
        w = self.weight * self.scale
        return w * torch.rsqrt(w.pow(2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)

    def forward(self, x: Tensor) -> Tensor:
        w = self.demodulated_weight()
        if self.blur is not None:
            # conv_transpose2d takes (C_in, C_out, k, k)
            x = self.blur(F.conv_transpose2d(x, w.transpose(0, 1), stride=2))
        else:
            x = F.conv2d(x, w, padding=w.shape[-1] // 2)
        return self.act(self.noise(x))


def _generator_channels(res: int, ngf: int) -> int:
    """Upstream's G table: ``round(16384 / res * ngf / 32)``, capped at 512 below 64 px."""
    return min(512, round(512 * ngf / res)) if res <= 32 else round(512 * ngf / res)


def _discriminator_channels(res: int, ndf: int) -> int:
    """Upstream's D table: ``int(16384 / res * ndf / 64)``, capped at 384 below 64 px."""
    return min(384, 256 * ndf // res) if res <= 32 else 256 * ndf // res


def _is_power_of_two(n: object) -> bool:
    return isinstance(n, int) and n > 0 and n & (n - 1) == 0


class StyleGAN2Generator(TappedGenerator):
    """SinCUT generator (``netG=stylegan2``, docs/design.md §4.4), fully convolutional.

    ``(B, input_nc, H, W) -> (B, output_nc, H, W)`` for any H, W divisible by
    ``max(4, 2**n_downsampling)``: trained on 64x64 crops, it translates the full image at test.
    The output ends in a fused leaky ReLU, **not** a tanh (as upstream), so values may leave
    [-1, 1]. ``self.net`` is the flat entry sequence whose indices :meth:`encode` takes (see the
    module docstring); the SinCUT taps are ``(0, 2, 4)``: for a ``(B, 3, H, W)`` input
    ``(B, 3, H, W)`` (the raw image) and twice ``(B, 160, H/2, W/2)`` (ngf 10). Encoder taps are
    noise-free, so ``forward_with_features`` gives ``encode``'s taps exactly, and ``forward``'s
    translation when the noise is deterministic (eval mode, ``eval_noise`` "fixed" or "zero").

    Args:
        input_nc, output_nc: image channels in and out.
        ngf: channel multiplier ``ngf / 32`` on upstream's table (10 -> 80 / 160 channels).
        n_downsampling: blur-downsampling residual blocks (and upsampling StyledConvs).
        size: working resolution that indexes the channel table, upstream
            ``2**round(log2(min(load_size, crop_size)))``; it does not limit the input size.
        eval_noise: what the noise injection adds in eval mode (see :class:`NoiseInjection`).
    """

    default_layers = SINCUT_LAYERS

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 10,
        n_downsampling: int = 1,
        *,
        size: int = 64,
        eval_noise: EvalNoise = "fixed",
    ) -> None:
        super().__init__()
        if ngf < 1:
            raise ValueError(f"ngf must be >= 1, got {ngf}")
        if not _is_power_of_two(size):
            raise ValueError(f"size must be a power of two (the working resolution), got {size}")
        if not (
            isinstance(n_downsampling, int) and 1 <= n_downsampling and size >> n_downsampling >= 4
        ):
            raise ValueError(
                f"n_downsampling must be an int >= 1 with size / 2**n_downsampling "
                f">= 4, got n_downsampling={n_downsampling}, size={size}"
            )
        self.input_nc, self.n_downsampling = input_nc, n_downsampling
        layers: list[nn.Module] = []
        channels: list[int] = []  # output channels per entry, so tap_channels needs no forward

        def add(layer: nn.Module, out: int) -> None:
            layers.append(layer)
            channels.append(out)

        res = size
        add(nn.Identity(), input_nc)
        add(ConvLayer(input_nc, _generator_channels(res, ngf), 1), _generator_channels(res, ngf))
        for _ in range(n_downsampling):
            c_in, c_out = _generator_channels(res, ngf), _generator_channels(res // 2, ngf)
            add(StyleResBlock(c_in, c_out, downsample=True), c_out)
            res //= 2
        c = _generator_channels(res, ngf)
        for _ in range(6):  # upstream n_blocks=6: 3 in the encoder, 3 in the decoder
            add(StyleResBlock(c, c, downsample=False), c)
        for _ in range(n_downsampling):
            c_out = _generator_channels(res * 2, ngf)
            add(StyledConv(c, c_out, 3, upsample=True, eval_noise=eval_noise), c_out)
            c, res = c_out, res * 2
        add(ConvLayer(c, output_nc, 1), output_nc)
        self.net = nn.Sequential(*layers)
        self._channels = tuple(channels)
        self.n_encoder = 2 + n_downsampling + 3

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.input_nc:
            raise ValueError(
                f"StyleGAN2Generator expects (B, {self.input_nc}, H, W) images, "
                f"got shape {tuple(x.shape)}"
            )
        m = max(4, 2**self.n_downsampling)
        h, w = x.shape[-2:]
        if h % m or w % m:
            raise ValueError(
                f"StyleGAN2Generator needs height and width divisible by {m} "
                f"({self.n_downsampling} 2x down/up-sampling(s), sides multiple of "
                f"4 as upstream), got {h}x{w}"
            )


class StyleGAN2Discriminator(nn.Module):
    """SinCUT discriminator (``netD=stylegan2``, docs/design.md §4.4): one logit per image.

    ``(B, input_nc, size, size) -> (B, 1)``. A 1x1 ConvLayer to ``channels[size]``, blur-
    downsampling StyleResBlocks down to 4x4, a 3x3 ConvLayer, then two equalised linear layers
    (``channels[4]*16 -> channels[4]`` with fused lReLU, ``-> 1``). Channels follow upstream's
    table with multiplier ``ndf / 64``: for ndf 8 and size 64, 32 -> 64 -> 128 -> 256 -> 384. No
    minibatch-stddev layer (disabled upstream). ``size`` is the crop size, a power of two >= 4.
    """

    def __init__(self, input_nc: int = 3, ndf: int = 8, size: int = 64) -> None:
        super().__init__()
        if ndf < 1:
            raise ValueError(f"ndf must be >= 1, got {ndf}")
        if not (_is_power_of_two(size) and size >= 4):
            raise ValueError(
                f"size must be a power of two >= 4 (the square crop the "
                f"discriminator sees), got {size}"
            )
        self.input_nc, self.size = input_nc, size
        c = _discriminator_channels(size, ndf)
        blocks: list[nn.Module] = [ConvLayer(input_nc, c, 1)]
        res = size
        while res > 4:
            c_out = _discriminator_channels(res // 2, ndf)
            blocks.append(StyleResBlock(c, c_out, downsample=True))
            c, res = c_out, res // 2
        self.convs = nn.Sequential(*blocks)
        c4 = _discriminator_channels(4, ndf)
        self.final_conv = ConvLayer(c, c4, 3)
        self.final_linear = nn.Sequential(
            EqualLinear(c4 * 4 * 4, c4, activate=True), EqualLinear(c4, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Realness logits ``(B, 1)`` for ``(B, input_nc, size, size)`` images."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.input_nc, self.size, self.size):
            raise ValueError(
                f"StyleGAN2Discriminator(size={self.size}) expects (B, "
                f"{self.input_nc}, {self.size}, {self.size}) images, got shape "
                f"{tuple(x.shape)}"
            )
        out = self.final_conv(self.convs(x))  # (B, channels[4], 4, 4)
        return self.final_linear(out.flatten(1))


def r1_penalty(real_pred: Tensor, real_images: Tensor) -> Tensor:
    """R1 gradient penalty (Mescheder et al. 2018): ``0.5 * mean_b ||d sum D(x) / d x_b||^2``.

    ``real_pred``: D's outputs on ``real_images`` (any shape, summed, so each image's gradient is
    that of its own logit); ``real_images``: ``(B, ...)`` with ``requires_grad`` set before D was
    run. The caller multiplies by ``lambda_R1`` (SinCUT: 1, every D step, docs/design.md §3.6). The
    gradient is built with ``create_graph=True``, so backpropagating the penalty trains D.
    Returns a scalar.
    """
    if not real_images.requires_grad:
        raise ValueError(
            "real_images must require grad: call real_images.requires_grad_() "
            "before computing real_pred = D(real_images)"
        )
    if not real_pred.requires_grad:
        raise ValueError(
            "real_pred does not depend on anything that requires grad; it must be "
            "D(real_images) computed with gradients enabled"
        )
    (grad,) = torch.autograd.grad(real_pred.sum(), real_images, create_graph=True)
    return 0.5 * grad.pow(2).flatten(1).sum(1).mean()
