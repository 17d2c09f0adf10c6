"""PatchNCE (CUT), WeightNCE (MoNCE paper) and PUT negative pruning.

All functions take L2-normalised patch features ``q`` (generated image, anchors; gradient flows)
and ``k`` (source image at the same locations; detached here, as upstream) of shape ``(B, N, C)``
and return per-anchor losses ``(B, N)`` for ``reduction="none"``. ``detach_keys=False`` lets the
gradient reach ``k`` as well (the bidirectional paired variant of MoNCE Table 4, where the
generated image is the key of the reverse direction).

Within a group of n patches, ``s_ij = q_i . k_j``; ``s_ii`` is the positive pair and every
``j != i`` of the same group is a negative.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from ._common import (
    DIAGONAL_SIMILARITY,
    NEGATIVES,
    REDUCTIONS,
    WEIGHTINGS,
    Negatives,
    Reduction,
    Weighting,
    check_choice,
    check_group_size,
    check_int,
    check_positive,
    contrastive_loss,
    full_precision,
    group,
    reduce,
)

Selection = Literal["hardest", "official", "easiest", "random"]
SELECTIONS = ("hardest", "official", "easiest", "random")


def _similarities(
    q: Tensor, k: Tensor, negatives: Negatives, detach_keys: bool = True
) -> tuple[Tensor, Tensor]:
    """Group the patches and return ``(S, eye)``: ``S`` is ``(G, n, n)``; keys detached unless
    ``detach_keys=False``."""
    qg, kg = group(q, negatives), group(k.detach() if detach_keys else k, negatives)
    s = torch.bmm(qg, kg.transpose(1, 2))
    eye = torch.eye(s.shape[-1], dtype=torch.bool, device=s.device)
    return s, eye


@full_precision
def patch_nce(
    q: Tensor,
    k: Tensor,
    *,
    tau: float = 0.07,
    detach_keys: bool = True,
    negatives: Negatives = "image",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""PatchNCE loss of CUT (Park et al., ECCV 2020, Eq. 1-3), exactly as the official code.

    .. math::
        \ell_i = -\log \frac{e^{s_{ii}/\tau}}
                 {e^{s_{ii}/\tau} + \sum_{j \ne i} e^{s_{ij}/\tau} + e^{-10/\tau}}

    The last term is upstream's masked diagonal (the positive's entry of the negative matrix is
    set to -10 rather than removed); it is ~1e-62 and kept only for exact parity.
    :func:`weight_nce` and :func:`monce` keep it too.

    Args:
        q, k: ``(B, N, C)`` L2-normalised features; ``k`` is detached unless
            ``detach_keys=False`` (then gradients reach both).
        tau: temperature.
        negatives: ``"image"`` (negatives from the same image, CUT) or ``"batch"`` (from the
            whole minibatch, SinCUT).
        reduction: ``"none"`` -> ``(B, N)``, ``"mean"`` or ``"sum"`` -> scalar.

    Example:
        >>> q = torch.nn.functional.normalize(torch.randn(2, 256, 64), dim=-1)
        >>> patch_nce(q, q.roll(1, dims=1)).shape
        torch.Size([])
    """
    _check_common(q, tau, negatives, reduction)
    s, eye = _similarities(q, k, negatives, detach_keys)
    loss = contrastive_loss(s.diagonal(dim1=1, dim2=2) / tau, _upstream_diagonal(s, eye) / tau)
    return reduce(loss, q.shape, reduction)


