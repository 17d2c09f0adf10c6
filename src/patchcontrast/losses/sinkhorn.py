"""Batched entropic optimal transport (Sinkhorn-Knopp) that is stable for any ``eps``.

The official MoNCE code iterates ``u = a / (K v)``, ``v = b / (K^T u)`` on ``K = exp(-C / eps)``
directly: ``exp(1 / eps)`` overflows float32 at ``eps ~ 0.011`` (NaN at the paper's 0.01) and
float16 already near 0.1. The classic fix, iterating on log-potentials with logsumexp, costs an
``exp`` of the whole matrix per half-step (~20x slower than a matrix-vector product).

We use log-domain *absorption* instead (Schmitzer, "Stabilized sparse scaling algorithms for
entropy regularized transport problems", SIAM J. Sci. Comput. 2019): potentials ``alpha, beta`` are
kept in the log domain and folded into a working kernel ``K~ = exp(-C/eps + alpha_i + beta_j)``,
on which the scalings ``u~, v~`` are iterated with cheap matrix-vector products. When a scaling
leaves ``[1/threshold, threshold]`` it is absorbed into the potentials and ``K~`` is rebuilt. The
first iteration runs entirely in the log domain, so ``K~`` starts as a valid plan (entries <= its
marginals) and can never overflow. The iterates equal the plain algorithm's exactly, up to
rounding, so the official (unconverged, 50-iteration) plan is reproduced.

Gradients flow through every iteration (like autograd through the unrolled official loop) with a
hand-written reverse pass that stores only the scaling vectors: one ``n x m`` kernel per epoch
instead of one matrix per half-step.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._common import check_int, check_positive

# Scalings are absorbed into the potentials once they leave [1/t, t]. Each half-step changes a
# scaling by at most a factor ~n (a row or column sum of a valid plan), so the margin to the
# float range stays huge while absorptions (one exp of the matrix each) stay rare.
_THRESHOLD = {torch.float32: 1e6, torch.float64: 1e30}
# Column sums of the first half-step plan above this are computed to full relative precision.
_SAFE_SUM = {torch.float32: 1e-20, torch.float64: 1e-200}


def sinkhorn(
    cost: Tensor,
    *,
    eps: float,
    a: Tensor | None = None,
    b: Tensor | None = None,
    iters: int = 50,
    tol: float | None = None,
) -> Tensor:
    r"""Entropic OT plan ``T = diag(u) K diag(v)`` with ``K = exp(-cost / eps)``, batched.

    Sinkhorn-Knopp (Cuturi, NeurIPS 2013) with the update order of the official MoNCE code:
    ``iters`` times ``u = a / (K v)`` then ``v = b / (K^T u)``, starting from ``v = 1``. Column
    sums of the returned plan are therefore exact and row sums approximate.

    Args:
        cost: ``(G, n, m)`` or ``(n, m)`` costs; ``+inf`` entries get exactly zero mass.
        eps: entropic regularisation (MoNCE's beta), > 0; any value works, see module docs.
        a, b: row / column marginals, ``(G, n)``/``(n,)`` and ``(G, m)``/``(m,)``, positive, with
            equal totals. Default: ``a = m/n``, ``b = 1`` (unit marginals for square problems,
            total mass m, as MoNCE's Eq. 4-6). Treated as constants (no gradient).
        iters: number of iterations (upper bound when ``tol`` is given).
        tol: stop early once ``max_i |T 1 - a|_i <= tol`` (checked before each u-update).

    Returns:
        The plan, same shape and dtype as ``cost`` (float32 for half inputs). Differentiable
        w.r.t. ``cost`` through all performed iterations.
    """
    if not isinstance(cost, Tensor) or cost.dim() not in (2, 3) or not cost.is_floating_point():
        raise ValueError("cost must be a floating-point tensor of shape (G, n, m) or (n, m)")
    check_positive("eps", eps)
    check_int("iters", iters, low=1)
    if tol is not None:
        check_positive("tol", tol)
    squeeze = cost.dim() == 2
    dtype = torch.promote_types(cost.dtype, torch.float32)
    c = (cost.unsqueeze(0) if squeeze else cost).to(dtype)
    lo, hi = torch.aminmax(c.detach())  # one pass; NaN propagates
    if bool(torch.isnan(lo)) or float(lo) == float("-inf"):
        raise ValueError("cost contains NaN or -inf values")
    if float(hi) == float("inf"):
        finite = torch.isfinite(c)
        if not (finite.any(2).all() and finite.any(1).all()):
            raise ValueError("cost has a row or column that is +inf everywhere: no feasible plan")
    g, n, m = c.shape
    a = _marginal("a", a, (g, n), torch.full((g, n), m / n, dtype=dtype, device=c.device))
    b = _marginal("b", b, (g, m), torch.ones((g, m), dtype=dtype, device=c.device))
    if not torch.allclose(a.sum(1), b.sum(1), rtol=1e-5, atol=0):
        raise ValueError("marginals a and b must have equal totals")
    plan = solve(c, eps=float(eps), a=a, b=b, iters=iters, tol=tol)
    return plan.squeeze(0) if squeeze else plan


def solve(
    cost: Tensor, *, eps: float, a: Tensor, b: Tensor, iters: int, tol: float | None
) -> Tensor:
    """:func:`sinkhorn` without input checks, for callers that build valid problems.

    ``cost`` ``(G, n, m)`` float32/64, ``a`` ``(G, n)``, ``b`` ``(G, m)``.
    """
    with torch.autocast(device_type=cost.device.type, enabled=False):
        return _Sinkhorn.apply(cost, eps, a, b, iters, tol)


def _marginal(name: str, x: Tensor | None, shape: tuple[int, int], default: Tensor) -> Tensor:
    if x is None:
        return default
    x = torch.as_tensor(x, dtype=default.dtype, device=default.device).detach()
    try:
        x = x.expand(shape)
    except RuntimeError:
        raise ValueError(
            f"{name} must have shape {shape} or ({shape[1]},); got {tuple(x.shape)}"
        ) from None
    if not (torch.isfinite(x).all() and (x > 0).all()):
        raise ValueError(f"{name} must be positive and finite")
    return x


class _Sinkhorn(torch.autograd.Function):
    """Stabilised Sinkhorn with an exact reverse pass through all iterations.

    Notation: ``A = -C / eps`` (log-kernel), ``x_t = log u_t``, ``y_t = log v_t``. Iteration t:
    ``x_t = log a - LSE_j(A + y_{t-1})``, ``y_t = log b - LSE_i(A + x_t)``. With the half-step
    plans ``P_t = exp(A + x_t + y_{t-1})`` (rows sum to a) and ``R_t = exp(A + x_t + y_t)``
    (columns sum to b): ``dx_t/dA = dx_t/dy_{t-1} = -P_t / a`` and
    ``dy_t/dA = dy_t/dx_t = -R_t / b``. Within an epoch ``P_t = u~_t K~ v~_{t-1}`` and
    ``R_t = u~_t K~ v~_t``, so every matrix adjoint is ``K~ * (sum of outer products)``: one
    batched matmul per epoch.
    """

    @staticmethod
    def forward(
        ctx, cost: Tensor, eps: float, a: Tensor, b: Tensor, iters: int, tol: float | None
    ) -> Tensor:
        # Scalings and marginals are row vectors: (G, 1, n) and (G, 1, m). Products are written
        # row-vector @ matrix because batched matrix @ column-vector is ~10x slower on CPU.
        a_row, b_row = a.unsqueeze(1), b.unsqueeze(1)
        log_k = cost / -eps  # (G, n, m); -inf where the cost is +inf
        # Iteration 1 in the log domain. P_1 = exp(A + x_1): rows sum to a.
        row_max = log_k.amax(2, keepdim=True)  # (G, n, 1)
        p1 = torch.exp(log_k - row_max)
        row_sum = p1.sum(2, keepdim=True)
        alpha = a_row.transpose(1, 2).log() - row_max - row_sum.log()  # x_1 as (G, n, 1)
        p1.mul_(a_row.transpose(1, 2) / row_sum)
        col_sum = p1.sum(1, keepdim=True)  # (G, 1, m)
        if float(col_sum.amin()) > _SAFE_SUM.get(cost.dtype, 1e-20):
            # No column of P_1 underflowed: every column keeps an entry >= col_sum / n, a
            # normal float, and what was flushed to zero is negligible relative to it.
            kernel = p1 * (b_row / col_sum)
            beta = (b_row / col_sum).log()  # y_1 = log b - LSE_i(A + x_1)
        else:  # tiny eps: redo the column half-step in the log domain (one more exp pass)
            shifted = log_k + alpha
            col_max = shifted.amax(1, keepdim=True)
            kernel = torch.exp(shifted - col_max)
            col_sum = kernel.sum(1, keepdim=True)
            beta = b_row.log() - col_max - col_sum.log()
            kernel.mul_(b_row / col_sum)
            del shifted

        threshold = _THRESHOLD.get(cost.dtype, 1e6)
        ones_u, ones_v = torch.ones_like(a_row), torch.ones_like(b_row)
        u, v = ones_u, ones_v
        kernels = [kernel]
        kernel_t = kernel.transpose(1, 2)
        kv = torch.bmm(v, kernel_t)  # (K~ v~)^T, (G, 1, n): the next u-update's denominator
        # steps[t-1] = (epoch, u~_t, v~_t) in that epoch's scale; iteration 1 is (0, 1, 1).
        steps: list[tuple[int, Tensor, Tensor]] = [(0, u, v)]
        for t in range(2, iters + 1):
            if tol is not None and float((u * kv - a_row).abs().amax()) <= tol:
                break  # row sums u~ * (K~ v~) already match a: converged
            u = a_row / kv
            v = b_row / torch.bmm(u, kernel)  # (G, 1, m)
            steps.append((len(kernels) - 1, u, v))
            # Only v~ is watched: while v~ stays in range, u~ = a / (K~ v~) is bounded by it and
            # by the row sums of K~, a valid plan when it was built (see module docs).
            lo, hi = torch.aminmax(v)
            if float(hi) > threshold or float(lo) < 1.0 / threshold:
                alpha = alpha + u.transpose(1, 2).log()
                beta = beta + v.log()
                kernel = torch.exp(log_k + alpha + beta)
                kernel_t = kernel.transpose(1, 2)
                kernels.append(kernel)
                u, v = ones_u, ones_v
            if t < iters:
                kv = torch.bmm(v, kernel_t)
        plan = u.transpose(1, 2) * kernel * v
        # Everything goes through save_for_backward so saved-tensor hooks (offloading, memory
        # accounting) see it; the step structure (epoch of each iteration) is plain metadata.
        ctx.eps, ctx.epochs = eps, [epoch for epoch, _, _ in steps]
        ctx.n_kernels = len(kernels)
        ctx.save_for_backward(
            plan, p1, a_row, b_row, *kernels, *[x for _, u_t, v_t in steps for x in (u_t, v_t)]
        )
        return plan

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_plan: Tensor):
        plan, p1, a_row, b_row, *rest = ctx.saved_tensors
        kernels, vectors = rest[: ctx.n_kernels], rest[ctx.n_kernels :]
        steps = list(zip(ctx.epochs, vectors[0::2], vectors[1::2]))
        grad_log_plan = grad_plan * plan  # d/d(log T) = d/d(A + x_T + y_T)
        grad_log_k = grad_log_plan.clone()
        x_bar = grad_log_plan.sum(2).unsqueeze(1)  # (G, 1, n)
        y_bar = grad_log_plan.sum(1, keepdim=True)  # (G, 1, m)
        # Outer-product factors per epoch: grad_log_k -= K~_e * (left_e^T @ right_e).
        left: list[list[Tensor]] = [[] for _ in kernels]
        right: list[list[Tensor]] = [[] for _ in kernels]
        for t in range(len(steps) - 1, 0, -1):
            epoch, u, v = steps[t]
            prev_epoch, _, prev_v = steps[t - 1]
            if prev_epoch != epoch:  # the epoch started after iteration t-1: v~_{t-1} = 1
                prev_v = torch.ones_like(v)
            kernel = kernels[epoch]
            # through y_t = log b - LSE_i(A + x_t)
            vc = v * y_bar / b_row
            left[epoch].append(u)
            right[epoch].append(vc)
            x_bar = x_bar - u * torch.bmm(vc, kernel.transpose(1, 2))
            # through x_t = log a - LSE_j(A + y_{t-1}); x_{t-1} only feeds y_{t-1}
            ud = u * x_bar / a_row
            left[epoch].append(ud)
            right[epoch].append(prev_v)
            y_bar = -prev_v * torch.bmm(ud, kernel)
            x_bar = torch.zeros_like(x_bar)
        # Iteration 1: R_1 = K~_0 (unit scalings), P_1 = p1.
        c = y_bar / b_row
        left[0].append(torch.ones_like(x_bar))
        right[0].append(c)
        x_bar = x_bar - torch.bmm(c, kernels[0].transpose(1, 2))
        grad_log_k -= p1 * (x_bar / a_row).transpose(1, 2)
        for kernel, ls, rs in zip(kernels, left, right):
            if ls:
                outer = torch.bmm(torch.cat(ls, dim=1).transpose(1, 2), torch.cat(rs, dim=1))
                grad_log_k -= kernel * outer
        return grad_log_k / -ctx.eps, None, None, None, None, None
