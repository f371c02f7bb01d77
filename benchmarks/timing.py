"""Timing shared by the benchmarks: interleaved rounds, so that load from other processes hits every
timed path alike, and the median over rounds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_median(calls: dict[str, Callable[[], object]], repeats: int, steps: int = 1,
                       warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each of ``calls``: ``warmup`` untimed calls each, then ``repeats`` rounds
    that time ``steps`` calls of every entry in turn."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}
