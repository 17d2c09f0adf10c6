"""``patchcontrast import``: generators saved by the official CUT / FastCUT, MoNCE and CycleGAN
code (``latest_net_G.pth``, ``latest_net_G_A.pth``) as patchcontrast models.

Those files are bare state dicts of the official ``ResnetGenerator``: a flat ``model``
sequence whose entries are numbered exactly as :class:`~patchcontrast.nets.resnet.
ResnetGenerator`'s ``net`` (reflection pad, 7x7 conv, norm, ReLU, two down-samplings, the
residual blocks, two up-samplings, pad, 7x7 conv, Tanh), with three differences of naming or
content that :func:`convert_state_dict` undoes:

- the residual blocks' inner sequence is ``conv_block`` (ours: ``block``); with dropout it has
  a ``Dropout`` entry after the first ReLU, which shifts the second conv from index 5 to 6 (ours
  never has it: dropout is inactive at inference, so the imported generator translates as the
  official one in eval mode, ``test.py --eval``);
- the anti-aliasing filters are saved as ``filt`` buffers (ours are fixed, not saved): they are
  checked against ours and dropped;
- files saved on a CPU, or from a ``DataParallel`` wrapper, prefix every key with ``module.``.

Nothing else of the architecture is stored, so it is read from the tensors: ``ngf`` and the
input channels from the first conv, the output channels from the last one, anti-aliased
down-sampling from ``filt`` buffers of 3x3 (else stride-2 convs), anti-aliased up-sampling from
``filt`` buffers of 4x4 (else transposed convs), the number of residual blocks by counting them
and dropout from the blocks' layout. The inferred generator is then built and every key and
shape of the file compared with it, so a file of another layout is refused, not half-loaded.
What cannot be read from a file (the direction it translates, the training crop size) is a
setting with a default, written into the model card.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import Tensor

from .nets.layers import BlurPool, BlurUpsample
from .nets.resnet import ResnetGenerator

OFFICIAL_NAMES = ("latest_net_G.pth (CUT, FastCUT, MoNCE)", "latest_net_G_A.pth (CycleGAN)")
_KEY = re.compile(r"model\.(\d+)\.(.+)")


class PatchcontrastCheckpoint(ValueError):
    """A file given as an official generator is a checkpoint of ``patchcontrast train``."""


@dataclass(frozen=True)
class Architecture:
    """What :func:`infer_architecture` reads from an official generator's state dict."""

    input_nc: int
    output_nc: int
    ngf: int
    n_blocks: int
    antialias: bool
    antialias_up: bool
    dropout: bool
    norm: str = "instance"

    def describe(self) -> str:
        down = "anti-aliased (BlurPool)" if self.antialias else "stride-2 convs"
        up = (
            "anti-aliased (fixed-filter up-sampling + conv)"
            if self.antialias_up
            else "transposed convs"
        )
        dropout = "dropout in the blocks (inactive at inference)" if self.dropout else "no dropout"
        return (
            f"ResNet generator, {self.input_nc} -> {self.output_nc} channels, ngf "
            f"{self.ngf}, {self.n_blocks} residual blocks, {self.norm} norm, down-sampling "
            f"by {down}, up-sampling by {up}, {dropout}"
        )


