"""``patchcontrast export``: a run's translating generator as a self-describing model folder.

The folder follows the Hugging Face Hub layout (see ``patchcontrast.translator``):
``model.safetensors`` (the generator's weights only, no pickle), ``config.json`` (what
rebuilds and feeds it), ``README.md`` (a model card: method, data, steps, measured metrics,
the reconstructed training command, intended use and limits) and, with ``onnx=True``,
``model.onnx``. It can be uploaded as it is, or loaded with
``Translator.from_pretrained``, ``patchcontrast translate --checkpoint MODEL_DIR`` or
``torch.hub.load(REPO, "translator", model_dir=MODEL_DIR)``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shlex
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
import yaml
from torch import nn

from . import __version__
from .config import PairedRunConfig, RunConfig, config_from_dict, resolve_config
from .nets.spade import SPADEGenerator
from .nets.stylegan2 import StyleGAN2Generator
from .pipeline import build_objective, latest_checkpoint
from .runstate import read_checkpoint, write_atomically, write_together
from .translator import CARD, CONFIG, FORMAT, ONNX, WEIGHTS, translating_generator

# the data settings that translation needs (read_input, the objective) or that tell the inputs
UNPAIRED_DATA_KEYS = ("channels", "load_size", "crop_size", "direction")
PAIRED_DATA_KEYS = (
    "load_size",
    "crop_size",
    "layout",
    "palette",
    "photo_side",
    "ignore_value",
    "label_offset",
)
NORMALIZATION = {
    "unpaired": {
        "input": "images in [-1, 1] = x / 127.5 - 1 for 8-bit values x, (B, C, H, W)",
        "output": "images in [-1, 1]; 8-bit values x = (y + 1) * 127.5",
    },
    "paired": {
        "input": "label maps of class ids, (B, 1, H, W) int64, one-hot encoded by "
        "Translator (model.onnx takes the one-hot maps, (B, classes, H, W) float)",
        "output": "images in [-1, 1]; 8-bit values x = (y + 1) * 127.5",
    },
}
# the lowest opset that torch's exporter implements (asked for 17, it exports 18 and then fails
# to convert the Pad nodes down)
ONNX_OPSET = 18


def export_model(source: str | Path, output: str | Path, *, onnx: bool = False) -> Path:
    """Write the translating generator of ``source`` (a checkpoint file, or a run folder: its
    newest checkpoint) to the model folder ``output``; returns it.

    ``output`` may be new, empty, an earlier export (its files are replaced, other files such
    as a Hub clone's ``.git`` are kept) or a folder without files of these names; a folder whose
    README.md or config.json is not an export's is refused rather than overwritten. A failed
    ONNX export leaves ``output`` untouched.
    """
    source, output = Path(source), Path(output)
    checkpoint = latest_checkpoint(source)
    state = read_checkpoint(checkpoint)
    cfg = config_from_dict(state["config"])
    objective = build_objective(cfg, inference=True)
    name, generator = translating_generator(objective)
    prefix = f"{name}."
    generator.load_state_dict(
        {k[len(prefix) :]: v for k, v in state["objective"].items() if k.startswith(prefix)}
    )
    generator.eval()
    _check_output(output)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_info = export_onnx(generator, Path(tmp) / ONNX) if onnx else None
        output.mkdir(parents=True, exist_ok=True)
        config = model_config(cfg, generator=name, step=state["step"], onnx=onnx_info)
        card = model_card(config, state["config"], _run_folder(source, checkpoint))
        # all or nothing: an earlier export stays whole when a write fails (disk full)
        write_together(
            {
                output / WEIGHTS: _weights_bytes(generator),
                output / CONFIG: (json.dumps(config, indent=2) + "\n").encode(),
                output / CARD: card.encode(),
            }
        )
        if onnx:
            shutil.move(Path(tmp) / ONNX, output / ONNX)
        else:  # an earlier export's ONNX file would no longer match the weights
            (output / ONNX).unlink(missing_ok=True)
    return output


def _check_output(output: Path) -> None:
    """Refuse an output folder where the export would overwrite files of something else."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} is a file; give a folder for the model")
    if _earlier_export(output):
        return
    taken = [output / n for n in (WEIGHTS, CONFIG, CARD, ONNX) if (output / n).exists()]
    if taken:
        raise ValueError(
            f"{taken[0]} exists and is not from a patchcontrast export: choose a "
            "new or empty --output folder (nothing was overwritten)"
        )


def _earlier_export(folder: Path) -> bool:
    """Whether ``folder``'s config.json is one that an export wrote (a model.safetensors alone
    may be another library's)."""
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(config, dict)
        and "format" in config
        and config.get("library_name") == "patchcontrast"
    )


