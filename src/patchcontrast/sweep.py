"""``patchcontrast sweep SPEC.yaml``: grids of training runs that rebuild the papers' tables.

A sweep trains every (preset x grid point x seed) of a spec, each run in its own folder, evaluates
each run (:func:`patchcontrast.evaluate.evaluate_run`) and aggregates mean +- std over seeds into
a table (MoNCE Tables 1, 3, 4) and plots of a metric against a swept hyper-parameter (Fig. 3, 7).

Spec (YAML)::

    name: weighting-cpu            # sweep folder ROOT/<name>/ ([A-Za-z0-9._-])
    description: free text         # optional
    scale: cpu                     # paper | cpu (config.resolve_config's scale)
    seeds: [0, 1, 2]               # -> train.seed; data.builtin_seed stays fixed (same data)
    metrics: [swd, content, domain]   # of swd, fid, kid, content, domain (content and domain
                                      # need the built-in unpaired data); default as here
    select: swd_avg                # lower-is-better key picking the "best on test" checkpoint
                                   # (default: the first of the metrics' keys)
    device: auto                   # optional: train.device and evaluation device
    inception_weights: null        # optional: file for fid/kid (not downloadable offline)
    overrides: [data.dataroot=builtin]   # section.key=value (YAML value) for every run
    runs:                          # groups; each group is a product grid
      - presets: [cut-weightnce, cut-monce]
        label: null                # optional: names the group's runs (tells groups apart)
        overrides: []              # optional: section.key=value for this group only
        grid:                      # key -> list of values (every combination is run)
          model.loss_options.weighting: [hard, easy]
          model.loss_options.beta: [1, 0.5, 0.1]
      - presets: [cut]
    plots:                         # optional: y (a metric key) against a swept key x
      - {x: model.loss_options.beta, y: swd_avg, log_x: true, title: optional}

Keys ``model.loss_options.NAME`` set one option and merge with the preset's ``loss_options``
(``model.loss_options`` itself replaces the dict). Later settings win: spec overrides, group
overrides, grid values. Run folders: ``ROOT/<name>/<preset>[__<label>]__<k>=<v>...__seed=<s>``
with ``k`` the last part of the dotted key (the whole key where that is ambiguous).

Every run's config is resolved before anything trains. A run whose record says done (same
config, same checkpoint step, evaluated) is skipped; one with checkpoints is resumed
(``train(resume=True)``); a failure is recorded with its error (traceback in ``RUN/sweep.log``)
and the sweep goes on (a re-run retries it); Ctrl-C stops after the run's own checkpoint; changed
metrics re-evaluate without retraining. ``--from-report`` carries finished runs across workspaces
that lost their run folders: the runs that ``REPORT/<name>/runs.csv`` lists as done (with the
same ``spec.yaml``) get records "restored" from its rows and are not trained again; their
numbers enter the tables, but not the translation grid (a report keeps no images). Tables report
the final checkpoint, mean and sample std over seeds, and the checkpoint selected on the test
set, labelled so. Written files: ``spec.yaml``, ``status.json``, per run ``sweep_run.json`` +
``sweep.log``, and :func:`aggregate`'s ``results.csv``, ``results.md``, ``runs.csv``,
``plots/*.png`` and ``translations.png``.
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import itertools
import json
import shlex
import shutil
import statistics
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

from .config import RunConfig, config_from_dict
from .runstate import (
    RunFolderInUse,
    atomic_write_text,
    checkpoint_files,
    checkpoint_step,
    run_lock,
)
from .sweep_spec import (
    LOWER_IS_BETTER,
    METRIC_KEYS,
    SweepRun,
    folder_text,
    is_number,
    load_spec,
    metric_keys,
    plan,
    read_spec,
    resolve_run,
    short_names,
)

__all__ = ["METRIC_KEYS", "SweepRun", "aggregate", "load_spec", "plan", "resolve_run", "run_sweep"]

# train settings that may change between an interrupted run and its continuation
_RESUMABLE = (
    "run_dir",
    "max_steps",
    "device",
    "log_every",
    "sample_every",
    "checkpoint_every",
    "keep_last",
    "num_workers",
)


def run_sweep(
    spec: str | Path | dict,
    *,
    root: str | Path = "runs/sweeps",
    dry_run: bool = False,
    only: str | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    report: str | Path | None = None,
    from_report: bool = False,
) -> dict:
    """Validate ``spec``, then train, evaluate and aggregate its runs into ``ROOT/<name>/``.

    ``only``: run just the runs whose folder name matches (a glob pattern, or a substring);
    ``max_steps``: ``train.max_steps`` of every run (smoke tests); ``dry_run``: resolve every
    config and list the runs, train nothing; ``report``: also copy the aggregate files (tables,
    plots, translations) to ``REPORT/<name>/``, e.g. ``docs/results``; ``from_report``: first
    restore the records of the runs that report lists as done and that have none here (see the
    module docstring). Returns ``sweep_dir``, ``runs`` (name, preset, seed, overrides, status),
    ``restored`` (names) and, unless dry, the aggregate ``rows``, ``table`` and ``plots``.
    """
    if from_report and report is None:
        raise ValueError("from_report needs report, the folder that holds <name>/runs.csv")
    raw = read_spec(spec)
    spec = load_spec(raw, source=None if isinstance(spec, dict) else spec)
    sweep_dir = Path(root) / spec["name"]
    runs = plan(spec)
    # every config first: a typo in the last group must not surface after hours of training
    resolved = [
        (run, *resolve_run(run, spec, sweep_dir / run.name, max_steps=max_steps)) for run in runs
    ]
    every = resolved
    if only is not None:
        pattern = only if any(c in only for c in "*?[") else f"*{only}*"
        resolved = [r for r in resolved if fnmatch.fnmatchcase(r[0].name, pattern)]
        if not resolved:
            raise ValueError(f"only={only!r} matches none of the {len(runs)} runs")
    say = print if progress else (lambda *args, **kwargs: None)
    out = {
        "sweep_dir": str(sweep_dir),
        "runs": [
            {"name": run.name, "preset": run.preset, "seed": run.seed, "overrides": overrides}
            for run, _, overrides in resolved
        ],
    }
    if dry_run:
        # as `patchcontrast train` arguments; the settings every run shares are listed once
        common = [o for o in resolved[0][2] if all(o in r[2] for r in resolved)]
        say(
            f"sweep {spec['name']}: {len(resolved)} of {len(runs)} runs in {sweep_dir}, each "
            f"with --scale {spec['scale']} " + " ".join(f"--set {shlex.quote(o)}" for o in common)
        )
        for run, _, overrides in resolved:
            say(
                f"  {run.name}: "
                + " ".join(
                    [
                        f"--preset {run.preset}",
                        *(f"--set {shlex.quote(o)}" for o in overrides if o not in common),
                    ]
                )
            )
        return out
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if from_report:
        out["restored"] = _restore(Path(report) / spec["name"], raw, spec, every, sweep_dir)
        say(
            f"restored {len(out['restored'])} finished run(s) from "
            f"{Path(report) / spec['name'] / 'runs.csv'}"
        )
    (sweep_dir / "spec.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        for i, ((run, cfg, _), entry) in enumerate(zip(resolved, out["runs"]), 1):
            say(f"[{i}/{len(resolved)}] {run.name}", flush=True)
            entry["status"] = "interrupted"  # until _run_one returns
            record = _run_one(run, cfg, spec, say)
            entry.update({k: record[k] for k in ("status", "error") if k in record})
    except KeyboardInterrupt:
        say("sweep interrupted; run the same command again to continue")
        raise
    finally:
        _write_status(sweep_dir, runs)
    out["rows"], out["table"] = aggregate(sweep_dir)
    out["plots"] = [str(p) for p in sorted((sweep_dir / "plots").glob("*.png"))]
    say(
        f"\n{out['table']}\nwrote {sweep_dir}/results.csv, results.md, runs.csv"
        + (f", {len(out['plots'])} plot(s) in plots/" if out["plots"] else "")
    )
    if report is not None:
        out["report"] = str(_copy_report(sweep_dir, Path(report) / spec["name"]))
        say(f"copied them to {out['report']}")
    return out


def _copy_report(sweep_dir: Path, target: Path) -> Path:
    """The aggregate files of a sweep (not its runs) into ``target``, replacing older copies."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in ("spec.yaml", "results.md", "results.csv", "runs.csv", "translations.png"):
        if (sweep_dir / name).is_file():
            shutil.copy2(sweep_dir / name, target / name)
    if (sweep_dir / "plots").is_dir():
        shutil.copytree(sweep_dir / "plots", target / "plots")
    return target


