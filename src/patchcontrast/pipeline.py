"""The pipelines end to end: datasets from a config, training, translation of new images.

Both families share everything here; the run config's type decides: ``UnpairedRunConfig`` (CUT
family, images -> images) or ``PairedRunConfig`` (SPADE family, label maps -> images).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate
from torchvision.utils import save_image
from tqdm import tqdm

from .config import (
    DataConfig,
    PairedDataConfig,
    PairedRunConfig,
    RunConfig,
    config_from_dict,
    replace,
)
from .data import UnalignedDataset, list_images, load_image, write_generated_dataset
from .data.folders import open_image, parse_size
from .data.generated import RENDER_VERSION
from .data.generated_paired import PAIRED_RENDER_VERSION, write_generated_paired
from .data.paired import (
    PairedDataset,
    colours_to_labels,
    labels_outside,
    remap_label_ids,
    resolve_palette,
    split_pair,
)
from .data.single_image import SingleImageDataset, write_generated_single_pair
from .objectives.paired import PairedObjective
from .objectives.unpaired import UnpairedObjective
from .runstate import atomic_write_text, checkpoint_files, read_checkpoint, write_atomically
from .trainer import Trainer

if TYPE_CHECKING:  # translator imports this module
    from .translator import Translator

Objective = UnpairedObjective | PairedObjective
# (H, W) of the built-in single-image pair: at the smallest zoom (1/3) it still holds 12
# distinct 64 px cells, enough for the cpu scale's batch of 8 crops
SINGLE_SIZE = (576, 768)


def builtin_root(data: DataConfig | PairedDataConfig) -> Path:
    """Cache folder of the generated dataset for these settings (``PATCHCONTRAST_CACHE``
    overrides ``~/.cache/patchcontrast``)."""
    cache = Path(os.environ.get("PATCHCONTRAST_CACHE", Path.home() / ".cache" / "patchcontrast"))
    h, w = (data.load_size, data.load_size) if isinstance(data.load_size, int) else data.load_size
    if isinstance(data, PairedDataConfig):
        kind = f"generated-paired-v{PAIRED_RENDER_VERSION}"
    elif data.mode == "single_image":
        return cache / f"generated-single-v{RENDER_VERSION}-{SINGLE_SIZE[0]}x{SINGLE_SIZE[1]}"
    else:
        kind = f"generated-v{RENDER_VERSION}"
    counts = f"{data.builtin_train}x{data.builtin_test}"
    return cache / f"{kind}-{h}x{w}-seed{data.builtin_seed}-{counts}"


def data_root(data: DataConfig | PairedDataConfig) -> Path:
    """The dataset folder of a config; the built-in data is rendered into the cache first."""
    if data.dataroot != "builtin":
        return Path(data.dataroot)
    root = builtin_root(data)
    if isinstance(data, DataConfig) and data.mode == "single_image":
        return write_generated_single_pair(root, size=SINGLE_SIZE, seed=data.builtin_seed)
    write = (
        write_generated_paired if isinstance(data, PairedDataConfig) else write_generated_dataset
    )
    write(
        root,
        n_train=data.builtin_train,
        n_test=data.builtin_test,
        size=data.load_size,
        seed=data.builtin_seed,
        progress=False,
    )
    return root


def build_datasets(cfg: RunConfig) -> tuple[Dataset, Dataset]:
    """Training and test datasets. The built-in data is rendered once into the cache and read
    through the same folder pipeline (augmentation, masks, label checks) as real data."""
    data, seed, root = cfg.data, cfg.train.seed, data_root(cfg.data)
    common = {"load_size": data.load_size, "crop_size": data.crop_size, "seed": seed}
    if isinstance(cfg, PairedRunConfig):
        common.update(
            label_nc=cfg.model.label_nc,
            layout=data.layout,
            dont_care=cfg.model.dont_care,
            ignore_value=data.ignore_value,
            label_offset=data.label_offset,
            palette=data.palette,
            photo_side=data.photo_side,
        )
        return (
            PairedDataset(root, data.train_phase, train=True, flip=data.flip, **common),
            PairedDataset(root, data.test_phase, train=False, flip=False, **common),
        )
    if data.mode == "single_image":
        a, b = ("trainA", "trainB") if data.direction == "AtoB" else ("trainB", "trainA")
        crop = data.crop_size if isinstance(data.crop_size, int) else data.crop_size[0]
        load = data.load_size if isinstance(data.load_size, int) else max(data.load_size)
        single = {
            "crop_size": crop,
            "load_size": load,
            "batch_size": cfg.train.batch_size,
            "random_scale_max": data.random_scale_max,
            "seed": seed,
        }
        return (
            SingleImageDataset(
                root / a, root / b, virtual_size=data.virtual_size, flip=data.flip, **single
            ),
            SingleImageDataset(
                root / a, root / b, virtual_size=cfg.train.batch_size, flip=False, **single
            ),
        )
    common.update(direction=data.direction, channels=data.channels, on_bad=data.on_bad)
    train = UnalignedDataset(root, "train", flip=data.flip, serial=data.serial, **common)
    test = UnalignedDataset(root, "test", flip=False, serial=True, **common)
    return train, test


def build_objective(cfg: RunConfig, *, inference: bool = False) -> Objective:
    if isinstance(cfg, PairedRunConfig):
        return PairedObjective(cfg.model, inference=inference)
    crop = cfg.data.crop_size
    return UnpairedObjective(
        cfg.model, crop_size=crop if isinstance(crop, int) else crop[0], inference=inference
    )


def sample_batch(dataset: Dataset, n: int = 4) -> dict:
    """The first ``n`` items as a batch: fixed images for the periodic sample grids."""
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    return default_collate(items)


# Share of a time budget given to the planned iterations: the rest absorbs timing noise and the
# start of training (TensorBoard, data loader, the first slow iterations).
BUDGET_SAFETY = 0.9


def plan_time_budget(
    cfg: RunConfig, budget_s: float, *, spent_s: float = 0.0, timing_iterations: int = 8
) -> tuple[RunConfig, dict]:
    """Fit the schedule to a wall-clock budget: time a few iterations, one sample grid and one
    checkpoint of a throwaway copy of the run (in a temporary folder; the RNG states are put
    back), then fix the number of iterations so that the whole schedule, the learning-rate
    decay included, ends within ``budget_s`` seconds counted from ``spent_s`` seconds ago.

    The constant:decay split of the preset's schedule is kept, counted in iterations. Returns
    the config with that schedule (and ``train.time_budget_s``) and the plan as a dict. Given
    the planned step count, training is as deterministic as any other run.
    """
    import tempfile
    import time

    from .distributed import setup
    from .runstate import rng_preserved

    if not budget_s > 0:
        raise ValueError(f"the time budget must be > 0 seconds; got {budget_s}")
    if setup(cfg.train.device)[0].enabled:
        raise ValueError(
            "--time-budget plans a single-process run; under torchrun give the "
            "schedule (train.n_epochs, train.n_epochs_decay) instead"
        )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, rng_preserved(torch.cuda.is_available()):
        train_set, test_set = build_datasets(cfg)
        torch.manual_seed(cfg.train.seed)
        trainer = Trainer(
            build_objective(cfg),
            train_set,
            replace(cfg, train={"run_dir": tmp, "max_steps": None}).train,
            sample_batch=sample_batch(test_set),
        )
        timing = trainer.time_iterations(timing_iterations)
    spent_s += time.perf_counter() - start
    t = cfg.train
    per_step = (
        timing["iteration"]
        + timing["sample"] / t.sample_every
        + timing["checkpoint"] / t.checkpoint_every
    )
    steps = int((budget_s - spent_s) * BUDGET_SAFETY / per_step)
    if steps < 2:
        raise ValueError(
            f"a time budget of {budget_s:.0f} s leaves room for {max(steps, 0)} "
            f"iterations ({timing['iteration']:.2f} s each, {spent_s:.0f} s spent "
            "planning): give a larger budget"
        )
    constant = round(steps * t.n_epochs / (t.n_epochs + t.n_epochs_decay))
    planned = replace(
        cfg,
        train={
            "schedule_unit": "step",
            "n_epochs": constant,
            "n_epochs_decay": steps - constant,
            "time_budget_s": budget_s,
        },
    )
    plan = {
        "budget_s": budget_s,
        "planning_s": round(spent_s, 1),
        "seconds_per_iteration": round(timing["iteration"], 4),
        "sample_s": round(timing["sample"], 3),
        "checkpoint_s": round(timing["checkpoint"], 3),
        "iterations": steps,
        "constant": constant,
        "decay": steps - constant,
        "expected_s": round(spent_s + steps * per_step),
    }
    return planned, plan


def format_plan(plan: dict) -> str:
    return (
        f"time budget {plan['budget_s']:.0f} s: {plan['seconds_per_iteration']:.3f} s per "
        f"iteration measured, so {plan['iterations']} iterations ({plan['constant']} at the "
        f"initial learning rate, {plan['decay']} decaying linearly to 1/{plan['decay'] + 1} of "
        f"it), expected to end after "
        f"about {plan['expected_s']} s"
    )


def saved_plan(cfg: RunConfig) -> RunConfig | None:
    """``cfg`` with the schedule that its run folder's ``config.json`` planned for a time
    budget (a resumed run keeps its plan); None when the folder holds no planned run."""
    if not (Path(cfg.train.run_dir) / "config.json").is_file():
        return None
    saved = run_config(cfg.train.run_dir).train
    if saved.time_budget_s is None:
        return None
    keep = ("schedule_unit", "n_epochs", "n_epochs_decay", "time_budget_s")
    return replace(cfg, train={k: getattr(saved, k) for k in keep})


def train(cfg: RunConfig, *, resume: bool = False, time_budget_s: float | None = None) -> dict:
    """Train ``cfg`` (resuming from its run folder if asked); returns the Trainer's summary.

    ``time_budget_s``: fit the schedule to this many seconds first (:func:`plan_time_budget`);
    a resumed run keeps the plan saved in its folder instead of timing again.
    """
    from .distributed import on_main, setup

    if time_budget_s is not None:
        kept = saved_plan(cfg) if resume else None
        if kept is not None:
            cfg = kept
            print(
                f"keeping the run's plan: {cfg.train.n_epochs + cfg.train.n_epochs_decay} "
                f"iterations for a {cfg.train.time_budget_s:.0f} s budget"
            )
        elif resume:
            raise ValueError(
                f"{cfg.train.run_dir} was not planned with a time budget; resume "
                "it without --time-budget"
            )
        else:
            cfg, plan = plan_time_budget(cfg, time_budget_s)
            print(format_plan(plan))
    # under torchrun the built-in data is rendered by rank 0 alone, before any rank reads it
    on_main(lambda: data_root(cfg.data), setup(cfg.train.device)[0])
    train_set, test_set = build_datasets(cfg)
    torch.manual_seed(cfg.train.seed)  # network initialisation
    objective = build_objective(cfg)
    extra = {k: v for k, v in cfg.to_dict().items() if k != "train"}
    trainer = Trainer(
        objective, train_set, cfg.train, sample_batch=sample_batch(test_set), extra_config=extra
    )
    return trainer.fit(resume=cfg.train.run_dir if resume else None)


def latest_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the newest ``checkpoints/step_*.pt`` of a run folder."""
    path = Path(path)
    if path.is_file():
        return path
    found = checkpoint_files(path / "checkpoints")
    if not found:
        raise ValueError(
            f"no checkpoint found: {path} is neither a checkpoint file nor a run "
            f"folder with checkpoints/step_*.pt"
        )
    return found[-1]


