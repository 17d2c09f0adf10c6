"""``patchcontrast sweep``: a grid trains, evaluates and aggregates; re-runs skip and resume;
failures are recorded; specs are validated up front; the shipped specs resolve."""

import copy
import csv
import functools
import json
import os
import signal
import statistics
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from patchcontrast import evaluate, pipeline
from patchcontrast.cli import main
from patchcontrast.sweep import aggregate, load_spec, plan, resolve_run, run_sweep
from patchcontrast.trainer import TrainingInterrupted

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
TINY = [
    "model.ngf=8",
    "model.ndf=8",
    "model.netF_nc=16",
    "model.num_patches=32",
    "model.n_blocks=1",
    "model.n_layers_d=1",
    "model.nce_layers=[0, 4]",
    "data.load_size=36",
    "data.crop_size=32",
    "data.builtin_train=8",
    "data.builtin_test=4",
    "train.batch_size=1",
    "train.log_every=1",
    "train.sample_every=2",
    "train.checkpoint_every=2",
]
SPEC = {
    "name": "tiny",
    "seeds": [0, 1],
    "metrics": ["swd"],
    "overrides": TINY,
    "runs": [{"presets": ["gan-only", "cut"], "grid": {"model.lambda_gan": [1, 0.5]}}],
    "plots": [{"x": "model.lambda_gan", "y": "swd_avg"}],
}


