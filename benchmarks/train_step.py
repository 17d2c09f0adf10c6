"""Seconds per training iteration, where they go, and what the speed/memory switches buy.

One iteration = shared forward + D step + G/F step with Adam, as the Trainer runs it. Sections
(``--only`` picks some; all by default):

* ``compare``: our step vs an "upstream-style" variant in the same run (the real images encoded
  a second time for the NCE keys, the projection head run with autograd on the keys, as the
  official code does): (a) upstream CUT at 256 px, batch 1, with PatchNCE and with MoNCE; (b) the
  64 px ``cpu`` preset (CUT + MoNCE). Ratio = upstream-style / ours.
* ``profile``: one iteration split into generator, discriminator, feature sampling (the
  projection head F), contrastive loss, Sinkhorn, optimizer and the rest, forward and backward
  apart. ``torch.profiler`` with ``record_function`` ranges around those calls; a backward op is
  charged to the range of the forward op that created it (autograd sequence numbers). Times
  include the profiler's own overhead (each op is recorded), so read them as shares.
* ``switches``: our step with and without each switch of ``TrainConfig`` (channels_last,
  checkpoint_activations, compile, autocast), timed alternately; "grad err" is the largest
  relative error of any gradient of one G step (same weights, data and patch positions) against
  the same step in float64, so the baseline's own float32 error is the yardstick.
* ``memory``: peak memory of one iteration per CUT-family preset at its crop size (256 px; 64
  for SinCUT), paper model, batch 1 (SinCUT: its batch of 16, its negatives span the batch),
  with and without checkpoint_activations (after a first iteration, as everywhere here).

On a CPU, peak memory comes from the profiler's allocation events (see ``_memory.py``).
Usage: ``python benchmarks/train_step.py [--repeats 3] [--skip-paper] [--only profile,switches]``
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import statistics
import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager, nullcontext

os.environ.setdefault("KINETO_LOG_LEVEL", "5")

import torch  # noqa: E402
from _memory import peak_mib  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from patchcontrast.config import PRESETS, resolve_config  # noqa: E402
from patchcontrast.losses import multilayer_loss  # noqa: E402
from patchcontrast.objectives.unpaired import UnpairedObjective  # noqa: E402
from patchcontrast.trainer import apply_switches  # noqa: E402

# the module, not the function of the same name that patchcontrast.losses exports
monce_module = importlib.import_module("patchcontrast.losses.monce")
SECTIONS = ("compare", "profile", "switches", "memory")
PARTS = (
    "generator",
    "discriminator",
    "feature sampling",
    "contrastive loss",
    "Sinkhorn",
    "optimizer",
)


class UpstreamStyle(UnpairedObjective):
    """Same networks and losses, computed the way the official code does."""

    def prepare(self, batch: dict) -> None:
        super().prepare(batch)
        c, layers = self._cache, self.cfg.nce_layers
        if self.contrastive:  # encode the real images again instead of reusing the features
            c["keys_a"] = self.G.encode(c["real_a"], layers)
            if c["idt_b"] is not None:
                c["keys_b"] = self.G.encode(c["real_b"], layers)

    def nce_loss(self, generated, keys, *, flip_back=False):
        queries = self.G.encode(generated, self.cfg.nce_layers)
        k_samples, ids = self.F(keys, self.cfg.num_patches)  # with autograd, as upstream
        q_samples, _ = self.F(queries, patch_ids=ids)
        return multilayer_loss(self.nce, q_samples, k_samples)


def make_step(objective: UnpairedObjective, batch: dict, amp: torch.dtype | None = None):
    """One Trainer iteration (Adam per phase, frozen modules per phase); ``amp``: autocast dtype
    (float16 adds a GradScaler per phase, as the Trainer does)."""
    device = next(objective.parameters()).device.type
    optims = {
        p.name: torch.optim.Adam(
            [q for m in p.modules for q in getattr(objective, m).parameters()],
            lr=p.lr,
            betas=p.betas,
        )
        for p in objective.phases
    }
    scalers = {
        p.name: torch.amp.GradScaler(device, enabled=amp == torch.float16) for p in objective.phases
    }

    def autocast():
        return torch.autocast(device, dtype=amp) if amp is not None else nullcontext()

    def step() -> None:
        with autocast():
            objective.prepare(batch)
        for phase in objective.phases:
            frozen = [getattr(objective, m) for m in phase.frozen]
            for module in frozen:
                module.requires_grad_(False)
            with autocast():
                loss, _ = objective.loss(phase.name)
            optims[phase.name].zero_grad(set_to_none=True)
            scalers[phase.name].scale(loss).backward()
            scalers[phase.name].step(optims[phase.name])
            scalers[phase.name].update()
            for module in frozen:
                module.requires_grad_(True)
        objective.release()

    step.optimizers = optims
    return step


def measure(steps: list, repeats: int, device: str) -> list[float]:
    """Median seconds per iteration of each step function, timed alternately (one iteration of
    each per round) so that machine-speed drift affects all of them alike."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for step in steps:
        step()  # warm-up (allocations, lazy inits, compilation)
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for i, step in enumerate(steps):
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def build(
    preset: str,
    scale: str,
    size: int,
    batch_size: int,
    device: str,
    *,
    cls: type = UnpairedObjective,
    dtype: torch.dtype = torch.float32,
    **switches,
) -> tuple[UnpairedObjective, dict]:
    """Seeded objective (same weights for the same preset) and a fixed random batch."""
    torch.manual_seed(0)
    objective = cls(resolve_config(preset, scale).model).to(device, dtype)
    apply_switches(objective, **switches)
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if switches.get("channels_last") else torch.contiguous_format
    batch = {
        k: (torch.rand(batch_size, 3, size, size, generator=g) * 2 - 1)
        .to(device, dtype)
        .contiguous(memory_format=fmt)
        for k in ("A", "B")
    }
    return objective, batch


