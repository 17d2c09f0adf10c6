"""Data-parallel training over processes (``torchrun``, one process per GPU, several nodes).

The Trainer calls these helpers; with ``WORLD_SIZE`` unset (or 1) every one of them is a no-op,
so single-process training is unchanged.

**Why gradients are averaged per phase instead of wrapping networks in DDP.** An objective
trains several sub-modules in different phases (D step, then G/F step with D frozen) and calls
its networks through methods other than ``forward`` (``ResnetGenerator.encode`` and
``forward_with_features``); the generator runs several forwards per backward (translation, then
the query encoding of the fake) and D runs in both phases, trainable in one and frozen in the
other. ``DistributedDataParallel`` only hooks ``forward``, expects one forward per backward
(else ``static_graph``/``find_unused_parameters``), fixes its parameter set when it is built and
renames ``state_dict`` keys (``module.``). Instead, after a phase's backward the Trainer calls
:func:`average_gradients` on exactly the parameters that phase's optimiser steps: one bucketed
``all_reduce`` and a division by the world size. Since every loss is a mean over images and every
rank holds the same number of images, the average of the ranks' gradients *is* the gradient of
the combined batch, whatever the forward pattern (``tests/test_distributed.py`` checks it against
a single process on the combined batch). The networks stay unwrapped, so checkpoints are
identical in both settings. The price: communication starts after the backward instead of
overlapping with it (``docs/scaling.md`` estimates the cost).

What stays per rank, on purpose: negatives (a rank's images are contrasted within themselves,
per image as on one GPU), the data shard, the per-rank batch. What is identical on every rank:
the weights (broadcast from rank 0 once), the global torch RNG (same seed, so patch positions and
FastCUT's flip coin agree; the Trainer draws data-side randomness from a per-rank stream) and the
batch-norm statistics (synchronised, :func:`sync_batchnorm`).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

T = TypeVar("T")

# elements per all-reduce bucket (64 MiB of float32): caps the temporary copy of the gradients
BUCKET_NUMEL = 2**24


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job: ``rank`` in ``[0, world_size)``, ``local_rank`` on its
    node (its GPU index)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes samples and checkpoints."""
        return self.rank == 0


def detect_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """The job layout from ``torchrun``'s ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (or from a
    process group the caller initialised); a single process when ``WORLD_SIZE`` is unset."""
    environ = os.environ if environ is None else environ
    if dist.is_available() and dist.is_initialized():
        local = int(environ.get("LOCAL_RANK", dist.get_rank()))
        return DistEnv(dist.get_rank(), dist.get_world_size(), local)
    if "WORLD_SIZE" not in environ:
        return DistEnv()
    values = {}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        raw = environ.get(name, "0" if name == "LOCAL_RANK" else None)
        if raw is None or not raw.strip().isdigit():
            raise ValueError(
                f"environment variable {name} must be a non-negative integer when "
                f"WORLD_SIZE is set, got {raw!r}; launch with torchrun"
            )
        values[name] = int(raw)
    world, rank = values["WORLD_SIZE"], values["RANK"]
    if world < 1 or rank >= world:
        raise ValueError(f"RANK={rank} must be in [0, WORLD_SIZE={world})")
    return DistEnv(rank, world, values["LOCAL_RANK"])


def resolve_device(spec: str, env: DistEnv) -> torch.device:
    """``TrainConfig.device`` -> this process's device. Under torchrun ``"auto"`` and ``"cuda"``
    mean ``cuda:LOCAL_RANK`` (one GPU per process); a fixed index would put every rank on it."""
    cuda = torch.cuda.is_available()
    if not env.enabled:
        return torch.device(("cuda" if cuda else "cpu") if spec == "auto" else spec)
    if spec == "auto":
        spec = "cuda" if cuda else "cpu"
    device = torch.device(spec)
    if device.type != "cuda":
        return device
    if device.index is not None:
        raise ValueError(
            f"TrainConfig.device={spec!r} names one GPU for all {env.world_size} "
            "processes; use 'cuda' or 'auto' (each process takes cuda:LOCAL_RANK)"
        )
    if env.local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK={env.local_rank} but only {torch.cuda.device_count()} "
            "GPUs are visible; start at most one process per GPU"
        )
    return torch.device("cuda", env.local_rank)


def setup(spec: str) -> tuple[DistEnv, torch.device]:
    """Detect the job, choose the device and join the process group (once per process; NCCL for
    CUDA, gloo for CPU; rendezvous from torchrun's ``MASTER_ADDR``/``MASTER_PORT``)."""
    env = detect_env()
    device = resolve_device(spec, env)
    if env.enabled and not dist.is_initialized():
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise ValueError(
                f"WORLD_SIZE={env.world_size} is set but {missing} are not; "
                "launch with torchrun (see docs/scaling.md)"
            )
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", rank=env.rank, world_size=env.world_size
        )
        atexit.register(_leave)
    return env, device


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_module(module: nn.Module, env: DistEnv) -> None:
    """Copy rank 0's parameters and buffers to every rank (in place), so that all ranks start
    from the same weights whatever their seeds were when the networks were built."""
    if not env.enabled:
        return
    with torch.no_grad():
        for t in chain(module.parameters(), module.buffers()):
            buffer = t if t.is_contiguous() else t.contiguous()  # collectives need dense memory
            dist.broadcast(buffer, src=0)
            if buffer is not t:
                t.copy_(buffer)


