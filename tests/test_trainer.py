"""Tests of the generic Trainer (docs/design.md §5.1 schedule; §7.2 defects it must not have).

A toy objective (2-conv "generator" with dropout, 1-conv "discriminator"; phases D then G with D
frozen in G) on 8x8 random images. Default run: 6 items, batch 2 -> 3 iterations per epoch,
n_epochs=1 + n_epochs_decay=2 -> 9 iterations with the LR decaying within the run.
"""

import json
import os
import signal

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from patchcontrast.objectives.base import Objective, Phase
from patchcontrast.trainer import (
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    TrainingInterrupted,
    linear_multiplier,
)


class Pairs(Dataset):
    """Unaligned-style toy data: B paired at random from (epoch, index) via set_epoch, plus a
    flip drawn from torch's global RNG (so restoring RNG state matters for data too)."""

    def __init__(self, n_a=6, n_b=5, size=8, global_flip=True):
        g = torch.Generator().manual_seed(123)
        self.a = torch.rand(n_a, 3, size, size, generator=g) * 2 - 1
        self.b = torch.rand(n_b, 3, size, size, generator=g) * 2 - 1
        self.epoch, self.loaded, self.global_flip, self.countdown = 0, [], global_flip, None

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.a)

    def __getitem__(self, i):
        self.loaded.append((self.epoch, i))
        if self.countdown is not None:
            self.countdown -= 1
            if self.countdown == 0:
                raise KeyboardInterrupt  # as a second Ctrl-C while loading data
        g = torch.Generator().manual_seed(1000 * self.epoch + i)
        b = self.b[int(torch.randint(len(self.b), (1,), generator=g))]
        if torch.rand(()) < 0.5 if self.global_flip else torch.rand((), generator=g) < 0.5:
            b = b.flip(-1)
        return {"A": self.a[i], "B": b, "path": f"a{i}.png"}


class Toy(Objective):
    phases = (Phase("D", ("D",)), Phase("G", ("G",), frozen=("D",)))

    def __init__(self, kill_at=None, nan_at=None, abort_at=None, phases=None, sig=signal.SIGTERM):
        super().__init__()
        self.G = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.Dropout(0.5), nn.Conv2d(4, 3, 3, padding=1), nn.Tanh()
        )
        self.D = nn.Conv2d(3, 1, 3)
        if phases is not None:
            self.phases = phases
        self.kill_at, self.nan_at, self.abort_at, self.sig = kill_at, nan_at, abort_at, sig
        self.calls = 0
        self.phase_calls, self.frozen_checks = [], []

    def prepare(self, batch):
        assert batch["path"] and isinstance(batch["path"][0], str)  # strings left alone
        self.calls += 1
        if self.calls == self.kill_at:
            os.kill(os.getpid(), self.sig)
        self.real_a, self.real_b = batch["A"], batch["B"]
        self.fake = self.G(self.real_a)

    def loss(self, phase):
        self.phase_calls.append(phase)
        if phase == "D":
            real = (self.D(self.real_b) - 1).pow(2).mean()
            fake = self.D(self.fake.detach()).pow(2).mean()
            loss = 0.5 * (real + fake)
            if self.calls == self.nan_at:
                loss = loss * float("nan")
            return loss, {"D_real": real.item(), "D_fake": fake.item()}
        if self.calls == self.abort_at:
            raise KeyboardInterrupt  # as a second Ctrl-C after the D step of this iteration
        grad = self.D.weight.grad
        self._seen = (
            self.D.weight.requires_grad,
            None if grad is None else grad.clone(),
            self.D.weight.detach().clone(),
        )
        gan = (self.D(self.fake) - 1).pow(2).mean()
        l1 = (self.fake - self.real_a).abs().mean()
        return gan + l1, {"G_GAN": gan.item(), "L1": l1.item()}

    def release(self):
        if "G" in self.phase_calls[-1:]:
            requires, grad, weight = self._seen
            now = self.D.weight.grad
            unchanged = (grad is None and now is None) or torch.equal(grad, now)
            self.frozen_checks.append((requires, unchanged, torch.equal(weight, self.D.weight)))
        self.real_a = self.real_b = self.fake = None

    def samples(self, batch):
        out = self.G(batch["A"])
        return {"input": batch["A"], "translation": out, "grey": out[:, :1]}


