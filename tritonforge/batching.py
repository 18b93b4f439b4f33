"""Slicing a mapping of equally long arrays into batches (verify, calibration, quality).

Inputs named in `request_inputs` (`ModelIO.request_inputs`: a vocabulary the labels index)
belong to the whole request: they are not sliced, and every batch carries them whole.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping

import numpy as np


def batch_count(inputs: Mapping[str, np.ndarray], request_inputs: Collection[str] = ()) -> int:
    """How many samples `inputs` holds (the first axis of its arrays, request inputs aside)."""
    return len(next(v for k, v in inputs.items() if k not in request_inputs))


def batches(inputs: Mapping[str, np.ndarray], size: int,
            request_inputs: Collection[str] = ()) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive slices of at most `size` samples, each a dict like `inputs`; the request
    inputs go unchanged with every slice."""
    for start in range(0, batch_count(inputs, request_inputs), size):
        yield {k: v if k in request_inputs else v[start:start + size] for k, v in inputs.items()}
