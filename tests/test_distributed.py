"""Data-parallel training (``patchcontrast.distributed`` + the Trainer under torchrun).

The central test launches ``torchrun --nproc_per_node 2`` on this file (gloo, CPU): each rank
trains on 2 images per step, and the result must equal one process trained on the 4 images of
the combined batch — gradients and parameters of every network, for CUT + PatchNCE (2 steps, so
the sampler's second batch and Adam's second step are covered), CUT + MoNCE and SPADE with
batch norm (synchronised over the ranks). The same launch resumes runs across the two settings.

The networks run in float64 so that the comparison tests the algorithm, not rounding: in float32
the two settings differ by rounding (sums split over ranks), and some of it is amplified far
beyond 1e-6 — Adam turns the pure-noise gradient of a bias before InstanceNorm (zero
analytically) into a full ``lr`` step either way, and the tiny SPADE with a random VGG is
ill-conditioned (one process in float32 is 1e-3 away from float64 already). In float64 the
only algorithmic difference left is MoNCE's Sinkhorn stopping rule (``tol=1e-8``, decided over
the batch a process holds), see FIXED_SINKHORN.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from patchcontrast.config import resolve_config
from patchcontrast.distributed import (
    CpuSyncBatchNorm,
    DistEnv,
    _buckets,
    average_gradients,
    detect_env,
    resolve_device,
)
from patchcontrast.objectives.paired import PairedObjective
from patchcontrast.objectives.unpaired import UnpairedObjective
from patchcontrast.trainer import TrainConfig, Trainer, TrainingInterrupted, apply_switches

TINY_CUT = [
    "model.ngf=8",
    "model.ndf=8",
    "model.n_blocks=2",
    "model.netF_nc=16",
    "model.num_patches=32",
]
TINY_SPADE = [
    "model.ngf=4",
    "model.ndf=4",
    "model.n_layers_d=2",
    "model.num_patches=16",
    "model.vgg_source=random",
    "model.allow_random_vgg=true",
]
# Sinkhorn's early stop is decided over the batch a process holds (1e-8 apart in float64): all
# 50 iterations here, so that the SPADE case is exact; the CUT MoNCE case keeps the default
FIXED_SINKHORN = "model.loss_options={weighting: easy, beta: 0.1, Q: 1.0, tol: null}"
# name: (preset, overrides, steps)
CASES = {
    "patchnce": ("cut", TINY_CUT, 2),
    "monce": ("cut-monce", TINY_CUT, 1),
    "spade": ("spade-monce", [*TINY_SPADE, FIXED_SINKHORN], 1),
}
N_ITEMS, SIZE = 8, 32  # 8 items, global batch 4 -> 2 iterations per epoch


class Fixed(Dataset):
    """Unaligned or paired items that depend on the index only (no augmentation)."""

    def __init__(self, paired: bool):
        g = torch.Generator().manual_seed(7)
        self.paired = paired
        self.a = torch.rand(N_ITEMS, 3, SIZE, SIZE, generator=g, dtype=torch.float64) * 2 - 1
        self.b = torch.rand(N_ITEMS, 3, SIZE, SIZE, generator=g, dtype=torch.float64) * 2 - 1
        self.labels = torch.randint(0, 8, (N_ITEMS, 1, SIZE, SIZE), generator=g)

    def __len__(self):
        return N_ITEMS

    def __getitem__(self, i):
        if self.paired:
            return {"label": self.labels[i], "image": self.b[i]}
        return {"A": self.a[i], "B": self.b[i]}


class Paired64(PairedObjective):
    def segmentation(self, labels):
        return super().segmentation(labels).double()


def make_trainer(case: str, run_dir: Path, batch_size: int) -> Trainer:
    preset, overrides, steps = CASES[case]
    cfg = resolve_config(preset, "cpu", overrides=overrides).model
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random VGG weights
        objective = (Paired64(cfg) if case == "spade" else UnpairedObjective(cfg)).double()
    train = TrainConfig(
        run_dir=str(run_dir),
        n_epochs=1,
        n_epochs_decay=1,
        batch_size=batch_size,
        device="cpu",
        deterministic=True,
        log_every=1,
        sample_every=100,
        checkpoint_every=1,
        max_steps=steps,
    )
    return Trainer(objective, Fixed(case == "spade"), train)


def snapshot(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Every parameter, its gradient (left by the phase that stepped it last) and buffer."""
    out = {}
    for name, p in trainer.objective.named_parameters():
        out[name] = p.detach().clone()
        if p.grad is not None:
            out[name + ".grad"] = p.grad.clone()
    out.update({n: b.clone() for n, b in trainer.objective.named_buffers()})
    return out


