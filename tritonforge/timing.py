"""Latency measured side by side: every runtime timed in the same rounds on the same machine."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    samples_ms: tuple[float, ...]

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.samples_ms, q))

    def to_json(self) -> dict[str, float]:
        return {"p50": round(self.percentile(50), 3), "p95": round(self.percentile(95), 3),
                "p99": round(self.percentile(99), 3),
                "mean": round(float(np.mean(self.samples_ms)), 3), "n": len(self.samples_ms)}


def measure_interleaved(runners: Mapping[str, Callable[[], Any]], iterations: int, block: int = 3,
                        tick: Callable[[], None] | None = None) -> dict[str, LatencyStats]:
    """Time each runner `iterations` times, in rounds, so every runtime sees the same machine.

    Each round gives every runner one untimed call and then `block` timed ones: the untimed
    call absorbs the hand-over from the other runtime (its thread pool still spinning, caches
    holding the other model's weights), which otherwise taxes whichever runs second.
    """
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    while len(times[names[0]]) < iterations:
        for name in names:
            runners[name]()
            for _ in range(min(block, iterations - len(times[name]))):
                start = time.perf_counter()
                runners[name]()
                times[name].append((time.perf_counter() - start) * 1e3)
                if tick and name == names[0]:
                    tick()
    return {name: LatencyStats(tuple(t)) for name, t in times.items()}
