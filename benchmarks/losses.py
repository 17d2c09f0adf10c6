"""Forward+backward time and peak memory of every contrastive loss, relative to patch_nce.

Setting of the MoNCE/CUT training step: 5 feature layers, each ``(B, 256, 256)`` (256 sampled
patches of 256 projected channels), queries requiring grad, keys = noisy copies of the queries
(near-duplicate patches, as real features), combined with ``multilayer_loss`` as the training
code does (registry modules stack equal-shaped layers into one call). All rows are measured in
the same run; ratios are against ``patch_nce`` of the same batch size and device.

The row ``monce (official algorithm)`` is the official MoNCE-CUT computation (plain-domain
Sinkhorn, 50 iterations unrolled by autograd) as re-implemented by our test oracle
``tests/losses/naive.py``; it is there to show what the stabilised solver buys.

Usage: ``python benchmarks/losses.py [--batch 1 4] [--repeats 10] [--device cpu cuda]``
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # silence the profiler's start/stop chatter

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "losses"))

from _memory import peak_mib  # noqa: E402
from naive import official_monce  # noqa: E402  (test oracle, see module docstring)

from patchcontrast.losses import build_loss, monce, multilayer_loss  # noqa: E402

LAYERS, PATCHES, CHANNELS = 5, 256, 256

LOSSES = {
    "patch_nce": build_loss("patchnce"),
    "weight_nce (hard)": build_loss("weightnce"),
    "put (hardest, k=5)": build_loss("put"),
    "put (hardest, k=255: every negative)": build_loss("put", k_neg=PATCHES - 1),
    "put (random, k=5)": build_loss("put", selection="random"),
    "put (official)": build_loss("put", selection="official"),
    "monce (defaults)": build_loss("monce"),
    "monce (grad_through_plan=False)": build_loss("monce", grad_through_plan=False),
    "monce (tol=None: always 50 iterations)": build_loss("monce", tol=None),
    # a plain function is applied layer by layer (no stacking): shows what stacking buys
    "monce (defaults, per-layer calls)": functools.partial(monce),
    "monce (official algorithm)": functools.partial(official_monce, reduction="mean"),
}


def features(batch: int, device: str, seed: int = 0) -> tuple[list, list]:
    g = torch.Generator().manual_seed(seed)
    qs, ks = [], []
    for _ in range(LAYERS):
        q = F.normalize(torch.randn(batch, PATCHES, CHANNELS, generator=g), dim=-1)
        k = F.normalize(q + 0.3 * torch.randn(q.shape, generator=g), dim=-1)
        qs.append(q.to(device).requires_grad_())
        ks.append(k.to(device))
    return qs, ks


def step(loss_fn, qs, ks) -> None:
    multilayer_loss(loss_fn, qs, ks).backward()
    for q in qs:
        q.grad = None


def time_all(losses: dict, qs, ks, repeats: int, device: str) -> dict[str, float]:
    """Median wall time (ms) of one forward+backward over the 5 layers, per loss.

    The losses are timed round-robin (one step of each per round) so that machine-speed drift
    during the run affects every row alike and the ratios stay comparable.
    """
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {label: [] for label in losses}
    for round_ in range(repeats + 2):
        for label, fn in losses.items():
            sync()
            start = time.perf_counter()
            step(fn, qs, ks)
            sync()
            if round_ >= 2:  # two warm-up rounds
                times[label].append(time.perf_counter() - start)
    return {label: 1e3 * statistics.median(t) for label, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=15)
    default_devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    parser.add_argument("--device", nargs="+", default=default_devices)
    args = parser.parse_args()

    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{LAYERS} layers x (B, {PATCHES}, {CHANNELS}) float32, forward+backward"
    )
    for device in args.device:
        name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
        for batch in args.batch:
            qs, ks = features(batch, device)
            print(f"\n{name}, B = {batch}")
            print(
                f"| {'loss':40s} | {'time ms':>8s} | {'x patch_nce':>11s} | {'peak MiB':>8s} "
                f"| {'x patch_nce':>11s} |"
            )
            print(f"|{'-' * 42}|{'-' * 10}|{'-' * 13}|{'-' * 10}|{'-' * 13}|")
            times = time_all(LOSSES, qs, ks, args.repeats, device)
            base_t = base_m = None
            for label, fn in LOSSES.items():
                t = times[label]
                m = peak_mib(lambda: step(fn, qs, ks), device)  # noqa: B023
                base_t, base_m = base_t or t, base_m or m
                print(
                    f"| {label:40s} | {t:8.2f} | {t / base_t:11.2f} | {m:8.1f} "
                    f"| {m / base_m:11.2f} |"
                )


if __name__ == "__main__":
    main()
