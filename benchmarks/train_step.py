"""Seconds per training iteration and peak memory of the CUT-family step.

Configurations: (a) upstream CUT at 256 px, batch 1, ngf 64, 9 blocks, with PatchNCE and with
MoNCE; (b) the 64 px ``cpu`` preset (CUT + MoNCE). Each is measured for our objective and for an
"upstream-style" variant of it in the same run: the real images are encoded a second time for the
NCE keys and the projection head runs with autograd on the keys, as the official code does. The
ratio column is upstream-style / ours.

One iteration = shared forward + D step + G/F step with Adam, as the Trainer runs it.
Usage: ``python benchmarks/train_step.py [--repeats 3] [--skip-paper]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("KINETO_LOG_LEVEL", "5")

import torch  # noqa: E402
from _memory import peak_mib  # noqa: E402

from patchcontrast.config import resolve_config  # noqa: E402
from patchcontrast.losses import multilayer_loss  # noqa: E402
from patchcontrast.objectives.unpaired import UnpairedObjective  # noqa: E402


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


def make_step(objective: UnpairedObjective, batch: dict):
    optims = {p.name: torch.optim.Adam([q for m in p.modules
                                        for q in getattr(objective, m).parameters()],
                                       lr=p.lr, betas=p.betas) for p in objective.phases}

    def step() -> None:
        objective.prepare(batch)
        for phase in objective.phases:
            frozen = [getattr(objective, m) for m in phase.frozen]
            for module in frozen:
                module.requires_grad_(False)
            loss, _ = objective.loss(phase.name)
            optims[phase.name].zero_grad(set_to_none=True)
            loss.backward()
            optims[phase.name].step()
            for module in frozen:
                module.requires_grad_(True)
        objective.release()

    return step


def measure(steps: list, repeats: int, device: str) -> list[float]:
    """Median seconds per iteration of each step function, timed alternately (one iteration of
    each per round) so that machine-speed drift affects all of them alike."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for step in steps:
        step()  # warm-up (allocations, lazy inits)
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for i, step in enumerate(steps):
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-paper", action="store_true", help="only the 64 px cpu preset")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    cases = [] if args.skip_paper else [
        ("(a) 256 px, CUT + PatchNCE", resolve_config("cut", "paper"), 256, 1),
        ("(a) 256 px, CUT + MoNCE", resolve_config("cut-monce", "paper"), 256, 1),
    ]
    cases.append(("(b) 64 px cpu preset, CUT + MoNCE", resolve_config("cut-monce", "cpu"), 64, 4))
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {name}, threads {torch.get_num_threads()}; "
          f"median of {args.repeats} iterations; peak memory of one iteration")
    print(f"| {'configuration':36s} | {'ours s/it':>9s} | {'upstream-style s/it':>19s} | "
          f"{'ratio':>5s} | {'ours peak MiB':>13s} |")
    print(f"|{'-' * 38}|{'-' * 11}|{'-' * 21}|{'-' * 7}|{'-' * 15}|")
    for label, cfg, size, batch_size in cases:
        g = torch.Generator().manual_seed(0)
        batch = {k: (torch.rand(batch_size, 3, size, size, generator=g) * 2 - 1).to(args.device)
                 for k in ("A", "B")}
        steps = []
        for cls in (UnpairedObjective, UpstreamStyle):
            torch.manual_seed(0)
            steps.append(make_step(cls(cfg.model).to(args.device), batch))
        ours, upstream = measure(steps, args.repeats, args.device)
        peak = peak_mib(steps[0], args.device)
        print(f"| {label:36s} | {ours:9.3f} | {upstream:19.3f} | {upstream / ours:5.2f} | "
              f"{peak:13.1f} |")


if __name__ == "__main__":
    main()
