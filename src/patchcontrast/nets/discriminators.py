"""PatchGAN discriminator of the CUT family (docs/design.md §4.2)."""

from __future__ import annotations

from torch import Tensor, nn

from .layers import BlurPool, init_weights


class PatchDiscriminator(nn.Module):
    """CUT PatchGAN discriminator (``netD=basic``, instance norm), docs/design.md §4.2.

    ``(B, input_nc, H, W) -> (B, 1, h, w)`` real/fake logits, one per overlapping patch; a
    256x256 input gives a 30x30 map in both variants. Anti-aliased (default) sequence::

        conv 4x4 s1 p1 (in -> ndf), LeakyReLU 0.2, BlurPool
        n_layers - 1 times: conv 4x4 s1 p1 (-> ndf * min(2^n, 8)), IN, LeakyReLU, BlurPool
        conv 4x4 s1 p1 (-> ndf * min(2^n_layers, 8)), IN, LeakyReLU, conv 4x4 s1 p1 (-> 1)

    ``antialias=False`` replaces each [conv s1, ..., BlurPool] by a stride-2 conv (the classic
    pix2pix 70x70 PatchGAN); the parameter count is the same. The anti-aliased receptive field is
    larger than 70x70 (84x84 by our deduction, docs/design.md §4.2). Initialised with
    :func:`init_weights` (xavier-normal, gain 0.02) as in CUT.

    Args:
        input_nc: image channels.
        ndf: channels of the first conv.
        n_layers: number of down-sampling stages (3 for ``netD=basic``).
        antialias: BlurPool down-sampling (default) instead of stride-2 convs.
    """

    def __init__(
        self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, antialias: bool = True
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.input_nc = input_nc

        def down(c_in: int, c_out: int, norm: bool) -> list[nn.Module]:
            stride = 1 if antialias else 2
            block: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, stride=stride, padding=1)]
            if norm:
                block.append(nn.InstanceNorm2d(c_out))
            block.append(nn.LeakyReLU(0.2, inplace=True))
            if antialias:
                block.append(BlurPool(c_out))
            return block

        layers = down(input_nc, ndf, norm=False)
        c = ndf
        for n in range(1, n_layers):
            layers += down(c, ndf * min(2**n, 8), norm=True)
            c = ndf * min(2**n, 8)
        c_last = ndf * min(2**n_layers, 8)
        layers += [
            nn.Conv2d(c, c_last, 4, stride=1, padding=1),
            nn.InstanceNorm2d(c_last),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(c_last, 1, 4, stride=1, padding=1),
        ]
        self.net = nn.Sequential(*layers)
        init_weights(self, "xavier", 0.02)

    def forward(self, x: Tensor) -> Tensor:
        """Patch logits ``(B, 1, h, w)`` for images ``(B, input_nc, H, W)``."""
        if x.dim() != 4 or x.shape[1] != self.input_nc:
            raise ValueError(
                f"PatchDiscriminator expects (B, {self.input_nc}, H, W) images, "
                f"got shape {tuple(x.shape)}"
            )
        return self.net(x)
