"""Contrastive patch losses: PatchNCE, WeightNCE, MoNCE, PUT, and the Sinkhorn solver.

Every loss is a pure function of ``(B, N, C)`` query/key patch features with keyword
hyper-parameters, plus a thin ``nn.Module`` wrapper registered in :data:`CONTRASTIVE_LOSSES`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .monce import MoNCELoss, monce, monce_cost
from .nce import PatchNCELoss, PUTLoss, WeightNCELoss, patch_nce, put, weight_nce
from .sinkhorn import sinkhorn

# Name -> Module class; a user picks a loss by name and passes its hyper-parameters as kwargs.
CONTRASTIVE_LOSSES: dict[str, type[nn.Module]] = {
    "patchnce": PatchNCELoss,
    "weightnce": WeightNCELoss,
    "monce": MoNCELoss,
    "put": PUTLoss,
}


def build_loss(name: str, **kwargs) -> nn.Module:
    """Instantiate a registered contrastive loss by name, e.g. ``build_loss("monce", beta=0.1)``."""
    if name not in CONTRASTIVE_LOSSES:
        raise ValueError(
            f"unknown contrastive loss {name!r}; choose one of {', '.join(CONTRASTIVE_LOSSES)}"
        )
    try:
        return CONTRASTIVE_LOSSES[name](**kwargs)
    except TypeError as err:  # unknown keyword: say which loss rejected it
        raise ValueError(f"invalid option for loss {name!r}: {err}") from None


def multilayer_loss(
    loss: Callable[[Tensor, Tensor], Tensor],
    qs: Sequence[Tensor],
    ks: Sequence[Tensor],
    weights: Sequence[float] | None = None,
) -> Tensor:
    """Combine a loss over feature layers: ``sum_l w_l * loss(q_l, k_l)``.

    ``weights=None`` averages the layers (``w_l = 1/L``), as CUT does over its 5 encoder taps;
    pass e.g. ``(1/32, 1/16, 1/8, 1/4, 1)`` for SPADE's VGG layer weights. ``loss`` must return
    a scalar per layer (a loss module with reduction ``"mean"``/``"sum"``, or a partial).

    When ``loss`` is a registry module whose images are independent problems (negatives from the
    same image) and all layers have the same shape — CUT's projected features are all
    ``(B, 256, 256)`` — the layers are stacked along the batch and computed in one call: the same
    numbers, but one batched Sinkhorn for all layers instead of L sequential ones.
    """
    if len(qs) != len(ks) or not qs:
        raise ValueError(f"need the same non-zero number of query and key layers; "
                         f"got {len(qs)} and {len(ks)}")
    if weights is None:
        weights = [1.0 / len(qs)] * len(qs)
    elif len(weights) != len(qs):
        raise ValueError(f"weights has {len(weights)} entries for {len(qs)} layers")
    stackable = (isinstance(loss, PatchNCELoss) and loss.stackable and loss.reduction != "none"
                 and len({(x.shape, x.dtype, x.device) for x in (*qs, *ks)}) == 1)
    if stackable and len(qs) > 1:
        per_anchor = loss.per_anchor(torch.cat(tuple(qs)), torch.cat(tuple(ks)))  # (L*B, N)
        per_anchor = per_anchor.reshape(len(qs), -1)
        per_layer = per_anchor.mean(1) if loss.reduction == "mean" else per_anchor.sum(1)
        return (per_layer * per_layer.new_tensor(list(weights))).sum()
    terms = [w * loss(q, k) for w, q, k in zip(weights, qs, ks)]
    if any(t.dim() != 0 for t in terms):
        raise ValueError("multilayer_loss needs a loss that returns a scalar per layer "
                         "(use reduction='mean' or 'sum')")
    return torch.stack(terms).sum()


__all__ = [
    "CONTRASTIVE_LOSSES",
    "MoNCELoss",
    "PUTLoss",
    "PatchNCELoss",
    "WeightNCELoss",
    "build_loss",
    "monce",
    "monce_cost",
    "multilayer_loss",
    "patch_nce",
    "put",
    "sinkhorn",
    "weight_nce",
]