def _restore(report_dir: Path, raw: dict, spec: dict, resolved: list, sweep_dir: Path) -> list[str]:
    """Write a ``sweep_run.json`` (status done, ``restored_from``) for every run that
    ``report_dir/runs.csv`` lists as done and that has no record in ``sweep_dir``; the config in
    it is this run's, resolved now (the report's ``spec.yaml`` must equal this spec)."""
    table = report_dir / "runs.csv"
    if not table.is_file():
        return []
    written = yaml.safe_load(yaml.safe_dump(raw, sort_keys=False))
    if not (report_dir / "spec.yaml").is_file() or read_spec(report_dir / "spec.yaml") != written:
        raise ValueError(
            f"{report_dir / 'spec.yaml'} is not this spec, so the runs of "
            f"{table} were made with other settings; train afresh without "
            "--from-report, or report to another folder"
        )
    select = spec["select"]
    best = f"best_on_test_{select}"
    listed = ("name", "variant", "seed", "status", "step", "seconds", "error", "sec_per_iter", best)
    with open(table, newline="") as f:
        rows = {row["name"]: row for row in csv.DictReader(f) if row["status"] == "done"}
    restored = []
    for run, cfg, _ in resolved:
        row, path = rows.get(run.name), sweep_dir / run.name / "sweep_run.json"
        if row is None or path.exists():  # a record here (done or not) is newer than the report
            continue
        record = {
            "name": run.name,
            "variant": run.variant,
            "preset": run.preset,
            "label": run.label,
            "seed": run.seed,
            "params": run.params,
            "status": "done",
            "metrics": spec["metrics"],
            "select": select,
            "config": json.loads(json.dumps(cfg.to_dict())),
            "step": int(row["step"]),
            "final": {k: float(v) for k, v in row.items() if k not in listed and v},
            "best_selected_on_test_set": {select: float(row[best])} if row[best] else {},
            "seconds": float(row["seconds"]) if row["seconds"] else None,
            "sec_per_iter": float(row["sec_per_iter"]) if row["sec_per_iter"] else None,
            "restored_from": str(table),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, record)
        restored.append(run.name)
    return restored


