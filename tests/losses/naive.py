"""Independent reference oracles for the contrastive losses (float64, deliberately simple).

Written from the formulas in the test brief and docs/design.md §3.1, §3.2, §3.3, §3.5 only; no
code from ``patchcontrast`` or from any upstream repository is used here.

Two families of oracles:

* ``naive_*``: Python loops over anchors, one scalar formula per anchor.
* ``official_*``: vectorised torch re-implementations of the upstream algorithms as docs/design.md
  describes them (−10 diagonals, plain-domain Sinkhorn with an exp kernel, 50 unrolled
  iterations, autograd for gradients, keys detached).

All features are ``(B, N, C)``; "groups" are the images (``negatives="image"``) or one group of
all ``B*N`` patches in image-major order (``negatives="batch"``).  Per-anchor outputs are
``(B, N)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DIAG = -10.0


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def groups(q: torch.Tensor, k: torch.Tensor, negatives: str):
    """Return (qg, kg) shaped (G, n, C) with keys detached."""
    B, N, C = q.shape
    k = k.detach()
    if negatives == "image":
        return q, k
    if negatives == "batch":
        return q.reshape(1, B * N, C), k.reshape(1, B * N, C)
    raise ValueError(negatives)


def reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(reduction)


def _stack_loop(rows, B, N):
    return torch.stack(rows).reshape(B, N)


def _group_loop(q, k, negatives):
    """Yield (S, i) for every anchor in image-major order; S is the anchor's group matrix."""
    qg, kg = groups(q, k, negatives)
    for g in range(qg.shape[0]):
        S = qg[g] @ kg[g].T
        for i in range(S.shape[0]):
            yield S, i


# --------------------------------------------------------------------------------------------
# naive loop oracles
# --------------------------------------------------------------------------------------------
def naive_patch_nce(q, k, *, tau=0.07, negatives="image", reduction="none"):
    B, N, _ = q.shape
    out = []
    for S, i in _group_loop(q, k, negatives):
        n = S.shape[0]
        pos = torch.exp(S[i, i] / tau)
        neg = sum(torch.exp(S[i, j] / tau) for j in range(n) if j != i)
        den = pos + neg + math.exp(DIAG / tau)
        out.append(-torch.log(pos / den))
    return reduce(_stack_loop(out, B, N), reduction)


def naive_weighted_nce_given_f(q, k, f, *, tau=0.07, negatives="image", reduction="none"):
    """loss_i = -log(e^{s_ii/τ} / (e^{s_ii/τ} + Σ_{j≠i} f_ij e^{s_ij/τ} + e^{-10/τ})).

    ``f`` is a (G, n, n) weight matrix (its diagonal is ignored).
    """
    B, N, _ = q.shape
    out = []
    gi = -1
    for S, i in _group_loop(q, k, negatives):
        if i == 0:
            gi += 1
        n = S.shape[0]
        pos = torch.exp(S[i, i] / tau)
        neg = sum(f[gi, i, j] * torch.exp(S[i, j] / tau) for j in range(n) if j != i)
        den = pos + neg + math.exp(DIAG / tau)
        out.append(-torch.log(pos / den))
    return reduce(_stack_loop(out, B, N), reduction)


def naive_weight_nce(
    q, k, *, tau=0.07, weighting="hard", beta=0.1, Q=1.0, negatives="image", reduction="none"
):
    """WeightNCE (docs/design.md §3.2), softmax normaliser over j != i only."""
    B, N, _ = q.shape
    sign = {"hard": 1.0, "easy": -1.0}[weighting]
    out = []
    for S, i in _group_loop(q, k, negatives):
        n = S.shape[0]
        others = [j for j in range(n) if j != i]
        logits = torch.stack([sign * S[i, j] / beta for j in others])
        w = torch.softmax(logits, dim=0)  # softmax over j != i
        pos = torch.exp(S[i, i] / tau)
        neg = sum(w[t] * torch.exp(S[i, j] / tau) for t, j in enumerate(others))
        den = pos + Q * (n - 1) * neg + math.exp(DIAG / tau)
        out.append(-torch.log(pos / den))
    return reduce(_stack_loop(out, B, N), reduction)


def naive_weight_nce_limit(q, k, *, tau=0.07, weighting="hard", Q=1.0, negatives="image"):
    """β → 0 limit of WeightNCE: all weight on the max (hard) / min (easy) similarity."""
    B, N, _ = q.shape
    out = []
    for S, i in _group_loop(q, k, negatives):
        n = S.shape[0]
        vals = torch.stack([S[i, j] for j in range(n) if j != i])
        s = vals.max() if weighting == "hard" else vals.min()
        pos = torch.exp(S[i, i] / tau)
        den = pos + Q * (n - 1) * torch.exp(s / tau) + math.exp(DIAG / tau)
        out.append(-torch.log(pos / den))
    return _stack_loop(out, B, N)


