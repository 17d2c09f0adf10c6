"""Sweep specs: reading and checking them, the runs they expand to, each run's config.

The format is documented in :mod:`patchcontrast.sweep`. Nothing here trains: :func:`plan` names
the runs of a spec and :func:`resolve_run` builds (and so validates) the config of one.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import (
    ALL_PRESETS,
    PAIRED_PRESETS,
    PRESETS,
    SCALES,
    RunConfig,
    is_paired,
    resolve_config,
)

# evaluate_run's metric -> the summary keys the tables use (swd also gives one key per level)
METRIC_KEYS = {
    "swd": ("swd_avg",),
    "fid": ("fid",),
    "kid": ("kid_mean", "kid_std"),
    "content": ("content_iou",),
    "domain": ("domain_b",),
}
LOWER_IS_BETTER = ("swd_avg", "fid", "kid_mean", "kid_std")
_SPEC_KEYS = (
    "name",
    "description",
    "scale",
    "seeds",
    "metrics",
    "select",
    "device",
    "inception_weights",
    "overrides",
    "runs",
    "plots",
)
_GROUP_KEYS = ("presets", "label", "overrides", "grid")
_PLOT_KEYS = ("x", "y", "log_x", "title")


@dataclass(frozen=True)
class SweepRun:
    """One training run of a sweep: ``settings`` are (dotted key, value) in application order."""

    name: str
    variant: str  # name without the seed: the row of the aggregate table
    preset: str
    label: str | None
    seed: int
    params: dict[str, Any]  # grid values by dotted key
    settings: tuple[tuple[str, Any], ...]


def read_spec(spec: str | Path | dict) -> dict:
    """The spec as written: a dict, or read from a YAML file."""
    if isinstance(spec, dict):
        return spec
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"sweep spec {path} does not exist")
    try:  # the safe loader: a python/object tag is refused, never run
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        problem = " ".join(str(err).split())  # YAML's messages span lines
        raise ValueError(f"sweep spec {path} is not a readable YAML file ({problem})") from None
    if not isinstance(data, dict):
        raise ValueError(f"sweep spec {path} must hold a mapping (name, runs, ...)")
    return data


def load_spec(spec: str | Path | dict, source: str | Path | None = None) -> dict:
    """Read and check the structure of a spec; returns it with defaults filled and overrides
    parsed (configs are resolved by :func:`resolve_run`). Errors name the file: ``spec`` if it
    is a path, else ``source`` (the file a dict was read from), if given."""
    if not isinstance(spec, dict):
        source = spec
    try:
        return _checked(read_spec(spec))
    except ValueError as err:
        if source is None or str(source) in str(err):
            raise
        raise ValueError(f"{source}: {err}") from None


def _checked(spec: dict) -> dict:
    """load_spec of a dict."""
    _known("sweep spec", spec, _SPEC_KEYS)
    out = {
        "description": "",
        "scale": "cpu",
        "seeds": [0],
        "metrics": ["swd", "content", "domain"],
        "device": None,
        "inception_weights": None,
        "overrides": [],
        "plots": [],
        **spec,
    }
    if not isinstance(out.get("name"), str) or not re.fullmatch(r"[A-Za-z0-9._-]+", out["name"]):
        raise ValueError(
            f"sweep spec: name must be a folder name of letters, digits, '.', '_' "
            f"or '-'; got {out.get('name')!r}"
        )
    if out["scale"] not in SCALES:
        raise ValueError(
            f"sweep spec: scale must be one of {', '.join(SCALES)}; got {out['scale']!r}"
        )
    seeds = out["seeds"]
    if not (
        isinstance(seeds, list)
        and seeds
        and all(type(s) is int and s >= 0 for s in seeds)
        and len(set(seeds)) == len(seeds)
    ):
        raise ValueError(
            f"sweep spec: seeds must be a non-empty list of distinct integers >= 0; got {seeds!r}"
        )
    metrics = out["metrics"]
    if not (isinstance(metrics, list) and metrics and set(metrics) <= set(METRIC_KEYS)):
        raise ValueError(
            f"sweep spec: metrics must be a non-empty list of "
            f"{', '.join(METRIC_KEYS)}; got {metrics!r}"
        )
    keys = metric_keys(metrics)
    if "select" not in spec:  # the first lower-is-better key of the metrics
        out["select"] = next((k for k in keys if k in LOWER_IS_BETTER), None)
    if out["select"] not in [k for k in keys if k in LOWER_IS_BETTER]:
        raise ValueError(
            f"sweep spec: select must be a lower-is-better key of the metrics "
            f"({', '.join(k for k in keys if k in LOWER_IS_BETTER) or 'none'}); "
            f"got {out['select']!r}"
        )
    _overrides("sweep spec overrides", out["overrides"])
    if not isinstance(out.get("runs"), list) or not out["runs"]:
        raise ValueError(
            "sweep spec: runs must be a non-empty list of groups "
            "({presets: [...], grid: {key: [values]}})"
        )
    out["runs"] = [_group(i, group) for i, group in enumerate(out["runs"])]
    swept: dict[str, list] = {}
    for group in out["runs"]:
        for key, values in group["grid"].items():
            swept.setdefault(key, []).extend(values)
    if not isinstance(out["plots"], list):
        raise ValueError("sweep spec: plots must be a list of {x, y, log_x}")
    out["plots"] = [_plot_spec(i, plot, swept, keys) for i, plot in enumerate(out["plots"])]
    return out


def metric_keys(metrics: list[str]) -> list[str]:
    """Summary keys of evaluate_run's metrics that the tables report, in order."""
    return [key for m in metrics for key in METRIC_KEYS[m]]


