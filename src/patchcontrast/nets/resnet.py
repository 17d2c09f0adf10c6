"""CUT's ResNet generator; its first layers double as the PatchNCE encoder (docs/design.md
§2.2, §4.1).

Layer indices of the default (anti-aliased) ``resnet_9blocks`` sequence, 256x256 input::

    idx    layer                                          output
    0      ReflectionPad(3)                               3 x 262 x 262
    1-3    conv 7x7 3->64, IN, ReLU                       64 x 256 x 256
    4-7    conv 3x3 64->128, IN, ReLU, BlurPool           128 x 128 x 128
    8-11   conv 3x3 128->256, IN, ReLU, BlurPool          256 x 64 x 64
    12-20  9 ResnetBlocks                                 256 x 64 x 64
    21-24  BlurUpsample, conv 3x3 256->128, IN, ReLU      128 x 128 x 128
    25-28  BlurUpsample, conv 3x3 128->64, IN, ReLU       64 x 256 x 256
    29-31  ReflectionPad(3), conv 7x7 64->3, Tanh         3 x 256 x 256

The CUT taps ``(0, 4, 8, 12, 16)`` are the padded image, the two pre-norm down-sampling convs and
the outputs of residual blocks 1 and 5. ``antialias=False`` turns each [conv, IN, ReLU, BlurPool]
into [stride-2 conv, IN, ReLU] and ``antialias_up=False`` each [BlurUpsample, conv, IN, ReLU]
into [transposed conv, IN, ReLU]; both shorten the sequence and so move the indices.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import (
    BlurPool,
    BlurUpsample,
    FourierPosition,
    ResnetBlock,
    TappedGenerator,
    init_weights,
)

CUT_LAYERS = (0, 4, 8, 12, 16)


class ResnetGenerator(TappedGenerator):
    """CUT ResnetGenerator (``netG=resnet_9blocks``), docs/design.md §4.1.

    Its encoder taps (``encode``, CUT ``encode_only``, docs/design.md §2.2) default to
    :data:`CUT_LAYERS`; for a ``(B, 3, H, W)`` input they are ``(B, 3, H+6, W+6)``,
    ``(B, 128, H, W)``, ``(B, 256, H/2, W/2)`` and twice ``(B, 256, H/4, W/4)``.

    ``(B, input_nc, H, W) -> (B, output_nc, H, W)`` in ``[-1, 1]``, H and W multiples of 4.
    InstanceNorm without affine parameters, so every conv has a bias; reflection padding.
    Weights are initialised with :func:`init_weights` (xavier-normal, gain 0.02) as in CUT; call
    it again on the module for another scheme. ``self.net`` is the flat layer sequence whose
    indices :meth:`encode` takes.

    Args:
        input_nc, output_nc: image channels in and out.
        ngf: channels of the first conv (doubled by each of the two down-samplings).
        n_blocks: residual blocks at the bottleneck (9 for ``resnet_9blocks``, 6 for
            ``resnet_6blocks``).
        antialias: BlurPool down-sampling (default) instead of stride-2 convs.
        antialias_up: fixed-filter up-sampling + conv (default) instead of transposed convs.
        dropout: Dropout(0.5) inside the residual blocks (off in CUT).
        residual: start as the identity (off in CUT): the output is
            ``tanh(atanh(x) + r(x))``, where ``r`` is the whole network without its final Tanh
            and its last conv starts at zero, so ``G(x) = x`` before training (inputs are
            clipped to ``[-0.999, 0.999]`` inside the ``atanh``). Needs ``input_nc ==
            output_nc``. The encoder taps are unchanged. See docs/results.md ("Fast recipe").
        positional: octaves of :class:`FourierPosition` features added at full resolution,
            just before the output conv (0: off, as in CUT). A decoder entry, so the encoder
            taps and their indices are unchanged.
    """

    default_layers = CUT_LAYERS

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 64,
        n_blocks: int = 9,
        antialias: bool = True,
        antialias_up: bool = True,
        dropout: bool = False,
        residual: bool = False,
        positional: int = 0,
    ) -> None:
        super().__init__()
        if n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
        if residual and input_nc != output_nc:
            raise ValueError(
                f"a residual generator needs input_nc == output_nc, got {input_nc} -> {output_nc}"
            )
        self.input_nc = input_nc
        self.residual = residual
        # ReLUs are not in-place here: an in-place ReLU would overwrite a tapped IN output (e.g.
        # index 8 without anti-aliasing) after it was collected, as happens upstream.
        layers: list[nn.Module] = []
        # output channels of every entry of `layers`, so tap_channels needs no forward pass
        channels: list[int] = []

        def add(*new: nn.Module, out: int) -> None:
            layers.extend(new)
            channels.extend([out] * len(new))

        add(nn.ReflectionPad2d(3), out=input_nc)
        add(nn.Conv2d(input_nc, ngf, kernel_size=7), nn.InstanceNorm2d(ngf), nn.ReLU(), out=ngf)
        c = ngf
        for _ in range(2):  # two 2x down-samplings: ngf -> 2 ngf -> 4 ngf channels
            if antialias:
                add(
                    nn.Conv2d(c, 2 * c, kernel_size=3, padding=1),
                    nn.InstanceNorm2d(2 * c),
                    nn.ReLU(),
                    BlurPool(2 * c),
                    out=2 * c,
                )
            else:
                add(
                    nn.Conv2d(c, 2 * c, kernel_size=3, stride=2, padding=1),
                    nn.InstanceNorm2d(2 * c),
                    nn.ReLU(),
                    out=2 * c,
                )
            c *= 2
        add(*(ResnetBlock(c, dropout) for _ in range(n_blocks)), out=c)
        for _ in range(2):  # two 2x up-samplings back to ngf channels
            if antialias_up:
                add(BlurUpsample(c), out=c)
                add(
                    nn.Conv2d(c, c // 2, kernel_size=3, padding=1),
                    nn.InstanceNorm2d(c // 2),
                    nn.ReLU(),
                    out=c // 2,
                )
            else:
                add(
                    nn.ConvTranspose2d(
                        c, c // 2, kernel_size=3, stride=2, padding=1, output_padding=1
                    ),
                    nn.InstanceNorm2d(c // 2),
                    nn.ReLU(),
                    out=c // 2,
                )
            c //= 2
        if positional:
            add(FourierPosition(c, positional), out=c)
        add(nn.ReflectionPad2d(3), out=c)
        # residual: the Tanh moves to forward (after the skip); Identity keeps the indices
        add(
            nn.Conv2d(c, output_nc, kernel_size=7),
            nn.Identity() if residual else nn.Tanh(),
            out=output_nc,
        )

        self.net = nn.Sequential(*layers)
        self._channels = tuple(channels)
        init_weights(self, "xavier", 0.02)
        for layer in layers:  # after init_weights: the position features start switched off
            if isinstance(layer, FourierPosition):
                nn.init.zeros_(layer.proj.weight)
        if residual:
            nn.init.zeros_(layers[-2].weight)  # r(x) = 0: the generator starts as the identity

    def forward(self, x: Tensor) -> Tensor:
        return self._output(x, super().forward(x))

    def forward_with_features(self, x: Tensor, layers=None) -> tuple[Tensor, list[Tensor]]:
        out, feats = super().forward_with_features(x, layers)
        return self._output(x, out), feats

    def _output(self, x: Tensor, out: Tensor) -> Tensor:
        """The image from the last entry's output ``(B, C, H, W)``: itself, or, residual, the
        input moved by it in tanh's pre-activation space."""
        if not self.residual:
            return out
        return torch.tanh(torch.atanh(x.clamp(-0.999, 0.999)) + out)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.input_nc:
            raise ValueError(
                f"ResnetGenerator expects (B, {self.input_nc}, H, W) images, "
                f"got shape {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        if h % 4 or w % 4:
            raise ValueError(
                f"ResnetGenerator needs height and width divisible by 4 (two 2x "
                f"down- and up-samplings), got {h}x{w}"
            )