def _machine() -> dict[str, Any]:
    """The machine of a run's latest training or evaluation pass (a resume elsewhere replaces
    it). float32 training diverges between CPUs (their conv kernels round differently), so a
    number that does not repeat elsewhere can be traced to this."""
    import platform

    import torch

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu
            )
    return {
        "cpu": cpu,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _run_one(run: SweepRun, cfg: RunConfig, spec: dict, say) -> dict:
    """Train (or resume) and evaluate one run; its record goes to ``RUN/sweep_run.json``. A run
    folder in use by another live process is left alone, its record included: the returned
    record says failed, with the lock's message."""
    run_dir = Path(cfg.train.run_dir)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(run_lock(run_dir))
        except RunFolderInUse as err:
            say(f"    FAILED: {err}")
            return {"name": run.name, "status": "failed", "error": f"ValueError: {err}"}
        return _run_locked(run, cfg, spec, say)


def _run_locked(run: SweepRun, cfg: RunConfig, spec: dict, say) -> dict:
    """_run_one, with the run folder's lock held."""
    from . import evaluate, pipeline

    run_dir = Path(cfg.train.run_dir)
    path, config = run_dir / "sweep_run.json", json.loads(json.dumps(cfg.to_dict()))
    old, step = _read_json(path), _checkpoint_step(run_dir)
    evaluation = {"metrics": spec["metrics"], "select": spec["select"]}
    same = (
        old
        and old["status"] == "done"
        and all(old.get(k) == v for k, v in evaluation.items())
        and _differences(_normalised(old["config"]), config, ("run_dir",)) == []
    )
    if same and old.get("restored_from"):
        say(f"    done in an earlier workspace (restored from {old['restored_from']}), skipped")
        return old
    if same and old["step"] == step and (run_dir / "eval" / "summary.json").is_file():
        say(f"    done already (step {step}), skipped")
        return old
    # otherwise (re)train what is missing; a finished training resumes as a no-op, so changed
    # metrics only re-evaluate
    record = {
        "name": run.name,
        "variant": run.variant,
        "preset": run.preset,
        "label": run.label,
        "seed": run.seed,
        "params": run.params,
        "status": "running",
        **evaluation,
        "machine": _machine(),
        "config": config,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(run_dir / "sweep.log", "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {run.name}\n")
        try:
            if step is not None:
                _check_resumable(run_dir, config)
                say(f"    resuming from step {step}")
            _write_json(path, record)
            with contextlib.redirect_stdout(log):  # the trainer's config dump goes to the log
                result = pipeline.train(cfg, resume=step is not None)
                device = spec["device"] or "auto"
                if device == "auto":
                    import torch

                    device = "cuda" if torch.cuda.is_available() else "cpu"
                summary = evaluate.evaluate_run(
                    run_dir,
                    metrics=spec["metrics"],
                    select=spec["select"],
                    inception_weights=spec["inception_weights"],
                    device=device,
                    progress=False,
                )
            record.update(
                status="done",
                step=result["step"],
                final=summary["final"],
                best_selected_on_test_set=summary["best_selected_on_test_set"],
            )
            keys = metric_keys(spec["metrics"])
            say(
                f"    done in {time.perf_counter() - start:.0f} s (step {result['step']}): "
                + ", ".join(f"{k} {summary['final'][k]:.4g}" for k in keys)
            )
        except KeyboardInterrupt as err:  # TrainingInterrupted included: its checkpoint is saved
            record.update(status="interrupted", step=getattr(err, "step", None))
            raise
        except Exception as err:  # one failed run must not stop the sweep
            record.update(status="failed", error=f"{type(err).__name__}: {err}")
            log.write(traceback.format_exc())
            say(f"    FAILED: {record['error']} (traceback in {run_dir / 'sweep.log'})")
        finally:
            record["seconds"] = round(time.perf_counter() - start, 1)
            _write_json(path, record)
    return record


def _checkpoint_step(run_dir: Path) -> int | None:
    found = checkpoint_files(run_dir / "checkpoints")
    return checkpoint_step(found[-1]) if found else None


def _differences(old: dict, new: dict, ignore: tuple[str, ...]) -> list[str]:
    """Dotted keys whose values differ between two config dicts (train keys in ``ignore``)."""
    flat = [
        {
            f"{section}.{k}": v
            for section, values in tree.items()
            for k, v in (values.items() if isinstance(values, dict) else [("", values)])
            if not (section == "train" and k in ignore)
        }
        for tree in (old, new)
    ]
    return sorted(k for k in flat[0].keys() | flat[1].keys() if flat[0].get(k) != flat[1].get(k))


def _normalised(tree: dict) -> dict:
    """A saved config dict as the current code resolves it: fields added since it was written
    get their defaults, so a package update alone does not make finished runs stale."""
    try:
        return json.loads(json.dumps(config_from_dict(tree).to_dict()))
    except (ValueError, KeyError, TypeError):
        return tree  # a field that no longer exists: reported as a difference


def _check_resumable(run_dir: Path, config: dict) -> None:
    """Refuse to continue checkpoints that were trained with other settings."""
    saved = _read_json(run_dir / "config.json")
    changed = _differences(_normalised(saved) if saved else {}, config, _RESUMABLE)
    if changed:
        raise ValueError(
            f"{run_dir} holds a run with other settings ({', '.join(changed)}); "
            "delete that folder or rename the sweep to train it afresh"
        )


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _write_json(path: Path, data: dict) -> None:
    # atomic: an interrupted write never leaves a broken record
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _write_status(sweep_dir: Path, runs: list[SweepRun]) -> None:
    status = {}
    for run in runs:
        record = _read_json(sweep_dir / run.name / "sweep_run.json") or {"status": "pending"}
        status[run.name] = {k: record[k] for k in ("status", "error") if k in record}
    _write_json(sweep_dir / "status.json", status)


def aggregate(sweep_dir: str | Path) -> tuple[list[dict], str]:
    """Tabulate a sweep folder: one row per variant (preset + grid point), mean and sample std
    (n - 1; ``None`` for one seed) over the seeds of the final checkpoint's metrics, and of the
    ``select`` metric of the checkpoint chosen on the test set (``best_on_test_*``, labelled so).

    Reads ``spec.yaml`` and the runs' ``sweep_run.json``; writes ``results.csv``, ``results.md``,
    ``runs.csv``, the spec's ``plots/*.png`` and ``translations.png`` (example test translations
    of every variant). Returns (rows, Markdown table).
    """
    sweep_dir = Path(sweep_dir)
    spec = load_spec(sweep_dir / "spec.yaml")
    runs, keys, select = plan(spec), metric_keys(spec["metrics"]), spec["select"]
    short = short_names([k for group in spec["runs"] for k in group["grid"]])
    records = {run.name: _read_json(sweep_dir / run.name / "sweep_run.json") for run in runs}
    variants, per_run, examples = [], [], []
    for variant, members in itertools.groupby(runs, key=lambda r: r.variant):
        members = list(members)
        found = [records[m.name] for m in members if records[m.name]]
        done = [r for r in found if r["status"] == "done"]
        seconds = {
            r["name"]: r.get("sec_per_iter")
            if r.get("restored_from")
            else _sec_per_iter(sweep_dir / r["name"])
            for r in found
        }
        shown = [r for r in done if not r.get("restored_from")]  # translations on disk
        if shown:
            examples.append((variant, min(shown, key=lambda r: r["seed"])))
        row = {
            "variant": variant,
            "preset": members[0].preset,
            "label": members[0].label or "",
            **{short[k]: v for k, v in members[0].params.items()},
            "seeds_done": len(done),
            "seeds_failed": sum(r["status"] == "failed" for r in found),
            "seeds": len(members),
        }
        for key in keys:
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([r["final"].get(key) for r in done])
        row["sec_per_iter_mean"], row["sec_per_iter_std"] = _mean_std(
            [seconds[r["name"]] for r in done]
        )
        row[f"best_on_test_{select}_mean"], row[f"best_on_test_{select}_std"] = _mean_std(
            [r["best_selected_on_test_set"].get(select) for r in done]
        )
        variants.append((members[0], row))
        per_run += [
            {
                "name": r["name"],
                "variant": variant,
                "seed": r["seed"],
                "status": r["status"],
                "step": r.get("step"),
                "seconds": r.get("seconds"),
                "error": r.get("error", ""),
                "sec_per_iter": seconds[r["name"]],
                **r.get("final", {}),
                f"best_on_test_{select}": r.get("best_selected_on_test_set", {}).get(select),
            }
            for r in found
        ]
    rows = [row for _, row in variants]
    _write_csv(sweep_dir / "results.csv", rows)
    _write_csv(sweep_dir / "runs.csv", per_run)
    restored = sorted(
        {
            r["restored_from"]
            for r in records.values()
            if r and r["status"] == "done" and r.get("restored_from")
        }
    )
    table = _markdown(
        spec,
        rows,
        keys,
        [r for r in per_run if r["status"] == "failed"],
        sum(bool(r and r.get("restored_from")) for r in records.values()),
        restored,
    )
    (sweep_dir / "results.md").write_text(table + "\n")
    _plots(spec, variants, short, sweep_dir / "plots")
    if examples:
        _translation_grid(sweep_dir, examples, sweep_dir / "translations.png")
    return rows, table


def _sec_per_iter(run_dir: Path) -> float | None:
    """Median training seconds per iteration over the logged windows of ``stats.jsonl`` (the
    step cost of the run's losses, robust to a slow first window or a busy moment)."""
    path = run_dir / "stats.jsonl"
    if not path.is_file():
        return None
    values = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a kill
            value = json.loads(line).get("sec_per_iter")
            if value is not None:
                values.append(value)
    return statistics.median(values) if values else None


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]  # records of an older spec may lack a key
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)