def read_state_dict(path: str | Path, *, raw: bool = False) -> dict[str, Tensor]:
    """The tensors of an official generator file, without a ``module.`` prefix. Only torch's
    weights-only unpickler reads the file, so a pickle that would run code is refused, never
    run. Any file that is not a state dict of tensors raises a one-line ValueError naming it
    and what it holds instead (a discriminator, the feature network F, an optimizer state, a
    patchcontrast checkpoint, damaged bytes). ``raw``: keep a ``module.`` prefix."""
    from .runstate import UnreadableFile, _kind, load_weights_only

    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"{path} is not a file: give the generator file of the official code "
            f"({', '.join(OFFICIAL_NAMES)})"
        )
    try:
        state = load_weights_only(path, legacy=True)
    except UnreadableFile as err:
        raise ValueError(f"{path} is not a readable generator file ({err})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if isinstance(state, dict) and {"state", "param_groups"} <= state.keys():
        raise ValueError(
            f"{path} is an optimizer state, not a generator: import the "
            f"generator file ({', '.join(OFFICIAL_NAMES)})"
        )
    if isinstance(state, dict) and {"objective", "config"} <= state.keys():
        raise PatchcontrastCheckpoint(
            f"{path} is a patchcontrast checkpoint, not an official generator: use it directly "
            "(translate --checkpoint) or `patchcontrast export` it"
        )
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items())
    ):
        raise ValueError(f"{path} is not a state dict of tensors: it holds {_kind(state)}")
    return state if raw else _strip_prefix(state)[0]


def _strip_prefix(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], bool]:
    """The state dict without DataParallel's ``module.`` prefix; whether it had one."""
    if all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}, True
    return state, False


def infer_architecture(state: dict[str, Tensor], path: str | Path) -> Architecture:
    """The generator that an official state dict holds, read from its keys and shapes; a
    one-line ValueError naming ``path`` for anything else."""
    keys = list(state)
    if any(k.startswith("mlp_") for k in keys):
        raise ValueError(
            f"{path} holds the PatchNCE feature network F (netF: mlp_* layers), "
            f"not a generator: import {OFFICIAL_NAMES[0].split()[0]}"
        )
    first = state.get("model.0.weight")
    if first is not None and first.dim() == 4 and tuple(first.shape[-2:]) == (4, 4):
        raise ValueError(
            f"{path} holds a PatchGAN discriminator (netD: 4x4 convs), not a "
            f"generator: import {OFFICIAL_NAMES[0].split()[0]} (or "
            f"{OFFICIAL_NAMES[1].split()[0]})"
        )
    if any(k.startswith("model.model.") for k in keys):
        raise ValueError(
            f"{path} holds a U-Net generator (unet_128/unet_256); only the ResNet "
            "generators (resnet_*blocks) can be imported"
        )
    if not all(_KEY.fullmatch(k) for k in keys):
        odd = next(k for k in keys if not _KEY.fullmatch(k))
        raise ValueError(
            f"{path} is not an official ResNet generator: its key {odd!r} is not "
            "of the form model.<index>.<name> (StyleGAN2 and other generators "
            "cannot be imported)"
        )
    conv = state.get("model.1.weight")
    if conv is None or conv.dim() != 4 or tuple(conv.shape[-2:]) != (7, 7):
        raise ValueError(
            f"{path} is not an official ResNet generator: it has no 7x7 first conv (model.1.weight)"
        )
    if "model.2.running_mean" in state:
        raise ValueError(
            f"{path} is a ResNet generator with batch norm (normG batch); only "
            "instance norm (the default of CUT and CycleGAN) can be imported"
        )
    if "model.1.bias" not in state:
        raise ValueError(
            f"{path} is a ResNet generator without normalisation (normG none: "
            "convs without bias); only instance norm can be imported"
        )
    ngf, input_nc = conv.shape[0], conv.shape[1]
    antialias = "model.7.filt" in state
    start = 12 if antialias else 10  # pad, conv, norm, ReLU + 2 x (conv, norm, ReLU[, blur])
    n_blocks = 0
    while f"model.{start + n_blocks}.conv_block.1.weight" in state:
        n_blocks += 1
    dropout = f"model.{start}.conv_block.6.weight" in state
    antialias_up = f"model.{start + n_blocks}.filt" in state
    last = max(int(_KEY.fullmatch(k)[1]) for k in keys if k.endswith(".weight"))
    output_nc = state[f"model.{last}.weight"].shape[0]
    arch = Architecture(
        input_nc=input_nc,
        output_nc=output_nc,
        ngf=ngf,
        n_blocks=n_blocks,
        antialias=antialias,
        antialias_up=antialias_up,
        dropout=dropout,
    )
    _check_layout(state, arch, path)
    for side, count in (("input", input_nc), ("output", output_nc)):
        if count not in (1, 3):
            raise ValueError(
                f"{path} is a generator of {count} {side} channels; images have 1 "
                "(greyscale) or 3 (RGB), so it cannot translate image files"
            )
    if n_blocks < 1:
        raise ValueError(
            f"{path} is a ResNet generator without residual blocks; patchcontrast "
            "models have at least one"
        )
    return arch


