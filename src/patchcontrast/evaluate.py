"""``patchcontrast evaluate``: metrics between real and translated image folders."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .data import list_images, load_image
from .data.folders import open_image, parse_size
from .runstate import atomic_write_text, checkpoint_files, checkpoint_step, write_atomically

METRICS = ("swd", "fid", "kid", "content", "domain", "segmentation")


def _load_uint8(paths: Sequence[Path]) -> list[torch.Tensor]:
    return [torch.from_numpy(np.array(load_image(p, 3))).permute(2, 0, 1) for p in paths]


def evaluate_folders(
    real: str | Path | None,
    fake: str | Path,
    *,
    metrics: Sequence[str] = ("swd",),
    masks: str | Path | None = None,
    inception_weights: str | Path | None = None,
    swd_size: int | tuple[int, int] = 256,
    seed: int = 0,
    device: str = "cpu",
    cache_dir: str | Path | None = None,
    progress: bool = True,
    labels: str | Path | None = None,
    seg_model: str | None = None,
    num_classes: int | None = None,
    ignore_index: int = 255,
    domain_data: str | Path | None = None,
) -> dict:
    """Compute ``metrics`` and return them with the settings that produced them.

    ``fid``/``kid``: standard Inception features through pytorch-fid (local weights needed).
    ``content``: IoU between the source object masks in ``masks`` (matched to the translations
    by file stem, e.g. the built-in ``testA_masks``) and the object detected in each translation.
    ``domain``: fraction of translations the built-in A-vs-B classifier calls B; with
    ``domain_data`` (a dataset folder with trainA/ trainB/ testA/ testB/, e.g. horse2zebra) a
    classifier trained on that folder's train split judges them instead, at ``swd_size``, and
    its test accuracies are reported (``testA_accuracy``, ``testB_accuracy``).
    ``segmentation``: mIoU, pixel and class accuracy (Cityscapes protocol, see
    ``metrics.segmentation``) of ``seg_model`` (TorchScript file or ``module:name`` entry point)
    on the translations against the class-id label maps in ``labels`` (matched by file stem).
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(
            f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}"
        )
    if real is None and set(metrics) & {"swd", "fid", "kid"}:
        raise ValueError("swd, fid and kid compare with real images: give the real folder")
    fake_paths = list_images(fake)
    result: dict = {
        "real": None if real is None else str(real),
        "fake": str(fake),
        "n_fake": len(fake_paths),
        "metrics": {},
        "settings": {"seed": seed},
    }
    if "swd" in metrics:
        from .metrics import swd_from_folders

        result["n_real"] = len(list_images(real))
        result["metrics"].update(
            swd_from_folders(real, fake, size=swd_size, seed=seed, device=device, progress=progress)
        )
        result["settings"]["swd"] = {
            "size": swd_size,
            "resize": "bilinear (antialiased)",
            "unit": "x1e3 per level, swd_avg = mean of the levels",
        }
    if "fid" in metrics or "kid" in metrics:
        from .metrics import fid_from_folders

        scores = fid_from_folders(
            real,
            fake,
            weights=inception_weights,
            device=device,
            cache_dir=cache_dir,
            seed=seed,
            progress=progress,
        )
        result["n_real"] = scores["n_real"]
        for key in ("fid", "kid_mean", "kid_std"):
            if key.split("_")[0] in metrics:
                result["metrics"][key] = scores[key]
        result["settings"]["fid"] = {
            k: scores[k] for k in scores if k not in ("fid", "kid_mean", "kid_std")
        }
    if "content" in metrics:
        from .metrics import content_score

        if masks is None:
            raise ValueError(
                "the content metric needs --masks: a folder of source object masks "
                "named like the translations (e.g. the built-in testA_masks)"
            )
        source = [
            torch.from_numpy(np.array(load_image(p, 1)) > 127)
            for p in _partners(fake_paths, masks, "mask")
        ]
        score = content_score(source, _load_uint8(fake_paths))
        result["metrics"]["content_iou"] = score["mean_iou"]
    if "segmentation" in metrics:
        result["metrics"].update(
            _segmentation(fake_paths, labels, seg_model, num_classes, ignore_index, device)
        )
        result["settings"]["segmentation"] = {
            "model": str(seg_model),
            "num_classes": num_classes,
            "ignore_index": ignore_index,
            "resolution": "label (logits resized bilinearly to the label map)",
        }
    if "domain" in metrics and domain_data is not None:
        from .metrics.folder_domain import folder_domain_score

        side = parse_size(swd_size, "size")[0]
        scores = folder_domain_score(domain_data, fake, size=side)
        result["metrics"]["domain_b"] = scores.pop("domain_b")
        result["settings"]["domain"] = {"classifier_data": str(domain_data), "size": side, **scores}
    elif "domain" in metrics:
        from .metrics import domain_score

        result["metrics"]["domain_b"] = domain_score(_load_uint8(fake_paths))
    return result


def _partners(fake_paths: Sequence[Path], folder: str | Path, what: str) -> list[Path]:
    """The file of ``folder`` with the same stem as each translation (error if any is missing)."""
    files = {p.stem: p for p in list_images(folder)}
    missing = [p.name for p in fake_paths if p.stem not in files]
    if missing:
        raise ValueError(
            f"no {what} in {folder} for {len(missing)} translation(s), e.g. "
            f"{', '.join(missing[:5])}"
        )
    return [files[p.stem] for p in fake_paths]


