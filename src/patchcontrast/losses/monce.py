"""MoNCE: negatives re-weighted by an optimal-transport plan (Zhan et al., CVPR 2022, Eq. 4-6)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from ._common import (
    DIAGONAL_SIMILARITY,
    Negatives,
    Reduction,
    Weighting,
    check_choice,
    check_group_size,
    check_int,
    check_positive,
    contrastive_loss,
    full_precision,
    reduce,
)
from .nce import PatchNCELoss, _check_common, _check_weighting, _similarities, _upstream_diagonal
from .sinkhorn import solve

Diagonal = Literal["upstream", "exclude"]
DIAGONALS = ("upstream", "exclude")

# Default early-stopping tolerance on the plan's row sums, per compute dtype (see monce).
AUTO_TOL = {torch.float32: 1e-5, torch.float64: 1e-8}

# Upstream adds this floor to the weights, so negatives with zero transport mass keep
# log-weight -18.4 instead of -inf.
WEIGHT_FLOOR = 1e-8


def monce_cost(s: Tensor, *, weighting: Weighting, diagonal: Diagonal) -> Tensor:
    """Transport cost of MoNCE from similarities ``s`` ``(G, n, n)``.

    The official code builds the Gibbs kernel ``exp(M / beta)`` with ``M = s`` ("hard": mass goes
    to similar, hard negatives) or ``M = 1 - s`` ("easy"), and ``M_ii = -10``. In the standard
    convention ``K = exp(-C / beta)`` that is ``C = -s`` resp. ``C = s - 1`` with ``C_ii = 10``
    (``diagonal="upstream"``) or ``C_ii = +inf`` (``"exclude"``: the paper's ``C_ii = inf``,
    exactly zero mass on the positive pair).
    """
    cost = -s if weighting == "hard" else s - 1.0
    eye = torch.eye(s.shape[-1], dtype=torch.bool, device=s.device)
    fill = -DIAGONAL_SIMILARITY if diagonal == "upstream" else math.inf
    return cost.masked_fill(eye, fill)


@full_precision
def monce(
    q: Tensor,
    k: Tensor,
    *,
    tau: float = 0.07,
    weighting: Weighting = "hard",
    beta: float = 0.1,
    Q: float = 1.0,
    iters: int = 50,
    tol: float | Literal["auto"] | None = "auto",
    grad_through_plan: bool = True,
    diagonal: Diagonal = "upstream",
    detach_keys: bool = True,
    negatives: Negatives = "image",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""MoNCE loss: WeightNCE whose weights are an entropic OT plan over all anchors of a group.

    .. math::
        \ell_i = -\log \frac{e^{s_{ii}/\tau}}
                 {e^{s_{ii}/\tau} + \sum_{j \ne i} f_{ij} e^{s_{ij}/\tau} + e^{-10/\tau}},
        \qquad f = Q (n-1) T + 10^{-8}

    where ``T`` is the Sinkhorn plan (unit marginals, ``T 1 = 1``, ``T^T 1 = 1``) for the cost of
    :func:`monce_cost` at regularisation ``beta``. The weights enter as ``s_ij + tau log f_ij``.

    With the defaults this is the official MoNCE-CUT loss (up to 50 iterations, upstream
    diagonal, gradient through every Sinkhorn iteration into ``q``), except that our solver is
    stable for any beta (the official one returns NaN in float32 at beta = 0.01), that ``n`` is
    the actual group size where upstream uses the ``num_patches`` option (equal in the standard
    setting), and that iterations stop once the plan has converged (``tol="auto"``): further
    iterations would change values and gradients by less than ~1e-7 relative (float64), well
    inside the 1e-5 parity our tests demand; unconverged problems (small beta) still run all 50.

    Args:
        q, k: ``(B, N, C)`` L2-normalised features; ``k`` is detached (also inside the plan)
            unless ``detach_keys=False``.
        weighting: ``"hard"`` (unpaired, paper default) or ``"easy"`` (paired/SPADE).
        beta: Sinkhorn regularisation (official option ``--eps``; paper default 0.1).
        Q: total weight of the negatives relative to the ``n - 1`` of PatchNCE.
        iters: maximum number of Sinkhorn iterations (the official code always runs 50).
        tol: stop once every row sum of the plan is within ``tol`` of 1 (columns are exact).
            ``"auto"``: 1e-8 in float64, 1e-5 in float32 (about the float32 rounding level of
            the row sums); ``None``: always run ``iters`` iterations, as upstream.
        grad_through_plan: ``False`` detaches the plan (cheaper; not the official gradient).
        diagonal: ``"upstream"`` (kernel ``exp(-10 / beta)`` on the positive pair) or ``"exclude"``.
    """
    _check_common(q, tau, negatives, reduction)
    _check_weighting(weighting, beta, Q)
    _check_solver(iters, tol, diagonal)
    n = check_group_size(q, negatives)
    s, eye = _similarities(q, k, negatives, detach_keys)
    plan = _plan(
        s if grad_through_plan else s.detach(),
        weighting=weighting,
        diagonal=diagonal,
        eps=beta,
        iters=iters,
        tol=tol,
    )
    log_f = torch.log(plan * (Q * (n - 1)) + WEIGHT_FLOOR)
    weighted = _upstream_diagonal(s + tau * log_f, eye)
    loss = contrastive_loss(s.diagonal(dim1=1, dim2=2) / tau, weighted / tau)
    return reduce(loss, q.shape, reduction)