def official_layout(
    arch: Architecture,
) -> tuple[ResnetGenerator, dict[str, tuple[str | None, tuple[int, ...]]]]:
    """Our generator of ``arch`` and, for every key the official code saves for it, our key
    (None for the ``filt`` buffers, which we do not save) and the shape."""
    ours = ResnetGenerator(
        arch.input_nc,
        arch.output_nc,
        ngf=arch.ngf,
        n_blocks=arch.n_blocks,
        antialias=arch.antialias,
        antialias_up=arch.antialias_up,
    )
    layout: dict[str, tuple[str | None, tuple[int, ...]]] = {}
    for key, value in ours.state_dict().items():
        index, rest = key.split(".", 2)[1:]
        if rest.startswith("block."):
            inner, name = rest.split(".")[1:]
            if arch.dropout and int(inner) >= 4:  # the Dropout entry sits at index 4
                inner = str(int(inner) + 1)
            rest = f"conv_block.{inner}.{name}"
        layout[f"model.{index}.{rest}"] = (key, tuple(value.shape))
    for index, module in enumerate(ours.net):
        if isinstance(module, (BlurPool, BlurUpsample)):
            layout[f"model.{index}.filt"] = (None, tuple(module.kernel.shape))
    return ours, layout


def _check_layout(state: dict[str, Tensor], arch: Architecture, path) -> None:
    """Every key and shape of ``state`` against the generator that ``arch`` describes."""
    from .translator import state_mismatches

    layout = official_layout(arch)[1]
    problems = state_mismatches(state, {k: shape for k, (_, shape) in layout.items()})
    if problems:
        raise ValueError(
            f"{path} is not a ResNet generator of a known layout (closest: "
            f"{arch.describe()}): {'; '.join(problems)}"
        )


def convert_state_dict(
    state: dict[str, Tensor], path: str | Path
) -> tuple[Architecture, ResnetGenerator]:
    """Our :class:`ResnetGenerator` holding the official weights (eval mode), and its
    architecture. The official anti-aliasing filters must equal ours."""
    arch = infer_architecture(state, path)
    generator, layout = official_layout(arch)
    ours = {}
    for key, (our_key, _) in layout.items():
        if our_key is not None:
            ours[our_key] = state[key]
            continue
        index = int(_KEY.fullmatch(key)[1])
        expected = generator.net[index].kernel
        if not torch.allclose(state[key].float(), expected, atol=1e-6):
            raise ValueError(
                f"{path}: the anti-aliasing filter {key} is not the [1,2,1] / "
                "[1,3,3,1] binomial filter of CUT; this generator cannot be imported"
            )
    generator.load_state_dict(ours)
    return arch, generator.eval()


def _default_direction(path: Path) -> str:
    """CycleGAN's second generator (G_B) translates B to A; every other file A to B."""
    return "BtoA" if re.search(r"net_G_B\b", path.stem) else "AtoB"


