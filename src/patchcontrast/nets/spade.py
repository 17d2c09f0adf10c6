"""SPADE generator, multi-scale PatchGAN discriminator and their helpers (docs/design.md §4.5,
§4.7).

Paper: Park et al., "Semantic Image Synthesis with Spatially-Adaptive Normalization", CVPR 2019,
in the configuration MoNCE-SPADE trains (``netG=spade``, ``norm_G=spectralspadesyncbatch3x3``,
``netD=multiscale``, ``norm_D=spectralinstance``, no VAE).

Initialisation (docs/design.md §4.7): plain convolutions get xavier-normal with gain 0.02.
Convolutions wrapped
in spectral norm deliberately keep PyTorch's default weight init (biases are zeroed). This is what
SPADE effectively does (its init writes into the derived weight, which the spectral-norm
re-parametrisation recomputes), and it is also the sensible choice: ``W / sigma(W)`` cancels the
scale of the stored weight, so gain 0.02 would not change the function, only shrink the stored
parameter ~50x, which under Adam multiplies those layers' relative step size by the same factor
compared with the setting SPADE's learning rates were tuned for.

Batch norm: SPADE's "synchronised" batch norm is plain ``BatchNorm2d(affine=False)`` on one
device. Under DDP, convert the model with ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` before
wrapping it. ``.eval()`` switches to running statistics, which SPADE's test script relies on.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from .layers import init_weights

SpadeNorm = Literal["batch", "instance"]
SPADE_NORMS = ("batch", "instance")
Upsampling = Literal["normal", "more", "most"]
# number of x2 up-samplings between the start grid and the output, per SPADE option
UPSAMPLINGS = {"normal": 5, "more": 6, "most": 7}
DiscriminatorNorm = Literal["spectralinstance", "instance", "none"]
DISCRIMINATOR_NORMS = ("spectralinstance", "instance", "none")


def _check_choice(name: str, value: str, choices: tuple[str, ...] | dict[str, int]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _init_spade(module: nn.Module) -> None:
    """SPADE init (module docstring): xavier(0.02) on plain convs; spectral convs keep the default
    weight and get a zero bias."""
    for m in module.modules():
        if not isinstance(m, nn.Conv2d):
            continue
        if parametrize.is_parametrized(m, "weight"):
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        else:
            init_weights(m, "xavier", 0.02)


def one_hot_labels(labels: Tensor, label_nc: int, *, dont_care: bool = False) -> Tensor:
    """Integer label map ``(B, H, W)`` or ``(B, 1, H, W)`` -> float one-hot ``(B, N, H, W)``.

    ``N = label_nc + dont_care``. With ``dont_care`` the value ``label_nc`` is allowed and lands in
    the extra last channel (ADE20K: the unlabelled class 0 is remapped to 150, giving 151
    channels). Values outside ``[0, N - 1]`` raise a ``ValueError`` listing them, instead of the
    device-side assert a scatter would give.
    """
    if label_nc < 1:
        raise ValueError(f"label_nc must be >= 1, got {label_nc}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.dim() == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dim() != 3:
        raise ValueError(
            f"labels must have shape (B, H, W) or (B, 1, H, W), got {tuple(labels.shape)}"
        )
    n = label_nc + int(dont_care)
    bad = (labels < 0) | (labels >= n)
    if bad.any():
        values = torch.unique(labels[bad]).tolist()
        shown = ", ".join(map(str, values[:10])) + (", ..." if len(values) > 10 else "")
        raise ValueError(
            f"labels must lie in [0, {n - 1}] (label_nc={label_nc}, "
            f"dont_care={dont_care}); found invalid values {shown}"
        )
    b, h, w = labels.shape
    out = torch.zeros(b, n, h, w, device=labels.device)
    return out.scatter_(1, labels.long().unsqueeze(1), 1.0)


class SPADE(nn.Module):
    """Spatially-adaptive normalisation: ``x_hat * (1 + gamma(seg)) + beta(seg)``.

    ``x_hat`` is ``x`` under a parameter-free norm (``BatchNorm2d`` or ``InstanceNorm2d``, both
    ``affine=False``); ``gamma`` and ``beta`` are ``(B, C, H, W)`` maps predicted from the label
    map, first resized to ``x``'s ``(H, W)`` with nearest interpolation, by a shared
    ``conv(label_nc -> hidden) + ReLU`` followed by two ``conv(hidden -> C)``. The ``1 +`` makes
    zero-output convs an identity modulation. Park et al. 2019, eq. 1; docs/design.md §4.5.

    Shapes: ``x (B, C, H, W)``, ``seg (B, label_nc, h, w)`` one-hot or soft -> ``(B, C, H, W)``.
    """

    def __init__(
        self,
        channels: int,
        label_nc: int,
        *,
        norm: SpadeNorm = "batch",
        hidden: int = 128,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        _check_choice("norm", norm, SPADE_NORMS)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        self.label_nc = label_nc
        if norm == "batch":
            self.param_free_norm: nn.Module = nn.BatchNorm2d(channels, affine=False)
        else:
            self.param_free_norm = nn.InstanceNorm2d(channels, affine=False)
        pad = kernel_size // 2  # "same" padding keeps gamma/beta at x's resolution
        self.mlp_shared = nn.Sequential(
            nn.Conv2d(label_nc, hidden, kernel_size, padding=pad), nn.ReLU()
        )
        self.mlp_gamma = nn.Conv2d(hidden, channels, kernel_size, padding=pad)
        self.mlp_beta = nn.Conv2d(hidden, channels, kernel_size, padding=pad)

    def forward(self, x: Tensor, seg: Tensor) -> Tensor:
        x_hat = self.param_free_norm(x)
        seg = F.interpolate(seg, size=x.shape[2:], mode="nearest")  # (B, label_nc, H, W)
        actv = self.mlp_shared(seg)  # (B, hidden, H, W)
        return x_hat * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResBlock(nn.Module):
    """SPADE residual block ``(B, fin, H, W) -> (B, fout, H, W)``, label map ``seg`` any size.

    Main path: SPADE -> LReLU(0.2) -> conv3x3(fin -> fmid) -> SPADE -> LReLU -> conv3x3(fmid ->
    fout), ``fmid = min(fin, fout)``. Shortcut: identity when ``fin == fout``, else its own SPADE
    -> conv1x1 without bias or activation. ``spectral`` wraps all three convs in spectral norm
    (``norm_G=spectral...``). Park et al. 2019, Fig. 4; docs/design.md §4.5.
    """

    def __init__(
        self,
        fin: int,
        fout: int,
        label_nc: int,
        *,
        norm: SpadeNorm = "batch",
        spectral: bool = True,
    ) -> None:
        super().__init__()
        fmid = min(fin, fout)
        self.learned_shortcut = fin != fout
        wrap = spectral_norm if spectral else (lambda m: m)
        self.conv_0 = wrap(nn.Conv2d(fin, fmid, 3, padding=1))
        self.conv_1 = wrap(nn.Conv2d(fmid, fout, 3, padding=1))
        self.norm_0 = SPADE(fin, label_nc, norm=norm)
        self.norm_1 = SPADE(fmid, label_nc, norm=norm)
        if self.learned_shortcut:
            self.conv_s = wrap(nn.Conv2d(fin, fout, 1, bias=False))
            self.norm_s = SPADE(fin, label_nc, norm=norm)

    def forward(self, x: Tensor, seg: Tensor) -> Tensor:
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))  # (B, fmid, H, W)
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))  # (B, fout, H, W)
        return x_s + dx


class SPADEGenerator(nn.Module):
    """SPADE generator without VAE: one-hot label map ``(B, label_nc, H, W)`` -> ``(B, C, H, W)``
    in ``[-1, 1]`` (tanh), ``C = output_nc``. Park et al. 2019, Fig. 5; docs/design.md §4.5.

    The start grid is ``(H / 2^k, W / 2^k)`` with ``k = 5, 6, 7`` for ``num_upsampling_layers``
    ``"normal"``, ``"more"``, ``"most"``, so any ``H, W`` divisible by ``2^k`` work, also
    non-square ones. Layout (``nf = ngf``, "up" = nearest x2, channels after each step)::

        seg nearest-resized to the start grid -> conv3x3 (16nf) -> head_0 (16nf) -> up
        -> G_middle_0 (16nf) -> [up, if more/most] -> G_middle_1 (16nf) -> up -> up_0 (8nf)
        -> up -> up_1 (4nf) -> up -> up_2 (2nf) -> up -> up_3 (nf) -> [up -> up_4 (nf/2), most]
        -> LeakyReLU 0.2 -> conv3x3 (output_nc) -> tanh

    Every ResBlock is modulated by the full-resolution label map.
    """

    def __init__(
        self,
        label_nc: int,
        *,
        ngf: int = 64,
        num_upsampling_layers: Upsampling = "normal",
        norm: SpadeNorm = "batch",
        spectral: bool = True,
        output_nc: int = 3,
    ) -> None:
        super().__init__()
        _check_choice("num_upsampling_layers", num_upsampling_layers, UPSAMPLINGS)
        _check_choice("norm", norm, SPADE_NORMS)
        if label_nc < 1:
            raise ValueError(f"label_nc must be >= 1, got {label_nc}")
        if ngf < 1 or (num_upsampling_layers == "most" and ngf < 2):
            raise ValueError(f"ngf must be >= 1 (>= 2 for 'most'), got {ngf}")
        self.label_nc = label_nc
        self.num_upsampling_layers = num_upsampling_layers
        self.size_multiple = 2 ** UPSAMPLINGS[num_upsampling_layers]
        nf = ngf

        def block(fin: int, fout: int) -> SPADEResBlock:
            return SPADEResBlock(fin, fout, label_nc, norm=norm, spectral=spectral)

        self.fc = nn.Conv2d(label_nc, 16 * nf, 3, padding=1)
        self.head_0 = block(16 * nf, 16 * nf)
        self.G_middle_0 = block(16 * nf, 16 * nf)
        self.G_middle_1 = block(16 * nf, 16 * nf)
        self.up_0 = block(16 * nf, 8 * nf)
        self.up_1 = block(8 * nf, 4 * nf)
        self.up_2 = block(4 * nf, 2 * nf)
        self.up_3 = block(2 * nf, nf)
        final_nc = nf
        if num_upsampling_layers == "most":
            self.up_4 = block(nf, nf // 2)
            final_nc = nf // 2
        self.conv_img = nn.Conv2d(final_nc, output_nc, 3, padding=1)
        _init_spade(self)

    def forward(self, seg: Tensor) -> Tensor:
        """``seg (B, label_nc, H, W)`` float one-hot -> ``(B, output_nc, H, W)`` in [-1, 1]."""
        if seg.dim() != 4 or seg.shape[1] != self.label_nc:
            raise ValueError(
                f"SPADEGenerator expects a label map of shape (B, {self.label_nc}, H, "
                f"W), got {tuple(seg.shape)}; integer maps go through one_hot_labels"
            )
        if not seg.dtype.is_floating_point:
            raise ValueError(
                f"SPADEGenerator expects a float one-hot label map, got dtype "
                f"{seg.dtype}; use one_hot_labels"
            )
        h, w = seg.shape[2:]
        m = self.size_multiple
        if h % m or w % m:
            raise ValueError(
                f"SPADEGenerator(num_upsampling_layers={self.num_upsampling_layers!r})"
                f" needs H and W divisible by {m}, got {h}x{w}"
            )

        def up(t: Tensor) -> Tensor:
            return F.interpolate(t, scale_factor=2, mode="nearest")

        x = F.interpolate(seg, size=(h // m, w // m), mode="nearest")
        x = self.head_0(self.fc(x), seg)  # (B, 16nf, H/m, W/m)
        x = self.G_middle_0(up(x), seg)
        if self.num_upsampling_layers in ("more", "most"):
            x = up(x)
        x = self.G_middle_1(x, seg)
        x = self.up_0(up(x), seg)
        x = self.up_1(up(x), seg)
        x = self.up_2(up(x), seg)
        x = self.up_3(up(x), seg)
        if self.num_upsampling_layers == "most":
            x = self.up_4(up(x), seg)
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))  # (B, output_nc, H, W)


class _NLayerDiscriminator(nn.Module):
    """One scale of :class:`MultiscaleDiscriminator`; returns every block's output."""

    def __init__(self, in_channels: int, ndf: int, n_layers: int, norm: DiscriminatorNorm) -> None:
        super().__init__()
        pad = 2  # ceil((kernel 4 - 1) / 2), as SPADE
        blocks: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(in_channels, ndf, 4, stride=2, padding=pad), nn.LeakyReLU(0.2))
        ]
        c = ndf
        for n in range(1, n_layers):
            c_out = min(c * 2, 512)
            stride = 1 if n == n_layers - 1 else 2
            if norm == "none":
                layers: list[nn.Module] = [nn.Conv2d(c, c_out, 4, stride=stride, padding=pad)]
            else:
                # the instance norm subtracts the per-channel mean, so a conv bias would be inert
                conv = nn.Conv2d(c, c_out, 4, stride=stride, padding=pad, bias=False)
                if norm == "spectralinstance":
                    conv = spectral_norm(conv)
                layers = [conv, nn.InstanceNorm2d(c_out, affine=False)]
            # not in-place: block outputs are kept for the feature-matching loss
            blocks.append(nn.Sequential(*layers, nn.LeakyReLU(0.2)))
            c = c_out
        blocks.append(nn.Conv2d(c, 1, 4, stride=1, padding=pad))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for blk in self.blocks:
            x = blk(x)
            outputs.append(x)
        return outputs