def naive_put(q, k, *, tau=0.07, k_neg=5, selection="hardest", negatives="image", reduction="none"):
    """Per-anchor pruning: keep the k_neg largest ("hardest") or smallest ("easiest") S_ij,
    j != i; CE over [S_ii, kept]/τ, no −10 diagonal term."""
    B, N, _ = q.shape
    out = []
    for S, i in _group_loop(q, k, negatives):
        n = S.shape[0]
        vals = sorted(
            (S[i, j] for j in range(n) if j != i), key=float, reverse=(selection == "hardest")
        )
        kept = vals[:k_neg]
        pos = torch.exp(S[i, i] / tau)
        den = pos + sum(torch.exp(s / tau) for s in kept)
        out.append(-torch.log(pos / den))
    return reduce(_stack_loop(out, B, N), reduction)


def naive_sinkhorn(cost, *, eps, a=None, b=None, iters=50):
    """Plain-loop Sinkhorn on one (n, m) problem (or a (G, n, m) batch, looped over G).

    K = exp(-cost/eps); u = a/(K v); v = b/(K^T u), ``iters`` times; T = diag(u) K diag(v).
    Default marginals a = (m/n)·1_n, b = 1_m.  Differentiable by autograd.
    """
    if cost.dim() == 3:
        G = cost.shape[0]
        plans = []
        for g in range(G):
            ag = None if a is None else (a[g] if a.dim() == 2 else a)
            bg = None if b is None else (b[g] if b.dim() == 2 else b)
            plans.append(naive_sinkhorn(cost[g], eps=eps, a=ag, b=bg, iters=iters))
        return torch.stack(plans)
    n, m = cost.shape
    if a is None:
        a = torch.full((n,), m / n, dtype=cost.dtype)
    if b is None:
        b = torch.ones(m, dtype=cost.dtype)
    K = torch.exp(-cost / eps)
    u = torch.ones(n, dtype=cost.dtype)
    v = torch.ones(m, dtype=cost.dtype)
    for _ in range(iters):
        Kv = torch.stack([sum(K[i, j] * v[j] for j in range(m)) for i in range(n)])
        u = a / Kv
        Ktu = torch.stack([sum(K[i, j] * u[i] for i in range(n)) for j in range(m)])
        v = b / Ktu
    return u[:, None] * K * v[None, :]


def sinkhorn_vec(cost, *, eps, a=None, b=None, iters=50):
    """Vectorised version of :func:`naive_sinkhorn` (same iterates), batched over (G, n, m)."""
    G, n, m = cost.shape
    dt = cost.dtype
    a = torch.full((G, n), m / n, dtype=dt) if a is None else a.expand(G, n).to(dt)
    b = torch.ones((G, m), dtype=dt) if b is None else b.expand(G, m).to(dt)
    K = torch.exp(-cost / eps)
    u = torch.ones((G, n), dtype=dt)
    v = torch.ones((G, m), dtype=dt)
    for _ in range(iters):
        u = a / torch.einsum("gij,gj->gi", K, v)
        v = b / torch.einsum("gij,gi->gj", K, u)
    return u[:, :, None] * K * v[:, None, :]


# --------------------------------------------------------------------------------------------
# "official" vectorised re-implementations (from docs/design.md)
# --------------------------------------------------------------------------------------------
def _neg_matrix(qg, kg):
    """(G, n, n) similarity with the diagonal overwritten by −10 (out of place)."""
    S = torch.bmm(qg, kg.transpose(1, 2))
    eye = torch.eye(S.shape[1], dtype=torch.bool).expand_as(S)
    return S, S.masked_fill(eye, DIAG)


def _ce_target0(logits):
    """Cross-entropy with target class 0, per row."""
    return -torch.log_softmax(logits, dim=-1)[..., 0]


def official_patch_nce(q, k, *, tau=0.07, negatives="image", reduction="none"):
    """CUT PatchNCE (docs/design.md §3.1): logits [l_pos, l_neg(diag −10)] / τ, CE target 0."""
    B, N, C = q.shape
    qg, kg = groups(q, k, negatives)
    l_pos = (qg * kg).sum(-1, keepdim=True)  # (G, n, 1)
    _, l_neg = _neg_matrix(qg, kg)
    logits = torch.cat([l_pos, l_neg], dim=-1) / tau
    return reduce(_ce_target0(logits).reshape(B, N), reduction)