def worker(out: Path) -> None:
    """Run under torchrun: every case on 2 images per rank, then resumptions."""
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    for case in CASES:
        trainer = make_trainer(case, out / f"ddp_{case}", batch_size=2)
        trainer.fit()
        torch.save(snapshot(trainer), out / f"ddp_{case}_rank{rank}.pt")
    step1 = "checkpoints/step_00000001.pt"
    for name, source in (
        ("ddp_resumed", out / "ddp_patchnce" / step1),
        ("ddp_from_single", out / "single_patchnce" / step1),
    ):
        trainer = make_trainer("patchnce", out / name, batch_size=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # deterministic-algorithm notes
            trainer.fit(resume=source)
        torch.save(snapshot(trainer), out / f"{name}_rank{rank}.pt")
    # SIGTERM reaches rank 1 only, in its first iteration: both ranks must stop after it
    trainer = make_trainer("patchnce", out / "ddp_signal", batch_size=2)
    if rank == 1:
        prepare = trainer.objective.prepare
        trainer.objective.prepare = lambda batch: (
            os.kill(os.getpid(), signal.SIGTERM),
            prepare(batch),
        )
    try:
        trainer.fit()
        stopped = None
    except TrainingInterrupted as e:
        stopped = {"step": e.step, "signum": e.signum, "checkpoint": str(e.checkpoint)}
    (out / f"signal_rank{rank}.json").write_text(json.dumps(stopped))


def assert_close(got: dict, want: dict, rtol: float) -> float:
    """Every tensor within ``rtol`` of ``want`` relative to its largest entry, with a floor for
    tensors that are ~0 analytically: a conv bias before InstanceNorm gets a zero gradient, i.e.
    rounding noise, and Adam divides that noise by its eps (1e-8) into a step of up to ~1e-9.
    Floors: 1e-4 of the largest gradient for gradients, 0.1 of the largest parameter for
    values (so ``rtol=1e-6`` still resolves ~5e-8, far below Adam's step ``lr=2e-4``). Returns
    the worst relative error."""
    assert got.keys() == want.keys()
    floor = {
        kind: share
        * max(
            (float(want[k].abs().max()) for k in want if k.endswith(".grad") == kind), default=0.0
        )
        for kind, share in ((False, 0.1), (True, 1e-4))
    }
    worst = 0.0
    for k in want:
        scale = max(float(want[k].abs().max()), floor[k.endswith(".grad")], 1e-30)
        err = float((got[k] - want[k]).abs().max()) / scale
        assert err <= rtol, f"{k}: relative error {err:.2e}"
        worst = max(worst, err)
    return worst


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Single-process references, then one torchrun launch of 2 gloo processes."""
    out = tmp_path_factory.mktemp("ddp")
    for case in CASES:
        trainer = make_trainer(case, out / f"single_{case}", batch_size=4)
        trainer.fit()
        torch.save(snapshot(trainer), out / f"single_{case}.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        __file__,
        str(out),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_equal_one_process_on_the_combined_batch(runs, case):
    ranks = [torch.load(runs / f"ddp_{case}_rank{r}.pt") for r in (0, 1)]
    single = torch.load(runs / f"single_{case}.pt")
    assert any(k.endswith(".grad") for k in single)
    for k in ranks[0]:  # the ranks hold bitwise identical networks
        assert torch.equal(ranks[0][k], ranks[1][k]), k
    assert_close(ranks[0], single, rtol=1e-6)
    if case == "spade":  # synchronised batch norm: running statistics of the whole batch
        assert any("running_var" in k for k in single)
    # rank 0 alone wrote the run folder, with the same files as a single process
    assert sorted(p.name for p in (runs / f"ddp_{case}").iterdir()) == sorted(
        p.name for p in (runs / f"single_{case}").iterdir()
    )


def test_gradients_are_averaged_not_summed(runs):
    """Adam's update hardly depends on the gradient scale, so compare gradients directly."""
    ddp, single = torch.load(runs / "ddp_monce_rank0.pt"), torch.load(runs / "single_monce.pt")
    grads = {k: v for k, v in single.items() if k.endswith(".grad")}
    top = max(float(v.norm()) for v in grads.values())
    for k in (k for k, v in grads.items() if v.norm() > 1e-6 * top):  # not the ~0 ones
        ratio = ddp[k].norm() / single[k].norm()
        assert abs(ratio - 1) < 1e-6, (k, float(ratio))


def test_resume_under_ddp_and_across_settings(runs, tmp_path):
    # DDP -> DDP: bitwise the uninterrupted run
    resumed, straight = (
        torch.load(runs / f"{n}_rank0.pt") for n in ("ddp_resumed", "ddp_patchnce")
    )
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k
    # one process -> DDP and DDP -> one process: the checkpoint is the same unwrapped state
    assert_close(
        torch.load(runs / "ddp_from_single_rank0.pt"),
        torch.load(runs / "single_patchnce.pt"),
        rtol=1e-6,
    )
    trainer = make_trainer("patchnce", tmp_path / "single_from_ddp", batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        trainer.fit(resume=runs / "ddp_patchnce" / "checkpoints" / "step_00000001.pt")
    assert_close(snapshot(trainer), straight, rtol=1e-6)
    state = torch.load(runs / "ddp_patchnce" / "checkpoints" / "step_00000002.pt")
    assert state["world_size"] == 2 and not any("module." in k for k in state["objective"])


def test_a_signal_to_one_rank_stops_all_after_the_same_iteration(runs):
    stopped = [json.loads((runs / f"signal_rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["step"] for s in stopped] == [1, 1]
    assert stopped[1]["signum"] == signal.SIGTERM
    assert stopped[0]["checkpoint"] == stopped[1]["checkpoint"]
    assert Path(stopped[0]["checkpoint"]).name == "step_00000001.pt"
    assert Path(stopped[0]["checkpoint"]).is_file()


# -- single-process units ----------------------------------------------------------------------


def test_detect_env():
    assert detect_env({}) == DistEnv(0, 1, 0)
    assert detect_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == DistEnv(3, 4, 1)
    with pytest.raises(ValueError, match="RANK must be a non-negative integer"):
        detect_env({"WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match=r"RANK=2 must be in \[0, WORLD_SIZE=2\)"):
        detect_env({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(ValueError, match="WORLD_SIZE must be"):
        detect_env({"WORLD_SIZE": "two", "RANK": "0"})


def test_device_per_process():
    env = DistEnv(1, 2, 1)
    assert resolve_device("cpu", env) == torch.device("cpu")
    with pytest.raises(ValueError, match="names one GPU for all 2 processes"):
        resolve_device("cuda:1", env)
    assert resolve_device("cuda:1", DistEnv()) == torch.device("cuda:1")  # one process: as asked


def test_launch_without_rendezvous_is_a_clear_error(tmp_path, monkeypatch):
    for k, v in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="launch with torchrun"):
        make_trainer("patchnce", tmp_path, batch_size=2)


@pytest.mark.parametrize("field", ["channels_last", "compile", "checkpoint_activations"])
def test_switches_are_validated(field):
    with pytest.raises(ValueError, match=f"TrainConfig.{field} must be true or false"):
        TrainConfig(run_dir="x", **{field: 1})


def test_buckets_split_by_size_and_dtype():
    ts = [torch.zeros(3), torch.zeros(3), torch.zeros(5), torch.zeros(2, dtype=torch.float64)]
    assert list(_buckets(ts, numel=6)) == [[0, 1], [2], [3]]
    average_gradients(ts, DistEnv())  # one process: nothing to do, nothing touched


def cut_step(switches: dict, dtype: torch.dtype = torch.float32) -> tuple[float, dict]:
    """Loss and gradients of one G step of a tiny CUT at 32 px (same weights every call)."""
    cfg = resolve_config("cut", "cpu", overrides=TINY_CUT).model
    torch.manual_seed(0)
    obj = UnpairedObjective(cfg).to(dtype)
    apply_switches(obj, **switches)
    g = torch.Generator().manual_seed(1)
    batch = {k: (torch.rand(2, 3, SIZE, SIZE, generator=g) * 2 - 1).to(dtype) for k in "AB"}
    if switches.get("channels_last"):
        batch = {k: v.contiguous(memory_format=torch.channels_last) for k, v in batch.items()}
    torch.manual_seed(2)
    obj.prepare(batch)
    loss, _ = obj.loss("G")
    loss.backward()
    return loss.item(), {
        f"{n}.grad": p.grad.clone() for n, p in obj.named_parameters() if p.grad is not None
    }


def test_checkpointing_and_channels_last_change_no_result():
    loss, grads = cut_step({})
    checkpointed_loss, checkpointed = cut_step({"checkpoint_activations": True})
    assert checkpointed_loss == loss
    assert_close(checkpointed, grads, rtol=0.0)
    # channels_last picks other conv kernels, so it is held to float64, not to the contiguous
    # float32 step: no less accurate than that step. The float32 step's own error is CPU-
    # dependent (9e-3 on the first conv's weight gradient on an AMD EPYC, AVX2).
    exact_loss, exact = cut_step({}, dtype=torch.float64)
    float32_error = assert_close(grads, exact, rtol=float("inf"))
    other_loss, other = cut_step({"channels_last": True})
    assert other_loss == pytest.approx(exact_loss, rel=1e-6)
    assert_close(other, exact, rtol=max(2 * float32_error, 1e-4))


def test_checkpointing_needs_resnet_blocks():
    cfg = resolve_config("spade-gan-only", "cpu", overrides=TINY_SPADE).model
    with pytest.raises(ValueError, match="checkpoint_activations=True: PairedObjective has no"):
        apply_switches(PairedObjective(cfg), checkpoint_activations=True)


def test_cpu_sync_batchnorm_alone_is_batchnorm():
    bn = nn.BatchNorm2d(4, affine=True)
    nn.init.normal_(bn.weight)
    sync = CpuSyncBatchNorm.from_batchnorm(bn)
    assert sync.weight is bn.weight and sync.state_dict().keys() == bn.state_dict().keys()
    x = torch.randn(3, 4, 5, 5)
    torch.testing.assert_close(sync(x), bn(x))
    torch.testing.assert_close(sync.running_var, bn.running_var)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