class MultiscaleDiscriminator(nn.Module):
    """pix2pixHD/SPADE multi-scale PatchGAN discriminator, docs/design.md §4.5.

    ``x (B, in_channels, H, W)`` (concatenated one-hot label [+ don't-care] and image, so
    ``in_channels = label_nc + 3``) -> one list per scale; each list holds the ``n_layers + 1``
    block outputs, the last being the ``(B, 1, h, w)`` patch logits (35x35 at 256x256 for scale
    0). Scale ``s + 1`` sees ``avg_pool2d(x_s, 3, stride 2, pad 1, count_include_pad=False)``.

    Each scale: conv4 s2 (-> ndf) + LReLU 0.2; ``n_layers - 1`` blocks conv4 (channels x2, at most
    512; stride 2, the last one stride 1) + norm + LReLU 0.2; conv4 s1 -> 1. All convs pad 2. Norm
    ``"spectralinstance"`` (SPADE default) = spectral norm on the conv + ``InstanceNorm2d(affine=
    False)``; ``"instance"`` drops the spectral norm; ``"none"`` uses neither (convs keep bias).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        ndf: int = 64,
        n_layers: int = 4,
        num_d: int = 2,
        norm: DiscriminatorNorm = "spectralinstance",
    ) -> None:
        super().__init__()
        _check_choice("norm", norm, DISCRIMINATOR_NORMS)
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        if num_d < 1:
            raise ValueError(f"num_d must be >= 1, got {num_d}")
        self.in_channels = in_channels
        self.scales = nn.ModuleList(
            _NLayerDiscriminator(in_channels, ndf, n_layers, norm) for _ in range(num_d)
        )
        _init_spade(self)

    def forward(self, x: Tensor) -> list[list[Tensor]]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"MultiscaleDiscriminator expects (B, {self.in_channels}, H, W) "
                f"inputs, got shape {tuple(x.shape)}"
            )
        results = []
        for i, scale in enumerate(self.scales):
            if i > 0:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            results.append(scale(x))
        return results


def feature_matching_loss(
    fake: list[list[Tensor]],
    real: list[list[Tensor]],
    *,
    layer_reduction: Literal["sum", "mean"] = "sum",
) -> Tensor:
    """Discriminator feature matching (pix2pixHD, SPADE), without ``lambda_feat``.

    ``L = (1/S) * sum_s R_{l < L_s} mean|D_s^l(fake) - sg(D_s^l(real))|`` over the ``S`` scales and
    every block output but each scale's final prediction; ``sg`` = stop-gradient (real features
    are detached). ``R`` is a sum over layers with ``layer_reduction="sum"``, which is what SPADE
    computes (and what its lambda_feat = 10 was tuned with), or a mean with ``"mean"`` (4x
    smaller for ``n_layers=4``). ``fake``/``real`` are :class:`MultiscaleDiscriminator` outputs.
    Returns a scalar.
    """
    _check_choice("layer_reduction", layer_reduction, ("sum", "mean"))
    if len(fake) != len(real) or not fake:
        raise ValueError(
            f"fake and real must hold the same, non-zero number of scales, got "
            f"{len(fake)} and {len(real)}"
        )
    total = fake[0][-1].new_zeros(())
    for s, (f_s, r_s) in enumerate(zip(fake, real)):
        if len(f_s) != len(r_s) or len(f_s) < 2:
            raise ValueError(
                f"scale {s}: fake and real must hold the same number (>= 2) of "
                f"outputs, got {len(f_s)} and {len(r_s)}"
            )
        layers = []
        for f, r in zip(f_s[:-1], r_s[:-1]):
            if f.shape != r.shape:
                raise ValueError(
                    f"scale {s}: feature shapes differ, {tuple(f.shape)} vs {tuple(r.shape)}"
                )
            layers.append(F.l1_loss(f, r.detach()))
        stacked = torch.stack(layers)
        total = total + (stacked.sum() if layer_reduction == "sum" else stacked.mean())
    return total / len(fake)