def run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config a run saved as ``RUN_DIR/config.json``."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a run folder: {path} is missing")
    try:
        return config_from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        # damaged (not JSON, not UTF-8) or another file's content: one line naming the file
        problem = (
            "empty file"
            if not path.stat().st_size
            else (str(err) or type(err).__name__).splitlines()[0]
        )
        raise ValueError(
            f"{path} is not the config.json of a patchcontrast run ({problem}); "
            "`patchcontrast train` writes it"
        ) from None


def load_objective(
    checkpoint: str | Path, device: str = "cpu"
) -> tuple[Objective | Translator, RunConfig, Path]:
    """The objective of a checkpoint (run folder -> newest) in eval mode, its config and file.

    Objectives are built for inference: without training-only parts that would need pretrained
    weights (a paired run's discriminator and VGG, a SeSim run's feature network), so
    translation needs none of them. A file that is not a readable checkpoint raises a ValueError
    naming it (``runstate.read_checkpoint``). An exported model folder (``patchcontrast
    export``) gives its :class:`~patchcontrast.translator.Translator`, which translates alike,
    and its ``model.safetensors``; so does a ``.pth`` generator file of the official CUT /
    MoNCE / CycleGAN code (``patchcontrast.importer``), and the file itself.
    """
    from .translator import WEIGHTS, Translator, is_model_folder

    if is_model_folder(checkpoint):
        translator = Translator.from_pretrained(checkpoint, device=device)
        return translator, translator.run_config, Path(checkpoint) / WEIGHTS
    if Path(checkpoint).is_file() and Path(checkpoint).suffix == ".pth":
        from .importer import PatchcontrastCheckpoint, import_translator

        try:  # a generator file of the official code
            translator = import_translator(checkpoint, device=device)[0]
            return translator, translator.run_config, Path(checkpoint)
        except PatchcontrastCheckpoint:
            pass  # one of ours, named .pth: read below
    path = latest_checkpoint(checkpoint)
    state = read_checkpoint(path)  # on the CPU; load_state_dict copies onto the device
    cfg = config_from_dict(state["config"])
    objective = build_objective(cfg, inference=True).to(device)
    # inference objectives leave out training-only parts (paired: D and VGG; SeSim heads):
    # load what they have, strictly
    own = objective.state_dict().keys()
    weights = {k: v for k, v in state["objective"].items() if k in own}
    objective.load_state_dict(weights)
    return objective.eval(), cfg, path


