"""A loss demo that runs in a minute on a CPU: learn to align patch features contrastively.

Setting (a miniature of CUT's NCE head): source patch features ``x`` come in clusters of
near-duplicates, as real image patches do; the "generated" features are the same patches seen
through an unknown random linear distortion plus noise. A linear projection head ``W`` is trained
with a contrastive loss so that ``normalize(W g_i)`` retrieves its own source patch ``x_i`` among
all patches of the same image. Reported: top-1 retrieval accuracy on held-out images before and
after training, for every loss of the registry.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .losses import CONTRASTIVE_LOSSES, build_loss

DEFAULT_LOSSES = {
    "patchnce": {},
    "weightnce": {"weighting": "hard", "beta": 0.1},
    "monce": {"weighting": "hard", "beta": 0.1},
    "put": {"k_neg": 5},
}


@dataclass(frozen=True)
class LossDemoConfig:
    """Settings of ``patchcontrast loss-demo``."""

    losses: tuple[str, ...] = tuple(DEFAULT_LOSSES)
    steps: int = 150
    batch: int = 4
    patches: int = 256
    channels: int = 64
    clusters: int = 16
    noise: float = 2.0
    lr: float = 0.05
    seed: int = 0
    out: str | None = None
    loss_options: dict = field(default_factory=lambda: dict(DEFAULT_LOSSES))

    def __post_init__(self) -> None:
        unknown = [name for name in self.losses if name not in CONTRASTIVE_LOSSES]
        if unknown:
            raise ValueError(
                f"unknown loss {unknown[0]!r}; choose from {', '.join(CONTRASTIVE_LOSSES)}"
            )
        for name, low in (
            ("steps", 1),
            ("batch", 1),
            ("patches", 2),
            ("channels", 2),
            ("clusters", 1),
        ):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}; got {getattr(self, name)}")
        if self.noise < 0 or self.lr <= 0:
            raise ValueError("noise must be >= 0 and lr > 0")


class PatchWorld:
    """Deterministic generator of (generated, source) patch feature pairs ``(B, N, C)``."""

    def __init__(self, cfg: LossDemoConfig) -> None:
        g = torch.Generator().manual_seed(cfg.seed)
        self.cfg = cfg
        self.centres = F.normalize(torch.randn(cfg.clusters, cfg.channels, generator=g), dim=-1)
        distortion = torch.randn(cfg.channels, cfg.channels, generator=g) / cfg.channels**0.5
        self.distortion = torch.eye(cfg.channels) + distortion

    def sample(self, batch: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        which = torch.randint(cfg.clusters, (batch, cfg.patches), generator=g)
        offsets = 0.2 * torch.randn(batch, cfg.patches, cfg.channels, generator=g)
        source = F.normalize(self.centres[which] + offsets, dim=-1)
        seen = source @ self.distortion.T
        seen = seen + cfg.noise * torch.randn(seen.shape, generator=g) / cfg.channels**0.5
        return seen, source


def retrieval_accuracy(head: torch.Tensor, generated: torch.Tensor, source: torch.Tensor) -> float:
    """Fraction of anchors whose most similar source patch (same image) is their own."""
    with torch.no_grad():
        q = F.normalize(generated @ head.T, dim=-1)
        hits = torch.bmm(q, source.transpose(1, 2)).argmax(-1) == torch.arange(q.shape[1])
    return hits.float().mean().item()


def train_head(name: str, world: PatchWorld, cfg: LossDemoConfig) -> dict:
    loss_fn = build_loss(name, **cfg.loss_options.get(name, {}))
    head = torch.eye(cfg.channels).requires_grad_(True)
    optim = torch.optim.Adam([head], lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    test_g, test_s = world.sample(16, torch.Generator().manual_seed(cfg.seed + 2))
    before = retrieval_accuracy(head, test_g, test_s)
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=f"{name:9s}", leave=False, dynamic_ncols=True)
    for _ in bar:
        generated, source = world.sample(cfg.batch, g)
        loss = loss_fn(F.normalize(generated @ head.T, dim=-1), source)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.perf_counter() - start
    return {
        "loss": name,
        "options": cfg.loss_options.get(name, {}),
        "final_loss": loss.item(),
        "top1_before": before,
        "top1_after": retrieval_accuracy(head, test_g, test_s),
        "ms_per_step": 1e3 * seconds / cfg.steps,
    }


def run_loss_demo(cfg: LossDemoConfig) -> list[dict]:
    """Train one projection head per loss; print and (optionally) save a results table."""
    print("patchcontrast loss-demo:", json.dumps(asdict(cfg)))
    world = PatchWorld(cfg)
    results = [train_head(name, world, cfg) for name in cfg.losses]
    print(
        f"\n| {'loss':9s} | {'top-1 before':>12s} | {'top-1 after':>11s} | "
        f"{'final loss':>10s} | {'ms/step':>7s} |"
    )
    print(f"|{'-' * 11}|{'-' * 14}|{'-' * 13}|{'-' * 12}|{'-' * 9}|")
    for r in results:
        print(
            f"| {r['loss']:9s} | {r['top1_before']:12.3f} | {r['top1_after']:11.3f} | "
            f"{r['final_loss']:10.3f} | {r['ms_per_step']:7.1f} |"
        )
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        (out / "results.json").write_text(json.dumps(results, indent=2))
        print(f"\nwrote {out / 'config.json'} and {out / 'results.json'}")
    return results