def _known(what: str, mapping: object, valid: tuple[str, ...]) -> None:
    if not isinstance(mapping, dict):
        raise ValueError(f"{what} must be a mapping; got {mapping!r}")
    unknown = sorted(set(map(str, mapping)) - set(valid))
    if unknown:
        raise ValueError(f"{what}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")


def _key(where: str, key: object) -> str:
    """A settings key: ``section.name`` or ``model.loss_options.name``."""
    parts = key.split(".") if isinstance(key, str) else []
    if (
        len(parts) < 2
        or parts[0] not in ("model", "data", "train")
        or not all(parts)
        or (len(parts) > 2 and parts[:2] != ["model", "loss_options"])
        or len(parts) > 3
    ):
        raise ValueError(
            f"{where}: key {key!r} must be section.name (model, data or train) or "
            "model.loss_options.name"
        )
    if key in ("train.seed", "train.run_dir"):
        raise ValueError(f"{where}: {key} is set by the sweep (seeds, run folders)")
    return key


def _overrides(where: str, items: object) -> list[tuple[str, Any]]:
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise ValueError(f"{where} must be a list of 'section.key=value' strings; got {items!r}")
    pairs = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"{where}: {item!r} must look like section.key=value")
        pairs.append((_key(where, key.strip()), yaml.safe_load(raw)))
    return pairs


def _group(i: int, group: object) -> dict:
    where = f"sweep spec runs[{i}]"
    _known(where, group, _GROUP_KEYS)
    presets = group.get("presets")
    if not isinstance(presets, list) or not presets:
        raise ValueError(f"{where}: presets must be a non-empty list")
    unknown = [p for p in presets if p not in ALL_PRESETS]
    if unknown:
        raise ValueError(
            f"{where}: unknown preset(s) {', '.join(map(str, unknown))}; "
            f"choose from {', '.join(ALL_PRESETS)}"
        )
    label = group.get("label")
    if label is not None and not (
        isinstance(label, str) and re.fullmatch(r"[A-Za-z0-9.+-]+", label)
    ):
        raise ValueError(f"{where}: label must be letters, digits, '.', '+' or '-'; got {label!r}")
    grid = group.get("grid") or {}
    if not isinstance(grid, dict):
        raise ValueError(f"{where}: grid must map keys to lists of values; got {grid!r}")
    for key, values in grid.items():
        _key(f"{where} grid", key)
        if not isinstance(values, list) or not values:
            raise ValueError(
                f"{where} grid: {key} needs a non-empty list of values; got {values!r}"
            )
    return {
        "presets": presets,
        "label": label,
        "grid": grid,
        "overrides": _overrides(f"{where} overrides", group.get("overrides", [])),
    }


def _plot_spec(i: int, plot: object, swept: dict[str, list], keys: list[str]) -> dict:
    where = f"sweep spec plots[{i}]"
    _known(where, plot, _PLOT_KEYS)
    if plot.get("x") not in swept:
        raise ValueError(
            f"{where}: x must be a swept grid key ({', '.join(swept) or 'none'}); "
            f"got {plot.get('x')!r}"
        )
    if plot.get("y") not in keys:
        raise ValueError(
            f"{where}: y must be a metric key ({', '.join(keys)}); got {plot.get('y')!r}"
        )
    log_x = plot.get("log_x", False)
    if not isinstance(log_x, bool):
        raise ValueError(f"{where}: log_x must be true or false; got {log_x!r}")
    values = swept[plot["x"]]
    if log_x and not all(is_number(v) and v > 0 for v in values):
        raise ValueError(f"{where}: log_x needs positive numbers for {plot['x']}; got {values}")
    return {"x": plot["x"], "y": plot["y"], "log_x": log_x, "title": plot.get("title")}