def cases(args) -> list[tuple[str, str, str, int, int]]:
    """(label, preset, scale, size, batch) of the timed configurations."""
    paper = (
        []
        if args.skip_paper
        else [
            ("256 px, CUT + PatchNCE", "cut", "paper", 256, 1),
            ("256 px, CUT + MoNCE", "cut-monce", "paper", 256, 1),
        ]
    )
    return [*paper, ("64 px cpu preset, CUT + MoNCE", "cut-monce", "cpu", 64, 4)]


def section_compare(args) -> None:
    print(
        f"\n| {'configuration':32s} | {'ours s/it':>9s} | {'upstream-style s/it':>19s} | "
        f"{'ratio':>5s} | {'ours peak MiB':>13s} |"
    )
    print(f"|{'-' * 34}|{'-' * 11}|{'-' * 21}|{'-' * 7}|{'-' * 15}|")
    for label, preset, scale, size, bs in cases(args):
        steps = [
            make_step(*build(preset, scale, size, bs, args.device, cls=cls))
            for cls in (UnpairedObjective, UpstreamStyle)
        ]
        ours, upstream = measure(steps, args.repeats, args.device)
        peak = peak_mib(steps[0], args.device)
        print(
            f"| {label:32s} | {ours:9.3f} | {upstream:19.3f} | {upstream / ours:5.2f} | "
            f"{peak:13.1f} |"
        )


@contextmanager
def labelled(objective: UnpairedObjective, optimizers: dict):
    """``record_function`` ranges named after PARTS around the calls that make them up."""
    with ExitStack() as stack:

        def wrap(owner, attr: str, label: str) -> None:
            original = getattr(owner, attr)

            @functools.wraps(original)
            def run(*args, **kwargs):
                with record_function(label):
                    return original(*args, **kwargs)

            setattr(owner, attr, run)
            if isinstance(owner, type(monce_module)):
                stack.callback(setattr, owner, attr, original)
            else:  # an instance attribute shadowing the class's method
                stack.callback(delattr, owner, attr)

        for attr in ("forward", "encode", "forward_with_features"):
            wrap(objective.G, attr, "generator")
        wrap(objective.D, "forward", "discriminator")
        if objective.contrastive:
            wrap(objective.F, "forward", "feature sampling")
            for attr in ("forward", "per_anchor"):  # multilayer_loss may stack the layers
                wrap(objective.nce, attr, "contrastive loss")
        wrap(monce_module, "solve", "Sinkhorn")  # MoNCE's entropic OT solver
        for opt in optimizers.values():
            wrap(opt, "step", "optimizer")
        yield


