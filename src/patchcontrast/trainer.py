"""The one training loop: phases as data, linear LR schedule, AMP, checkpoints, logging.

The Trainer knows nothing about GANs or contrastive losses (see :mod:`objectives.base`): every
iteration it runs ``objective.prepare(batch)``, each :class:`Phase` (loss, backward, step of that
phase's Adam), then ``objective.release()``. What it fixes over upstream CUT (docs/design.md §5.1,
§7.2): seeded data order that depends only on (seed, epoch); optimiser, scheduler, scaler and RNG
states in checkpoints, so a resumed run is bitwise identical to an uninterrupted one (CPU,
``deterministic=True``); periods counted in iterations, not images; atomic checkpoint writes;
graceful Ctrl-C/SIGTERM.

Run folder: ``config.json``, ``stats.jsonl``, ``tb/`` (TensorBoard), ``samples/step_*.png``,
``checkpoints/step_*.pt``. Weight initialisation is the caller's business (seed before building
the objective); the Trainer seeds torch, numpy and ``random`` with ``seed`` when a run starts.

Under ``torchrun`` (detected from ``WORLD_SIZE``) every process trains on its shard of each
global batch (``batch_size`` images per process) and gradients are averaged per phase, so a step
equals one process's step on the combined batch (see :mod:`patchcontrast.distributed`); rank 0
alone logs, writes samples and checkpoints (the same files as a single process writes).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
import warnings
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm import tqdm

from patchcontrast.config import TrainConfig
from patchcontrast.distributed import (
    any_rank,
    average_gradients,
    barrier,
    broadcast_module,
    mean_over_ranks,
    on_main,
    setup,
    sync_batchnorm,
)
from patchcontrast.objectives.base import Objective, Phase
from patchcontrast.runstate import (
    atomic_save,
    atomic_write_text,
    checkpoint_files,
    checkpoint_step,
    derived_seed,
    determinism,
    graceful_signals,
    ignore_sigint,
    read_checkpoint,
    remove_leftovers,
    resolve_checkpoint,
    rng_preserved,
    rng_state,
    run_lock,
    save_sample_grid,
    set_rng_state,
    writing,
)

# settings whose change between a checkpoint and its resumption breaks exact continuation
_TRAJECTORY = ("n_epochs", "n_epochs_decay", "schedule_unit", "batch_size", "seed", "amp")


def _stats_line(line: str) -> dict | None:
    """A stats.jsonl line's record; None for a blank line or one cut short by a kill."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "step" in record else None


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by :meth:`Trainer.fit` after Ctrl-C (SIGINT) or SIGTERM, once the current iteration
    is finished and a checkpoint written. A KeyboardInterrupt, so ``except Exception`` does not
    swallow it; the CLI maps ``signum`` to its exit code (SIGTERM -> 143, SIGINT -> 130)."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        saved = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint written"
        super().__init__(
            f"training stopped by {signal.Signals(signum).name} at step {step} "
            f"({saved}); continue with fit(resume=True)"
        )


class NonFiniteLossError(FloatingPointError):
    """A phase returned a NaN/inf loss; an emergency checkpoint was written first."""


def linear_multiplier(t: int, n: int, n_decay: int) -> float:
    """LR multiplier after ``t`` scheduler steps: CUT's ``lr_policy=linear``,
    ``1 - max(0, e - n) / (n_decay + 1)`` for the 1-indexed epoch ``e = t + 1``. Constant for
    ``n`` units, then linear decay to ``1 / (n_decay + 1)`` (never exactly 0, as upstream)."""
    return 1.0 - max(0, t + 1 - n) / (n_decay + 1)


def apply_switches(
    objective: Objective,
    *,
    channels_last: bool = False,
    compile: bool = False,
    checkpoint_activations: bool = False,
) -> None:
    """The speed/memory switches of :class:`TrainConfig`, applied to ``objective`` in place.

    ``channels_last``: 4-D weights in NHWC (inputs must follow, see ``Trainer``).
    ``checkpoint_activations``: every network with a ``set_grad_checkpointing`` method (the CUT
    generators: their residual blocks hold the bulk of the activations) recomputes those
    activations in the backward. Refused for objectives without one: SPADE's blocks hold
    BatchNorm, whose running statistics the recomputation would update twice.
    ``compile``: ``Module.compile()`` (in place, same ``state_dict``) of every network the phases
    name (the generators also compile their layers, for the encoder passes). Static shapes: a
    new shape (the sample grid's batch) compiles once more instead of switching to dynamic
    shapes, which failed in Inductor (torch 2.14, CPU) for these networks.
    """
    if checkpoint_activations:
        switched = [
            m.set_grad_checkpointing(True)
            for m in objective.modules()
            if hasattr(m, "set_grad_checkpointing")
        ]
        if not any(switched):
            raise ValueError(
                f"TrainConfig.checkpoint_activations=True: {type(objective).__name__} has "
                "no network with residual blocks (CUT generator) to checkpoint; use false"
            )
    if channels_last:
        objective.to(memory_format=torch.channels_last)
    if compile:
        names = {m for p in objective.phases for m in p.modules + p.frozen}
        for name in sorted(names):
            getattr(objective, name).compile(dynamic=False)