def official_plan(qg, kg, *, weighting="hard", beta=0.1, iters=50, diagonal="upstream"):
    """MoNCE-CUT OT plan (docs/design.md §3.3, steps 1–3): M = S or 1−S, M_ii = −10, K = exp(M/β),
    u = 1/(K v), v = 1/(Kᵀ u) ``iters`` times, T = diag(u) K diag(v)."""
    S = torch.bmm(qg, kg.detach().transpose(1, 2))
    M = S if weighting == "hard" else 1.0 - S
    eye = torch.eye(S.shape[1], dtype=torch.bool).expand_as(S)
    M = M.masked_fill(eye, DIAG)
    K = torch.exp(M / beta)
    if diagonal == "exclude":
        K = K.masked_fill(eye, 0.0)
    G, n, _ = K.shape
    u = torch.ones((G, n), dtype=S.dtype)
    v = torch.ones((G, n), dtype=S.dtype)
    for _ in range(iters):
        u = 1.0 / torch.einsum("gij,gj->gi", K, v)
        v = 1.0 / torch.einsum("gij,gi->gj", K, u)
    return u[:, :, None] * K * v[:, None, :]


def official_monce(
    q,
    k,
    *,
    tau=0.07,
    weighting="hard",
    beta=0.1,
    Q=1.0,
    iters=50,
    grad_through_plan=True,
    diagonal="upstream",
    negatives="image",
    reduction="none",
    return_plan=False,
):
    """MoNCE as the official MoNCE-CUT code computes it (docs/design.md §3.3), with n = actual
    group size."""
    B, N, C = q.shape
    qg, kg = groups(q, k, negatives)
    n = qg.shape[1]
    T = official_plan(qg, kg, weighting=weighting, beta=beta, iters=iters, diagonal=diagonal)
    if not grad_through_plan:
        T = T.detach()
    f = T * (n - 1) * Q + 1e-8
    S, _ = _neg_matrix(qg, kg)
    l_neg = S + tau * torch.log(f)
    eye = torch.eye(n, dtype=torch.bool).expand_as(l_neg)
    l_neg = l_neg.masked_fill(eye, DIAG)
    l_pos = (qg * kg).sum(-1, keepdim=True)
    logits = torch.cat([l_pos, l_neg], dim=-1) / tau
    out = reduce(_ce_target0(logits).reshape(B, N), reduction)
    if return_plan:
        return out, T
    return out


def official_put(q, k, *, tau=0.07, k_neg=5, negatives="image", reduction="none"):
    """PUT's dim-0 sort (docs/design.md §3.5): (G·n)×n negative matrix with −10 diagonals, every
    column sorted
    descending across all anchors, keep the first k_neg columns."""
    B, N, C = q.shape
    qg, kg = groups(q, k, negatives)
    G, n, _ = qg.shape
    l_pos = (qg * kg).sum(-1).reshape(G * n, 1)
    _, l_neg = _neg_matrix(qg, kg)
    l_neg = l_neg.reshape(G * n, n)
    l_neg_sorted, _ = torch.sort(l_neg, dim=0, descending=True)
    logits = torch.cat([l_pos, l_neg_sorted[:, :k_neg]], dim=1) / tau
    return reduce(_ce_target0(logits).reshape(B, N), reduction)


# --------------------------------------------------------------------------------------------
# feature generators
# --------------------------------------------------------------------------------------------
def random_features(B, N, C, *, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, N, C, generator=g, dtype=dtype), dim=-1)
    k = F.normalize(torch.randn(B, N, C, generator=g, dtype=dtype), dim=-1)
    return q, k


def clustered_features(
    B, N, C, *, seed, n_clusters=4, spread=0.15, key_noise=0.1, dtype=torch.float64
):
    """'Realistic' features: patches are noisy copies of a few cluster centres (near-duplicate
    patches), keys are normalised noisy copies of the queries."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(B, n_clusters, C, generator=g, dtype=dtype), dim=-1)
    idx = torch.randint(0, n_clusters, (B, N), generator=g)
    base = torch.gather(centres, 1, idx[..., None].expand(B, N, C))
    q = F.normalize(base + spread * torch.randn(B, N, C, generator=g, dtype=dtype), dim=-1)
    k = F.normalize(q + key_noise * torch.randn(B, N, C, generator=g, dtype=dtype), dim=-1)
    return q, k
