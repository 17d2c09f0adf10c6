"""A trained generator on its own: the exported model folder and the :class:`Translator`.

``patchcontrast export`` (``patchcontrast.export``) writes a run's translating generator as a
folder in the Hugging Face Hub layout: ``model.safetensors`` (the weights, no pickle),
``config.json`` (what rebuilds the network: the run's model section, the inference part of its
data section, preset, scale, normalisation, training step and a ``format`` version),
``README.md`` (the model card) and optionally ``model.onnx``. Such a folder needs neither the
run folder, nor its checkpoints, nor its data; :class:`Translator` loads it from local disk
(nothing is downloaded) and translates exactly as the run's checkpoint does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import RunConfig, config_from_dict
from .objectives.unpaired import UnpairedObjective

# version of the folder's layout and config.json keys; a reader refuses versions it does not know
FORMAT = 1
WEIGHTS, CONFIG, CARD, ONNX = "model.safetensors", "config.json", "README.md", "model.onnx"


def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is meant as an exported model folder: a folder with ``model.safetensors``
    or with a ``config.json`` holding the ``format`` key (a run folder's config.json has none).
    Either one suffices, so that a folder missing the other is reported as an incomplete model
    folder rather than as a run folder without checkpoints."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / WEIGHTS).is_file():
        return True
    try:
        config = json.loads((path / CONFIG).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "format" in config


def read_model_config(folder: str | Path) -> dict:
    """The ``config.json`` of an exported model folder, after checking that the folder holds
    both files and that the config is of a format this version reads."""
    folder = Path(folder)
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise ValueError(
                f"{folder} is not an exported patchcontrast model: {folder / name} "
                "is missing (`patchcontrast export RUN_DIR --output MODEL_DIR` "
                "writes both model.safetensors and config.json)"
            )
    path = folder / CONFIG
    try:
        config = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}): export the model again") from None
    if not isinstance(config, dict) or "format" not in config:
        raise ValueError(
            f"{path} is not the config.json of an exported patchcontrast model: it "
            "has no 'format' key"
        )
    if config["format"] != FORMAT:
        raise ValueError(
            f"{path} is of model format {config['format']!r}; this patchcontrast "
            f"reads format {FORMAT}: export the model again with this version, or "
            f"use the version that wrote it ({config.get('patchcontrast_version')})"
        )
    return config


def run_config_of(config: dict, folder: str | Path) -> RunConfig:
    """The run config that rebuilds an exported generator and reads its inputs. The training
    section is not exported: it gets the defaults, with the model folder as ``run_dir``."""
    try:
        return config_from_dict(
            {
                "preset": config["preset"],
                "scale": config["scale"],
                "model": config["model"],
                "data": config["data"],
                "train": {"run_dir": str(folder)},
            }
        )
    except KeyError as err:
        raise ValueError(f"{Path(folder) / CONFIG} lacks the key {err}") from None
    except ValueError as err:
        raise ValueError(f"{Path(folder) / CONFIG}: {err}") from None


def translating_generator(objective: nn.Module) -> tuple[str, nn.Module]:
    """The name and module of an objective's generator that translates: unpaired runs'
    ``translator`` (``G_ema`` when the run kept an average of G, else ``G``), paired runs' G."""
    generator = objective.translator if isinstance(objective, UnpairedObjective) else objective.G
    name = next(name for name, module in objective.named_children() if module is generator)
    return name, generator