def make(tmp_path, name="run", init_seed=0, toy=None, dataset=None, **kw):
    torch.manual_seed(init_seed)  # weight init is the caller's business
    settings = dict(
        n_epochs=1,
        n_epochs_decay=2,
        batch_size=2,
        device="cpu",
        deterministic=True,
        log_every=2,
        sample_every=100,
        checkpoint_every=100,
    )
    cfg = TrainConfig(run_dir=str(tmp_path / name), **{**settings, **kw})
    return Trainer(
        Toy(**(toy or {})), dataset or Pairs(), cfg, extra_config={"model": {"name": "toy"}}
    )


def assert_same_state(t1, t2):
    s1, s2 = t1.objective.state_dict(), t2.objective.state_dict()
    assert s1.keys() == s2.keys()
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    for name, opt in t1.optimizers.items():
        o1, o2 = opt.state_dict(), t2.optimizers[name].state_dict()
        assert o1["param_groups"][0]["lr"] == o2["param_groups"][0]["lr"]
        for i, st in o1["state"].items():
            for k, v in st.items():
                assert torch.equal(v, o2["state"][i][k]), (name, i, k)


def lines(run):
    return [json.loads(s) for s in (run / "stats.jsonl").read_text().splitlines()]


# -- config -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value",
    [
        ("batch_size", 0),
        ("n_epochs", -1),
        ("n_epochs_decay", -2),
        ("log_every", 0),
        ("sample_every", 0),
        ("checkpoint_every", 0),
        ("keep_last", 0),
        ("max_steps", 0),
        ("num_workers", -1),
        ("seed", -1),
        ("seed", 2**32),
        ("batch_size", 1.5),
        ("schedule_unit", "iter"),
        ("amp", "fp8"),
        ("device", "banana"),
        ("run_dir", ""),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
        TrainConfig(**{"run_dir": "x", field: value})


def test_config_zero_length_schedule_and_round_trip():
    with pytest.raises(ValueError, match="n_epochs"):
        TrainConfig(run_dir="x", n_epochs=0, n_epochs_decay=0)
    cfg = TrainConfig(run_dir="x", n_epochs=0, schedule_unit="step", max_steps=3)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"run_dir": "x", "lr": 1.0})


def test_amp_on_cpu_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(run_dir="x", device="cpu", amp="bf16")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="amp='fp16' needs CUDA"):
            Trainer(Toy(), Pairs(), TrainConfig(run_dir=str(tmp_path), amp="fp16"))


def test_dataset_smaller_than_a_batch(tmp_path):
    with pytest.raises(ValueError, match="fewer than batch_size=8"):
        make(tmp_path, batch_size=8)


# -- schedule -----------------------------------------------------------------------------------
def test_linear_multiplier_matches_upstream_formula():
    n, d = 2, 2
    upstream = [1 - max(0, e - n) / (d + 1) for e in range(1, n + d + 1)]  # 1-indexed epochs
    assert [linear_multiplier(t, n, d) for t in range(n + d)] == pytest.approx(upstream)
    assert upstream == pytest.approx([1, 1, 2 / 3, 1 / 3])


@pytest.mark.parametrize(
    "unit, per_iteration",
    [
        ("epoch", [1, 1, 1, 1, 1, 1, 2 / 3, 2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3]),
        ("step", [1, 1, 2 / 3, 1 / 3]),
    ],
)
def test_schedule_in_epochs_and_steps(tmp_path, unit, per_iteration):
    trainer = make(tmp_path, n_epochs=2, n_epochs_decay=2, schedule_unit=unit, log_every=1)
    assert trainer.total_steps == len(per_iteration)
    trainer.fit()
    records = lines(tmp_path / "run")
    expected = [2e-4 * m for m in per_iteration]
    assert [r["lr/D"] for r in records] == pytest.approx(expected)
    assert [r["lr/G"] for r in records] == pytest.approx(expected)


# -- phases -------------------------------------------------------------------------------------
def test_frozen_module_gets_no_gradient_and_is_restored(tmp_path):
    trainer = make(tmp_path, max_steps=4)
    trainer.fit()
    checks = trainer.objective.frozen_checks
    assert len(checks) == 4
    # during G: D does not require grad, its .grad (from the D step) and weights are untouched
    assert all(c == (False, True, True) for c in checks)
    assert all(p.requires_grad for p in trainer.objective.parameters())


def test_phase_every(tmp_path):
    phases = (Phase("D", ("D",), every=2), Phase("G", ("G",), frozen=("D",)))
    trainer = make(tmp_path, toy=dict(phases=phases), max_steps=5)
    trainer.fit()
    assert trainer.objective.phase_calls.count("D") == 3  # iterations 0, 2, 4
    assert trainer.objective.phase_calls.count("G") == 5
    d_state = trainer.optimizers["D"].state[trainer.objective.D.weight]
    assert int(d_state["step"]) == 3


