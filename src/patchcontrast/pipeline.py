"""The unpaired pipeline end to end: datasets from a config, training, translation of new images."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate
from torchvision.utils import save_image
from tqdm import tqdm

from .config import DataConfig, UnpairedRunConfig, config_from_dict
from .data import UnalignedDataset, list_images, load_image, write_generated_dataset
from .data.generated import RENDER_VERSION
from .objectives.unpaired import UnpairedObjective
from .trainer import Trainer


def builtin_root(data: DataConfig) -> Path:
    """Cache folder of the generated dataset for these settings (``PATCHCONTRAST_CACHE``
    overrides ``~/.cache/patchcontrast``)."""
    cache = Path(os.environ.get("PATCHCONTRAST_CACHE", Path.home() / ".cache" / "patchcontrast"))
    h, w = (data.load_size, data.load_size) if isinstance(data.load_size, int) else data.load_size
    return cache / (f"generated-v{RENDER_VERSION}-{h}x{w}-seed{data.builtin_seed}"
                    f"-{data.builtin_train}x{data.builtin_test}")


def build_datasets(data: DataConfig, seed: int) -> tuple[Dataset, Dataset]:
    """Training and test datasets. The built-in data is rendered once into the cache and read
    through the same folder pipeline (augmentation, masks) as real data."""
    root = Path(data.dataroot)
    if data.dataroot == "builtin":
        root = builtin_root(data)
        write_generated_dataset(root, n_train=data.builtin_train, n_test=data.builtin_test,
                                size=data.load_size, seed=data.builtin_seed, progress=False)
    common = {"direction": data.direction, "load_size": data.load_size,
              "crop_size": data.crop_size, "channels": data.channels, "on_bad": data.on_bad,
              "seed": seed}
    train = UnalignedDataset(root, "train", flip=data.flip, serial=data.serial, **common)
    test = UnalignedDataset(root, "test", flip=False, serial=True, **common)
    return train, test


def sample_batch(dataset: Dataset, n: int = 4) -> dict:
    """The first ``n`` items as a batch: fixed images for the periodic sample grids."""
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    return default_collate(items)


def train(cfg: UnpairedRunConfig, *, resume: bool = False) -> dict:
    """Train ``cfg`` (resuming from its run folder if asked); returns the Trainer's summary."""
    train_set, test_set = build_datasets(cfg.data, cfg.train.seed)
    torch.manual_seed(cfg.train.seed)  # network initialisation
    objective = UnpairedObjective(cfg.model)
    extra = {k: v for k, v in cfg.to_dict().items() if k != "train"}
    trainer = Trainer(objective, train_set, cfg.train, sample_batch=sample_batch(test_set),
                      extra_config=extra)
    return trainer.fit(resume=cfg.train.run_dir if resume else None)


def latest_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the newest ``checkpoints/step_*.pt`` of a run folder."""
    path = Path(path)
    if path.is_file():
        return path
    found = sorted((path / "checkpoints").glob("step_*.pt"))
    if not found:
        raise ValueError(f"no checkpoint found: {path} is neither a checkpoint file nor a run "
                         f"folder with checkpoints/step_*.pt")
    return found[-1]


def run_config(run_dir: str | Path) -> UnpairedRunConfig:
    """The resolved config a run saved as ``RUN_DIR/config.json``."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a run folder: {path} is missing")
    return config_from_dict(json.loads(path.read_text()))


def load_objective(checkpoint: str | Path, device: str = "cpu"
                   ) -> tuple[UnpairedObjective, UnpairedRunConfig, Path]:
    path = latest_checkpoint(checkpoint)
    state = torch.load(path, map_location=device, weights_only=True)
    cfg = config_from_dict(state["config"])
    objective = UnpairedObjective(cfg.model).to(device)
    objective.load_state_dict(state["objective"])
    return objective.eval(), cfg, path


def translate(checkpoint: str | Path, inputs: str | Path, output: str | Path, *,
              batch_size: int = 8, device: str = "cpu", progress: bool = True) -> list[Path]:
    """Translate an image file or every image of a folder with the checkpoint's generator.

    Images keep their size (padded to a multiple of 4 internally and cropped back) and their
    name, written as PNG in ``output``; images of equal size are batched together.
    """
    objective, cfg, path = load_objective(checkpoint, device)
    inputs = Path(inputs)
    files = [inputs] if inputs.is_file() else list_images(inputs)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    by_size: dict[tuple[int, int], list[tuple[Path, torch.Tensor]]] = {}
    written = []
    with tqdm(total=len(files), desc="translate", unit="img", disable=not progress) as bar:
        for file in files:
            image = load_image(file, cfg.data.channels)
            x = torch.from_numpy(_to_array(image)).to(device) * 2 - 1  # (C, H, W) in [-1, 1]
            group = by_size.setdefault(tuple(x.shape[-2:]), [])
            group.append((file, x))
            if len(group) == batch_size:
                written += _flush(objective, group, output)
                bar.update(len(group))
                group.clear()
        for group in by_size.values():
            written += _flush(objective, group, output)
            bar.update(len(group))
    (output / "translation.json").write_text(json.dumps(
        {"checkpoint": str(path), "images": len(written), "config": asdict(cfg)}, indent=2))
    return written


def _to_array(image) -> np.ndarray:
    """PIL image -> float32 (C, H, W) in [0, 1]."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return (array[None] if array.ndim == 2 else array.transpose(2, 0, 1)).copy()


def _flush(objective: UnpairedObjective, group: list, output: Path) -> list[Path]:
    if not group:
        return []
    batch = torch.stack([x for _, x in group])
    out = objective.translate(batch)
    paths = []
    for (file, _), y in zip(group, out):
        target = output / f"{file.stem}.png"
        save_image((y + 1) / 2, target)
        paths.append(target)
    return paths


def comparison_grid(inputs: str | Path, translations: str | Path, target: str | Path, *,
                    n: int = 8) -> Path:
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