@pytest.fixture(scope="module", autouse=True)
def fast_environment(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATCHCONTRAST_CACHE", str(tmp_path_factory.mktemp("cache")))
        # SWD at its default 256 px and evaluate_run's per-run metrics plot dominate a 2-step
        # run; the sweep depends on neither (tests/test_evaluate.py covers them)
        mp.setattr(
            evaluate, "evaluate_folders", functools.partial(evaluate.evaluate_folders, swd_size=32)
        )
        mp.setattr(evaluate, "_plot", lambda rows, path: None)
        # tiny tensors gain nothing from intra-op threads, and on a busy machine the threads'
        # synchronisation made these runs ~7x slower (measured: 15 s vs 2 s for 8 runs)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def spec(**changes) -> dict:
    return {**copy.deepcopy(SPEC), **changes}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweeps")
    return root, run_sweep(spec(), root=root, max_steps=2, progress=False)


def test_grid_trains_evaluates_and_aggregates(finished):
    root, result = finished
    sweep = root / "tiny"
    names = [r["name"] for r in result["runs"]]
    assert names == [
        f"{p}__lambda_gan={v}__seed={s}"
        for p in ("gan-only", "cut")
        for v in ("1", "0.5")
        for s in (0, 1)
    ]
    assert {r["status"] for r in result["runs"]} == {"done"}
    configs = [json.loads((sweep / n / "config.json").read_text()) for n in names]
    assert [c["train"]["seed"] for c in configs] == [0, 1] * 4
    assert {c["data"]["builtin_seed"] for c in configs} == {0}  # every run sees the same data
    assert [c["model"]["lambda_gan"] for c in configs] == [1.0, 1.0, 0.5, 0.5] * 2

    rows = list(csv.DictReader(open(sweep / "results.csv")))
    assert [r["variant"] for r in rows] == [
        "gan-only__lambda_gan=1",
        "gan-only__lambda_gan=0.5",
        "cut__lambda_gan=1",
        "cut__lambda_gan=0.5",
    ]
    for row, first in zip(rows, names[::2]):
        summaries = [
            json.loads(
                (sweep / first.replace("seed=0", f"seed={s}") / "eval/summary.json").read_text()
            )
            for s in (0, 1)
        ]
        final = [s["final"]["swd_avg"] for s in summaries]
        best = [s["best_selected_on_test_set"]["swd_avg"] for s in summaries]
        assert final[0] != final[1]  # the seeds differ, so std is a real check
        assert float(row["swd_avg_mean"]) == pytest.approx(statistics.fmean(final))
        assert float(row["swd_avg_std"]) == pytest.approx(statistics.stdev(final))
        assert float(row["best_on_test_swd_avg_mean"]) == pytest.approx(statistics.fmean(best))
        assert row["seeds_done"] == "2" and row["lambda_gan"] in ("1", "0.5")

    table = (sweep / "results.md").read_text()
    assert table.strip() == result["table"].strip()
    mean, std = float(rows[0]["swd_avg_mean"]), float(rows[0]["swd_avg_std"])
    assert f"| gan-only lambda_gan=1 | 2/2 | {mean:.4g} ± {std:.2g} |" in table
    assert "selected on the test set" in table
    per_run = list(csv.DictReader(open(sweep / "runs.csv")))
    assert len(per_run) == 8
    # step cost: the median of the logged sec_per_iter windows, then the mean over seeds
    medians = [
        statistics.median(
            json.loads(line)["sec_per_iter"]
            for line in (sweep / n / "stats.jsonl").read_text().splitlines()
        )
        for n in names[:2]
    ]
    assert float(per_run[0]["sec_per_iter"]) == pytest.approx(medians[0])
    assert float(rows[0]["sec_per_iter_mean"]) == pytest.approx(statistics.fmean(medians))
    assert "| s/it |" in table
    assert json.loads((sweep / "status.json").read_text())[names[0]] == {"status": "done"}
    plot = sweep / "plots" / "00_swd_avg_vs_lambda_gan.png"
    assert result["plots"] == [str(plot)]
    assert Image.open(plot).size[0] > 300
    # example translations: an input column and one per variant (1.1 in each at 100 dpi)
    width, height = Image.open(sweep / "translations.png").size
    assert width == round(1.1 * 5 * 100) and height > 200
    assert aggregate(sweep)[0] == result["rows"]  # re-aggregation reads the same records


def test_single_image_sweep_shows_the_whole_image_large(tmp_path):
    """A SinCUT sweep translates its one A image whole; its grid is one row of 4-inch cells
    (400 px at 100 dpi) instead of the 1.1-inch cells of a test set."""
    tiny = [
        "model.ngf=4",
        "model.ndf=4",
        "model.netF_nc=16",
        "data.crop_size=32",
        "data.virtual_size=8",
        "train.batch_size=4",
        "train.checkpoint_every=2",
    ]
    result = run_sweep(
        {
            "name": "single",
            "seeds": [0],
            "metrics": ["swd"],
            "overrides": tiny,
            "runs": [{"presets": ["sincut"]}],
        },
        root=tmp_path,
        max_steps=2,
        progress=False,
    )
    assert [r["status"] for r in result["runs"]] == ["done"]
    width, height = Image.open(tmp_path / "single" / "translations.png").size
    assert width == 2 * 400 and 400 < height < 2 * 400


def test_rerun_skips_finished_runs(finished, capsys):
    root, _ = finished
    checkpoints = sorted((root / "tiny").glob("*/checkpoints/step_*.pt"))
    before = [p.stat().st_mtime_ns for p in checkpoints]
    result = run_sweep(spec(), root=root, max_steps=2, report=root / "report")
    assert {r["status"] for r in result["runs"]} == {"done"}
    assert [p.stat().st_mtime_ns for p in checkpoints] == before
    assert capsys.readouterr().out.count("done already (step 2), skipped") == 8
    # --report copies the aggregate files only, the same bytes as the sweep folder's
    report = root / "report" / "tiny"
    assert result["report"] == str(report)
    assert sorted(p.relative_to(report).as_posix() for p in report.rglob("*") if p.is_file()) == [
        "plots/00_swd_avg_vs_lambda_gan.png",
        "results.csv",
        "results.md",
        "runs.csv",
        "spec.yaml",
        "translations.png",
    ]
    assert (report / "results.md").read_bytes() == (root / "tiny/results.md").read_bytes()


def test_from_report_restores_the_reported_runs_and_trains_the_rest(tmp_path, monkeypatch, capsys):
    """A fresh workspace holds only the committed report: --from-report takes the runs it lists
    as done from its runs.csv and trains the others; the rows come back unchanged."""
    two = spec(runs=[{"presets": ["gan-only"], "grid": {"model.lambda_gan": [1, 0.5]}}])
    report = tmp_path / "docs"
    run_sweep(
        two, root=tmp_path / "first", max_steps=2, progress=False, report=report, only="seed=0"
    )
    before = list(csv.DictReader(open(report / "tiny" / "runs.csv")))
    assert [r["seed"] for r in before] == ["0", "0"]

    trained = []
    real_train = pipeline.train
    monkeypatch.setattr(
        pipeline, "train", lambda cfg, **kw: trained.append(cfg.train.seed) or real_train(cfg, **kw)
    )
    result = run_sweep(
        two, root=tmp_path / "second", max_steps=2, report=report, from_report=True, only="seed=1"
    )
    assert trained == [1, 1]
    assert result["restored"] == [
        "gan-only__lambda_gan=1__seed=0",
        "gan-only__lambda_gan=0.5__seed=0",
    ]
    after = list(csv.DictReader(open(report / "tiny" / "runs.csv")))
    assert [r["seed"] for r in after] == ["0", "1", "0", "1"]
    assert [after[0], after[2]] == before  # every value, sec_per_iter and seconds included
    rows = list(csv.DictReader(open(report / "tiny" / "results.csv")))
    assert [r["seeds_done"] for r in rows] == ["2", "2"]
    assert float(rows[0]["swd_avg_mean"]) == pytest.approx(
        statistics.fmean(float(r["swd_avg"]) for r in after[:2])
    )
    table = (report / "tiny" / "results.md").read_text()
    assert "2 of these runs were trained in an earlier workspace" in table
    assert (report / "tiny" / "translations.png").is_file()  # from the seed trained here

    capsys.readouterr()
    run_sweep(two, root=tmp_path / "second", max_steps=2, report=report, from_report=True)
    out = capsys.readouterr().out
    assert trained == [1, 1]  # nothing trains again
    assert out.count("done in an earlier workspace") == 2 and out.count("done already") == 2
    with pytest.raises(ValueError, match="is not this spec"):
        run_sweep(
            {**two, "seeds": [0, 1, 2]},
            root=tmp_path / "third",
            report=report,
            from_report=True,
            progress=False,
        )
    with pytest.raises(ValueError, match="needs report"):
        run_sweep(two, root=tmp_path / "third", from_report=True, progress=False)


def test_interrupted_runs_resume_and_new_metrics_only_evaluate(tmp_path, monkeypatch):
    one = spec(seeds=[0], runs=[{"presets": ["gan-only"]}], plots=[])
    first = run_sweep(one, root=tmp_path, max_steps=1, progress=False)
    run = tmp_path / "tiny" / first["runs"][0]["name"]
    assert (run / "checkpoints/step_00000001.pt").is_file()
    second = run_sweep(one, root=tmp_path, max_steps=2, progress=False)  # the longer run
    assert second["runs"][0]["status"] == "done"
    record = json.loads((run / "sweep_run.json").read_text())
    assert record["step"] == 2
    assert record["machine"]["torch"] == torch.__version__ and record["machine"]["cpu"]
    assert "resumed from" in (run / "sweep.log").read_text()
    checkpoint = run / "checkpoints/step_00000002.pt"
    mtime = checkpoint.stat().st_mtime_ns
    more = run_sweep(
        {**one, "metrics": ["swd", "content"]}, root=tmp_path, max_steps=2, progress=False
    )  # a new metric: evaluated, not retrained
    assert more["rows"][0]["content_iou_mean"] is not None
    assert checkpoint.stat().st_mtime_ns == mtime

    def stopped(cfg, resume=False):  # Ctrl-C during training: the trainer saved a checkpoint
        raise TrainingInterrupted(signal.SIGINT, 3, None)

    monkeypatch.setattr(pipeline, "train", stopped)
    with pytest.raises(TrainingInterrupted):
        run_sweep(one, root=tmp_path, max_steps=3, progress=False)
    assert json.loads((run / "sweep_run.json").read_text())["status"] == "interrupted"
    assert json.loads((tmp_path / "tiny/status.json").read_text()) == {
        run.name: {"status": "interrupted"}
    }


def test_failed_run_is_recorded_and_the_others_complete(tmp_path, monkeypatch):
    two = spec(seeds=[0], runs=[{"presets": ["gan-only"], "grid": {"model.lambda_gan": [1, 0.5]}}])
    train = pipeline.train

    def flaky(cfg, resume=False):
        if cfg.model.lambda_gan == 0.5:
            raise RuntimeError("the loss exploded")
        return train(cfg, resume=resume)

    monkeypatch.setattr(pipeline, "train", flaky)
    result = run_sweep(two, root=tmp_path, max_steps=2, progress=False)
    assert [r["status"] for r in result["runs"]] == ["done", "failed"]
    failed = tmp_path / "tiny" / result["runs"][1]["name"]
    record = json.loads((failed / "sweep_run.json").read_text())
    assert record["error"] == "RuntimeError: the loss exploded"
    assert "Traceback" in (failed / "sweep.log").read_text()
    assert "the loss exploded" in result["table"] and "| 0/1 (1 failed) |" in result["table"]
    row = result["rows"][0]
    assert row["seeds_done"] == 1 and row["swd_avg_std"] is None  # one seed: no std

    monkeypatch.setattr(pipeline, "train", train)  # a re-run retries the failed run only
    again = run_sweep(two, root=tmp_path, max_steps=2, progress=False)
    assert [r["status"] for r in again["runs"]] == ["done", "done"]


def test_aggregate_reads_the_records(tmp_path):
    sweep = tmp_path / "records"
    sweep.mkdir()
    (sweep / "spec.yaml").write_text(
        json.dumps(
            {
                "name": "records",
                "seeds": [0, 1, 2],
                "metrics": ["swd", "domain"],
                "runs": [
                    {
                        "presets": ["cut-monce"],
                        "grid": {"model.loss_options.weighting": ["hard", "easy"]},
                    },
                    {"presets": ["cut"]},
                ],
                "plots": [{"x": "model.loss_options.weighting", "y": "domain_b"}],
            }
        )
    )
    values = {"cut-monce__weighting=hard": [10.0, 12.0, 17.0], "cut": [20.0, 21.0]}
    for variant, swds in values.items():
        for seed, swd in enumerate(swds):
            record = {
                "name": f"{variant}__seed={seed}",
                "seed": seed,
                "status": "done",
                "final": {"swd_avg": swd, "domain_b": seed / 4},
                "best_selected_on_test_set": {"swd_avg": swd - 1},
            }
            (sweep / record["name"]).mkdir()
            (sweep / record["name"] / "sweep_run.json").write_text(json.dumps(record))
    rows, table = aggregate(sweep)
    hard, easy, cut = rows
    assert (hard["swd_avg_mean"], hard["swd_avg_std"]) == (13.0, pytest.approx(3.6055512))
    assert hard["best_on_test_swd_avg_mean"] == 12.0 and hard["domain_b_mean"] == 0.25
    assert easy["seeds_done"] == 0 and easy["swd_avg_mean"] is None
    assert cut["seeds_done"] == 2 and "weighting" not in cut
    assert "| cut-monce weighting=easy | 0/3 | – | – | – |" in table
    assert "| cut | 2/3 | 20.5 ± 0.71 |" in table and "domain_b ↑" in table
    assert (sweep / "plots" / "00_domain_b_vs_weighting.png").is_file()  # categorical x


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"seed": [0]}, "unknown key(s) seed"),
        ({"name": "a/b"}, "name must be a folder name"),
        ({"runs": []}, "runs must be a non-empty list"),
        ({"runs": [{"presets": ["cut-foo"]}]}, "unknown preset(s) cut-foo"),
        (
            {"runs": [{"presets": ["cut"], "grid": {"model.lambda_gan": []}}]},
            "model.lambda_gan needs a non-empty list",
        ),
        ({"runs": [{"presets": ["cut"], "grid": {"train.seed": [1, 2]}}]}, "set by the sweep"),
        ({"runs": [{"presets": ["cut"], "grid": {"lambda_gan": [1]}}]}, "must be section.name"),
        (
            {"runs": [{"presets": ["cut"], "grid": {"model.lambda_gan": [-1]}}]},
            "run cut__lambda_gan=-1__seed=0: lambda_gan must be >= 0",
        ),
        (
            {"runs": [{"presets": ["cut"], "grid": {"model.ngff": [8]}}]},
            "unknown model option(s) ngff",
        ),
        (
            {
                "runs": [
                    {"presets": ["cut-monce"], "grid": {"model.loss_options.weighting": ["medium"]}}
                ]
            },
            "weighting must be one of",
        ),
        ({"runs": [{"presets": ["cut"]}, {"presets": ["cut"]}]}, "two runs share the folder"),
        ({"metrics": ["swd"], "select": "content_iou"}, "select must be a lower-is-better key"),
        ({"metrics": ["bleu"]}, "metrics must be a non-empty list"),
        ({"plots": [{"x": "model.tau", "y": "swd_avg"}]}, "x must be a swept grid key"),
        ({"plots": [{"x": "model.lambda_gan", "y": "fid"}]}, "y must be a metric key"),
        (
            {
                "metrics": ["swd", "content"],
                "overrides": [],
                "runs": [{"presets": ["spade-monce"]}],
            },
            "need the built-in unpaired data",
        ),
    ],
)
def test_spec_errors_are_clear(changes, message, tmp_path):
    with pytest.raises(ValueError) as info:
        run_sweep(spec(**{"plots": [], **changes}), root=tmp_path, progress=False)
    assert message in str(info.value)
    assert not (tmp_path / "tiny").exists()  # nothing trained or written