def breakdown(prof, device: str) -> dict[str, list[float]]:
    """Milliseconds ``[forward, backward]`` per part. Every event's self time is charged once:
    forward ops to their innermost labelled range, backward ops to the range of the forward op
    with the same autograd sequence number."""

    def self_time(e) -> float:
        return (e.self_device_time_total if device == "cuda" else e.self_cpu_time_total) / 1e3

    def label_of(e) -> str | None:
        while e is not None:
            if e.name in PARTS:
                return e.name
            e = e.cpu_parent
        return None

    def backward_root(e):
        while e is not None:
            if e.name.startswith("autograd::engine::evaluate_function"):
                return e
            e = e.cpu_parent
        return None

    events = prof.events()
    created = {
        e.sequence_nr: label_of(e)
        for e in events
        if e.sequence_nr >= 0 and backward_root(e) is None
    }
    parts: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for e in events:
        root = backward_root(e)
        if root is None:
            parts[label_of(e) or "other"][0] += self_time(e)
        else:
            parts[created.get(root.sequence_nr) or "other"][1] += self_time(e)
    return parts


def section_profile(args) -> None:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    runs = [("PatchNCE", "cut")] + [("MoNCE", "cut-monce")]
    for label, preset, scale, size, bs in cases(args):
        if "PatchNCE" in label:
            continue  # both losses are profiled per configuration below
        for loss, preset in runs:
            objective, batch = build(preset, scale, size, bs, args.device)
            step = make_step(objective, batch)
            plain = measure([step], args.repeats, args.device)[0]
            with labelled(objective, step.optimizers):
                step()  # warm-up inside the wrappers
                with profile(activities=activities) as prof:
                    for _ in range(args.repeats):
                        step()
            parts = breakdown(prof, args.device)
            total = sum(sum(v) for v in parts.values())
            where = label.replace("CUT + MoNCE", f"CUT + {loss}")
            print(f"\n{where}: {plain:.3f} s/it unprofiled; profiled per iteration:")
            print(f"| {'part':16s} | {'fwd ms':>8s} | {'bwd ms':>8s} | {'share':>6s} |")
            print(f"|{'-' * 18}|{'-' * 10}|{'-' * 10}|{'-' * 8}|")
            for part in (*PARTS, "other"):
                fwd, bwd = (t / args.repeats for t in parts.get(part, [0.0, 0.0]))
                share = 100 * (fwd + bwd) * args.repeats / total
                print(f"| {part:16s} | {fwd:8.1f} | {bwd:8.1f} | {share:5.1f}% |")


def first_grads(
    objective: UnpairedObjective, batch: dict, amp: torch.dtype | None
) -> dict[str, torch.Tensor]:
    """Gradients of one G step (patch positions from seed 1)."""
    torch.manual_seed(1)
    with torch.autocast(batch["A"].device.type, dtype=amp) if amp else nullcontext():
        objective.prepare(batch)
        objective.D.requires_grad_(False)
        loss, _ = objective.loss("G")
    loss.backward()
    objective.D.requires_grad_(True)
    objective.release()
    return {n: p.grad.double() for n, p in objective.named_parameters() if p.grad is not None}


def grad_err(got: dict, want: dict) -> float:
    """Largest relative gradient error; relative to the tensor's largest entry, floored at 1e-4
    of the largest gradient (biases before InstanceNorm have zero gradient, i.e. noise)."""
    floor = 1e-4 * max(float(g.abs().max()) for g in want.values())
    return max(
        float((got[k] - want[k]).abs().max()) / max(float(want[k].abs().max()), floor) for k in want
    )