def _weights_bytes(generator: nn.Module) -> bytes:
    """The generator's state dict as safetensors (tensors only: nothing to unpickle)."""
    from safetensors.torch import save

    return save(
        {k: v.detach().contiguous() for k, v in generator.state_dict().items()},
        metadata={"format": "pt"},
    )


def _save_weights(generator: nn.Module, path: Path) -> None:
    """:func:`_weights_bytes` written to ``path`` (complete or not at all)."""
    write_atomically(path, lambda f: f.write(_weights_bytes(generator)))


def model_config(cfg: RunConfig, *, generator: str, step: int, onnx: dict | None = None) -> dict:
    """config.json of a model folder: what rebuilds the generator and feeds it."""
    family = "paired" if isinstance(cfg, PairedRunConfig) else "unpaired"
    data = asdict(cfg.data)
    keys = PAIRED_DATA_KEYS if family == "paired" else UNPAIRED_DATA_KEYS
    config = {
        "format": FORMAT,
        "library_name": "patchcontrast",
        "patchcontrast_version": __version__,
        "family": family,
        "preset": cfg.preset,
        "scale": cfg.scale,
        "step": step,
        "generator": generator,
        "normalization": NORMALIZATION[family],
        "model": asdict(cfg.model),
        "data": {k: data[k] for k in keys},
    }
    if onnx is not None:
        config["onnx"] = onnx
    return config


def _run_folder(source: Path, checkpoint: Path) -> Path | None:
    """The run folder a checkpoint belongs to (for its eval/summary.json), if known."""
    if source.is_dir():
        return source
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


# -- ONNX ---------------------------------------------------------------------------------------
def size_multiple(generator: nn.Module) -> int:
    """What the bare generator's input height and width must be multiples of (its down- and
    up-samplings; ``objective.translate`` pads to it, an ONNX graph does not)."""
    if isinstance(generator, SPADEGenerator):
        return generator.size_multiple
    if isinstance(generator, StyleGAN2Generator):
        return max(4, 2**generator.n_downsampling)
    return 4  # ResnetGenerator: two 2x down-samplings


def export_onnx(generator: nn.Module, target: Path) -> dict:
    """``torch.onnx.export`` of ``generator`` with a dynamic batch and dynamic height and width
    (multiples of :func:`size_multiple`), by the torch.export-based exporter (the TorchScript
    one has no ``atanh``, which residual generators use); returns config.json's description of
    the file. A layer that does not export raises a one-line ValueError naming it; torch's own
    log of its failed capture attempts is silenced meanwhile.

    The example input is two zero inputs of twice the size multiple: at the multiple itself the
    innermost feature maps are 1 px, a size that torch.export specialises on.
    """
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(
            f"--onnx needs the packages {', '.join(missing)}: pip install 'patchcontrast[onnx]'"
        )
    from torch.export import Dim

    paired = isinstance(generator, SPADEGenerator)
    names = ("labels_one_hot", "images") if paired else ("images", "translations")
    channels = generator.label_nc if paired else generator.input_nc
    multiple = size_multiple(generator)
    example = torch.zeros(2, channels, 2 * multiple, 2 * multiple)
    dims = {0: Dim("batch"), 2: multiple * Dim("height"), 3: multiple * Dim("width")}
    torch_log = logging.getLogger("torch")
    level = torch_log.level
    torch_log.setLevel(logging.CRITICAL)
    try:
        torch.onnx.export(
            generator,
            (example,),
            str(target),
            dynamo=True,
            external_data=False,
            opset_version=ONNX_OPSET,
            input_names=[names[0]],
            output_names=[names[1]],
            dynamic_shapes=(dims,),
            verbose=False,
        )
    except torch.onnx.errors.OnnxExporterError as err:
        raise ValueError(_export_failure(err, generator)) from None
    finally:
        torch_log.setLevel(level)
    return {
        "file": ONNX,
        "opset": ONNX_OPSET,
        "input": names[0],
        "output": names[1],
        "dynamic_axes": ["batch", "height", "width"],
        "size_multiple": multiple,
        "padding": f"none inside the graph: height and width must be multiples of "
        f"{multiple} (Translator pads other sizes and crops back)",
    }


def _export_failure(err: BaseException, generator: nn.Module) -> str:
    """A one-line reason for a failed ONNX export that names the generator's failing layer:
    the innermost of its modules whose ``forward`` is on the stack of an error in the chain."""
    names = {id(m): n for n, m in generator.named_modules() if n}
    layer, cause = None, err
    while err is not None:
        tb, cause = err.__traceback__, err
        while tb is not None:
            module = tb.tb_frame.f_locals.get("self")
            if id(module) in names:
                layer = f"{names[id(module)]} ({type(module).__name__})"
            tb = tb.tb_next
        err = err.__cause__ or err.__context__
    reason = (str(cause) or type(cause).__name__).splitlines()[0]
    where = f"its layer {layer}" if layer else f"the {type(generator).__name__}"
    return (
        f"cannot export the generator to ONNX with dynamic sizes: {where} failed "
        f"({reason}); export without --onnx for the safetensors weights alone"
    )