def _buckets(params: Sequence[Tensor], numel: int) -> Iterable[list[int]]:
    """Indices of ``params`` in consecutive groups of one dtype and about ``numel`` elements."""
    group: list[int] = []
    size = 0
    for i, p in enumerate(params):
        if group and (size + p.numel() > numel or p.dtype != params[group[0]].dtype):
            yield group
            group, size = [], 0
        group.append(i)
        size += p.numel()
    if group:
        yield group


def average_gradients(
    params: Sequence[Tensor], env: DistEnv, *, bucket_numel: int = BUCKET_NUMEL
) -> None:
    """``p.grad <- mean over ranks of p.grad`` for every parameter, in place.

    A rank without a gradient for ``p`` contributes zeros (its images did not reach ``p``); a
    parameter without gradient on every rank keeps ``grad=None``, as it would in one process.
    Every rank must pass the same parameters in the same order (the phase's optimiser's).
    """
    if not env.enabled or not params:
        return
    device = params[0].device
    present = torch.tensor([float(p.grad is not None) for p in params], device=device)
    pending = [(None, present, dist.all_reduce(present, async_op=True))]
    for group in _buckets(params, bucket_numel):
        flat = torch.cat(
            [
                (
                    params[i].grad if params[i].grad is not None else torch.zeros_like(params[i])
                ).reshape(-1)
                for i in group
            ]
        )
        pending.append((group, flat, dist.all_reduce(flat, async_op=True)))
    for _, _, work in pending:
        work.wait()
    for group, flat, _ in pending[1:]:
        flat.div_(env.world_size)
        for i, g in zip(group, flat.split([params[i].numel() for i in group])):
            p = params[i]
            if present[i] == 0:
                continue
            if p.grad is None:
                p.grad = g.view_as(p).clone(memory_format=torch.preserve_format)
            else:
                p.grad.copy_(g.view_as(p))


def mean_over_ranks(
    values: dict[str, float], env: DistEnv, device: torch.device
) -> dict[str, float]:
    """Mean of each logged statistic over the ranks (same keys on every rank)."""
    if not env.enabled or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: v / env.world_size for k, v in zip(keys, t.tolist())}


def any_rank(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """Whether ``flag`` is set on at least one rank (all ranks get the same answer)."""
    if not env.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def on_main(fn: Callable[[], T], env: DistEnv) -> T:
    """Run ``fn`` on rank 0 only (file-system side effects) and hand its result to every rank;
    an exception raised there is raised on every rank, so none waits for the others forever."""
    if not env.enabled:
        return fn()
    payload: list = [None]
    if env.is_main:
        try:
            payload[0] = (True, fn())
        except Exception as e:  # re-raised below on every rank
            payload[0] = (False, e)
    dist.broadcast_object_list(payload, src=0)
    ok, value = payload[0]
    if not ok:
        raise value
    return value


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def sync_batchnorm(module: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    """Batch norm with statistics over the whole job's batch (needed for the combined-batch
    equality with SPADE's BatchNorm). CUDA: ``torch.nn.SyncBatchNorm``; CPU (gloo, which that
    class refuses): :class:`CpuSyncBatchNorm`. Both keep BatchNorm's ``state_dict`` keys."""
    if not env.enabled:
        return module
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, _BatchNorm) and not isinstance(module, CpuSyncBatchNorm):
        return CpuSyncBatchNorm.from_batchnorm(module)
    for name, child in module.named_children():
        new = sync_batchnorm(child, env, device)
        if new is not child:
            setattr(module, name, new)
    return module


class _SumOverRanks(torch.autograd.Function):
    """``all_reduce(SUM)`` inside autograd. Every rank's loss uses the sum, so the gradient of
    the job's loss with respect to one rank's summand is the sum of the ranks' gradients: the
    backward is an ``all_reduce(SUM)`` as well."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CpuSyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the batches of all ranks (CPU / gloo).

    ``mu = sum_r sum_i x / N``, ``var = sum_r sum_i (x - mu)^2 / N`` (two passes, so no
    cancellation) over ``N`` = all ranks' ``B * H * W``; ``y = (x - mu) / sqrt(var + eps)``
    (times weight, plus bias), running statistics updated with the unbiased ``var * N / (N-1)``
    exactly like ``nn.BatchNorm2d``. Eval mode and single processes use plain batch norm.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    @classmethod
    def from_batchnorm(cls, bn: _BatchNorm) -> CpuSyncBatchNorm:
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        like = next(
            (t for t in chain(bn.parameters(), bn.buffers()) if t.is_floating_point()), None
        )
        if like is not None:
            new.to(device=like.device, dtype=like.dtype)
        new.load_state_dict(bn.state_dict())
        if bn.affine:  # keep the Parameter objects (an optimiser may already hold them)
            new.weight, new.bias = bn.weight, bn.bias
        return new.train(bn.training)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not (
            self.training
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        ):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        local = x.new_tensor([x.numel() // x.shape[1]])
        count = _SumOverRanks.apply(local).item()
        mean = _SumOverRanks.apply(x.sum(dims)) / count  # (C,)
        centred = x - mean.view(shape)
        var = _SumOverRanks.apply(centred.square().sum(dims)) / count  # (C,), biased
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                dtype = self.running_mean.dtype
                self.running_mean.lerp_(mean.detach().to(dtype), f)
                self.running_var.lerp_((var.detach() * count / max(count - 1, 1)).to(dtype), f)
        return y