def section_switches(args) -> None:
    amp = [("autocast bf16", {}, torch.bfloat16)]
    if args.device == "cuda":
        amp.append(("autocast fp16 + scaler", {}, torch.float16))
    variants = [
        ("baseline", {}, None),
        ("channels_last", {"channels_last": True}, None),
        ("checkpoint_activations", {"checkpoint_activations": True}, None),
        *amp,
        ("compile", {"compile": True}, None),
    ]
    # the 256 px MoNCE case would add ~10 CPU minutes and nothing new (Sinkhorn: 0.1% there)
    chosen = [c for c in cases(args) if c[1:3] != ("cut-monce", "paper")]
    for label, preset, scale, size, bs in chosen:
        exact = first_grads(*build(preset, scale, size, bs, args.device, dtype=torch.float64), None)
        steps, grads, compile_s = [], [], {}
        for name, switches, dtype in variants:
            objective, batch = build(preset, scale, size, bs, args.device, **switches)
            start = time.perf_counter()
            grads.append(first_grads(objective, batch, dtype))  # compiles, if asked to
            compile_s[name] = time.perf_counter() - start
            steps.append(
                make_step(*build(preset, scale, size, bs, args.device, **switches), amp=dtype)
            )
        times = measure(steps, args.repeats, args.device)
        print(f"\n{label}, batch {bs}")
        print(
            f"| {'variant':24s} | {'s/it':>7s} | {'x baseline':>10s} | {'peak MiB':>9s} | "
            f"{'grad err':>9s} |"
        )
        print(f"|{'-' * 26}|{'-' * 9}|{'-' * 12}|{'-' * 11}|{'-' * 11}|")
        for (name, _, _), seconds, step, g in zip(variants, times, steps, grads):
            peak = peak_mib(step, args.device)
            print(
                f"| {name:24s} | {seconds:7.3f} | {seconds / times[0]:10.2f} | {peak:9.1f} | "
                f"{grad_err(g, exact):9.1e} |"
            )
        print(
            f"compile: first G step {compile_s['compile']:.0f} s (baseline "
            f"{compile_s['baseline']:.1f} s)"
        )


def section_memory(args) -> None:
    print(
        f"\npeak MiB of one iteration, paper model at its crop size, batch 1 (SinCUT, whose "
        f"negatives come from the whole batch: its preset's batch) ({args.device})"
    )
    print(
        f"| {'preset':14s} | {'px':>4s} | {'batch':>5s} | {'peak MiB':>9s} | "
        f"{'+ checkpoint_activations':>24s} |"
    )
    print(f"|{'-' * 16}|{'-' * 6}|{'-' * 7}|{'-' * 11}|{'-' * 26}|")
    for preset in PRESETS:  # timing: see the switches section (alternating runs)
        cfg = resolve_config(preset, "paper")
        size = cfg.data.crop_size if isinstance(cfg.data.crop_size, int) else cfg.data.crop_size[0]
        batch = cfg.train.batch_size if cfg.model.loss_options.get("negatives") == "batch" else 1
        peaks = []
        for c in (False, True):
            try:
                step = make_step(
                    *build(preset, "paper", size, batch, args.device, checkpoint_activations=c)
                )
            except ValueError:  # no ResnetBlock to checkpoint (SinCUT's StyleGAN2 generator)
                peaks.append("n/a")
                continue
            step()  # Adam's state exists in every later iteration
            peaks.append(f"{peak_mib(step, args.device):.1f}")
        print(f"| {preset:14s} | {size:4d} | {batch:5d} | {peaks[0]:>9s} | {peaks[1]:>24s} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-paper", action="store_true", help="only the 64 px cpu preset")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections of {', '.join(SECTIONS)}",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    chosen = args.only.split(",")
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(
        f"torch {torch.__version__}, {name}, threads {torch.get_num_threads()}; "
        f"median of {args.repeats} iterations; peak memory of one iteration"
    )
    for section in SECTIONS:
        if section in chosen:
            globals()[f"section_{section}"](args)


if __name__ == "__main__":
    main()
