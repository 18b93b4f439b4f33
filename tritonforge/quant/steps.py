"""Small pieces the quantization steps share (calibration, reconstruction, mixed precision):
progress stages, tensor batches, quantizer modes and loading k-bit weights."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from tritonforge.batching import batches
from tritonforge.quant.quantizable import Quantizable
from tritonforge.quant.quantizers import ActQuantizer, QuantizedWeight

# stage(description) or stage(description, total): told when a step starts; may return a
# function that advances that step by one (tritonforge.console.Stages does).
Stage = Callable[..., Any]


def start_stage(stage: Stage | None, description: str, total: int = 0) -> Callable[[], None]:
    """Tell `stage` that a step starts (with `total` units of work, 0: unknown) and return the
    function that advances it by one unit: a no-op for stages that count nothing."""
    if stage is None:
        return lambda: None
    try:
        inspect.signature(stage).bind(description, total)
        counts = True
    except (TypeError, ValueError):  # a stage(description) only, or no signature to read
        counts = False
    advance = stage(description, total) if counts else stage(description)
    return advance if callable(advance) else (lambda: None)


def tensor_batches(inputs: Mapping[str, np.ndarray], size: int) -> Iterator[dict[str, torch.Tensor]]:
    for batch in batches(inputs, size):
        yield {k: torch.from_numpy(v) for k, v in batch.items()}


@torch.no_grad()
def load_quantized_weights(model: Quantizable, weights: Mapping[str, QuantizedWeight]) -> None:
    """Set each weight to its k-bit value; Linears also keep their per-row scales, which the
    integer-exact reference needs to recover the integers."""
    linears = model.linears()
    for name, weight in model.weight_tables().items():
        weight.copy_(weights[name].dequantize())
        if name in linears:
            linears[name].weight_scale = weights[name].scale


def set_mode(quantizers: Mapping[str, ActQuantizer], mode: str) -> None:
    for quantizer in quantizers.values():
        quantizer.mode = mode
