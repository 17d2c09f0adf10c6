"""Peak memory of one call, for the benchmark scripts."""

from __future__ import annotations

import torch


def peak_mib(fn, device: str) -> float:
    """Peak memory allocated while ``fn()`` runs, above what existed before, in MiB.

    CUDA: the caching allocator's statistics. CPU: the profiler's allocation and free events
    (allocations are attributed to the op that made them, frees appear as ``[memory]`` events)
    replayed in time order while tracking the running maximum.
    """
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        fn()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak / 2**20
