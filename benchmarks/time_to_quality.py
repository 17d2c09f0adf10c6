"""Quality against wall-clock minutes: the fast recipe and the earlier ``cpu`` scale, same run.

For every (scale, seed) the preset trains for the same wall-clock budget (``--minutes``; the
schedule is fitted to it with ``pipeline.plan_time_budget``, learning-rate decay included) with
``--checkpoints`` evenly spaced checkpoints, all kept. Every checkpoint then translates the test
split at the training size and is scored: SWD (x1e3, levels 64/32/16 at 64 px) against testB;
on the built-in data also content IoU and the domain score; on real data with ``--domain`` the
domain score of a classifier trained on the dataset's trainA/trainB (test accuracy printed). The
minute of a checkpoint is the training time up to it, from the run's own ``stats.jsonl``.

The untranslated test inputs are scored the same way in the same run: the baseline every
translation has to beat. Runs go one after another (each alone on the machine, all its threads).
Checkpoints are chosen by time, never by their test scores; every one is reported.

Writes ``OUT/runs.csv`` (every checkpoint), ``OUT/results.md`` (final checkpoints, mean ± std
over seeds, next to the baseline) and ``OUT/time_to_quality.png``.

Usage::

    python benchmarks/time_to_quality.py --minutes 4 --seeds 0 1 2 --out docs/results/ttq-builtin
    python benchmarks/time_to_quality.py --dataroot ../shared/data/horse2zebra --minutes 10 \\
        --presets cut cut-monce cut-put --scales fast --domain --out docs/results/ttq-h2z
    python benchmarks/time_to_quality.py --scales cpu --set model.residual=true \\
        --label residual --seeds 0 1 2 --out runs/ttq-residual     # one lever alone
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import numpy as np

from patchcontrast import evaluate, pipeline
from patchcontrast.config import resolve_config


def training_minutes(run_dir: Path, step: int) -> float:
    """Minutes of training up to ``step``, from the logged seconds per iteration (linear
    between the logged steps)."""
    steps, seconds, total, last = [0], [0.0], 0.0, 0
    for line in (run_dir / "stats.jsonl").read_text().splitlines():
        record = json.loads(line)
        total += record["sec_per_iter"] * (record["step"] - last)
        last = record["step"]
        steps.append(last)
        seconds.append(total)
    return float(np.interp(step, steps, seconds)) / 60


def run_one(args, preset: str, scale: str, seed: int, out: Path) -> list[dict]:
    label = f"{scale}+{args.label}" if args.label else scale
    run_dir = out / "runs" / f"{preset}-{label}-seed{seed}"
    overrides = [*args.overrides, f"train.seed={seed}", "train.keep_last=1000"]
    if args.dataroot:
        overrides.append(f"data.dataroot={args.dataroot}")
    cfg = resolve_config(preset, scale, run_dir=str(run_dir), overrides=overrides)
    if not pipeline.saved_plan(cfg):
        cfg, plan = pipeline.plan_time_budget(cfg, args.minutes * 60)
        print(pipeline.format_plan(plan), flush=True)
        every = max(1, plan["iterations"] // args.checkpoints)
        from patchcontrast.config import replace

        cfg = replace(
            cfg,
            train={"checkpoint_every": every, "sample_every": every, "log_every": min(every, 10)},
        )
        start = time.perf_counter()
        pipeline.train(cfg)
        print(f"trained in {time.perf_counter() - start:.0f} s", flush=True)
    metrics = (
        ["swd", "content", "domain"]
        if cfg.data.dataroot == "builtin"
        else ["swd", *(["domain"] if args.domain else [])]
    )
    evaluate.evaluate_run(
        run_dir, metrics=metrics, progress=False, domain_data=args.dataroot if args.domain else None
    )
    with open(run_dir / "eval" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return [
        {
            "preset": preset,
            "scale": label,
            "seed": seed,
            "step": int(r["step"]),
            "minutes": round(training_minutes(run_dir, int(r["step"])), 2),
            **{k: float(v) for k, v in r.items() if k != "step"},
        }
        for r in rows
    ]


def baseline(args, out: Path) -> dict:
    """The untranslated test inputs scored like the translations."""
    cfg = resolve_config(
        "cut", "fast", overrides=[f"data.dataroot={args.dataroot}"] if args.dataroot else []
    )
    source, target, masks = evaluate._test_split(cfg, out)
    metrics = (
        ["swd", "content", "domain"]
        if cfg.data.dataroot == "builtin"
        else ["swd", *(["domain"] if args.domain else [])]
    )
    result = evaluate.evaluate_folders(
        target,
        source,
        metrics=metrics,
        masks=masks if masks and masks.is_dir() else None,
        swd_size=cfg.data.crop_size,
        progress=False,
        domain_data=args.dataroot if args.domain else None,
    )
    if "domain" in result["settings"]:
        print(f"domain classifier: {result['settings']['domain']}")
    return {**result["metrics"], "classifier": result["settings"].get("domain")}


def summarise(rows: list[dict], base: dict, keys: list[str]) -> str:
    lines = [
        "| preset | scale | minutes | steps | " + " | ".join(keys) + " |",
        "|---|---|---:|---:|" + "---:|" * len(keys),
    ]
    lines.append(
        "| untranslated input | – | – | – | " + " | ".join(f"{base[k]:.3f}" for k in keys) + " |"
    )
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["preset"], r["scale"], r["seed"]), []).append(r)
    finals: dict[tuple, list[dict]] = {}
    for (preset, scale, _), runs in groups.items():
        finals.setdefault((preset, scale), []).append(max(runs, key=lambda r: r["step"]))
    for (preset, scale), last in finals.items():
        cells = []
        for k in keys:
            values = [r[k] for r in last]
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.3f}{spread}")
        minutes = statistics.mean(r["minutes"] for r in last)
        steps = "/".join(str(r["step"]) for r in last)  # per seed: each run times its own plan
        lines.append(
            f"| {preset} | {scale} (n={len(last)}) | {minutes:.1f} | {steps} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], base: dict, keys: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    runs: dict[tuple, list[dict]] = {}
    for r in rows:
        runs.setdefault((r["preset"], r["scale"], r["seed"]), []).append(r)
    colours: dict[tuple, str] = {}
    for ax, key in zip(axes[0], keys):
        for (preset, scale, seed), points in runs.items():
            points.sort(key=lambda r: r["step"])
            colour = colours.setdefault((preset, scale), f"C{len(colours)}")
            ax.plot(
                [p["minutes"] for p in points],
                [p[key] for p in points],
                marker="o",
                ms=3,
                color=colour,
                alpha=0.8,
                label=f"{preset} {scale}" if seed == min(s for _, _, s in runs) else None,
            )
        ax.axhline(base[key], color="k", ls="--", lw=1, label="untranslated input")
        ax.set_xlabel("training minutes")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["cut-monce"])
    parser.add_argument("--scales", nargs="+", default=["fast", "cpu"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="training budget per run")
    parser.add_argument("--checkpoints", type=int, default=8, help="checkpoints per run")
    parser.add_argument("--dataroot", default=None, help="dataset folder (default: built-in)")
    parser.add_argument(
        "--domain",
        action="store_true",
        help="real data: score with a classifier trained on trainA/trainB",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every run (an ablation "
        "lever, e.g. model.residual=true); repeatable",
    )
    parser.add_argument("--label", default="", help="names the overrides in the tables")
    parser.add_argument("--out", default="runs/time_to_quality")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = baseline(args, out)
    rows = []
    for preset in args.presets:
        for scale in args.scales:
            for seed in args.seeds:
                rows += run_one(args, preset, scale, seed, out)
    keys = [k for k in ("swd_avg", "content_iou", "domain_b") if k in rows[0]]
    with open(out / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = summarise(rows, base, keys)
    (out / "results.md").write_text(f"{table}\n\nbaseline: {json.dumps(base)}\n")
    plot(rows, base, keys, out / "time_to_quality.png")
    print(table)


if __name__ == "__main__":
    main()