@full_precision
def weight_nce(
    q: Tensor,
    k: Tensor,
    *,
    tau: float = 0.07,
    weighting: Weighting = "hard",
    beta: float = 0.1,
    Q: float = 1.0,
    detach_weights: bool = False,
    detach_keys: bool = True,
    negatives: Negatives = "image",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""WeightNCE of MoNCE (Zhan et al., CVPR 2022, Eq. 2-3): re-weighted negatives.

    .. math::
        \ell_i = -\log \frac{e^{s_{ii}/\tau}}
                 {e^{s_{ii}/\tau} + Q (n-1) \sum_{j \ne i} w_{ij} e^{s_{ij}/\tau} + e^{-10/\tau}},
        \qquad w_{ij} = \operatorname{softmax}_{j \ne i}(\pm s_{ij} / \beta)

    ``+`` for ``weighting="hard"`` (mass on similar, hard negatives), ``-`` for ``"easy"`` (the
    paper writes ``(1 - s_ij)/beta``; the constant cancels in the softmax). The normaliser runs
    over ``j != i``: Eq. 3 of the paper normalises over all j, which contradicts Eq. 2's
    ``sum_{j != i} w_ij = 1`` — we take that as a typo. With ``Q = 1`` and ``beta -> inf`` the
    weights are ``1 / (n - 1)`` and the loss is exactly :func:`patch_nce`. The weights enter the
    logits as ``s_ij / tau + log(Q (n-1) w_ij)``, which is stable for any beta.

    The paper does not say whether the weights are detached; by default gradients flow through
    them, as through MoNCE's transport plan in the official code (``detach_weights=True`` stops
    them).
    """
    _check_common(q, tau, negatives, reduction)
    _check_weighting(weighting, beta, Q)
    n = check_group_size(q, negatives)
    s, eye = _similarities(q, k, negatives, detach_keys)
    sign = 1.0 if weighting == "hard" else -1.0
    scores = (s.detach() if detach_weights else s) * (sign / beta)
    log_w = torch.log_softmax(scores.masked_fill(eye, float("-inf")), dim=-1)
    weighted = _upstream_diagonal(s + tau * (log_w + math.log(Q * (n - 1))), eye)
    loss = contrastive_loss(s.diagonal(dim1=1, dim2=2) / tau, weighted / tau)
    return reduce(loss, q.shape, reduction)


@full_precision
def put(
    q: Tensor,
    k: Tensor,
    *,
    tau: float = 0.07,
    k_neg: int = 5,
    selection: Selection = "hardest",
    detach_keys: bool = True,
    negatives: Negatives = "image",
    generator: torch.Generator | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""PatchNCE with pruned negatives: PUT (Lin et al., ACM MM 2022).

    Each anchor keeps only ``k_neg`` of its ``n - 1`` negatives:

    .. math::
        \ell_i = -\log \frac{e^{s_{ii}/\tau}}{e^{s_{ii}/\tau} + \sum_{j \in K_i} e^{s_{ij}/\tau}}

    ``selection``:
        * ``"hardest"``: K_i = the k_neg most similar negatives of anchor i (the paper's ranking;
          ``k_neg = n - 1`` gives PatchNCE).
        * ``"easiest"``: the k_neg least similar ones; ``"random"``: k_neg random ones (ablations;
          pass ``generator`` for reproducibility).
        * ``"official"``: the official PUT code. It builds upstream's negative matrix (diagonal
          -10), flattens it to ``(G*n, n)`` and sorts every *column* in descending order across
          all anchors of all images (``sort(dim=0)``), then keeps the first k_neg columns. Row r
          then holds the r-th largest similarity of k_neg fixed (random, because patch ids are a
          random permutation) keys over all anchors — unrelated to anchor r, mixing images when
          B > 1, and the last G anchors only get -10 entries. This looks like a bug (a per-anchor
          ranking is ``sort(dim=1)``); it is kept only to reproduce upstream numbers.

    ``k_neg`` must be in ``[1, n - 1]``: upstream's default of 0 silently zeroes the loss.
    """
    _check_common(q, tau, negatives, reduction)
    check_choice("selection", selection, SELECTIONS)
    n = check_group_size(q, negatives)
    check_int("k_neg", k_neg, low=1, high=n - 1)
    s, eye = _similarities(q, k, negatives, detach_keys)
    positive = s.diagonal(dim1=1, dim2=2)  # (G, n)
    if selection == "official":
        # (G*n, n): the column sort runs over every anchor of every group.
        columns = _upstream_diagonal(s, eye).reshape(-1, n).sort(dim=0, descending=True).values
        kept = columns[:, :k_neg].reshape(s.shape[0], n, k_neg)
    else:
        if selection == "random":
            scores = torch.rand(s.shape, generator=generator, device=s.device, dtype=s.dtype)
        else:
            scores = s.detach() if selection == "hardest" else -s.detach()
        index = scores.masked_fill(eye, float("-inf")).topk(k_neg, dim=-1).indices
        kept = s.gather(-1, index)  # (G, n, k_neg)
    loss = contrastive_loss(positive / tau, kept / tau)
    return reduce(loss, q.shape, reduction)


