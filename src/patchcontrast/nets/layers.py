"""Building blocks shared by the CUT-family networks: anti-aliased resampling, the residual block
and the weight initialisation (docs/design.md §4.1, §4.7).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

InitKind = Literal["normal", "xavier", "kaiming", "orthogonal"]
INIT_KINDS = ("normal", "xavier", "kaiming", "orthogonal")

# Layers whose weights init_weights draws (and whose biases it zeroes); CUT matches every class
# whose name contains "Conv" or "Linear", which includes the transposed convolutions.
_WEIGHTED = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _depthwise_filter(taps: list[float], channels: int, total: float) -> Tensor:
    """Separable filter ``outer(taps, taps)`` scaled to sum to ``total``, as ``(C, 1, k, k)``."""
    t = torch.tensor(taps, dtype=torch.float32)
    kernel = torch.outer(t, t)
    kernel = kernel * (total / kernel.sum())
    return kernel.expand(channels, 1, -1, -1).contiguous()


class BlurPool(nn.Module):
    """Anti-aliased 2x down-sampling: reflect-pad 1, fixed ``[1,2,1]⊗[1,2,1] / 16`` blur, stride 2.

    ``(B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2))``. The filter has no parameters; it is a
    non-persistent buffer, so it follows ``.to()`` but stays out of the state dict.
    Source: CUT ``Downsample`` (Zhang 2019, "Making CNNs shift-invariant"), docs/design.md §4.1.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.register_buffer(
            "kernel", _depthwise_filter([1, 2, 1], channels, 1.0), persistent=False
        )

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return F.conv2d(x, self.kernel, stride=2, groups=self.channels)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class BlurUpsample(nn.Module):
    """Anti-aliased 2x up-sampling with the fixed ``[1,3,3,1]⊗[1,3,3,1]`` filter (sum 4).

    ``(B, C, H, W) -> (B, C, 2H, 2W)``. The recipe (docs/design.md §4.1) is: replicate-pad 1,
    depthwise transposed convolution with stride 2 and padding 2, then crop 1 px on every side. A
    transposed convolution's padding *is* a crop of its full output, so the two crops are folded
    into ``padding=3``; every kept output pixel then receives exactly two taps per axis (1+3 or
    3+1, times 1/4 each), which is why a constant image maps to the same constant.
    Source: CUT ``Upsample``, docs/design.md §4.1.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        # the filter sums to 4 = stride**2: each input pixel spreads over 4 output pixels
        self.register_buffer(
            "kernel", _depthwise_filter([1, 3, 3, 1], channels, 4.0), persistent=False
        )

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, (1, 1, 1, 1), mode="replicate")  # (B, C, H+2, W+2)
        # full transposed output is 2(H+2)+2; cropping 3 px per side leaves 2H
        return F.conv_transpose2d(x, self.kernel, stride=2, padding=3, groups=self.channels)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class ResnetBlock(nn.Module):
    """Residual block ``x + block(x)`` with no activation after the sum.

    ``block`` = reflect-pad 1, conv 3x3, InstanceNorm, ReLU, (Dropout 0.5), reflect-pad 1,
    conv 3x3, InstanceNorm. Shape-preserving: ``(B, C, H, W) -> (B, C, H, W)``.
    Source: CUT ``ResnetBlock``, docs/design.md §4.1.
    """

    def __init__(self, channels: int, dropout: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, bias=True),
            nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
        ]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, bias=True),
            nn.InstanceNorm2d(channels),
        ]
        self.block = nn.Sequential(*layers)
        # set by TappedGenerator.set_grad_checkpointing: recompute the inner activations in the
        # backward, keeping only the input (the bottleneck holds most of G's activations)
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            # non-reentrant: works when x needs no grad and replays dropout's RNG exactly
            return checkpoint(self._residual, x, use_reentrant=False)
        return self._residual(x)

    def _residual(self, x: Tensor) -> Tensor:
        return x + self.block(x)


@torch.no_grad()
def init_weights(module: nn.Module, kind: InitKind = "xavier", gain: float = 0.02) -> nn.Module:
    """Initialise every Conv/ConvTranspose/Linear weight of ``module`` in place; biases to 0.

    ``kind``: ``"xavier"`` (xavier-normal with ``gain``, the CUT-family default),
    ``"normal"`` (N(0, gain), CycleGAN), ``"kaiming"`` (kaiming-normal, fan-in, ``gain`` unused)
    or ``"orthogonal"`` (with ``gain``). BatchNorm weights are drawn from N(1, gain), biases 0.
    Fixed filters (buffers) are left alone. Returns ``module`` for chaining.
    Source: CUT ``init_weights``, docs/design.md §4.7.
    """
    if kind not in INIT_KINDS:
        raise ValueError(f"unknown init kind {kind!r}; choose one of {', '.join(INIT_KINDS)}")
    for m in module.modules():
        if isinstance(m, _WEIGHTED):
            if kind == "xavier":
                nn.init.xavier_normal_(m.weight, gain=gain)
            elif kind == "normal":
                nn.init.normal_(m.weight, 0.0, gain)
            elif kind == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            else:
                nn.init.orthogonal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _BATCH_NORMS) and m.affine:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return module


class FourierPosition(nn.Module):
    """Adds a learned 1x1 projection of fixed sin/cos features of the pixel position.

    ``(B, C, H, W) -> (B, C, H, W)``. With ``u, v`` the column and row positions scaled to
    ``[-1, 1]``, the features are ``sin`` and ``cos`` of ``pi 2^k u`` and ``pi 2^k v`` for
    ``k < octaves`` (``4 octaves`` channels), so the finest has ``2^(octaves-1)`` periods across
    the image whatever its size. A convolutional generator knows where it is only through its
    zero/reflection padding, so it cannot paint a regular texture (stripes) onto a flat region
    quickly; these features hand it one (positional encodings in GANs: Xu et al., "Positional
    Encoding as Spatial Inductive Bias in GANs", CVPR 2021). The projection starts at zero, so
    the entry is the identity before training.
    """

    def __init__(self, channels: int, octaves: int) -> None:
        super().__init__()
        if octaves < 1:
            raise ValueError(f"octaves must be >= 1, got {octaves}")
        self.octaves = octaves
        self.proj = nn.Conv2d(4 * octaves, channels, kernel_size=1)

    def features(self, h: int, w: int, like: Tensor) -> Tensor:
        """The fixed ``(1, 4 octaves, h, w)`` position features."""
        freqs = torch.pi * 2.0 ** torch.arange(self.octaves, device=like.device, dtype=like.dtype)
        u = torch.linspace(-1, 1, w, device=like.device, dtype=like.dtype)
        v = torch.linspace(-1, 1, h, device=like.device, dtype=like.dtype)
        fu = (freqs[:, None] * u).expand(self.octaves, w)  # (octaves, w)
        fv = (freqs[:, None] * v).expand(self.octaves, h)  # (octaves, h)
        cols = torch.cat([fu.sin(), fu.cos()])[:, None, :].expand(-1, h, w)
        rows = torch.cat([fv.sin(), fv.cos()])[:, :, None].expand(-1, h, w)
        return torch.cat([cols, rows])[None]

    def forward(self, x: Tensor) -> Tensor:
        return x + self.proj(self.features(*x.shape[-2:], like=x))


class TappedGenerator(nn.Module):
    """A generator whose flat layer sequence ``self.net`` doubles as a feature encoder.

    Subclasses build ``self.net`` (an ``nn.Sequential``), ``self._channels`` (output channels
    of every entry), set ``default_layers`` and implement ``_check_input``; this class gives the
    CUT encoder interface the contrastive objectives use: ``encode`` (stops after the deepest
    requested entry), ``forward_with_features`` (one pass, translation + taps) and
    ``tap_channels`` (no forward needed). Layer indices index ``self.net``.
    """

    default_layers: tuple[int, ...] = ()

    def set_grad_checkpointing(self, enabled: bool = True) -> int:
        """Recompute the residual blocks' activations in the backward instead of keeping them
        (``TrainConfig.checkpoint_activations``); returns how many blocks do so."""
        blocks = [m for m in self.net if isinstance(m, ResnetBlock)]
        for block in blocks:
            block.grad_checkpointing = enabled
        return len(blocks)

    def compile(self, *args, **kwargs) -> None:
        """``Module.compile`` of every entry as well: ``encode`` and ``forward_with_features``
        call the entries one by one, so a compiled ``forward`` alone would miss the NCE passes."""
        super().compile(*args, **kwargs)
        for layer in self.net:
            layer.compile(*args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        """Translate ``(B, input_nc, H, W) -> (B, output_nc, H, W)``."""
        self._check_input(x)
        return self.net(x)

    def encode(self, x: Tensor, layers: Sequence[int] | None = None) -> list[Tensor]:
        """Outputs of the entries ``layers`` (default ``default_layers``), in the order given;
        the pass stops after the deepest one, so encoding costs only the encoder part."""
        self._check_input(x)
        wanted = self._check_layers(layers)
        return self._run(x, wanted, stop=max(wanted))[1]

    def forward_with_features(
        self, x: Tensor, layers: Sequence[int] | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """One pass returning ``(forward(x), encode(x, layers))``: the training step takes the
        source image's NCE keys from the translation pass instead of encoding it again."""
        self._check_input(x)
        wanted = self._check_layers(layers)
        return self._run(x, wanted, stop=len(self.net) - 1)

    def tap_channels(self, layers: Sequence[int] | None = None) -> list[int]:
        """Channel counts of :meth:`encode`'s outputs, read from the entry list (no forward)."""
        return [self._channels[i] for i in self._check_layers(layers)]

    def _check_input(self, x: Tensor) -> None:
        raise NotImplementedError

    def _run(self, x: Tensor, wanted: tuple[int, ...], stop: int) -> tuple[Tensor, list[Tensor]]:
        """Run entries ``0..stop``; return the last output and the outputs of ``wanted``."""
        taps: dict[int, Tensor] = {}
        for i, layer in enumerate(self.net):
            x = layer(x)
            if i in wanted:
                taps[i] = x
            if i == stop:
                break
        return x, [taps[i] for i in wanted]

    def _check_layers(self, layers: Sequence[int] | None) -> tuple[int, ...]:
        layers = self.default_layers if layers is None else layers
        n = len(self.net)
        if isinstance(layers, int) or not isinstance(layers, Sequence) or len(layers) == 0:
            raise ValueError(f"layers must be a non-empty sequence of indices, got {layers!r}")
        try:
            wanted = tuple(operator.index(i) for i in layers)
        except TypeError:
            raise ValueError(f"layer indices must be integers, got {layers!r}") from None
        bad = [i for i in wanted if not 0 <= i < n]
        if bad:
            raise ValueError(
                f"layer index {bad[0]} out of range: this generator's sequence has "
                f"{n} entries (valid indices 0..{n - 1})"
            )
        return wanted
