"""Patch sampler + projection head of the CUT family (docs/design.md §2.2, §4.3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .layers import init_weights

# added to the L2 norm before dividing, as upstream (not a clamp: every vector is scaled)
NORM_EPS = 1e-7


class PatchSampleMLP(nn.Module):
    """CUT PatchSampleF (``netF=mlp_sample``; ``use_mlp=False`` is ``netF=sample``), docs/design.md
    §4.3.

    For every encoder tap l, sample ``P = min(num_patches, H_l * W_l)`` spatial positions, project
    the ``C_l``-dim feature at each through ``Linear(C_l, out) -> ReLU -> Linear(out, out)`` and
    L2-normalise it as ``x / (||x|| + 1e-7)``. Unlike upstream the MLPs are built here from the
    known channel counts (e.g. ``ResnetGenerator.tap_channels()``), not lazily on the first
    batch, so the parameters exist for the optimiser, checkpoints and DDP right away. They are
    initialised with :func:`init_weights` (xavier-normal, gain 0.02).

    Args:
        in_channels: ``C_l`` of every tap (CUT default: 3, 128, 256, 256, 256).
        out_channels: projection width (``netF_nc``, 256).
        use_mlp: project (default) or only sample and normalise (output width ``C_l``).
    """

    def __init__(
        self, in_channels: Sequence[int], out_channels: int = 256, use_mlp: bool = True
    ) -> None:
        super().__init__()
        in_channels = tuple(in_channels)
        if not in_channels or any(c < 1 for c in in_channels) or out_channels < 1:
            raise ValueError(
                f"need a non-empty list of positive in_channels and a positive "
                f"out_channels, got {in_channels} and {out_channels}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.use_mlp = use_mlp
        width = out_channels
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(c, width), nn.ReLU(), nn.Linear(width, width))
            if use_mlp
            else nn.Identity()
            for c in in_channels
        )
        init_weights(self, "xavier", 0.02)

    def forward(
        self,
        feats: Sequence[Tensor],
        num_patches: int = 256,
        patch_ids: Sequence[Tensor] | None = None,
        generator: torch.Generator | None = None,
        per_image: bool = False,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Sample, project and normalise patches of every tap.

        Args:
            feats: one ``(B, C_l, H_l, W_l)`` map per tap, in the order of ``in_channels``.
            num_patches: P; a tap with fewer positions contributes all ``H_l * W_l`` of them.
            patch_ids: ids returned by an earlier call (the key pass), reused as they are so
                that queries are sampled at the key locations; ``per_image`` is then ignored.
            generator: RNG for the permutations (default: torch's global CPU RNG); ids are drawn
                on its device and moved to the features' device.
            per_image: draw independent positions for every image instead of one set shared by
                the batch (the upstream behaviour, and the default).

        Returns:
            ``(samples, patch_ids)``: ``samples[l]`` is ``(B, P_l, out_channels)`` (or
            ``(B, P_l, C_l)`` without MLP), unit-norm rows in (B, N, C) loss layout;
            ``patch_ids[l]`` holds flat positions ``h * W_l + w``, shape ``(P_l,)`` when shared
            or ``(B, P_l)`` per image.
        """
        if len(feats) != len(self.mlps):
            raise ValueError(f"got {len(feats)} feature maps for {len(self.mlps)} taps")
        if patch_ids is not None and len(patch_ids) != len(feats):
            raise ValueError(f"got {len(patch_ids)} patch id tensors for {len(feats)} taps")
        if patch_ids is None and num_patches < 1:
            raise ValueError(f"num_patches must be >= 1, got {num_patches}")
        samples, used_ids = [], []
        for l, (feat, mlp) in enumerate(zip(feats, self.mlps)):
            if feat.dim() != 4 or feat.shape[1] != self.in_channels[l]:
                raise ValueError(
                    f"tap {l}: expected (B, {self.in_channels[l]}, H, W) features, "
                    f"got shape {tuple(feat.shape)}"
                )
            b, c, h, w = feat.shape
            if patch_ids is None:
                ids = _draw_ids(
                    h * w, min(num_patches, h * w), b if per_image else None, generator
                ).to(feat.device)
            else:
                ids = patch_ids[l]
                if not (ids.dim() == 1 or (ids.dim() == 2 and ids.shape[0] == b)):
                    raise ValueError(
                        f"tap {l}: patch ids must be (P,) or ({b}, P), got shape {tuple(ids.shape)}"
                    )
            flat = feat.flatten(2)  # (B, C, H*W)
            if ids.dim() == 1:
                picked = flat[:, :, ids]  # (B, C, P), same positions in every image
            else:
                picked = flat.gather(2, ids[:, None, :].expand(b, c, -1))  # (B, C, P)
            x = mlp(picked.transpose(1, 2))  # (B, P, out)
            samples.append(x / (x.norm(dim=-1, keepdim=True) + NORM_EPS))
            used_ids.append(ids)
        return samples, used_ids


def _draw_ids(n: int, p: int, batch: int | None, generator: torch.Generator | None) -> Tensor:
    """First ``p`` entries of a random permutation of ``range(n)``: ``(p,)``, or ``(batch, p)``
    with an independent permutation per image."""
    device = generator.device if generator is not None else torch.device("cpu")
    if batch is None:
        return torch.randperm(n, generator=generator, device=device)[:p]
    return torch.stack(
        [torch.randperm(n, generator=generator, device=device)[:p] for _ in range(batch)]
    )