def _arrow(key: str) -> str:
    return "↓" if key in LOWER_IS_BETTER else "↑"


def _markdown(
    spec: dict,
    rows: list[dict],
    keys: list[str],
    failed: list[dict],
    n_restored: int = 0,
    restored_from: list[str] | None = None,
) -> str:
    select = spec["select"]

    def cell(row: dict, key: str) -> str:
        mean, std = row[f"{key}_mean"], row[f"{key}_std"]
        return "–" if mean is None else f"{mean:.4g}" + ("" if std is None else f" ± {std:.2g}")

    head = [
        *(f"{k} {_arrow(k)}" for k in keys),
        f"{select} {_arrow(select)} (best on test)",
        "s/it",
    ]
    lines = [f"# Sweep `{spec['name']}` ({spec['scale']} scale)", ""]
    lines += [spec["description"].strip(), ""] if spec["description"] else []
    lines += [
        f"Final checkpoint of each run, mean ± sample std (n − 1) over the seeds done; the "
        f"column after the metrics is the checkpoint with the lowest {select} **selected on "
        "the test set** (optimistic, as the official repos report it); s/it: median "
        "training seconds per iteration (stats.jsonl), mean over seeds.",
        "",
        "| run | seeds | " + " | ".join(head) + " |",
        "|---|---:|" + "---:|" * len(head),
    ]
    for row in rows:
        cells = [cell(row, k) for k in keys] + [cell(row, f"best_on_test_{select}")]
        cells.append("–" if row["sec_per_iter_mean"] is None else f"{row['sec_per_iter_mean']:.3g}")
        seeds = f"{row['seeds_done']}/{row['seeds']}" + (
            f" ({row['seeds_failed']} failed)" if row["seeds_failed"] else ""
        )
        lines.append(
            f"| {row['variant'].replace('__', ' ')} | {seeds} | " + " | ".join(cells) + " |"
        )
    if n_restored:
        lines += [
            "",
            f"{n_restored} of these runs were trained in an earlier workspace: their "
            f"numbers are restored from {', '.join(restored_from or [])} (--from-report), "
            "and the translation grid shows the lowest seed trained here.",
        ]
    if failed:
        lines += ["", "Failed runs (traceback in RUN/sweep.log):", ""]
        lines += [f"- `{r['name']}`: {r['error']}" for r in failed]
    return "\n".join(lines)


