"""Memory soak: does resident memory creep during a long run?

Trains tiny CUT (PatchNCE), CUT + MoNCE and SPADE + MoNCE runs for ``--iterations`` (2,000)
iterations each through the real Trainer, with its side work (stats.jsonl and TensorBoard every
50 iterations, a sample grid and a checkpoint every 500), and translates ``--images`` (2,000)
images with one of the trained runs through ``pipeline.translate``. A leak of a few KiB per
iteration (a stats list that grows, tensors kept by a cache, TensorBoard events held) shows as
resident memory that keeps rising after the allocator has warmed up, so the figure is the
resident set size (RSS) after the last iteration against after ``--early`` (200): the check
passes within 5 %. Each case runs in a fresh process, so that one case's allocations do not
hide another's.

RSS: psutil when installed, else ``/proc/self/statm``. Tiny models (ngf 8, 32 px, batch 1;
SPADE: ngf 4, batch 2) keep it to minutes on a CPU; a leak per iteration shows at any model
size.

Usage: ``python benchmarks/memory_soak.py [--iterations 2000] [--early 200] [--images 2000]``
prints a Markdown table (docs/reliability.md keeps one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "CUT (PatchNCE)": (
        "cut",
        [
            "model.ngf=8",
            "model.ndf=8",
            "model.netF_nc=16",
            "model.num_patches=32",
            "model.n_blocks=1",
        ],
    ),
    "CUT + MoNCE": (
        "cut-monce",
        [
            "model.ngf=8",
            "model.ndf=8",
            "model.netF_nc=16",
            "model.num_patches=32",
            "model.n_blocks=1",
        ],
    ),
    "SPADE + MoNCE": (
        "spade-monce",
        [
            "model.ngf=4",
            "model.ndf=4",
            "model.n_layers_d=2",
            "model.num_patches=16",
            "model.vgg_source=random",
            "model.allow_random_vgg=true",
            "train.batch_size=2",
        ],
    ),  # BatchNorm needs 2
}
COMMON = [
    "data.load_size=36",
    "data.crop_size=32",
    "data.builtin_train=8",
    "data.builtin_test=4",
    "train.batch_size=1",
    "train.device=cpu",
    "train.schedule_unit=step",
    "train.log_every=50",
    "train.sample_every=500",
    "train.checkpoint_every=500",
    "train.keep_last=2",
]
TOLERANCE = 0.05


def rss_mib() -> float:
    """This process's resident set size in MiB."""
    try:
        import psutil
    except ImportError:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    return psutil.Process().memory_info().rss / 2**20


class Probe:
    """A dataset that records RSS when it is asked for its item number ``mark`` (counted from 0
    over the whole run): without workers, after ``mark / batch_size`` iterations."""

    def __init__(self, dataset, mark: int):
        self.dataset, self.mark, self.fetched, self.rss = dataset, mark, -1, None

    def __len__(self):
        return len(self.dataset)

    def __getattr__(self, name):  # set_epoch, ordered, ... of the wrapped dataset
        return getattr(self.dataset, name)

    def __getitem__(self, i):
        self.fetched += 1
        if self.fetched == self.mark:
            self.rss = rss_mib()
        return self.dataset[i]


def soak_training(
    preset: str, overrides: list[str], iterations: int, early: int, root: Path
) -> dict:
    import torch

    from patchcontrast import pipeline
    from patchcontrast.config import resolve_config
    from patchcontrast.trainer import Trainer

    cfg = resolve_config(
        preset,
        "cpu",
        run_dir=str(root / "run"),
        overrides=[*COMMON, *overrides, f"train.n_epochs={iterations}", "train.n_epochs_decay=0"],
    )
    train_set, test_set = pipeline.build_datasets(cfg)
    torch.manual_seed(0)
    objective = pipeline.build_objective(cfg)
    probe = Probe(train_set, early * cfg.train.batch_size)
    extra = {k: v for k, v in cfg.to_dict().items() if k != "train"}
    trainer = Trainer(
        objective,
        probe,
        cfg.train,
        sample_batch=pipeline.sample_batch(test_set),
        extra_config=extra,
    )
    start = time.perf_counter()
    trainer.fit()
    return {"early": probe.rss, "late": rss_mib(), "seconds": time.perf_counter() - start}


def soak_translation(
    preset: str, overrides: list[str], images: int, early: int, root: Path
) -> dict:
    """Translate ``images`` copies of the built-in test images with an untrained model of the
    preset (the weights do not matter for memory); RSS after ``early`` and after all."""
    import shutil

    import torch

    from patchcontrast import pipeline
    from patchcontrast.config import resolve_config
    from patchcontrast.runstate import atomic_save

    cfg = resolve_config(
        preset,
        "cpu",
        run_dir=str(root / "run"),
        overrides=[*COMMON, *overrides, "train.n_epochs=1", "train.n_epochs_decay=0"],
    )
    source = pipeline.data_root(cfg.data) / "testA"
    folder = root / "inputs"
    folder.mkdir()
    originals = sorted(source.glob("*.png"))
    for i in range(images):
        shutil.copy(originals[i % len(originals)], folder / f"{i:05d}.png")
    torch.manual_seed(0)
    objective = pipeline.build_objective(cfg)
    (root / "run" / "checkpoints").mkdir(parents=True)
    atomic_save(
        {"objective": objective.state_dict(), "config": cfg.to_dict(), "step": 0},
        root / "run" / "checkpoints" / "step_00000000.pt",
    )
    flush, done, rss = pipeline._flush, [0], {}

    def counting(*args):  # translates and writes one batch of images of equal size
        written = flush(*args)
        done[0] += len(written)
        if done[0] == early:
            rss["early"] = rss_mib()
        return written

    pipeline._flush = counting
    start = time.perf_counter()
    pipeline.translate(root / "run", folder, root / "out", batch_size=1, progress=False)
    return {"early": rss["early"], "late": rss_mib(), "seconds": time.perf_counter() - start}


def child(args: argparse.Namespace) -> None:
    """One case in this process; prints its result as JSON."""
    import torch

    torch.set_num_threads(args.threads)
    preset, overrides = CASES[args.case]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PATCHCONTRAST_CACHE"] = str(Path(tmp) / "cache")
        if args.translate:
            result = soak_translation(preset, overrides, args.images, args.early, Path(tmp))
        else:
            result = soak_training(preset, overrides, args.iterations, args.early, Path(tmp))
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--early", type=int, default=200)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per case")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--translate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case is not None:
        return child(args)
    jobs = [(name, False, f"train {args.iterations} iterations") for name in CASES]
    jobs.append(("CUT (PatchNCE)", True, f"translate {args.images} images"))
    print(
        f"| case | what | RSS after {args.early} (MiB) | RSS at the end (MiB) | change | "
        f"within {TOLERANCE:.0%} | seconds |\n|---|---|---:|---:|---:|---|---:|",
        flush=True,
    )
    for name, translate, what in jobs:
        argv = [
            sys.executable,
            __file__,
            "--case",
            name,
            "--iterations",
            str(args.iterations),
            "--early",
            str(args.early),
            "--images",
            str(args.images),
            "--threads",
            str(args.threads),
            *(["--translate"] if translate else []),
        ]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        change = r["late"] / r["early"] - 1
        print(
            f"| {name} | {what} | {r['early']:.1f} | {r['late']:.1f} | {change:+.1%} | "
            f"{'yes' if abs(change) <= TOLERANCE else 'NO'} | {r['seconds']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
