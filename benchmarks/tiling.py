"""Tiled translation (``translate --tile``) against one whole pass: difference and peak memory.

    python benchmarks/tiling.py                      # 1024 and 2048 px, fixture generator
    python benchmarks/tiling.py --generator default --sizes 1024 --stats tile

Each translation runs in its own subprocess, so that its peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which sees torch's CPU allocations) is its own;
"peak" is that maximum, "above base" the part above the resident memory just before the
translation (the generator and the input already loaded). The input is a generated 'photo'
(a colour gradient with 40 random ellipses and noise) in [-1, 1]; the differences are in 8-bit
levels (1 = 1/255 of the range) between the tiled and the whole translation, and the PSNR
treats the whole pass as the reference.

Generators: ``fixture``, the CUT generator made by the official code in
tests/fixtures/official (ngf 8, 6 blocks, anti-aliased; briefly trained, so it reacts strongly
to instance-norm statistics), and ``default``, patchcontrast's default ResNet generator (ngf 64,
9 blocks) with its random initialisation, for the memory of the real size (its translations
are near-constant, so its differences say little).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "official" / "cut_antialias" / "latest_net_G.pth"


def photo(size: int, seed: int = 0) -> torch.Tensor:
    """A (1, 3, size, size) generated image in [-1, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(0, 1, 3).astype(np.float32), rng.uniform(0, 1, 3).astype(np.float32)
    t = ((xx + yy) / 2)[..., None]
    img = c0 * (1 - t) + c1 * t
    for _ in range(40):
        cy, cx = rng.uniform(0, 1, 2)
        ry, rx = rng.uniform(0.02, 0.15, 2)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        img[inside] = img[inside] * 0.3 + 0.7 * rng.uniform(0, 1, 3).astype(np.float32)
    img += rng.normal(0, 0.04, img.shape).astype(np.float32)
    x = torch.from_numpy(np.clip(img, 0, 1)).permute(2, 0, 1)[None]
    return x * 2 - 1


def rss_mib() -> float:
    """Current resident memory of this process, MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def worker(args: argparse.Namespace) -> None:
    """One translation; prints its timing and memory as JSON, saves the output."""
    from patchcontrast.export import size_multiple
    from patchcontrast.tiling import translate_tiled

    torch.set_num_threads(args.threads)
    if args.generator == "fixture":
        from patchcontrast.importer import import_translator

        translator = import_translator(FIXTURE)[0]
        translate, generator = translator.translate, translator.generator
    else:
        from patchcontrast.nets.resnet import ResnetGenerator

        torch.manual_seed(0)
        generator = ResnetGenerator(ngf=64, n_blocks=9).eval()
        translate = torch.no_grad()(generator)
    x = photo(args.size)
    base = rss_mib()
    start = time.perf_counter()
    with torch.no_grad():
        if args.mode == "whole":
            y = translate(x)
        else:
            y = translate_tiled(
                translate,
                x,
                tile=args.tile,
                overlap=args.overlap,
                multiple=size_multiple(generator),
                generator=generator,
                stats=args.mode,
            )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    np.save(args.out, y.numpy())
    print(json.dumps({"seconds": seconds, "peak_mib": peak, "base_mib": base}))


def run(args: argparse.Namespace, size: int, mode: str, out: Path) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--generator",
        args.generator,
        "--size",
        str(size),
        "--mode",
        mode,
        "--tile",
        str(args.tile),
        "--overlap",
        str(args.overlap),
        "--threads",
        str(args.threads),
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", choices=("fixture", "default"), default="fixture")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument(
        "--stats",
        nargs="+",
        choices=("tile", "image"),
        default=["tile", "image"],
        help="tiled variants to run",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the rows here")
    # worker mode (one translation in a subprocess)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    print(
        f"generator {args.generator}, tile {args.tile}, overlap {args.overlap}, "
        f"{args.threads} threads"
    )
    print(
        f"{'size':>6} {'mode':>12} {'seconds':>8} {'peak MiB':>9} {'above base':>10} "
        f"{'mean |d|':>9} {'max |d|':>8} {'PSNR dB':>8}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            whole_file = Path(tmp) / f"whole{size}.npy"
            stats = run(args, size, "whole", whole_file)
            whole = np.load(whole_file)
            results = [("whole", stats, None)]
            for mode in args.stats:
                file = Path(tmp) / f"{mode}{size}.npy"
                stats = run(args, size, mode, file)
                results.append((f"tiles/{mode}", stats, np.load(file)))
            for mode, stats, y in results:
                row = {
                    "size": size,
                    "mode": mode,
                    "generator": args.generator,
                    "tile": args.tile,
                    "overlap": args.overlap,
                    **stats,
                    "above_base_mib": stats["peak_mib"] - stats["base_mib"],
                }
                if y is not None:
                    diff = np.abs(y.astype(np.float64) - whole) * 127.5
                    mse = float((diff**2).mean())
                    row.update(
                        mean_abs=float(diff.mean()),
                        max_abs=float(diff.max()),
                        psnr=10 * math.log10(255**2 / mse) if mse else math.inf,
                    )
                rows.append(row)
                d = (
                    f"{row['mean_abs']:9.3f} {row['max_abs']:8.2f} {row['psnr']:8.1f}"
                    if y is not None
                    else f"{'-':>9} {'-':>8} {'-':>8}"
                )
                print(
                    f"{size:6d} {mode:>12} {row['seconds']:8.1f} {row['peak_mib']:9.0f} "
                    f"{row['above_base_mib']:10.0f} {d}",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
