"""The spatially-correlative loss: F-SeSim and L-SeSim (Zheng, Cham & Cai, CVPR 2021).

Structure, not appearance, should survive a translation. The paper encodes the structure around a
position as its *self-similarity map*: the cosine similarities between the feature there and the
features of a window around it. The map of the translation must match the map of the
source (:func:`spatial_correlative_loss`). The features come from a fixed VGG (F-SeSim), a random
fixed network (Random SeSim, an ablation of MoNCE Table 2), or a fixed VGG followed by a head that
is learned contrastively on the maps themselves (L-SeSim, :func:`sesim_contrastive`).

Shapes: feature maps ``(B, C, H, W)``; ``N`` sampled positions; self-similarity maps
``(B, N, K)`` with ``K = patch_size ** 2`` window entries.

L-SeSim alternates two updates per iteration, on positions ``ids`` drawn per layer: the heads of
``SeSimFeatures("learned")`` minimise :func:`sesim_contrastive` between the maps of a real image
and of ``appearance_augment`` of it; the generator minimises :func:`spatial_correlative_loss`
between the maps of the source and of its translation, through the same (now fixed) features.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import REDUCTIONS, Reduction, check_choice, check_int

SeSimMode = Literal["l1", "cos"]
SESIM_MODES = ("l1", "cos")


def self_similarity(
    features: Tensor, ids: Tensor, *, patch_size: int = 7, stride: int = 1
) -> Tensor:
    r"""Local self-similarity maps at sampled positions (the paper's spatially-correlative map).

    For the feature ``f_p`` at a sampled position ``p`` and the window ``W(p)`` of
    ``patch_size x patch_size`` positions centred on it, taken ``stride`` pixels apart:

    .. math::
        S_p = \Bigl( \frac{f_p \cdot f_q}{\lVert f_p \rVert \lVert f_q \rVert} \Bigr)_{q \in W(p)}

    Window positions outside the map are zero-padded: a zero feature has similarity 0 with
    everything (also a position whose feature is exactly zero, e.g. a dead ReLU), so no NaN
    arises and border entries are 0 in the maps of both images compared. The centre entry is 1
    wherever the feature is non-zero.

    Args:
        features: ``(B, C, H, W)`` feature map.
        ids: flat positions ``h * W + w``: ``(N,)`` shared by the batch, or ``(B, N)`` per image
            (the layouts :class:`~patchcontrast.nets.projector.PatchSampleMLP` returns).
        patch_size: window width in samples; odd so that the window is centred.
        stride: spacing of the window samples in pixels (a dilation): the window spans
            ``(patch_size - 1) * stride + 1`` pixels with the same ``K``.

    Returns:
        ``(B, N, patch_size ** 2)``; entry ``k = (dy + r) * patch_size + (dx + r)`` (row-major,
        ``r = patch_size // 2``) is the similarity with the feature at ``(h + dy * stride,
        w + dx * stride)``. Computed in at least float32 with autocast off.
    """
    _check_map(features)
    check_int("patch_size", patch_size, low=1)
    if patch_size % 2 == 0:
        raise ValueError(f"patch_size must be odd so the window is centred; got {patch_size}")
    check_int("stride", stride, low=1)
    b, _, h, w = features.shape
    ids = _check_ids(ids, b, h * w).to(features.device)
    dtype = torch.promote_types(features.dtype, torch.float32)
    with torch.autocast(device_type=features.device.type, enabled=False):
        # zero vectors stay zero under F.normalize, which gives the padding similarity 0
        unit = F.normalize(features.to(dtype), dim=1)  # (B, C, H, W)
        pad = (patch_size // 2) * stride
        hp, wp = h + 2 * pad, w + 2 * pad
        # one C-vector per row, so each window entry is a contiguous row to read (and, in the
        # backward pass, to accumulate into): (B * Hp * Wp, C)
        table = F.pad(unit, (pad, pad, pad, pad)).permute(0, 2, 3, 1).reshape(b * hp * wp, -1)
        offsets = torch.arange(-(patch_size // 2), patch_size // 2 + 1, device=ids.device)
        offsets = offsets * stride
        # window of each id in padded coordinates, row-major over (dy, dx): (..., N, K)
        rows = (ids // w + pad)[..., None, None] + offsets[:, None]
        cols = (ids % w + pad)[..., None, None] + offsets[None, :]
        window = (rows * wp + cols).flatten(-2)
        image = torch.arange(b, device=ids.device).view(b, 1, 1) * (hp * wp)
        index = (window + image).flatten()  # (B * N * K,) rows of the table
        n, k = window.shape[-2:]
        neighbours = table.index_select(0, index).view(b, n, k, -1)  # (B, N, K, C)
        centre = neighbours[:, :, k // 2]  # (B, N, C): the window's middle entry
        return torch.einsum("bnkc,bnc->bnk", neighbours, centre)  # (B, N, K)


def spatial_correlative_loss(
    source: Tensor,
    generated: Tensor,
    *,
    mode: SeSimMode = "cos",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""The spatially-correlative loss of Zheng et al. (2021) between self-similarity maps.

    Per anchor ``i`` with maps ``S^x_i`` (source) and ``S^y_i`` (translation), ``K`` entries:

    .. math::
        \ell^{l1}_i = \frac{1}{K} \sum_k \lvert S^x_{ik} - S^y_{ik} \rvert, \qquad
        \ell^{cos}_i = 1 - \frac{S^x_i \cdot S^y_i}{\lVert S^x_i \rVert \, \lVert S^y_i \rVert}

    (the paper's L1 distance, averaged rather than summed over the window, and its cosine
    distance). The source maps are detached: they are the target structure, and the generator
    reaches the loss only through the translation.

    Args:
        source, generated: ``(B, N, K)`` maps from :func:`self_similarity` at the same positions.
        mode: ``"cos"`` (default) or ``"l1"``.
        reduction: ``"none"`` -> ``(B, N)``, ``"mean"`` or ``"sum"`` -> scalar.

    Example:
        >>> f = torch.randn(2, 8, 16, 16)
        >>> ids = torch.randperm(256)[:32]
        >>> s = self_similarity(f, ids)
        >>> bool(spatial_correlative_loss(s, s).abs() < 1e-6)
        True
    """
    check_choice("mode", mode, SESIM_MODES)
    check_choice("reduction", reduction, REDUCTIONS)
    _check_maps(source, generated, ("source", "generated"))
    target = source.detach()
    if mode == "l1":
        loss = (target - generated).abs().mean(-1)
    else:
        loss = 1 - (F.normalize(target, dim=-1) * F.normalize(generated, dim=-1)).sum(-1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def sesim_contrastive(
    q_maps: Tensor, k_maps: Tensor, loss: Callable[[Tensor, Tensor], Tensor]
) -> Tensor:
    """L-SeSim's contrastive objective for the learned feature heads (Zheng et al. 2021).

    The self-similarity maps of an image (queries) and of an appearance-augmented view of it
    (keys, same positions) are L2-normalised over the window and passed to a registry loss
    (``patchcontrast.losses.build_loss``): the key at the same position is the positive, the keys
    at the other positions of the image the negatives. With ``build_loss("patchnce")`` this is
    the paper's InfoNCE (tau 0.07); ``"weightnce"``/``"monce"`` give MoNCE Table 2's
    "LSeSim + WeightNCE / MoNCE". Registry losses detach the keys unless built with
    ``detach_keys=False`` (then the augmented view's branch trains the head too).

    Args:
        q_maps, k_maps: ``(B, N, K)`` maps from :func:`self_similarity`.
        loss: ``(q, k) -> loss`` on ``(B, N, K)`` unit vectors, e.g. a registry module.

    Returns:
        whatever ``loss`` returns (a scalar for reductions ``"mean"``/``"sum"``).
    """
    _check_maps(q_maps, k_maps, ("q_maps", "k_maps"))
    return loss(F.normalize(q_maps, dim=-1), F.normalize(k_maps, dim=-1))


def _check_map(features: Tensor) -> None:
    if not isinstance(features, Tensor):
        raise ValueError(f"features must be a torch.Tensor; got {type(features).__name__}")
    if features.dim() != 4 or not features.is_floating_point():
        raise ValueError(
            f"features must be a floating-point (B, C, H, W) tensor; got "
            f"{features.dtype} of shape {tuple(features.shape)}"
        )


def _check_ids(ids: Tensor, batch: int, positions: int) -> Tensor:
    """Validate flat positions ``(N,)`` or ``(batch, N)`` in ``[0, positions)``."""
    if not isinstance(ids, Tensor) or ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"ids must be an integer tensor of flat positions; got "
            f"{getattr(ids, 'dtype', type(ids).__name__)}"
        )
    if not (ids.dim() == 1 or (ids.dim() == 2 and ids.shape[0] == batch)) or ids.shape[-1] < 1:
        raise ValueError(
            f"ids must have shape (N,) or ({batch}, N) with N >= 1; got {tuple(ids.shape)}"
        )
    if int(ids.min()) < 0 or int(ids.max()) >= positions:
        raise ValueError(
            f"ids must lie in [0, H * W) = [0, {positions}); got values in "
            f"[{int(ids.min())}, {int(ids.max())}]"
        )
    return ids.long()


def _check_maps(a: Tensor, b: Tensor, names: tuple[str, str]) -> None:
    """Two ``(B, N, K)`` floating-point maps of the same shape."""
    for name, x in zip(names, (a, b)):
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() != 3 or not x.is_floating_point():
            raise ValueError(
                f"{name} must be a floating-point (B, N, K) tensor; got "
                f"{x.dtype} of shape {tuple(x.shape)}"
            )
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape; got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