def translate(
    checkpoint: str | Path,
    inputs: str | Path,
    output: str | Path,
    *,
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = True,
    size: int | tuple[int, int] | None = None,
    tile: int | None = None,
    tile_overlap: int | None = None,
    tile_stats: str = "image",
) -> list[Path]:
    """Translate an image file or every image of a folder with the checkpoint's generator.

    Unpaired runs read images; paired runs read label maps: single-channel class-id images, or
    for a run trained on side-by-side pairs (pix2pix layout) those pair images, whose colour
    label half is mapped to class ids. Outputs keep the input's size (padded internally and
    cropped back) and name, written as PNG in ``output``; inputs of equal size are batched.
    ``size`` (int or (height, width)) first resizes every input (bilinear with antialiasing;
    label maps nearest), e.g. to the resolution the run was trained at.

    ``tile`` (px) translates every batch in overlapping tiles of that size, ``tile_overlap``
    px apart (default a quarter tile), blended (``patchcontrast.tiling``): for images too large
    for one pass. By default (None) batches above ``tiling.AUTO_TILE_PIXELS`` pixels are tiled
    with ``tiling.AUTO_TILE``; ``tile=0`` never tiles. ``tile_stats``: "image" normalises the
    tiles with the whole image's instance-norm statistics (measured over the tiles first: close
    to the whole pass, several times the work), "tile" with each tile's own (one pass).
    """
    from .export import size_multiple
    from .tiling import check_tile
    from .translator import Translator, translating_generator

    target = None if size is None else parse_size(size, "size")
    objective, cfg, path = load_objective(checkpoint, device)
    generator = (
        objective.generator
        if isinstance(objective, Translator)
        else translating_generator(objective)[1]
    )
    multiple = size_multiple(generator)
    if tile:
        check_tile(tile, tile_overlap, multiple)  # refuse bad values before any work
    if tile_stats not in ("tile", "image"):
        raise ValueError(f"--tile-stats must be 'tile' or 'image', got {tile_stats!r}")
    tiling = {
        "tile": tile,
        "overlap": tile_overlap,
        "multiple": multiple,
        "generator": generator,
        "stats": tile_stats,
    }
    inputs = Path(inputs)
    files = [inputs] if inputs.is_file() else list_images(inputs)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    by_size: dict[tuple[int, int], list[tuple[Path, torch.Tensor]]] = {}
    written = []
    with tqdm(total=len(files), desc="translate", unit="img", disable=not progress) as bar:
        for file in files:
            x = resize_input(read_input(file, cfg), target).to(device)
            group = by_size.setdefault(tuple(x.shape[-2:]), [])
            group.append((file, x))
            if len(group) == batch_size:
                written += _flush(objective, group, output, tiling)
                bar.update(len(group))
                group.clear()
        for group in by_size.values():
            written += _flush(objective, group, output, tiling)
            bar.update(len(group))
    atomic_write_text(
        output / "translation.json",
        json.dumps(
            {"checkpoint": str(path), "images": len(written), "config": asdict(cfg)}, indent=2
        ),
    )
    return written