def _plots(
    spec: dict, variants: list[tuple[SweepRun, dict]], short: dict[str, str], folder: Path
) -> None:
    """Each plot: one line per preset/variant (mean ± std over seeds) against the swept key;
    variants without grid values (e.g. plain PatchNCE) are dashed horizontal references."""
    if not spec["plots"]:
        return
    from matplotlib.figure import Figure  # no pyplot: no global backend, nothing to close

    folder.mkdir(exist_ok=True)
    for i, plot in enumerate(spec["plots"]):
        x, y = plot["x"], plot["y"]
        series: dict[str, list[tuple[Any, float, float]]] = {}
        references = []
        for run, row in variants:
            mean, std = row.get(f"{y}_mean"), row.get(f"{y}_std")
            if mean is None:
                continue
            name = " ".join([run.preset, *([run.label] if run.label else [])])
            if x in run.params:
                rest = [f"{short[k]}={folder_text(v)}" for k, v in run.params.items() if k != x]
                series.setdefault(" ".join([name, *rest]), []).append(
                    (run.params[x], mean, std or 0.0)
                )
            elif not run.params:
                references.append((name, mean))
        numeric = all(is_number(p[0]) for points in series.values() for p in points)
        categories = list(dict.fromkeys(folder_text(p[0]) for pts in series.values() for p in pts))
        fig = Figure(figsize=(6.4, 4.2))
        ax = fig.subplots()
        for label, points in series.items():
            points.sort(key=lambda p: p[0] if numeric else categories.index(folder_text(p[0])))
            xs = [p[0] if numeric else categories.index(folder_text(p[0])) for p in points]
            ax.errorbar(
                xs,
                [p[1] for p in points],
                yerr=[p[2] for p in points],
                marker="o",
                capsize=3,
                label=label,
            )
        for j, (label, mean) in enumerate(references):
            ax.axhline(mean, linestyle="--", color=f"C{(len(series) + j) % 10}", label=label)
        if plot["log_x"]:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(categories)), categories)
        ax.set_xlabel(x)
        ax.set_ylabel(f"{y} {_arrow(y)} (final, mean ± std over seeds)")
        ax.set_title(plot["title"] or f"{spec['name']}: {y} against {short[x]}")
        ax.grid(alpha=0.3)
        if series or references:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / f"{i:02d}_{y}_vs_{short[x].replace('.', '-')}.png", dpi=100)