# -- model card ---------------------------------------------------------------------------------
def training_command(run: dict) -> str:
    """A ``patchcontrast train`` command that resolves to the run's config: ``--preset``,
    ``--scale`` and a ``--set`` for every setting that differs from what they give in this
    version (the run folder, which does not change the weights, is left out)."""
    preset, scale = run["preset"], run["scale"]
    base = _plain(resolve_config(preset, scale).to_dict())
    run = _plain(run)
    args = ["patchcontrast", "train", "--preset", preset, "--scale", scale]
    for section in ("model", "data", "train"):
        for key, value in run[section].items():
            if key != "run_dir" and base[section].get(key) != value:
                args += ["--set", f"{section}.{key}={_yaml_value(value)}"]
    return shlex.join(args)


def _plain(tree: dict) -> dict:
    """Tuples as lists, as in JSON, so that settings compare equal however they were read."""
    return json.loads(json.dumps(tree))


def _yaml_value(value: object) -> str:
    """A value as ``--set`` reads it back (YAML): JSON, or a plain string when unambiguous."""
    if isinstance(value, str) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value)


def model_card(config: dict, run: dict, run_dir: Path | None) -> str:
    """README.md of a model folder: Hub front matter, then what the model is, how it was
    trained and measured, how to use it and what not to expect of it."""
    model, data, train = run["model"], run["data"], run["train"]
    paired = config["family"] == "paired"
    tags = [
        "image-to-image",
        "patchcontrast",
        config["preset"],
        "paired-image-translation" if paired else "unpaired-image-translation",
        "spade" if paired else "contrastive-learning",
        "safetensors",
    ]
    if "onnx" in config:
        tags.append("onnx")
    front = yaml.safe_dump(
        {"library_name": "patchcontrast", "pipeline_tag": "image-to-image", "tags": tags},
        sort_keys=False,
    )
    steps = (
        f"{config['step']} iterations of batch {train['batch_size']} (schedule: "
        f"{train['n_epochs']} {train['schedule_unit']}s at a constant learning rate, then "
        f"{train['n_epochs_decay']} decaying linearly to 1/{train['n_epochs_decay'] + 1} of it)"
    )
    lines = [
        f"---\n{front}---",
        "",
        f"# patchcontrast `{config['preset']}` generator",
        "",
        _method(config, model),
        "",
        "## Training",
        "",
        f"- Data: {_data(data, paired)}",
        f"- Steps: {steps}",
        f"- Exported from: the run's `{config['generator']}` at step {config['step']} "
        f"(patchcontrast {config['patchcontrast_version']}, model format "
        f"{config['format']})",
        "",
        "Command (reconstructed from the run's config against this version's presets; the "
        "run folder is left out):",
        "",
        "```bash",
        training_command(run),
        "```",
        "",
        "## Evaluation",
        "",
        *_metrics(run_dir, config["step"]),
        "",
        "## Use",
        "",
        *_usage(config),
        "",
        "## Intended use and limits",
        "",
        *_limits(config, data, paired),
        "",
    ]
    return "\n".join(lines)


def _method(config: dict, model: dict) -> str:
    if config["family"] == "paired":
        metric = (
            "no loss on VGG-19 features"
            if model["metric"] == "none"
            else f"the `{model['metric']}` loss on VGG-19 features "
            f"(weight {model['lambda_metric']})"
        )
        return (
            f"A SPADE generator (label map -> image) trained with the `{config['preset']}` "
            f"preset at the `{config['scale']}` scale: GAN loss `{model['gan_mode']}` with "
            f"feature matching (weight {model['lambda_feat']}), {metric}. Generator ngf "
            f"{model['ngf']}, {model['num_upsampling_layers']} up-sampling."
        )
    contrastive, sesim = model["contrastive"], model["sesim"]
    if sesim != "none":  # replaces the loss on G's encoder (MoNCE Table 2)
        loss = f"the `{sesim}` SeSim structure loss (weight {model['lambda_sesim']})"
        if sesim == "learned":
            loss += f", its heads trained with `{contrastive}`"
    elif contrastive == "none":
        loss = "no contrastive loss (GAN only)"
    elif contrastive == "cycle":
        loss = f"a cycle-consistency loss (weight {model['lambda_cycle']})"
    else:
        options = f", options {json.dumps(model['loss_options'])}" if model["loss_options"] else ""
        loss = (
            f"the `{contrastive}` contrastive loss on patches of the generator's encoder "
            f"(weight {model['lambda_nce']}{options})"
        )
    generator = f"Generator `{model['netG']}`, ngf {model['ngf']}"
    if model["netG"] == "resnet":
        generator += f", {model['n_blocks']} residual blocks"
    if model["residual"]:
        generator += ", residual (starts as the identity)"
    if model["ema"]:
        generator += f"; exported: the moving average of G (decay {model['ema']})"
    return (
        f"An unpaired image-to-image generator (CUT family) trained with the "
        f"`{config['preset']}` preset at the `{config['scale']}` scale: GAN loss "
        f"`{model['gan_mode']}`, {loss}. {generator}."
    )