def read_input(file: Path, cfg: RunConfig) -> torch.Tensor:
    """One file as the generator's input, as translate reads it: image float (C, H, W) in
    [-1, 1], or label map int64 (1, H, W) after the run's palette / offset / ignore mapping.
    """
    if not isinstance(cfg, PairedRunConfig):
        return torch.from_numpy(_to_array(load_image(file, cfg.data.channels))) * 2 - 1
    model, data = cfg.model, cfg.data
    if data.layout == "side_by_side":
        _, label = split_pair(load_image(file, 3), data.photo_side)
        ids = colours_to_labels(np.asarray(label), resolve_palette(data.palette))
    else:
        with open_image(file) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(
                    f"{file} is a {im.mode} image; a paired run translates label "
                    "maps of class ids (single-channel images)"
                )
            ids = remap_label_ids(
                np.array(im),
                model.label_nc,
                ignore_value=data.ignore_value,
                label_offset=data.label_offset,
            )
    bad = labels_outside(ids, model.label_nc, model.dont_care)
    if bad:
        raise ValueError(
            f"{file}: label values {bad[:10]} outside 0.."
            f"{model.label_nc - 1 + int(model.dont_care)}"
        )
    return torch.from_numpy(ids)[None]


def resize_input(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Resize one generator input (C, H, W); class ids stay ids (nearest neighbour)."""
    if size is None or tuple(x.shape[-2:]) == size:
        return x
    if x.dtype == torch.int64:
        return F.interpolate(x[None].float(), size=size, mode="nearest")[0].long()
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[
        0
    ]


def _to_array(image) -> np.ndarray:
    """PIL image -> float32 (C, H, W) in [0, 1]."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return (array[None] if array.ndim == 2 else array.transpose(2, 0, 1)).copy()


def _flush(
    objective: Objective, group: list, output: Path, tiling: dict | None = None
) -> list[Path]:
    from .tiling import AUTO_TILE, AUTO_TILE_PIXELS, translate_tiled

    if not group:
        return []
    batch = torch.stack([x for _, x in group])
    tile = None if tiling is None else tiling["tile"]
    if (
        tiling is not None
        and tile is None
        and batch.shape[0] * batch.shape[-2] * batch.shape[-1] > AUTO_TILE_PIXELS
    ):
        tile = AUTO_TILE
    if tile:
        out = translate_tiled(
            objective.translate,
            batch,
            tile=tile,
            overlap=tiling.get("overlap"),
            multiple=tiling["multiple"],
            generator=tiling["generator"],
            stats=tiling["stats"],
        )
    else:
        out = objective.translate(batch)
    paths = []
    for (file, _), y in zip(group, out):
        target = output / f"{file.stem}.png"
        # complete or absent, also when a signal or a full disk stops the translation
        write_atomically(target, lambda f, y=y: save_image((y + 1) / 2, f, format="png"))
        paths.append(target)
    return paths


def comparison_grid(
    inputs: str | Path, translations: str | Path, target: str | Path, *, n: int = 8
) -> Path:
    """PNG grid of the first ``n`` inputs (left) and their translations (right), one per row."""
    rows, size = [], None
    for file in list_images(inputs)[:n]:
        translated = Path(translations) / f"{file.stem}.png"
        if not translated.is_file():
            continue
        pair = [torch.from_numpy(_to_array(load_image(p, 3)))[None] for p in (file, translated)]
        size = size or pair[0].shape[-2:]  # rows of differently sized images: the first's size
        pair = [torch.nn.functional.interpolate(x, size=size, mode="bilinear") for x in pair]
        rows.append(torch.cat(pair, dim=-1)[0])
    if not rows:
        raise ValueError(f"no translated images of {inputs} found in {translations}")
    target = Path(target)
    save_image(torch.stack(rows), target, nrow=1, padding=2)
    return target


def demo(cfg: RunConfig) -> dict:
    """The end-to-end demo behind ``make demo``: train ``cfg`` on the built-in data, translate
    its test split, write ``RUN_DIR/demo_grid.png`` (input | translation) and
    ``RUN_DIR/metrics.json``: SWD, content IoU and domain score of the translations next to the
    same scores of the untranslated test inputs, measured in the same run (the baseline).

    Run again, the demo reuses its finished run (or continues an interrupted one) when the
    folder holds the same configuration, and starts afresh, replacing the folder's checkpoints,
    when it holds another.
    """
    import shutil

    from . import evaluate

    run_dir = Path(cfg.train.run_dir)
    continue_run = bool(checkpoint_files(run_dir / "checkpoints"))
    if continue_run:
        saved = run_config(run_dir).to_dict() if (run_dir / "config.json").is_file() else None
        if saved != cfg.to_dict():
            print(f"{run_dir} holds a run of another configuration: starting the demo afresh")
            shutil.rmtree(run_dir / "checkpoints")
            continue_run = False
        else:
            print(
                f"{run_dir} holds this demo's run: continuing it (nothing to train if it finished)"
            )
    train(cfg, resume=continue_run)
    test_a = builtin_root(cfg.data) / "testA"
    out = run_dir / "test_translations"
    translate(run_dir, test_a, out, size=cfg.data.crop_size)
    grid = comparison_grid(test_a, out, run_dir / "demo_grid.png")
    scores = {}
    for name, images in (("translated", out), ("untranslated", test_a)):
        scores[name] = evaluate.evaluate_folders(
            test_a.with_name("testB"),
            images,
            metrics=("swd", "content", "domain"),
            masks=test_a.with_name("testA_masks"),
            swd_size=cfg.data.crop_size,
            progress=False,
        )["metrics"]
    ratio = scores["translated"]["swd_avg"] / scores["untranslated"]["swd_avg"]
    result = {
        "run_dir": str(run_dir),
        "grid": str(grid),
        "translations": str(out),
        "metrics": scores,
        "swd_ratio_to_untranslated": ratio,
        "settings": {"swd_size": cfg.data.crop_size, "real": str(test_a.with_name("testB"))},
    }
    evaluate.write_json(result, run_dir / "metrics.json")
    return result


def format_demo(result: dict) -> str:
    """The demo's scores as a table: translations against the untranslated inputs."""
    names = {
        "swd_avg": "SWD x1e3 (lower is better)",
        "content_iou": "content IoU",
        "domain_b": "called B (domain score)",
    }
    t, u = result["metrics"]["translated"], result["metrics"]["untranslated"]
    lines = [
        f"| {'test split (50 images)':28s} | {'translated':>10s} | {'untranslated':>12s} |",
        f"|{'-' * 30}|{'-' * 12}|{'-' * 14}|",
    ]
    lines += [f"| {label:28s} | {t[key]:10.3f} | {u[key]:12.3f} |" for key, label in names.items()]
    return "\n".join(
        [
            *lines,
            f"SWD of the translations / SWD of the inputs: "
            f"{result['swd_ratio_to_untranslated']:.2f}",
        ]
    )
