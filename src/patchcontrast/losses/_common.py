"""Input checks, patch grouping and reductions shared by the contrastive losses.

Shapes: features are ``(B, N, C)`` (B images, N sampled patches, C channels). A *group* is the set
of patches whose keys serve as one anchor's negatives: one group per image (``negatives="image"``,
CUT) or a single group holding the whole minibatch (``negatives="batch"``, SinCUT).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Literal, TypeVar

import torch
from torch import Tensor

Reduction = Literal["none", "mean", "sum"]
Negatives = Literal["image", "batch"]
Weighting = Literal["hard", "easy"]

REDUCTIONS = ("none", "mean", "sum")
NEGATIVES = ("image", "batch")
WEIGHTINGS = ("hard", "easy")

# Upstream CUT keeps the positive pair inside the negative matrix but overwrites its similarity
# with this constant before dividing by tau (exp(-10 / 0.07) ~ 1e-62, numerically zero).
DIAGONAL_SIMILARITY = -10.0


def check_choice(name: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a positive number; got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")


def check_int(name: str, value: object, *, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}; got {value}")


def check_features(q: Tensor, k: Tensor) -> None:
    """Validate a (query, key) pair of ``(B, N, C)`` patch features."""
    for name, x in (("q", q), ("k", k)):
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() != 3:
            raise ValueError(
                f"{name} must have shape (B, N, C) (batch, patches, channels); "
                f"got {x.dim()} dimensions {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor; got {x.dtype}")
    if q.shape != k.shape:
        raise ValueError(
            f"q and k must have the same shape; got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    if q.shape[0] < 1 or q.shape[2] < 1:
        raise ValueError(f"q and k must be non-empty; got shape {tuple(q.shape)}")
    for name, x in (("q", q), ("k", k)):
        # A sum is one cheap reduction and propagates NaN/inf; only when it is not finite (or a
        # huge finite input overflowed it) is the exact elementwise check worth its cost.
        if not bool(torch.isfinite(x.detach().sum())) and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or infinite values")


def group(x: Tensor, negatives: Negatives) -> Tensor:
    """``(B, N, C)`` -> ``(G, n, C)``: one group per image, or the whole batch as one group."""
    return x if negatives == "image" else x.reshape(1, -1, x.shape[-1])


def check_group_size(q: Tensor, negatives: Negatives) -> int:
    """Number of patches per group; an anchor needs at least one negative."""
    n = q.shape[1] if negatives == "image" else q.shape[0] * q.shape[1]
    if n < 2:
        raise ValueError(
            f"need at least 2 patches per group to have a negative; got {n} "
            f"(q shape {tuple(q.shape)}, negatives={negatives!r})"
        )
    return n


def reduce(loss: Tensor, shape: torch.Size, reduction: Reduction) -> Tensor:
    """Per-anchor losses ``(G, n)`` -> ``(B, N)``, then reduced."""
    loss = loss.reshape(shape[0], shape[1])
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def contrastive_loss(positive: Tensor, negatives: Tensor) -> Tensor:
    """InfoNCE cross-entropy with the positive as target: ``-log(e^p / (e^p + sum_j e^{n_j}))``.

    positive: ``(G, n)`` logits; negatives: ``(G, n, m)`` logits of each anchor's negatives (for
    upstream parity, including the masked diagonal at ``-10 / tau``). Returns ``(G, n)``.
    Computed as ``softplus(logsumexp(negatives) - positive)``, which equals upstream's
    cross-entropy over ``[positive, negatives]`` but keeps full relative precision when the
    positive dominates and the loss is tiny (``log(1 + x)`` with x ~ 1e-6 is all rounding in
    float32 when written as ``logsumexp - positive``).
    """
    x = torch.logsumexp(negatives, dim=-1) - positive
    # softplus(x) = logaddexp(x, 0); F.softplus returns x itself above 20 (error up to 2e-9).
    return torch.logaddexp(x, torch.zeros((), dtype=x.dtype, device=x.device))


Fn = TypeVar("Fn", bound=Callable[..., Tensor])


def full_precision(fn: Fn) -> Fn:
    """Run a loss in at least float32 with autocast disabled.

    Under ``torch.autocast`` the logits (exp of s / 0.07) and the Sinkhorn kernel overflow in
    float16 and lose too much precision in bfloat16, so half inputs are promoted and autocast is
    switched off inside the loss; float64 inputs stay float64.
    """

    @functools.wraps(fn)
    def wrapper(q: Tensor, k: Tensor, /, **kwargs):
        check_features(q, k)
        dtype = torch.promote_types(q.dtype, torch.float32)
        with torch.autocast(device_type=q.device.type, enabled=False):
            return fn(q.to(dtype), k.to(dtype), **kwargs)

    return wrapper  # type: ignore[return-value]