class Trainer:
    """Trains an :class:`Objective` on a dataset of dict batches; see the module docstring.

    ``sample_batch``: the fixed batch of the sample grids (default: items ``0..batch_size-1`` at
    epoch 0). ``extra_config``: the caller's model/data config (JSON types), saved next to
    ``"train"`` in ``config.json`` and in checkpoints. Optimisers are built here, so every network
    of the objective must exist already (no lazily created layers, docs/design.md §7.2).
    """

    def __init__(
        self,
        objective: Objective,
        dataset: Dataset,
        config: TrainConfig,
        *,
        sample_batch: dict | None = None,
        extra_config: dict | None = None,
    ):
        self.objective, self.dataset, self.config = objective, dataset, config
        self.extra_config = dict(extra_config or {})
        if "train" in self.extra_config:
            raise ValueError("extra_config must not have a 'train' key (the TrainConfig's)")
        self.run_dir = Path(config.run_dir)
        self.dist, self.device = setup(config.device)
        self._cuda = self.device.type == "cuda"
        if config.amp != "none" and not self._cuda:
            raise ValueError(
                f"TrainConfig.amp={config.amp!r} needs CUDA; the device is "
                f"{self.device}; use amp='none'"
            )
        world = self.dist.world_size
        self.iters_per_epoch = len(dataset) // (config.batch_size * world)
        if self.iters_per_epoch == 0:
            per = f" x {world} processes" if world > 1 else ""
            raise ValueError(
                f"the dataset has {len(dataset)} items, fewer than "
                f"batch_size={config.batch_size}{per} (batches drop the remainder)"
            )
        n, n_decay = config.n_epochs, config.n_epochs_decay
        unit = self.iters_per_epoch if config.schedule_unit == "epoch" else 1
        self.total_steps = min((n + n_decay) * unit, config.max_steps or math.inf)

        phases = objective.phases
        if not phases or len({p.name for p in phases}) != len(phases):
            raise ValueError(f"objective.phases must be non-empty with unique names: {phases}")
        objective.to(self.device)
        sync_batchnorm(objective, self.dist, self.device)
        broadcast_module(objective, self.dist)  # before channels_last: collectives need NCHW
        apply_switches(
            objective,
            channels_last=config.channels_last,
            compile=config.compile,
            checkpoint_activations=config.checkpoint_activations,
        )
        self.optimizers, self.schedulers, self.scalers = {}, {}, {}
        self._params: dict[str, list[torch.nn.Parameter]] = {}
        for phase in phases:
            bad = [
                m
                for m in phase.modules + phase.frozen
                if not isinstance(getattr(objective, m, None), torch.nn.Module)
            ]
            params = {
                id(p): p
                for m in phase.modules
                if m not in bad
                for p in getattr(objective, m).parameters()
            }
            if bad or not params or phase.every < 1:
                raise ValueError(
                    f"Phase {phase.name!r}: every must be >= 1 and modules/frozen "
                    f"must name sub-modules (with parameters) of "
                    f"{type(objective).__name__}; not sub-modules: {bad}"
                )
            self._params[phase.name] = list(params.values())
            opt = torch.optim.Adam(params.values(), lr=phase.lr, betas=phase.betas)
            self.optimizers[phase.name] = opt
            self.schedulers[phase.name] = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda t: linear_multiplier(t, n, n_decay)
            )
            self.scalers[phase.name] = torch.amp.GradScaler(
                self.device.type, enabled=config.amp == "fp16"
            )
        self.step = self.epoch = self.position = 0  # position: batches done in this epoch
        self._fresh, self._rng, self._dirty, self._last_ckpt = True, None, False, -1
        self._last_sample, self._record, self._lr = -1, {}, {}
        if sample_batch is None:
            with rng_preserved(self._cuda):
                if hasattr(dataset, "set_epoch"):
                    dataset.set_epoch(0)
                torch.manual_seed(config.seed)  # fixed augmentation of the sample batch
                sample_batch = default_collate([dataset[i] for i in range(config.batch_size)])
        self.sample_batch = sample_batch

    def resume(self, path: str | os.PathLike) -> Path:
        """Load ``path`` (a checkpoint, or a run folder: its highest ``step_*.pt``) and restore
        everything; the next :meth:`fit` continues exactly where that run stopped. Under
        torchrun rank 0 chooses the file and every rank reads it (a shared file system), so a
        checkpoint of a multi-process run resumes in one process and vice versa."""
        path = on_main(lambda: resolve_checkpoint(Path(path)), self.dist)
        if not path.is_file():
            raise FileNotFoundError(
                f"rank {self.dist.rank} cannot read {path}: the run folder "
                "must be on a file system shared by all nodes"
            )
        state = read_checkpoint(path)
        saved = state["config"]["train"]
        changed = [
            k for k in _TRAJECTORY if k != "batch_size" and saved.get(k) != getattr(self.config, k)
        ]
        # the global batch matters, not its split over processes
        if (
            saved["batch_size"] * state.get("world_size", 1)
            != self.config.batch_size * self.dist.world_size
        ):
            changed.append("batch_size x processes")
        if changed and self.dist.is_main:
            warnings.warn(
                f"resuming {path} with changed {changed}: the continuation will "
                "differ from the original run",
                stacklevel=2,
            )
        if (
            set(state["optimizers"]) != set(self.optimizers)
            or state["position"] >= self.iters_per_epoch
        ):
            raise ValueError(
                f"{path} does not fit this run: phases {sorted(state['optimizers'])} "
                f"vs {sorted(self.optimizers)}, batch {state['position']} of an "
                f"epoch of {self.iters_per_epoch}"
            )
        self.objective.load_state_dict(state["objective"])
        for name in self.optimizers:
            self.optimizers[name].load_state_dict(state["optimizers"][name])
            self.schedulers[name].load_state_dict(state["schedulers"][name])
            self.scalers[name].load_state_dict(state["scalers"][name])
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self._fresh, self._rng, self._last_ckpt = False, state["rng"], self.step
        if self.dist.enabled and state["rng"]["cuda"]:
            # rank 0 saved its own GPU's stream first; every rank's GPU followed the same one
            state["rng"]["cuda"] = [state["rng"]["cuda"][0]] * len(state["rng"]["cuda"])
        if self.dist.is_main:
            print(
                f"resumed from {path} at step {self.step} (epoch {self.epoch}, "
                f"batch {self.position})"
            )
        return path

    def fit(self, resume: bool | str | os.PathLike | None = None) -> dict:
        """Train to the end of the schedule (or ``max_steps``); returns step, epoch, the last
        logged stats and run_dir. ``resume=True``: continue the highest checkpoint of run_dir; a
        path: that checkpoint or run folder. Raises :class:`TrainingInterrupted` on
        Ctrl-C/SIGTERM (after a checkpoint), :class:`NonFiniteLossError` on NaN/inf,
        ``runstate.CheckpointWriteError`` when a checkpoint cannot be written (disk full) and
        ValueError when another live process trains in run_dir (``runstate.run_lock``)."""
        with ExitStack() as held:
            # rank 0 locks the folder for all ranks, before resume reads any checkpoint of it
            on_main(lambda: held.enter_context(run_lock(self.run_dir)), self.dist)
            return self._fit(resume)

    def _fit(self, resume: bool | str | os.PathLike | None) -> dict:
        if resume:
            self.resume(self.run_dir if resume is True else resume)
        on_main(self._open_run_dir, self.dist)
        writer = None
        if self.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter  # slow import, only needed here

            with writing(self.run_dir / "tb"):  # it writes the event file's header at once
                writer = SummaryWriter(
                    self.run_dir / "tb", purge_step=0 if self._fresh else self.step + 1
                )
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            unit="it",
            dynamic_ncols=True,
            disable=not self.dist.is_main,
        )
        try:
            with determinism(self.config.deterministic), graceful_signals() as stop:
                if self._fresh:
                    torch.manual_seed(self.config.seed)
                    np.random.seed(self.config.seed)  # noqa: NPY002
                    random.seed(self.config.seed)
                elif self._rng is not None:
                    set_rng_state(self._rng)
                self._fresh, self._rng = False, None
                self.objective.train()
                self._loop(stop, writer, bar)
            barrier(self.dist)  # the last checkpoint exists when fit returns on any rank
        finally:
            bar.close()
            if writer is not None:
                with writing(self.run_dir / "tb"):
                    writer.close()
        return {
            "step": self.step,
            "epoch": self.epoch,
            "stats": self._record,
            "run_dir": str(self.run_dir),
        }

    def time_iterations(self, n: int = 8, warmup: int = 2) -> dict[str, float]:
        """Seconds per iteration (median of ``n`` after ``warmup``), per sample grid and per
        checkpoint, measured by running them here. They train this trainer's objective and write
        into its run folder: time a throwaway trainer (see ``pipeline.plan_time_budget``)."""
        if n < 1 or warmup < 0:
            raise ValueError(f"need n >= 1 and warmup >= 0; got n={n}, warmup={warmup}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.objective.train()
        self._boundary_rng = rng_state(self._cuda)  # what the timed checkpoint stores
        batches, times = iter(self._loader()), []
        for _ in range(warmup + n):
            start = time.perf_counter()  # data loading is part of an iteration's cost
            try:
                batch = next(batches)
            except StopIteration:  # an epoch shorter than the timing run
                batches = iter(self._loader())
                batch = next(batches)
            self._iteration(batch)
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        self._write_samples()
        sample = time.perf_counter() - start
        start = time.perf_counter()
        self._checkpoint()
        return {
            "iteration": float(np.median(times[warmup:])),
            "sample": sample,
            "checkpoint": time.perf_counter() - start,
        }

    def _open_run_dir(self) -> None:
        if self._fresh and checkpoint_files(self.run_dir / "checkpoints"):
            raise FileExistsError(
                f"{self.run_dir} already holds checkpoints: continue that run "
                "with --resume (resume=True), or choose another run folder"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # half-written files of a process killed while writing them (the lock is ours now)
        for folder in (self.run_dir, self.run_dir / "checkpoints", self.run_dir / "samples"):
            remove_leftovers(folder)
        config = json.dumps({"train": self.config.to_dict(), **self.extra_config}, indent=2)
        atomic_write_text(self.run_dir / "config.json", config + "\n")
        where = f"{self.dist.world_size} processes, rank 0 on " if self.dist.enabled else ""
        print(
            f"{config}\n{where}device {self.device}, {self.iters_per_epoch} iterations/epoch, "
            f"{self.total_steps} iterations, run_dir {self.run_dir}"
        )
        # checkpoints of a continuation abandoned by resuming from an older one: keep them, but
        # out of the way of keep_last and of resume(run_dir)
        later = [
            p
            for p in checkpoint_files(self.run_dir / "checkpoints")
            if not self._fresh and checkpoint_step(p) > self.step
        ]
        for p in later:
            p.rename(p.with_name(f"abandoned_{p.name}"))
        if later:
            warnings.warn(
                f"checkpoints after the resumed step renamed to abandoned_*: "
                f"{[p.name for p in later]}",
                stacklevel=3,
            )
        stats = self.run_dir / "stats.jsonl"
        if self._fresh:  # leftovers of a run that never reached a checkpoint
            stats.unlink(missing_ok=True)
        elif stats.exists():  # lines after the checkpoint will be logged again
            kept = [
                line
                for line in stats.read_text().splitlines()
                if (record := _stats_line(line)) is not None and record["step"] <= self.step
            ]
            atomic_write_text(stats, "".join(f"{line}\n" for line in kept))

    def _loop(self, stop, writer, bar) -> None:
        cfg, meter = self.config, defaultdict(list)
        self._boundary_rng, tick, ticks = rng_state(self._cuda), time.perf_counter(), 0
        while self.step < self.total_steps:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            batches = iter(self._loader())
            for _ in range(self.position, self.iters_per_epoch):
                try:
                    stats = self._iteration(self._next_batch(batches))
                except KeyboardInterrupt:  # a second Ctrl-C: checkpoint only if nothing changed
                    self._interrupted(signal.SIGINT, save=not self._dirty)
                self._advance()
                for k, v in stats.items():
                    meter[k].append(v)
                ticks += 1
                bar.update(1)
                bar.set_postfix({k: f"{v:.3g}" for k, v in stats.items()}, refresh=False)
                last = self.step >= self.total_steps
                if self.step % cfg.log_every == 0 or last:
                    self._log(writer, meter, time.perf_counter() - tick, ticks)
                    meter, tick, ticks = defaultdict(list), time.perf_counter(), 0
                if self.step % cfg.sample_every == 0 or last:
                    self._write_samples()
                if self.step % cfg.checkpoint_every == 0 or last:
                    self._checkpoint()
                if last:  # a signal during the last iteration: the run is complete anyway
                    break
                # every rank stops after the same iteration, also if only one got the signal
                if any_rank(stop.signum is not None, self.dist, self.device):
                    self._interrupted(stop.signum or signal.SIGTERM, save=True)
            del batches  # shut the workers down before the next epoch's loader starts

    def _loader(self) -> DataLoader:
        """The rest of the current epoch. The order depends only on (seed, epoch), so a resumed
        run skips the consumed indices without loading them; workers are seeded from the
        loader's generator (seed, epoch) and re-created per epoch, so they see set_epoch.

        Under torchrun this is the distributed sampler: global batch i is the i-th run of
        ``world_size * batch_size`` indices of the epoch's order, and rank r takes its r-th
        slice, so the ranks' batches together are exactly a single process's batch of that size.
        """
        cfg, bs, env = self.config, self.config.batch_size, self.dist
        g = torch.Generator().manual_seed(derived_seed(cfg.seed, self.epoch, 0))
        # datasets whose items draw their randomness per batch of consecutive indices (SinCUT's
        # shared zoom and distinct crop cells) declare ``ordered = True`` and are read in order
        order = (
            torch.arange(len(self.dataset))
            if getattr(self.dataset, "ordered", False)
            else torch.randperm(len(self.dataset), generator=g)
        )
        order = order[: self.iters_per_epoch * env.world_size * bs]
        mine = order.view(self.iters_per_epoch, env.world_size, bs)[:, env.rank].reshape(-1)
        rank = (env.rank,) if env.enabled else ()  # workers of different ranks draw differently
        return DataLoader(
            self.dataset,
            batch_size=bs,
            sampler=mine[self.position * bs :].tolist(),
            drop_last=True,
            num_workers=cfg.num_workers,
            pin_memory=self._cuda,
            worker_init_fn=ignore_sigint if cfg.num_workers else None,
            generator=torch.Generator().manual_seed(derived_seed(cfg.seed, self.epoch, 1, *rank)),
        )

    def _next_batch(self, batches) -> dict:
        """The next batch. Under torchrun, randomness drawn while loading in this process comes
        from a per-rank stream (seed, epoch, position, rank): the global RNG, which draws the
        patch positions, must stay identical on all ranks."""
        if not self.dist.enabled:
            return next(batches)
        with rng_preserved(self._cuda):
            seed = derived_seed(self.config.seed, self.epoch, self.position, self.dist.rank, 2)
            torch.manual_seed(seed)
            np.random.seed(seed)  # noqa: NPY002
            random.seed(seed)
            return next(batches)

    def _autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.amp)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def _iteration(self, batch: dict) -> dict[str, float]:
        batch = {k: self._to_device(v) for k, v in batch.items()}
        self._dirty, stats = True, {}  # from here on the state differs from the last boundary
        try:
            with self._autocast():
                self.objective.prepare(batch)
            for phase in self.objective.phases:
                self._lr[phase.name] = self.optimizers[phase.name].param_groups[0]["lr"]
                if self.step % phase.every == 0:  # iterations 0, every, 2 every, ...
                    phase_stats = self._phase(phase)
                    clash = set(phase_stats) & set(stats)
                    if clash:
                        raise ValueError(f"phase {phase.name!r} repeats stats {sorted(clash)}")
                    stats.update(phase_stats)
            self.objective.after_step()
        finally:
            self.objective.release()
        return stats

    def _to_device(self, v):
        if not torch.is_tensor(v):
            return v
        v = v.to(self.device, non_blocking=True)
        if self.config.channels_last and v.dim() == 4 and v.is_floating_point():
            v = v.contiguous(memory_format=torch.channels_last)
        return v

    def _phase(self, phase: Phase) -> dict[str, float]:
        obj, opt, scaler = self.objective, self.optimizers[phase.name], self.scalers[phase.name]
        # freeze (and later unfreeze) only the parameters that currently train
        frozen = [p for m in phase.frozen for p in getattr(obj, m).parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            with self._autocast():
                loss, stats = obj.loss(phase.name)
            if loss.numel() != 1:
                raise ValueError(f"loss({phase.name!r}) must be a scalar, got {tuple(loss.shape)}")
            value = loss.detach().item()
            # the combined batch's loss; NaN/inf on any rank makes it non-finite on every rank
            value = mean_over_ranks({"loss": value}, self.dist, self.device)["loss"]
            if not math.isfinite(value):
                path = self._checkpoint("nonfinite_step")
                raise NonFiniteLossError(
                    f"phase {phase.name!r} returned a non-finite loss "
                    f"({value}) at step {self.step} (iterations done, epoch "
                    f"{self.epoch}); state saved to {path}"
                )
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            # before the scaler's inf check, so that all ranks skip or step together
            average_gradients(self._params[phase.name], self.dist)
            scaler.step(opt)
            scaler.update()
        finally:
            for p in frozen:
                p.requires_grad_(True)
        return {f"loss/{phase.name}": value, **{k: float(v) for k, v in stats.items()}}

    def _advance(self) -> None:
        self.step, self.position = self.step + 1, self.position + 1
        end_of_epoch = self.position == self.iters_per_epoch
        if end_of_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        if end_of_epoch or self.config.schedule_unit == "step":
            with warnings.catch_warnings():  # fp16 may skip the very first optimiser step
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler", UserWarning)
                for s in self.schedulers.values():
                    s.step()
        self._boundary_rng, self._dirty = rng_state(self._cuda), False

    def _interrupted(self, signum: int, save: bool):
        raise TrainingInterrupted(signum, self.step, self._checkpoint() if save else None)

    def _log(self, writer, meter: dict, seconds: float, ticks: int) -> None:
        """One stats.jsonl line and the same scalars to TensorBoard: epochs done (fractional), the
        LR used last, the mean of each stat over the interval, timing (data loading and side work
        included)."""
        means = mean_over_ranks(
            {k: sum(v) / len(v) for k, v in meter.items()}, self.dist, self.device
        )  # a collective: every rank takes part
        record = {
            "step": self.step,
            "epoch": round(self.step / self.iters_per_epoch, 6),
            **{f"lr/{k}": v for k, v in self._lr.items()},
            **{k: means[k] for k in meter},
            "sec_per_iter": seconds / ticks,
            "img_per_sec": ticks * self.config.batch_size * self.dist.world_size / seconds,
        }
        self._record = record
        if not self.dist.is_main:
            return
        stats = self.run_dir / "stats.jsonl"
        with writing(stats), open(stats, "a") as f:
            f.write(json.dumps(record) + "\n")
        # TensorBoard writes in a thread of its own and raises its errors in the next call here
        with writing(self.run_dir / "tb"):
            for k, v in record.items():
                if k != "step":
                    writer.add_scalar(k, v, self.step)
            writer.flush()

    def _write_samples(self) -> None:
        if self._last_sample == self.step or not self.dist.is_main:
            return
        batch = {
            k: v.to(self.device) if torch.is_tensor(v) else v for k, v in self.sample_batch.items()
        }
        self.objective.eval()
        try:
            with torch.no_grad(), rng_preserved(self._cuda):
                images = self.objective.samples(batch)
        finally:
            self.objective.train()
        (self.run_dir / "samples").mkdir(exist_ok=True)
        save_sample_grid(images, self.run_dir / "samples" / f"step_{self.step:08d}.png")
        self._last_sample = self.step

    def _checkpoint(self, prefix: str = "step") -> Path:
        """Everything needed to continue exactly; ``step_*`` files beyond ``keep_last`` are
        deleted (never the one just written)."""
        folder = self.run_dir / "checkpoints"
        path = folder / f"{prefix}_{self.step:08d}.pt"
        if prefix == "step" and self._last_ckpt == self.step and path.exists():
            return path
        if not self.dist.is_main:
            return path
        folder.mkdir(exist_ok=True)
        atomic_save(
            {
                "objective": self.objective.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
                "scalers": {k: s.state_dict() for k, s in self.scalers.items()},
                "step": self.step,
                "epoch": self.epoch,
                "position": self.position,
                "world_size": self.dist.world_size,
                "rng": self._boundary_rng,  # as at the end of the last whole iteration
                "config": {"train": self.config.to_dict(), **self.extra_config},
            },
            path,
        )
        if prefix == "step":
            self._last_ckpt = self.step
            older = [p for p in checkpoint_files(folder) if p != path]
            for p in older[: max(0, len(older) - (self.config.keep_last - 1))]:
                p.unlink(missing_ok=True)
        return path
