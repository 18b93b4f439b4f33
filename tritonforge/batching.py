"""Slicing a mapping of equally long arrays into batches (verify, calibration, quality)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np


def batch_count(inputs: Mapping[str, np.ndarray]) -> int:
    """How many samples `inputs` holds (the length of its arrays' first axis)."""
    return len(next(iter(inputs.values())))


def batches(inputs: Mapping[str, np.ndarray], size: int) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive slices of at most `size` samples, each a dict like `inputs`."""
    for start in range(0, batch_count(inputs), size):
        yield {k: v[start:start + size] for k, v in inputs.items()}