def test_dotted_loss_options_merge_with_the_preset(tmp_path):
    loaded = load_spec(
        {
            "name": "merge",
            "runs": [
                {"presets": ["cut-monce"], "grid": {"model.loss_options.beta": [0.5, 1e-05]}},
                {
                    "presets": ["cut-put"],
                    "overrides": ["model.loss_options={k_neg: 16}"],
                    "grid": {"model.loss_options.selection": ["random"]},
                    "label": "k16",
                },
            ],
        }
    )
    runs = plan(loaded)
    assert [r.name for r in runs] == [
        "cut-monce__beta=0.5__seed=0",
        "cut-monce__beta=1e-05__seed=0",
        "cut-put__k16__selection=random__seed=0",
    ]
    options = [resolve_run(r, loaded, tmp_path / r.name)[0].model.loss_options for r in runs]
    assert options[0] == {"weighting": "hard", "beta": 0.5, "Q": 1.0}  # preset's + the grid's
    assert options[1]["beta"] == 1e-05  # a float that YAML 1.1 would read back as a string
    assert options[2] == {"k_neg": 16, "selection": "random"}  # the dict replaced, then merged


SHIPPED = sorted(SWEEPS.glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_specs_resolve_every_run(path, tmp_path):
    result = run_sweep(path, root=tmp_path, dry_run=True, progress=False)
    assert result["runs"] and not (tmp_path / load_spec(path)["name"]).exists()


def test_shipped_specs_cover_the_papers_tables():
    presets = {p.stem: {r.preset for r in plan(load_spec(p))} for p in SHIPPED}
    assert {p.stem for p in SHIPPED} == {
        f"{t}_{s}"
        for t in ("table1", "table2", "weighting", "put", "table3", "table4")
        for s in ("paper", "cpu")
    } | {"table1_h2z_cpu", "sincut_cpu"}
    assert presets["table1_h2z_cpu"] == presets["table1_cpu"]
    assert presets["sincut_cpu"] == {"sincut"}
    assert presets["table2_cpu"] == {
        "sesim-random",
        "fsesim",
        "lsesim-patchnce",
        "lsesim-weightnce",
        "lsesim-monce",
    }
    assert presets["table1_cpu"] == {
        "gan-only",
        "cycle",
        "cut",
        "cut-weightnce",
        "cut-monce",
        "cut-put",
    }
    assert presets["table3_paper"] == {
        "spade-percep",
        "spade-patchnce",
        "spade-weightnce",
        "spade-monce",
    }
    put = {
        (r.params["model.loss_options.k_neg"], r.params["model.loss_options.selection"])
        for r in plan(load_spec(SWEEPS / "put_cpu.yaml"))
    }
    assert len(put) == 15


def test_cli_dry_run_lists_the_runs(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec()))  # JSON is YAML
    assert main(["sweep", str(path), "--root", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8 of 8 runs" in out and "cut__lambda_gan=0.5__seed=1: --preset cut" in out
    assert "--set model.lambda_gan=0.5 --set train.seed=1" in out
    path.write_text(json.dumps(spec(seeds=[])))
    with pytest.raises(SystemExit) as info:
        main(["sweep", str(path), "--dry-run"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "seeds must be a non-empty list" in err and "Traceback" not in err


def test_reproduce_script_runs_every_cpu_spec_into_docs_results(tmp_path):
    """sweeps/reproduce_cpu.sh, with a stand-in `patchcontrast` that prints its arguments."""
    stub = tmp_path / "bin" / "patchcontrast"
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\necho "$@"\n')
    stub.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}",
        "ONLY": "seed=0",
        "ROOT": str(tmp_path / "runs"),
    }
    out = subprocess.run(
        ["bash", str(SWEEPS / "reproduce_cpu.sh")],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    calls = [line for line in out if line.startswith("sweep ")]
    cpu = sorted(SWEEPS.glob("*_cpu.yaml"))
    assert calls == [
        f"sweep sweeps/{p.name} --root {tmp_path / 'runs'} --report docs/results --only seed=0"
        for p in cpu
    ]
    env["FROM_REPORT"] = "1"
    out = subprocess.run(
        ["bash", str(SWEEPS / "reproduce_cpu.sh"), "sweeps/put_cpu.yaml"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert [line for line in out if line.startswith("sweep ")] == [
        f"sweep sweeps/put_cpu.yaml --root {tmp_path / 'runs'} --report docs/results "
        "--only seed=0 --from-report"
    ]