def _segmentation(
    fake_paths: Sequence[Path],
    labels: str | Path | None,
    model: str | None,
    num_classes: int | None,
    ignore_index: int,
    device: str,
) -> dict:
    from .metrics import segmentation_metrics

    if labels is None or model is None or num_classes is None:
        raise ValueError(
            "the segmentation metric needs --labels (class-id label maps named like "
            "the translations), --seg-model and --num-classes"
        )
    maps = []
    for path in _partners(fake_paths, labels, "label map"):
        with open_image(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(
                    f"{path} is a {im.mode} image; label maps must be "
                    "single-channel class ids (mode L, P or I)"
                )
            maps.append(torch.from_numpy(np.array(im).astype(np.int64)))
    scores = segmentation_metrics(
        model, _load_uint8(fake_paths), maps, num_classes, ignore_index, device=device
    )
    return {
        "seg_miou": scores["miou"],
        "seg_pixel_accuracy": scores["pixel_accuracy"],
        "seg_class_accuracy": scores["mean_class_accuracy"],
    }


def format_table(result: dict) -> str:
    lines = [f"| {'metric':14s} | {'value':>10s} |", f"|{'-' * 16}|{'-' * 12}|"]
    lines += [f"| {name:14s} | {value:10.4f} |" for name, value in result["metrics"].items()]
    counts = f"{result.get('n_real', '-')} real vs {result['n_fake']} translated images"
    return "\n".join([counts, *lines])


def write_json(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=2))
    return path


def evaluate_run(
    run_dir: str | Path,
    *,
    metrics: Sequence[str] = ("swd",),
    select: str = "swd_avg",
    inception_weights: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    domain_data: str | Path | None = None,
) -> dict:
    """Translate the test split with every checkpoint of a run and evaluate each.

    Writes ``RUN_DIR/eval/metrics.csv`` (one row per checkpoint), ``metrics.png`` (each metric
    against the step) and ``summary.json`` with the final checkpoint and the best one by
    ``select`` (lower is better) — the latter is selected on the test set, as the official
    repos do, and labelled so. Translations go to ``RUN_DIR/eval/step_XXXXXXXX/``. The test
    inputs are translated, and SWD computed, at the run's training crop size.
    """
    import csv
    import io

    from . import pipeline

    run_dir = Path(run_dir)
    checkpoints = checkpoint_files(run_dir / "checkpoints")
    if not checkpoints:
        raise ValueError(f"no checkpoints in {run_dir / 'checkpoints'}")
    # the run's config, without loading any weights (translate loads each checkpoint itself)
    cfg = pipeline.run_config(run_dir)
    out = run_dir / "eval"
    source, target, masks = _test_split(cfg, out)
    # the test inputs are resized to the training crop size and SWD is taken at that size, so a
    # 64 px run is neither translated at a scale it never saw nor judged on upsampled images
    # (a single-image run translates its whole image, as its demo does)
    single = getattr(cfg.data, "mode", None) == "single_image"
    size = None if single else parse_size(cfg.data.crop_size, "crop_size")
    rows = []
    for checkpoint in checkpoints:
        step = checkpoint_step(checkpoint)
        fake = out / checkpoint.stem
        pipeline.translate(checkpoint, source, fake, device=device, progress=progress, size=size)
        result = evaluate_folders(
            target,
            fake,
            metrics=metrics,
            masks=masks if masks is not None and masks.is_dir() else None,
            inception_weights=inception_weights,
            swd_size=size or 256,
            device=device,
            progress=progress,
            domain_data=domain_data,
        )
        rows.append({"step": step, **result["metrics"]})
    if select not in rows[0]:
        raise ValueError(f"cannot select by {select!r}; computed: {', '.join(rows[0])}")
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "metrics.csv", table.getvalue())
    best = min(rows, key=lambda r: r[select])
    summary = {
        "run_dir": str(run_dir),
        "real": str(target),
        "n_checkpoints": len(rows),
        "final": rows[-1],
        "best_selected_on_test_set": {"by": select, **best},
        "settings": {**result["settings"], "translated_at": size},
        "n_real": result.get("n_real"),
        "n_fake": result["n_fake"],
    }
    write_json(summary, out / "summary.json")
    _plot(rows, out / "metrics.png")
    return summary


def _test_split(cfg, out: Path) -> tuple[Path, Path, Path | None]:
    """(generator inputs, real targets, source masks or None) of a run's test split.

    Unpaired: testA -> testB (swapped for BtoA), masks of the built-in data; single image:
    trainA -> trainB. Paired: label maps -> photos; for side-by-side pairs the photo halves are
    written to ``out/real`` once.
    """
    from . import pipeline
    from .config import PairedRunConfig
    from .data.paired import split_pair

    data, root = cfg.data, pipeline.data_root(cfg.data)
    if not isinstance(cfg, PairedRunConfig):
        # a single-image run is judged on its own pair, as SinCUT is: the one source image
        # translated, against the one target image
        phase = "train" if data.mode == "single_image" else "test"
        source, target = (
            (f"{phase}A", f"{phase}B") if data.direction == "AtoB" else (f"{phase}B", f"{phase}A")
        )
        return root / source, root / target, root / f"{source}_masks"
    if data.layout == "folders":
        return root / f"{data.test_phase}_label", root / f"{data.test_phase}_img", None
    real = out / "real"
    real.mkdir(parents=True, exist_ok=True)
    for file in list_images(root / data.test_phase):
        target = real / f"{file.stem}.png"
        if not target.exists():  # written whole or not at all: a later run trusts it
            photo = split_pair(load_image(file, 3), data.photo_side)[0]
            write_atomically(target, lambda f, photo=photo: photo.save(f, format="PNG"))
    return root / data.test_phase, real, None


def _plot(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend, nothing to close

    names = [k for k in rows[0] if k != "step"]
    fig = Figure(figsize=(6, 2.2 * len(names)))
    axes = fig.subplots(len(names), 1, squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, name in zip(axes[:, 0], names):
        ax.plot(steps, [r[name] for r in rows], marker="o")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("training step")
    fig.tight_layout()
    write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=100))