def _data(data: dict, paired: bool) -> str:
    root = data["dataroot"]
    if root == "builtin":
        what = (
            "the built-in generated label maps and photos"
            if paired
            else "the built-in generated data (plain 'horses' on grass -> striped 'zebras' on "
            "savanna)"
        )
        where = f"{what}, seed {data['builtin_seed']}, {data['builtin_train']} training images"
    else:
        where = f"`{root}`"
    direction = "" if paired else f", direction {data['direction']}"
    return f"{where}; {_side(data)} crops of images loaded at {data['load_size']}{direction}"


def _side(data: dict) -> str:
    """The training crop size as text: ``64 px`` or ``64x48 px``."""
    crop = data["crop_size"]
    return f"{crop} px" if isinstance(crop, int) else f"{crop[0]}x{crop[1]} px"


def _metrics(run_dir: Path | None, step: int) -> list[str]:
    """The run's scores of this step from ``RUN_DIR/eval/summary.json``, if it holds them."""
    path = None if run_dir is None else run_dir / "eval" / "summary.json"
    if path is None or not path.is_file():
        return [
            "No metrics were measured: `patchcontrast evaluate --run RUN_DIR` scores every "
            "checkpoint of a run into RUN_DIR/eval/summary.json, which an export copies "
            "here."
        ]
    try:
        summary = json.loads(path.read_text())
        final, best = summary["final"], summary["best_selected_on_test_set"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path} is not a summary that `patchcontrast evaluate --run` wrote "
            f"({type(err).__name__}: {err}); delete it or evaluate again"
        ) from None
    row = final if final["step"] == step else best if best["step"] == step else None
    if row is None:
        return [
            f"The run's eval/summary.json scores steps {final['step']} (final) and "
            f"{best['step']} (best), not this step ({step}): evaluate the run again "
            "(`patchcontrast evaluate --run`) and export again."
        ]
    size = summary["settings"].get("translated_at")
    at = "full size" if size is None else f"{size[0]}x{size[1]} px"
    lines = [
        f"Scored by `patchcontrast evaluate --run` on {summary['n_fake']} translations of "
        f"the test split, translated at {at}, against {summary.get('n_real')} real images "
        "(SWD in units of 1e-3, lower is better):",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.4f} |" for k, v in row.items() if k not in ("step", "by")]
    if row is best and best is not final:
        lines += ["", f"This step was the best by {best['by']}, selected on the test set."]
    return lines


# how to translate with a model folder, in the model cards of exported and imported models
USAGE = (
    "```bash",
    "patchcontrast translate --checkpoint MODEL_DIR --input images/ --output out/",
    "```",
    "",
    "```python",
    "from patchcontrast.translator import Translator",
    "",
    'translator = Translator.from_pretrained("MODEL_DIR")  # a local folder',
    'y = translator.translate_file("input.png")  # (C, H, W) in [-1, 1]',
    "```",
)


def _usage(config: dict) -> list[str]:
    lines = ["With patchcontrast installed, where MODEL_DIR is this folder:", "", *USAGE]
    if "onnx" in config:
        onnx = config["onnx"]
        lines += [
            "",
            f"`{ONNX}` (opset {onnx['opset']}) maps `{onnx['input']}` to "
            f"`{onnx['output']}` with dynamic batch, height and width; padding: "
            f"{onnx['padding']}.",
        ]
    return lines


def _limits(config: dict, data: dict, paired: bool) -> list[str]:
    if paired:
        inputs = f"label maps of the training data's {config['model']['label_nc']} classes"
    else:
        inputs = f"images like those of its source domain ({data['direction'][0]})"
    return [
        f"- Meant for {inputs}, at about the training resolution ({_side(data)} "
        "crops); other content or sizes give unpredictable results.",
        f"- Trained for {config['step']} iterations: quality depends on the training "
        "length and data; check the evaluation above before relying on it.",
        "- Outputs are synthetic images: do not present them as real photographs.",
        "- The weights inherit the terms of the training data's licence.",
    ]