def test_bad_phases(tmp_path):
    with pytest.raises(ValueError, match="'X'"):
        make(tmp_path, toy=dict(phases=(Phase("D", ("X",)),)))
    with pytest.raises(ValueError, match="every must be >= 1"):
        make(tmp_path, toy=dict(phases=(Phase("D", ("D",), every=0),)))


# -- outputs ------------------------------------------------------------------------------------
def test_logs_samples_config_and_checkpoints(tmp_path):
    trainer = make(tmp_path, log_every=2, sample_every=4, checkpoint_every=2, keep_last=2)
    result = trainer.fit()
    run = tmp_path / "run"
    assert result["step"] == 9 and result["epoch"] == 3 and result["run_dir"] == str(run)

    records = lines(run)
    assert [r["step"] for r in records] == [2, 4, 6, 8, 9]
    assert set(records[0]) == {
        "step",
        "epoch",
        "lr/D",
        "lr/G",
        "loss/D",
        "loss/G",
        "D_real",
        "D_fake",
        "G_GAN",
        "L1",
        "sec_per_iter",
        "img_per_sec",
    }
    assert records[1]["epoch"] == pytest.approx(4 / 3)
    assert result["stats"] == records[-1]
    assert list((run / "tb").glob("events.out.tfevents.*"))

    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "step_00000004.png",
        "step_00000008.png",
        "step_00000009.png",
    ]
    grid = Image.open(run / "samples" / "step_00000009.png")
    # 2 images (rows) x 3 entries (columns) of 8x8, make_grid padding 2
    assert grid.mode == "RGB" and grid.size == (3 * 10 + 2, 2 * 10 + 2)

    config = json.loads((run / "config.json").read_text())
    assert config == {"train": trainer.config.to_dict(), "model": {"name": "toy"}}

    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert files == ["step_00000008.pt", "step_00000009.pt"]  # keep_last=2, no temp files left
    state = torch.load(run / "checkpoints" / files[-1], weights_only=True)
    assert (state["step"], state["epoch"], state["position"]) == (9, 3, 0)
    assert set(state["optimizers"]) == set(state["schedulers"]) == {"D", "G"}
    assert set(state["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert state["config"]["model"] == {"name": "toy"}


def test_explicit_sample_batch(tmp_path):
    batch = {"A": torch.zeros(3, 3, 8, 8), "B": torch.zeros(3, 3, 8, 8)}
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), batch_size=2, device="cpu", max_steps=1)
    Trainer(Toy(), Pairs(), cfg, sample_batch=batch).fit()
    assert Image.open(tmp_path / "run" / "samples" / "step_00000001.png").size == (32, 32)


def test_refuses_a_used_run_dir(tmp_path):
    make(tmp_path, max_steps=2).fit()
    with pytest.raises(FileExistsError, match="resume=True"):
        make(tmp_path, max_steps=4).fit()


# -- exact resume -------------------------------------------------------------------------------
@pytest.mark.parametrize("unit, split", [("epoch", 3), ("epoch", 4), ("step", 5)])
def test_resume_is_exact(tmp_path, unit, split):
    """9 iterations straight == `split` iterations + a fresh Trainer resuming + the rest; split 4
    is in the middle of an epoch, the LR decays within the run, G has a dropout."""
    kw = dict(
        schedule_unit=unit,
        n_epochs=1 if unit == "epoch" else 3,
        n_epochs_decay=2 if unit == "epoch" else 6,
    )
    straight = make(tmp_path, "straight", **kw)
    straight.fit()
    make(tmp_path, "split", max_steps=split, **kw).fit()
    data = Pairs()
    resumed = make(tmp_path, "split", init_seed=1, dataset=data, **kw)  # other init: loaded
    data.loaded.clear()
    resumed.fit(resume=True)
    assert resumed.step == straight.step == 9
    assert_same_state(straight, resumed)
    # the consumed part of the interrupted epoch was skipped without loading it
    assert len(data.loaded) == (9 - split) * 2
    assert [r["step"] for r in lines(tmp_path / "split")][-1] == 9


