"""Timing helpers.

The machines these benchmarks run on are often shared, so every helper
reports the *best* of several repeats (the least disturbed run) alongside the
median, and the benchmarks report ratios of times measured in the same
process rather than absolute times. :func:`set_threads` pins PyTorch's
intra-op threads (one by default in the benchmarks): with cores shared by
other processes, a multi-threaded kernel waits for its slowest thread and
timings become meaningless.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Timing:
    """Wall-clock seconds of repeated calls: ``best``, ``median`` and every repeat."""

    best: float
    median: float
    times: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"best": self.best, "median": self.median, "repeats": len(self.times)}


def set_threads(n: int | None) -> int:
    """Set PyTorch's intra-op threads (``None`` leaves them); returns the number in use."""
    if n is not None:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


def time_call(
    fn: Callable[[], object],
    *,
    repeats: int = 5,
    warmup: int = 1,
    min_time: float = 0.0,
    max_repeats: int = 1000,
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then at least ``repeats`` timed calls,
    continuing (up to ``max_repeats``) until ``min_time`` seconds have been spent."""
    for _ in range(warmup):
        fn()
    gc.collect()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or (
        time.perf_counter() - start < min_time and len(times) < max_repeats
    ):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(best=min(times), median=statistics.median(times), times=times)


def eval_time(
    func: Callable[[Tensor, Tensor], Tensor],
    y: Tensor,
    t: float = 0.0,
    *,
    repeats: int = 10,
    min_time: float = 0.2,
) -> Timing:
    """Time one evaluation of ``func(t, y)`` without a graph (``t`` a 0-d tensor like ``y``)."""
    tt = torch.tensor(t, dtype=y.dtype, device=y.device)

    def call():
        with torch.no_grad():
            func(tt, y)

    return time_call(call, repeats=repeats, warmup=2, min_time=min_time)


def environment() -> dict:
    """What the timings depend on: versions and threads (for the results' JSON)."""
    import platform

    import neurode

    return {
        "neurode": neurode.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
    }
