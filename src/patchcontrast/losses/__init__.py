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

# On CPU, layers are stacked into one call only up to this many bytes of (G, n, n) matrices:
# the Sinkhorn matrix-vector products are memory-bound, and past the cache-sized working set a
# bigger batch costs more than the per-call overhead it saves. Accelerators stack everything.
CPU_STACK_BYTES = 2**20

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
    ``(B, 256, 256)`` — the layers are stacked along the batch and computed in one call (on CPU
    in cache-sized chunks, see ``CPU_STACK_BYTES``): the same numbers, but one batched Sinkhorn
    for several layers instead of L sequential ones.
    """
    if len(qs) != len(ks) or not qs:
        raise ValueError(
            f"need the same non-zero number of query and key layers; got {len(qs)} and {len(ks)}"
        )
    if weights is None:
        weights = [1.0 / len(qs)] * len(qs)
    elif len(weights) != len(qs):
        raise ValueError(f"weights has {len(weights)} entries for {len(qs)} layers")
    stackable = (
        isinstance(loss, PatchNCELoss)
        and loss.stackable
        and loss.reduction != "none"
        and len({(x.shape, x.dtype, x.device) for x in (*qs, *ks)}) == 1
    )
    if stackable and len(qs) > 1:
        b, n = qs[0].shape[:2]
        chunk = len(qs)
        if qs[0].device.type == "cpu":
            chunk = max(1, CPU_STACK_BYTES // (b * n * n * qs[0].element_size()))
        per_layer = []
        for start in range(0, len(qs), chunk):
            stop = min(start + chunk, len(qs))
            per_anchor = loss.per_anchor(
                torch.cat(tuple(qs[start:stop])), torch.cat(tuple(ks[start:stop]))
            )  # (layers*B, N)
            per_anchor = per_anchor.reshape(stop - start, -1)
            per_layer.append(per_anchor.mean(1) if loss.reduction == "mean" else per_anchor.sum(1))
        return (torch.cat(per_layer) * per_anchor.new_tensor(list(weights))).sum()
    terms = [w * loss(q, k) for w, q, k in zip(weights, qs, ks)]
    if any(t.dim() != 0 for t in terms):
        raise ValueError(
            "multilayer_loss needs a loss that returns a scalar per layer "
            "(use reduction='mean' or 'sum')"
        )
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