def import_translator(
    path: str | Path, *, direction: str | None = None, device: str | torch.device = "cpu"
):
    """A :class:`~patchcontrast.translator.Translator` of an official generator file, and the
    config.json of its model folder."""
    from .config import resolve_config
    from .export import model_config
    from .pipeline import build_objective
    from .translator import Translator, translating_generator

    path = Path(path)
    if direction not in (None, "AtoB", "BtoA"):
        raise ValueError(f"--direction must be AtoB or BtoA, got {direction!r}")
    direction = direction or _default_direction(path)
    state, prefixed = _strip_prefix(read_state_dict(path, raw=True))
    arch, weights = convert_state_dict(state, path)
    cfg = resolve_config(
        "cut",
        "paper",
        overrides=[
            f"model.input_nc={arch.input_nc}",
            f"model.output_nc={arch.output_nc}",
            f"model.ngf={arch.ngf}",
            f"model.n_blocks={arch.n_blocks}",
            f"model.antialias={str(arch.antialias).lower()}",
            f"model.antialias_up={str(arch.antialias_up).lower()}",
            f"data.channels={arch.input_nc}",
            f"data.direction={direction}",
        ],
    )
    objective = build_objective(cfg, inference=True)
    name, generator = translating_generator(objective)
    generator.load_state_dict(weights.state_dict())
    config = model_config(cfg, generator=name, step=0)
    config["imported_from"] = {
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "code": "official CUT / FastCUT / MoNCE / CycleGAN ResnetGenerator",
        "architecture": {**arch.__dict__},
        "module_prefix": prefixed,
    }
    return Translator(objective, cfg, config).to(device).eval(), config


def import_model(path: str | Path, output: str | Path, *, direction: str | None = None) -> Path:
    """Write the official generator file ``path`` as a model folder (the layout of
    ``patchcontrast export``: model.safetensors, config.json, README.md); returns it."""
    from .export import _check_output, _save_weights
    from .translator import CARD, CONFIG, ONNX, WEIGHTS

    output = Path(output)
    translator, config = import_translator(path, direction=direction)
    _check_output(output)
    output.mkdir(parents=True, exist_ok=True)
    _save_weights(translator.generator, output / WEIGHTS)
    (output / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    (output / CARD).write_text(import_card(config))
    (output / ONNX).unlink(missing_ok=True)  # an earlier export's graph of other weights
    return output


def import_card(config: dict) -> str:
    """README.md of an imported model folder: where the weights come from and what is known."""
    from .export import USAGE

    source, arch = config["imported_from"], config["imported_from"]["architecture"]
    front = yaml.safe_dump(
        {
            "library_name": "patchcontrast",
            "pipeline_tag": "image-to-image",
            "tags": [
                "image-to-image",
                "patchcontrast",
                "imported",
                "unpaired-image-translation",
                "safetensors",
            ],
        },
        sort_keys=False,
    )
    described = Architecture(**arch).describe()
    direction = config["data"]["direction"]
    return "\n".join(
        [
            f"---\n{front}---",
            "",
            "# Imported generator",
            "",
            f"Imported by `patchcontrast import` (patchcontrast {config['patchcontrast_version']}, "
            f"model format {config['format']}) from the file `{source['file']}` (sha256 "
            f"`{source['sha256']}`) of the {source['code']} code"
            + (", saved with DataParallel's `module.` prefix" if source["module_prefix"] else "")
            + ".",
            "",
            f"Architecture, inferred from the file's tensors: {described}.",
            "",
            f"Direction: {direction} (a setting of the import, not stored in the file).",
            "",
            "## Training and evaluation",
            "",
            "Unknown: the official generator files store the weights only, not the data, the "
            "training length, the crop size or any metric. Score it with `patchcontrast evaluate` "
            "on translations of your test set.",
            "",
            "## Use",
            "",
            *USAGE,
            "",
            "It translates as the official `test.py --eval` does: images in [-1, 1], any size "
            "(padded to a multiple of 4 and cropped back), dropout inactive.",
            "",
            "## Intended use and limits",
            "",
            "- The weights keep the terms (licence, data) of where they were downloaded from.",
            "- Outputs are synthetic images: do not present them as real photographs.",
            "",
        ]
    )
