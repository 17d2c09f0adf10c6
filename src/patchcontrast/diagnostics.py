"""Diagnostics of a trained contrastive model: patch-similarity histograms and the MoNCE plan.

MoNCE (Zhan et al., CVPR 2022) motivates re-weighting negatives with a histogram of positive vs.
negative patch similarities per encoder layer (paper Fig. 2, docs/design.md §6.5). Upstream only has
a commented-out block that collects logits with the masked diagonal still inside (filtered by
``> -5``); here the positive pair is excluded from the negatives by index. The transport plan is
the Sinkhorn solution whose rows weight each anchor's negatives (docs/design.md §3.3), computed with
the library's own :func:`monce_cost` and :func:`sinkhorn`.

Shapes: ``q``, ``k`` are ``(B, N, C)`` unit-norm patch features of one encoder tap; ``q`` from
the translation ``G(A)`` (queries), ``k`` from the source ``A`` (keys) at the same locations.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import Tensor
from tqdm import tqdm

from .data import list_images, load_image
from .data.folders import build_transform, parse_size
from .losses import build_loss, monce_cost, sinkhorn
from .losses._common import check_int
from .losses.monce import AUTO_TOL
from .objectives.unpaired import UnpairedObjective
from .pipeline import load_objective

# Images per forward pass in diagnose: keeps the (B, N, N) similarity matrices and the encoder
# activations small at any resolution.
BATCH_SIZE = 4
# Histogram settings of the figure (as the upstream block: 100 bins) on the cosine range.
BINS = 100
RANGE = (-1.0, 1.0)

NO_CONTRAST = "this run has no patch contrast to diagnose"


def patch_similarities(
    objective: UnpairedObjective,
    images: Tensor,
    *,
    num_patches: int | None = None,
    seed: int = 0,
    translations: Tensor | None = None,
) -> dict[int, dict[str, Tensor]]:
    """Cosine similarities of positive and negative patch pairs at every encoder tap.

    For tap l: keys ``k = F(encode(A))`` and queries ``q = F(encode(G(A)))`` at the same sampled
    locations, drawn exactly as the NCE loss draws them (``cfg.per_image_patches``) from a
    generator seeded with ``seed``. Per image b: positives ``q_bi . k_bi``, negatives
    ``q_bi . k_bj`` for ``j != i`` (the diagonal is dropped, not masked to -10 as upstream).
    No temperature; these are the dot products the loss sees (F normalises by ``|x| + 1e-7``,
    so ``q . q`` is 1 only up to ``2e-7 / |x|``), clamped to [-1, 1] against float rounding.

    Args:
        objective: a CUT-family objective with a contrastive head (``objective.F``).
        images: ``(B, C, H, W)`` source images in [-1, 1], H and W multiples of 4.
        num_patches: N per tap (default the run's ``num_patches``; capped at ``H_l * W_l``).
        seed: seed of the patch locations.
        translations: images to take the queries from instead of ``G(images)`` (same shape);
            ``images`` itself gives the reference where every positive is 1.

    Returns:
        ``{layer: {"positive": (B*N,), "negative": (B*N*(N-1),)}}`` on the images' device,
        image-major; negatives of anchor ``(b, i)`` are in ``j`` order.
    """
    generator = torch.Generator().manual_seed(seed)
    samples = _patch_samples(objective, images, num_patches, generator, translations)
    return {layer: _split(q, k) for layer, (q, k) in samples.items()}


def transport_plan(
    objective: UnpairedObjective,
    image: Tensor,
    *,
    layer: int | None = None,
    num_patches: int = 64,
    seed: int = 0,
    **monce_options,
) -> Tensor:
    """``(N, N)`` MoNCE transport plan ``T`` for one image at one encoder tap.

    ``T`` is the Sinkhorn plan with unit marginals (``T 1 = 1``, ``T^T 1 = 1``) for the cost
    :func:`monce_cost` of ``S = q k^T``; MoNCE weights anchor i's negatives by
    ``Q (N-1) T_ij`` (Eq. 2, 4-6). Patches are sampled as in :func:`patch_similarities` with the
    same ``seed``. Options (``weighting``, ``beta``, ``iters``, ``tol``, ``diagonal``) are the
    objective's own when its loss is MoNCE, otherwise MoNCE's defaults; keywords override them.

    Args:
        image: ``(C, H, W)`` or ``(1, C, H, W)`` source image in [-1, 1].
        layer: encoder tap (one of ``cfg.nce_layers``; default the last).
        num_patches: N (capped at the tap's ``H_l * W_l``).
    """
    options, _ = plan_options(objective, **monce_options)
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be (C, H, W) or (1, C, H, W); got {tuple(image.shape)}")
    layers = tuple(objective.cfg.nce_layers)
    layer = layers[-1] if layer is None else layer
    if layer not in layers:
        raise ValueError(f"layer must be one of the run's nce_layers {layers}; got {layer!r}")
    check_int("num_patches", num_patches, low=2)
    generator = torch.Generator().manual_seed(seed)
    q, k = _patch_samples(objective, image, num_patches, generator, None)[layer]
    s = q[0] @ k[0].T  # (N, N), S_ij = q_i . k_j
    cost = monce_cost(s, weighting=options["weighting"], diagonal=options["diagonal"])
    tol = AUTO_TOL[s.dtype] if options["tol"] == "auto" else options["tol"]
    ones = torch.ones(s.shape[0], dtype=s.dtype, device=s.device)  # unit marginals, as monce
    return sinkhorn(cost, eps=options["beta"], a=ones, b=ones, iters=options["iters"], tol=tol)


def plan_options(objective: UnpairedObjective, **overrides) -> tuple[dict, str]:
    """Validated MoNCE options for :func:`transport_plan` and where they come from:
    ``"checkpoint"`` (the run's MoNCE loss), ``"MoNCE defaults"``, plus ``" + overrides"``."""
    _require_contrast(objective)
    own = objective.cfg.contrastive == "monce"
    base = dict(objective.nce.options) if own else {}
    # build_loss validates every option and names a bad one in its ValueError
    options = build_loss("monce", **{**base, **overrides}).options
    source = ("checkpoint" if own else "MoNCE defaults") + (" + overrides" if overrides else "")
    return options, source


def plot_similarity_histograms(sims: dict[int, dict[str, Tensor]], path: str | Path) -> Path:
    """PNG with one panel per layer: density histograms (100 bins on [-1, 1]) of positive and
    negative similarities from :func:`patch_similarities`, their means in the legend."""
    if not sims:
        raise ValueError("sims is empty: expected {layer: {'positive': ..., 'negative': ...}}")
    fig = Figure(figsize=(3.6 * len(sims), 3.2), layout="constrained")
    axes = fig.subplots(1, len(sims), squeeze=False, sharey=False)[0]
    for ax, (layer, pair) in zip(axes, sims.items()):
        for name, color in (("negative", "tab:red"), ("positive", "tab:blue")):
            values = _numpy(pair[name]).reshape(-1)
            mean = float(values.mean())
            ax.hist(
                values,
                bins=BINS,
                range=RANGE,
                density=True,
                alpha=0.55,
                color=color,
                label=f"{name} (mean {mean:.3f})",
            )
            ax.axvline(mean, color=color, linestyle="--", linewidth=1)
        ax.set_xlim(*RANGE)
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("cosine similarity")
        ax.legend(fontsize="small")
    axes[0].set_ylabel("density")
    return _save(fig, path)


def plot_transport_plan(plan: Tensor, path: str | Path, *, title: str = "") -> Path:
    """PNG heatmap of an ``(N, N)`` plan (rows: query patches, columns: key patches) with a
    colorbar; the diagonal (the positive pair, excluded from the negatives) is greyed out."""
    if plan.dim() != 2 or plan.shape[0] != plan.shape[1]:
        raise ValueError(f"plan must be a square (N, N) tensor; got {tuple(plan.shape)}")
    values = _numpy(plan)
    masked = np.ma.masked_array(values, mask=np.eye(len(values), dtype=bool))
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    fig = Figure(figsize=(5.2, 4.4), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(masked, cmap=cmap, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="T_ij (unit row/column sums)")
    ax.set_xlabel("key patch j")
    ax.set_ylabel("query patch i (diagonal masked)")
    if title:  # a figure title, so a long one is not clipped by the colorbar
        fig.suptitle(title, fontsize="small")
    return _save(fig, path)


def diagnose(
    checkpoint: str | Path,
    images: str | Path,
    out_dir: str | Path,
    *,
    num_images: int = 16,
    num_patches: int | None = None,
    size: int | tuple[int, int] | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """MoNCE Fig. 2-style report of a run: similarity histograms, a transport plan, statistics.

    Loads ``checkpoint`` (a file, or a run folder: its newest checkpoint), reads the first
    ``num_images`` images of the folder ``images`` (source domain A), resized to the run's crop
    size (or ``size``), and writes to ``out_dir``: ``similarity_histograms.png``,
    ``transport_plan.png`` (first image, last tap, ``num_patches`` patches) and
    ``diagnostics.json``, whose content is returned. Per layer it holds count/mean/std of
    positives and negatives, the fraction of negatives above the median positive and the AUC
    ``P(s_pos > s_neg)`` (ties count 1/2; 0.5 = no separation, 1 = every positive above every
    negative). Patch locations come from one generator seeded with ``seed`` across batches.
    """
    objective, cfg, path = load_objective(checkpoint, device)
    _require_contrast(objective)
    check_int("num_images", num_images, low=1)
    if num_patches is not None:
        check_int("num_patches", num_patches, low=2)
    crop = parse_size(cfg.data.crop_size if size is None else size, "size")
    if crop[0] % 4 or crop[1] % 4:
        raise ValueError(f"size must have sides that are multiples of 4; got {size!r}")
    files = list_images(images)[:num_images]
    transform = build_transform(crop, crop, train=False, flip=False)
    generator = torch.Generator().manual_seed(seed)
    collected: dict[int, dict[str, list[Tensor]]] = {}
    first = None
    batches = range(0, len(files), BATCH_SIZE)
    for start in tqdm(batches, desc="diagnose", unit="batch", disable=not progress):
        batch = torch.stack(
            [transform(load_image(f, cfg.data.channels)) for f in files[start : start + BATCH_SIZE]]
        ).to(device)
        first = batch[:1] if first is None else first
        samples = _patch_samples(objective, batch, num_patches, generator, None)
        for layer, (q, k) in samples.items():
            for name, values in _split(q, k).items():
                collected.setdefault(layer, {}).setdefault(name, []).append(values.cpu())
    sims = {
        layer: {name: torch.cat(parts) for name, parts in pair.items()}
        for layer, pair in collected.items()
    }

    n_plan = num_patches or cfg.model.num_patches
    options, source = plan_options(objective)
    plan = transport_plan(objective, first, num_patches=n_plan, seed=seed).cpu()
    layer = cfg.model.nce_layers[-1]
    title = plan_title(plan, layer, options, source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_similarity_histograms(sims, out / "similarity_histograms.png")
    plot_transport_plan(plan, out / "transport_plan.png", title=title)
    report = {
        "checkpoint": str(path),
        "images": [str(f) for f in files],
        "settings": {
            "num_images": len(files),
            "num_patches": num_patches or cfg.model.num_patches,
            "size": list(crop),
            "seed": seed,
            "nce_layers": list(cfg.model.nce_layers),
            "contrastive": cfg.model.contrastive,
            "per_image_patches": cfg.model.per_image_patches,
        },
        "layers": {
            str(l): similarity_stats(pair["positive"], pair["negative"]) for l, pair in sims.items()
        },
        "transport_plan": {
            "layer": layer,
            "image": str(files[0]),
            "patches": plan.shape[0],
            "options_from": source,
            "options": _jsonable(options),
            **plan_stats(plan),
        },
    }
    (out / "diagnostics.json").write_text(json.dumps(report, indent=2))
    return report


def plan_title(plan: Tensor, layer: int, options: dict, source: str) -> str:
    """Title of :func:`plot_transport_plan`'s figure: the tap, N and the MoNCE options with
    where they come from (:func:`plan_options`)."""
    return (
        f"MoNCE plan, layer {layer}, {plan.shape[0]} patches\n{source} options "
        f"(weighting={options['weighting']}, beta={options['beta']})"
    )


def similarity_stats(positive: Tensor, negative: Tensor) -> dict:
    """Count, mean, std of both sets; fraction of negatives above the median positive; AUC.

    AUC is the Mann-Whitney statistic ``P(pos > neg) + P(pos = neg) / 2`` over all pairs,
    computed by sorting the negatives and counting, for each positive, the negatives below it.
    """
    pos, neg = positive.double().flatten(), negative.double().flatten()
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError("need at least one positive and one negative similarity")
    neg_sorted = neg.sort().values
    below = torch.searchsorted(neg_sorted, pos, right=False)  # negatives < p
    not_above = torch.searchsorted(neg_sorted, pos, right=True)  # negatives <= p
    auc = float((below + not_above).double().sum() / (2 * pos.numel() * neg.numel()))
    median = pos.median()
    return {
        "positive": _moments(pos),
        "negative": _moments(neg),
        "negatives_above_median_positive": float((neg > median).double().mean()),
        "auc": auc,
    }


def plan_stats(plan: Tensor) -> dict:
    """Marginal errors and how concentrated the negative weights of each row are.

    ``effective_negatives`` is the mean over rows of ``exp(H(T_i / sum T_i))`` (perplexity of the
    off-diagonal row): ``N - 1`` for uniform weights (PatchNCE), 1 when one negative takes all.
    """
    t = plan.double()
    n = t.shape[0]
    off = t.masked_fill(torch.eye(n, dtype=torch.bool, device=t.device), 0.0)
    p = off / off.sum(1, keepdim=True).clamp_min(torch.finfo(t.dtype).tiny)
    entropy = -(p * p.clamp_min(torch.finfo(t.dtype).tiny).log()).sum(1)
    return {
        "row_sum_max_error": float((t.sum(1) - 1).abs().max()),
        "column_sum_max_error": float((t.sum(0) - 1).abs().max()),
        "diagonal_mass": float(t.diagonal().sum()),
        "max_weight": float(t.max() * (n - 1)),
        "effective_negatives": float(entropy.exp().mean()),
    }


def _patch_samples(
    objective: UnpairedObjective,
    images: Tensor,
    num_patches: int | None,
    generator: torch.Generator,
    translations: Tensor | None,
) -> dict[int, tuple[Tensor, Tensor]]:
    """``{layer: (q, k)}``, each ``(B, N, C)``, sampled as ``UnpairedObjective.nce_loss`` does:
    ids drawn on the key features, reused for the queries."""
    _require_contrast(objective)
    cfg = objective.cfg
    if num_patches is None:
        num_patches = cfg.num_patches
    check_int("num_patches", num_patches, low=2)
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(
            f"images must be a (B, C, H, W) tensor; got "
            f"{tuple(images.shape) if isinstance(images, Tensor) else images!r}"
        )
    if translations is not None and translations.shape != images.shape:
        raise ValueError(
            f"translations must have the images' shape {tuple(images.shape)}; "
            f"got {tuple(translations.shape)}"
        )
    with torch.no_grad():
        if translations is None:
            translations, key_feats = objective.G.forward_with_features(images, cfg.nce_layers)
        else:
            key_feats = objective.G.encode(images, cfg.nce_layers)
        query_feats = objective.G.encode(translations, cfg.nce_layers)
        keys, ids = objective.F(
            key_feats, num_patches, generator=generator, per_image=cfg.per_image_patches
        )
        queries, _ = objective.F(query_feats, patch_ids=ids)
    return {layer: (q, k) for layer, q, k in zip(cfg.nce_layers, queries, keys)}


def _split(q: Tensor, k: Tensor) -> dict[str, Tensor]:
    """``(B, N, C)`` pair -> positives ``(B*N,)`` and off-diagonal negatives ``(B*N*(N-1),)``."""
    s = torch.bmm(q, k.transpose(1, 2)).clamp(-1.0, 1.0)  # (B, N, N), S_bij = q_bi . k_bj
    off = ~torch.eye(s.shape[-1], dtype=torch.bool, device=s.device)
    return {"positive": s.diagonal(dim1=1, dim2=2).reshape(-1), "negative": s[:, off].reshape(-1)}


def _require_contrast(objective: object) -> None:
    if not isinstance(objective, UnpairedObjective):
        raise ValueError(
            f"patch diagnostics need a CUT-family (unpaired) objective; got "
            f"{type(objective).__name__}"
        )
    if not objective.contrastive:
        raise ValueError(
            f"{NO_CONTRAST}: contrastive={objective.cfg.contrastive!r}, "
            f"lambda_nce={objective.cfg.lambda_nce}"
        )


def _moments(x: Tensor) -> dict:
    return {
        "count": x.numel(),
        "mean": float(x.mean()),
        "std": float(x.std()) if x.numel() > 1 else 0.0,
    }


def _numpy(x: Tensor) -> np.ndarray:
    """float64 NumPy copy of a tensor (any device)."""
    return x.detach().cpu().double().numpy()


def _jsonable(options: dict) -> dict:
    return {
        key: value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
        for key, value in options.items()
    }


def _save(fig: Figure, path: str | Path) -> Path:
    """Render with the Agg canvas (no pyplot, no window) and write the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
