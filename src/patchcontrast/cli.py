"""The ``patchcontrast`` command line (the only argument parser of the package)."""

from __future__ import annotations

import argparse
import sys

from .data.download import DATASETS, DownloadError, download_dataset
from .demo import DemoConfig, run_demo
from .losses import CONTRASTIVE_LOSSES


def _demo_parser(sub: argparse._SubParsersAction) -> None:
    d = DemoConfig()
    p = sub.add_parser(
        "demo",
        help="train a projection head with every contrastive loss on generated patch features",
        description="Loss demo (about a minute on a laptop CPU): a linear projection head learns, "
        "with each contrastive loss, to match distorted patch features to their source patches "
        "among near-duplicate patches; prints top-1 patch retrieval accuracy before and after.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--losses", nargs="+", default=list(d.losses), choices=list(CONTRASTIVE_LOSSES),
                   help="losses to compare (default hyper-parameters of the papers)")
    p.add_argument("--steps", type=int, default=d.steps, help="optimisation steps per loss")
    p.add_argument("--batch", type=int, default=d.batch, help="images per step")
    p.add_argument("--patches", type=int, default=d.patches, help="patches per image (N)")
    p.add_argument("--channels", type=int, default=d.channels, help="feature channels (C)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed")
    p.add_argument("--out", default=None, help="folder for config.json and results.json")


def _download_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download",
        help="download a standard CycleGAN/CUT/pix2pix dataset",
        description="Download, verify and extract a standard dataset into ROOT/NAME. Interrupted "
        "downloads resume where they stopped when the same command is run again.",
        epilog="datasets: " + ", ".join(DATASETS),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("name", metavar="NAME", help="dataset name (list below)")
    p.add_argument("--root", default="datasets", help="folder that receives ROOT/NAME")
    p.add_argument("--url", default=None, help="download from this address instead (a mirror)")
    p.add_argument("--keep-archive", action="store_true", help="keep the archive after extracting")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="patchcontrast",
        description="Contrastive image-to-image translation: PatchNCE (CUT), WeightNCE and MoNCE "
        "(CVPR 2022), PUT negative pruning (ACM MM 2022).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _demo_parser(sub)
    _download_parser(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            cfg = DemoConfig(losses=tuple(args.losses), steps=args.steps, batch=args.batch,
                             patches=args.patches, channels=args.channels, seed=args.seed,
                             out=args.out)
            run_demo(cfg)
        elif args.command == "download":
            result = download_dataset(args.name, args.root, url=args.url,
                                      keep_archive=args.keep_archive)
            print(f"{args.name}: ready in {result.folder}")
    except (ValueError, DownloadError) as err:
        parser.exit(2, f"patchcontrast {args.command}: error: {err}\n")
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0