def is_number(value: object) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plan(spec: dict) -> list[SweepRun]:
    """Every run of a (loaded) spec, in order: groups, presets, grid points, seeds."""
    short = short_names([key for group in spec["runs"] for key in group["grid"]])
    base = _overrides("sweep spec overrides", spec["overrides"])
    runs, names = [], set()
    for group in spec["runs"]:
        grid = group["grid"]
        for preset, point in itertools.product(group["presets"], itertools.product(*grid.values())):
            params = dict(zip(grid, point))
            parts = [
                preset,
                *([group["label"]] if group["label"] else []),
                *(f"{short[k]}={folder_text(v)}" for k, v in params.items()),
            ]
            variant = "__".join(parts)
            for seed in spec["seeds"]:
                name = f"{variant}__seed={seed}"
                if name in names:
                    raise ValueError(
                        f"sweep spec: two runs share the folder {name}; give the "
                        "groups distinct labels"
                    )
                names.add(name)
                runs.append(
                    SweepRun(
                        name,
                        variant,
                        preset,
                        group["label"],
                        seed,
                        params,
                        (*base, *group["overrides"], *params.items()),
                    )
                )
    return runs


def short_names(keys: list[str]) -> dict[str, str]:
    """Dotted key -> its last part, or the whole key where two keys share that last part."""
    last = {}
    for key in dict.fromkeys(keys):
        last.setdefault(key.rsplit(".", 1)[-1], []).append(key)
    return {
        k: k.rsplit(".", 1)[-1] if len(last[k.rsplit(".", 1)[-1]]) == 1 else k
        for k in dict.fromkeys(keys)
    }


def folder_text(value: Any) -> str:
    """A value as a filesystem-safe piece of a folder name (floats exactly, via repr)."""
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, (int, float, str)):
        text = repr(value) if isinstance(value, float) else str(value)
    else:
        text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def _yaml(value: Any) -> str:
    """A value in the YAML flow form that ``resolve_config``'s overrides parse back."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=True).strip()
    return text.removesuffix("...").strip()


def resolve_run(
    run: SweepRun, spec: dict, run_dir: str | Path, *, max_steps: int | None = None
) -> tuple[RunConfig, list[str]]:
    """The run's validated config and the overrides (on top of preset and scale) that made it."""
    table = PAIRED_PRESETS if is_paired(run.preset) else PRESETS
    options = dict(table[run.preset].get("model", {}).get("loss_options", {}))
    plain, touched = {}, False
    for key, value in run.settings:
        if key == "model.loss_options":
            if not isinstance(value, dict):
                raise ValueError(
                    f"run {run.name}: model.loss_options must be a mapping; got {value!r}"
                )
            options, touched = dict(value), True
        elif key.startswith("model.loss_options."):
            options[key.rsplit(".", 1)[-1]], touched = value, True
        else:
            plain[key] = value
    overrides = [f"{k}={_yaml(v)}" for k, v in plain.items()]
    if touched:
        overrides.append(f"model.loss_options={_yaml(options)}")
    if spec["device"] is not None:
        overrides.append(f"train.device={_yaml(spec['device'])}")
    if max_steps is not None:
        overrides.append(f"train.max_steps={max_steps}")
    overrides.append(f"train.seed={run.seed}")
    try:
        cfg = resolve_config(run.preset, spec["scale"], run_dir=str(run_dir), overrides=overrides)
    except ValueError as err:
        raise ValueError(f"run {run.name}: {err}") from None
    if is_paired(run.preset) and set(spec["metrics"]) & {"content", "domain"}:
        raise ValueError(
            f"run {run.name}: metrics content and domain need the built-in "
            "unpaired data; use swd (or fid/kid) for paired presets"
        )
    if "content" in spec["metrics"] and cfg.data.dataroot != "builtin":
        source = "testA" if cfg.data.direction == "AtoB" else "testB"
        if not (Path(cfg.data.dataroot) / f"{source}_masks").is_dir():
            raise ValueError(
                f"run {run.name}: metric content needs {source}_masks/ in {cfg.data.dataroot}"
            )
    return cfg, overrides