def _upstream_diagonal(s: Tensor, eye: Tensor) -> Tensor:
    """Upstream keeps the positive pair in the negative matrix with its similarity set to -10."""
    return s.masked_fill(eye, DIAGONAL_SIMILARITY)


def _check_common(q: Tensor, tau: float, negatives: str, reduction: str) -> None:
    check_positive("tau", tau)
    check_choice("negatives", negatives, NEGATIVES)
    check_choice("reduction", reduction, REDUCTIONS)
    check_group_size(q, negatives)  # type: ignore[arg-type]


def _check_weighting(weighting: str, beta: float, Q: float) -> None:
    check_choice("weighting", weighting, WEIGHTINGS)
    check_positive("beta", beta)
    check_positive("Q", Q)


class PatchNCELoss(nn.Module):
    """Module form of :func:`patch_nce`; it only stores (validated) hyper-parameters.

    Subclasses set ``fn`` and add their options; ``forward`` applies ``fn`` with the stored
    reduction and ``per_anchor`` with ``reduction="none"`` (``(B, N)``).
    """

    fn = staticmethod(patch_nce)

    def __init__(
        self,
        *,
        tau: float = 0.07,
        negatives: Negatives = "image",
        detach_keys: bool = True,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        check_positive("tau", tau)
        check_choice("negatives", negatives, NEGATIVES)
        check_choice("reduction", reduction, REDUCTIONS)
        self.reduction = reduction
        self.options: dict = {"tau": tau, "negatives": negatives, "detach_keys": detach_keys}

    def forward(self, q: Tensor, k: Tensor) -> Tensor:
        return self.fn(q, k, **self.options, reduction=self.reduction)

    def per_anchor(self, q: Tensor, k: Tensor) -> Tensor:
        return self.fn(q, k, **self.options, reduction="none")

    @property
    def stackable(self) -> bool:
        """Whether images are independent problems, so layers of equal shape can be stacked
        along the batch dimension and computed in one call (see ``multilayer_loss``)."""
        return self.options["negatives"] == "image"

    def extra_repr(self) -> str:
        options = {**self.options, "reduction": self.reduction}
        return ", ".join(f"{key}={value!r}" for key, value in options.items() if key != "generator")


class WeightNCELoss(PatchNCELoss):
    """Module form of :func:`weight_nce`."""

    fn = staticmethod(weight_nce)

    def __init__(
        self,
        *,
        tau: float = 0.07,
        weighting: Weighting = "hard",
        beta: float = 0.1,
        Q: float = 1.0,
        detach_weights: bool = False,
        negatives: Negatives = "image",
        detach_keys: bool = True,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__(tau=tau, negatives=negatives, detach_keys=detach_keys, reduction=reduction)
        _check_weighting(weighting, beta, Q)
        self.options.update(weighting=weighting, beta=beta, Q=Q, detach_weights=detach_weights)


class PUTLoss(PatchNCELoss):
    """Module form of :func:`put`. ``generator`` seeds the ``"random"`` selection."""

    fn = staticmethod(put)

    def __init__(
        self,
        *,
        tau: float = 0.07,
        k_neg: int = 5,
        selection: Selection = "hardest",
        negatives: Negatives = "image",
        generator: torch.Generator | None = None,
        detach_keys: bool = True,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__(tau=tau, negatives=negatives, detach_keys=detach_keys, reduction=reduction)
        check_int("k_neg", k_neg, low=1)
        check_choice("selection", selection, SELECTIONS)
        self.options.update(k_neg=k_neg, selection=selection, generator=generator)

    @property
    def stackable(self) -> bool:
        # the official column sort runs across every anchor of the call
        return super().stackable and self.options["selection"] != "official"