def read_weights(path: Path, generator: nn.Module) -> dict[str, Tensor]:
    """The tensors of ``model.safetensors``, checked against the generator that config.json
    builds: every entry present, none extra, every shape equal (a one-line error otherwise,
    instead of load_state_dict's multi-line one)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        weights = load_file(path)
    except SafetensorError as err:
        raise ValueError(
            f"{path} is not a readable safetensors file ({err}): export the model again"
        ) from None
    expected = {k: tuple(v.shape) for k, v in generator.state_dict().items()}
    problems = state_mismatches(weights, expected)
    if problems:
        raise ValueError(
            f"{path} does not fit the generator that {path.with_name(CONFIG)} "
            f"describes: {'; '.join(problems)}"
        )
    return weights


def state_mismatches(state: dict[str, Tensor], expected: dict[str, tuple[int, ...]]) -> list[str]:
    """How ``state``'s keys and shapes differ from ``expected`` (key -> shape), as short phrases
    for a one-line error (missing keys, unexpected keys, wrong shapes); empty if they match."""
    problems = []
    missing = [k for k in expected if k not in state]
    if missing:
        problems.append(f"missing {_some(missing)}")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        problems.append(f"unexpected {_some(unexpected)}")
    wrong = [
        f"{k} {tuple(state[k].shape)} instead of {shape}"
        for k, shape in expected.items()
        if k in state and tuple(state[k].shape) != shape
    ]
    if wrong:
        problems.append(f"wrong shapes {_some(wrong)}")
    return problems


def _some(items: list[str], n: int = 3) -> str:
    """The first ``n`` items and how many more, for one-line messages."""
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


class Translator(nn.Module):
    """A run's translating generator, ready to translate (eval mode).

    ``translator(images)``: ``(B, C, H, W)`` images in ``[-1, 1]`` (``x / 127.5 - 1`` for 8-bit
    ``x``) of any size -> translations in ``[-1, 1]`` (paired runs: ``(B, 1, H, W)`` int64
    label maps -> images). :meth:`translate_file` reads an image (or label map) as
    ``patchcontrast translate`` does.

    The generator is built through the run's objective, and translation is that objective's
    ``translate`` (its padding to the generator's size multiple, its choice of generator), so
    a model folder translates bit for bit as the checkpoint it was exported from. Only the
    generator is a sub-module: ``parameters()``, ``state_dict()`` and ``.to()`` concern the
    exported weights alone (the objective's other, untrained parts stay unused on the CPU).

    Attributes:
        config: the folder's config.json.
        run_config: the run config rebuilt from it (training section: defaults).
        generator: the network (``G_ema`` or ``G`` of the run).
    """

    def __init__(self, objective: nn.Module, run_config: RunConfig, config: dict) -> None:
        super().__init__()
        self.config, self.run_config = config, run_config
        self.generator = translating_generator(objective)[1]
        # a bound method, not a sub-module: the objective's D and F stay out of this module
        self._translate = objective.translate

    @classmethod
    def from_pretrained(
        cls, model_dir: str | Path, *, device: str | torch.device = "cpu"
    ) -> Translator:
        """Load an exported model folder (local only): config.json rebuilds the generator,
        model.safetensors fills it strictly. Problems raise a one-line ValueError naming the
        file: a missing file, an unknown format version, tensors that do not fit the config."""
        from .pipeline import build_objective

        folder = Path(model_dir)
        if not folder.is_dir():
            raise ValueError(
                f"{folder} is not a folder: from_pretrained loads a local model "
                "folder that `patchcontrast export` wrote (nothing is downloaded)"
            )
        config = read_model_config(folder)
        run_config = run_config_of(config, folder)
        objective = build_objective(run_config, inference=True)
        generator = translating_generator(objective)[1]
        generator.load_state_dict(read_weights(folder / WEIGHTS, generator))
        return cls(objective, run_config, config).to(device).eval()

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def translate(self, inputs: Tensor) -> Tensor:
        """Translations of a batch (no gradients), as the run's objective translates."""
        return self._translate(inputs)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.translate(inputs)

    def translate_file(self, path: str | Path) -> Tensor:
        """The translation ``(C, H, W)`` in ``[-1, 1]`` of one image file (paired runs: a label
        map), read as ``patchcontrast translate`` reads it; save it with e.g.
        ``torchvision.utils.save_image((y + 1) / 2, "out.png")``."""
        from .pipeline import read_input

        return self.translate(read_input(Path(path), self.run_config)[None].to(self.device))[0]