def _plan(
    s: Tensor,
    *,
    weighting: Weighting,
    diagonal: Diagonal,
    eps: float,
    iters: int,
    tol: float | Literal["auto"] | None,
) -> Tensor:
    """Sinkhorn plan ``(G, n, n)`` with unit marginals for the MoNCE cost of similarities
    ``s`` ``(G, n, n)``; ``tol="auto"`` picks :data:`AUTO_TOL` for the dtype."""
    if tol == "auto":
        tol = AUTO_TOL[s.dtype]
    cost = monce_cost(s, weighting=weighting, diagonal=diagonal)
    ones = torch.ones(s.shape[:2], dtype=s.dtype, device=s.device)  # unit marginals, (G, n)
    return solve(cost, eps=float(eps), a=ones, b=ones, iters=iters, tol=tol)


def _check_solver(iters: object, tol: object, diagonal: object) -> None:
    """Checks of monce's Sinkhorn options, shared by the function and the module."""
    check_int("iters", iters, low=1)
    if tol is not None and tol != "auto":
        check_positive("tol", tol)  # type: ignore[arg-type]
    check_choice("diagonal", diagonal, DIAGONALS)


class MoNCELoss(PatchNCELoss):
    """Module form of :func:`monce`."""

    fn = staticmethod(monce)

    def __init__(
        self,
        *,
        tau: float = 0.07,
        weighting: Weighting = "hard",
        beta: float = 0.1,
        Q: float = 1.0,
        iters: int = 50,
        tol: float | Literal["auto"] | None = "auto",
        grad_through_plan: bool = True,
        diagonal: Diagonal = "upstream",
        negatives: Negatives = "image",
        detach_keys: bool = True,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__(tau=tau, negatives=negatives, detach_keys=detach_keys, reduction=reduction)
        _check_weighting(weighting, beta, Q)
        _check_solver(iters, tol, diagonal)
        self.options.update(
            weighting=weighting,
            beta=beta,
            Q=Q,
            iters=iters,
            tol=tol,
            grad_through_plan=grad_through_plan,
            diagonal=diagonal,
        )


@full_precision
def monce_spade_official(
    q: Tensor,
    k: Tensor,
    *,
    tau: float = 0.07,
    eps: float = 1.0,
    ot_weight: float = 128.0,
    iters: int = 50,
    tol: float | Literal["auto"] | None = "auto",
    negatives: Negatives = "image",
    detach_keys: bool = True,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""The released MoNCE-SPADE loss of the last VGG layer (docs/design.md §3.4, "CoNCE").

    Not the paper's formula: a 'hard' kernel ``exp(s / eps)`` (eps hard-coded to 1 upstream,
    although the paper uses easy weighting for paired tasks), weights ``f = ot_weight T + 1e-8``
    without the ``(n - 1) Q`` decomposition (``ot_weight`` ~ 255 Q; the training scripts use
    128), and a modified positive logit:

    .. math::
        \ell_i = -\log \frac{e^{s_{ii}/\tau} \max_j f_{ij}}
                 {e^{s_{ii}/\tau} \max_j f_{ij} + \sum_{j \ne i} f_{ij} e^{s_{ij}/\tau}
                  + e^{-10/\tau}}

    i.e. ``s_ii + tau log max_j f_ij`` as positive logit. Gradients flow through the plan, as
    upstream. Offered to reproduce the released code; :func:`monce` is the paper's loss.
    """
    _check_common(q, tau, negatives, reduction)
    check_positive("eps", eps)
    check_positive("ot_weight", ot_weight)
    _check_solver(iters, tol, "upstream")
    s, eye = _similarities(q, k, negatives, detach_keys)
    plan = _plan(s, weighting="hard", diagonal="upstream", eps=eps, iters=iters, tol=tol)
    log_f = torch.log(plan * ot_weight + WEIGHT_FLOOR)
    positive = s.diagonal(dim1=1, dim2=2) + tau * log_f.amax(-1)  # (G, n)
    weighted = _upstream_diagonal(s + tau * log_f, eye)
    loss = contrastive_loss(positive / tau, weighted / tau)
    return reduce(loss, q.shape, reduction)


class MoNCESpadeOfficialLoss(PatchNCELoss):
    """Module form of :func:`monce_spade_official`."""

    fn = staticmethod(monce_spade_official)

    def __init__(
        self,
        *,
        tau: float = 0.07,
        eps: float = 1.0,
        ot_weight: float = 128.0,
        iters: int = 50,
        tol: float | Literal["auto"] | None = "auto",
        negatives: Negatives = "image",
        detach_keys: bool = True,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__(tau=tau, negatives=negatives, detach_keys=detach_keys, reduction=reduction)
        check_positive("eps", eps)
        check_positive("ot_weight", ot_weight)
        _check_solver(iters, tol, "upstream")
        self.options.update(eps=eps, ot_weight=ot_weight, iters=iters, tol=tol)
