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
    a scalar per layer (a loss module with reduction ``"mean"``, or a ``functools.partial``).
    """
    if len(qs) != len(ks) or not qs:
        raise ValueError(f"need the same non-zero number of query and key layers; "
                         f"got {len(qs)} and {len(ks)}")
    if weights is None:
        weights = [1.0 / len(qs)] * len(qs)
    elif len(weights) != len(qs):
        raise ValueError(f"weights has {len(weights)} entries for {len(qs)} layers")
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