@pytest.fixture
def not_ignored(sig):
    """The signal handled as in a foreground process: a job started in the background (``cmd
    &``, nohup) inherits SIGINT ignored, which the trainer rightly leaves ignored."""
    default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
    previous = signal.signal(sig, default)
    yield
    signal.signal(sig, previous)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_then_resume_is_exact(tmp_path, sig, not_ignored):
    straight = make(tmp_path, "straight")
    straight.fit()
    before = signal.getsignal(sig)
    with pytest.raises(TrainingInterrupted) as info:
        make(tmp_path, "run", toy=dict(kill_at=5, sig=sig)).fit()
    assert signal.getsignal(sig) is before  # handler restored
    assert isinstance(info.value, KeyboardInterrupt) and info.value.signum == sig
    assert info.value.step == 5  # the iteration in flight was finished
    assert info.value.checkpoint.name == "step_00000005.pt" and info.value.checkpoint.exists()
    resumed = make(tmp_path, "run", init_seed=1)
    resumed.fit(resume=True)
    assert_same_state(straight, resumed)


def test_abandoned_iteration(tmp_path):
    """A KeyboardInterrupt that abandons an iteration (second Ctrl-C): a checkpoint only if the
    state is still that of the last whole iteration (interrupted while loading data)."""
    straight = make(tmp_path, "straight")
    straight.fit()
    data = Pairs()
    trainer = make(tmp_path, "run", dataset=data)
    data.countdown = 2 * 4 + 1  # first item of the 5th batch
    with pytest.raises(TrainingInterrupted) as info:
        trainer.fit()
    assert info.value.signum == signal.SIGINT and info.value.checkpoint.name == "step_00000004.pt"
    resumed = make(tmp_path, "run", init_seed=1)
    resumed.fit(resume=True)
    assert_same_state(straight, resumed)

    with pytest.raises(TrainingInterrupted) as info:  # after the D step: no checkpoint
        make(tmp_path, "other", toy=dict(abort_at=3)).fit()
    assert info.value.step == 2 and info.value.checkpoint is None
    assert not (tmp_path / "other" / "checkpoints").exists()


def test_workers_are_seeded_and_resume_exactly(tmp_path):
    runs = [
        make(tmp_path, name, num_workers=2, dataset=Pairs(global_flip=False), **kw)
        for name, kw in (("a", {}), ("b", {}), ("c", {"max_steps": 4}))
    ]
    for t in runs:
        t.fit()
    assert_same_state(runs[0], runs[1])
    resumed = make(tmp_path, "c", num_workers=2, dataset=Pairs(global_flip=False), init_seed=1)
    resumed.fit(resume=True)
    assert_same_state(runs[0], resumed)


def test_resume_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        make(tmp_path).fit(resume=True)


def test_resume_from_an_older_checkpoint_sets_later_ones_aside(tmp_path):
    make(tmp_path, checkpoint_every=3, keep_last=5).fit()
    folder = tmp_path / "run" / "checkpoints"
    with pytest.warns(UserWarning, match="step_00000006.pt', 'step_00000009.pt"):
        make(tmp_path, checkpoint_every=3, keep_last=5).fit(resume=folder / "step_00000003.pt")
    assert sorted(p.name for p in folder.iterdir()) == [
        "abandoned_step_00000006.pt",
        "abandoned_step_00000009.pt",
        "step_00000003.pt",
        "step_00000006.pt",
        "step_00000009.pt",
    ]


# -- failures and seeds -------------------------------------------------------------------------
def test_nonfinite_loss_stops_with_emergency_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"phase 'D'.*at step 1"):
        make(tmp_path, toy=dict(nan_at=2)).fit()
    path = tmp_path / "run" / "checkpoints" / "nonfinite_step_00000001.pt"
    assert torch.load(path, weights_only=True)["step"] == 1


def test_seed_determines_the_run(tmp_path):
    a = make(tmp_path, "a", seed=0)
    b = make(tmp_path, "b", seed=0)
    c = make(tmp_path, "c", seed=1)
    for t in (a, b, c):
        t.fit()
    assert_same_state(a, b)
    assert not torch.equal(a.objective.G[0].weight, c.objective.G[0].weight)


def test_ordered_datasets_are_read_in_index_order(tmp_path):
    data = Pairs(global_flip=False)
    data.ordered = True  # as SinCUT's single-image crops, whose batches share random choices
    make(tmp_path, dataset=data, n_epochs=1, n_epochs_decay=0).fit()
    assert [i for _, i in data.loaded[-6:]] == [0, 1, 2, 3, 4, 5]  # after the sample batch
    shuffled = Pairs(global_flip=False)
    make(tmp_path, name="other", dataset=shuffled, n_epochs=1, n_epochs_decay=0).fit()
    assert sorted(i for _, i in shuffled.loaded[-6:]) == [0, 1, 2, 3, 4, 5]
    assert [i for _, i in shuffled.loaded[-6:]] != [0, 1, 2, 3, 4, 5]