def _translation_grid(
    sweep_dir: Path, examples: list[tuple[str, dict]], path: Path, n: int = 6
) -> None:
    """The first ``n`` test images (rows) as each variant translated them at its final checkpoint
    (columns; the variant's lowest seed done, of those not restored from a report), after a
    reference column: the source image, or for paired runs (whose source is a label map) the
    real photo."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no global backend, nothing to close

    from . import evaluate, pipeline
    from .config import PairedRunConfig
    from .data import list_images, load_image

    columns = []
    for variant, record in examples:
        folder = sweep_dir / record["name"] / "eval" / f"step_{record.get('step') or 0:08d}"
        files = list_images(folder)[:n] if folder.is_dir() else []
        if files:
            columns.append((variant, files))
    if not columns:
        return
    run_dir = sweep_dir / examples[0][1]["name"]
    cfg = pipeline.run_config(run_dir)
    source, target, _ = evaluate._test_split(cfg, run_dir / "eval")
    paired = isinstance(cfg, PairedRunConfig)
    reference = {f.stem: f for f in list_images(target if paired else source)}
    stems = [f.stem for f in columns[0][1]]
    # inches per image: small test images in rows; one whole image (a single-image run) larger
    cell = 1.1 if len(stems) > 1 else 4.0
    fig = Figure(figsize=(cell * (len(columns) + 1), cell * len(stems) + 0.9))
    axes = fig.subplots(len(stems), len(columns) + 1, squeeze=False)
    for row, stem in enumerate(stems):
        images = [load_image(reference[stem], 3) if stem in reference else None]
        images += [load_image(files[row], 3) if row < len(files) else None for _, files in columns]
        size = images[1].size if images[1] is not None else None
        for col, image in enumerate(images):
            ax = axes[row, col]
            ax.axis("off")
            if image is not None:
                ax.imshow(
                    np.asarray(image.resize(size) if size and col == 0 else image),
                    interpolation="nearest",
                )  # sharp pixels, a 2x smaller PNG
    titles = ["real photo" if paired else "input", *(v for v, _ in columns)]
    for ax, title in zip(axes[0], titles):
        ax.set_title(title.replace("__", "\n"), fontsize=5)
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=100)
