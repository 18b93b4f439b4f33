"""INT8 for super-resolution: static QDQ, per-channel weights, calibrated on real LR patches.

ONNX Runtime's own machinery (`quantize_static`) inserts QuantizeLinear/DequantizeLinear pairs
around the convolutions only: the uint8 input cast, the clamp, the rounding and the output cast
stay as they are (in float), as do PixelShuffle's reshapes and SRCNN's bicubic Resize. Weights
are symmetric int8 per output channel, activations asymmetric uint8 per tensor (MinMax over the
calibration patches). The first and last convolutions can stay in float (`keep_float`): they
see raw 0-255 pixels and produce them, where one int8 step is a visible grey level.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from tritonforge.errors import TritonForgeError

KEEP_FLOAT = ("none", "first", "last", "ends")
QUANTIZED_OPS = ("Conv", "ConvTranspose")


def conv_nodes(path: Path) -> list[str]:
    """The names of the graph's convolutions, in order."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return [node.name for node in graph.node if node.op_type in QUANTIZED_OPS]


def float_convs(path: Path, keep_float: str) -> list[str]:
    """The convolutions `keep_float` leaves in float."""
    if keep_float not in KEEP_FLOAT:
        raise TritonForgeError(f"unknown --keep-float {keep_float!r}: choose one of {', '.join(KEEP_FLOAT)}")
    convs = conv_nodes(path)
    chosen = {"none": [], "first": convs[:1], "last": convs[-1:], "ends": [convs[0], convs[-1]]}
    return list(dict.fromkeys(chosen[keep_float]))


def quantize_int8(fp32: Path, target: Path, input_name: str, calibration: np.ndarray,
                  keep_float: str = "ends", batch_size: int = 8) -> dict:
    """Write the static-QDQ INT8 graph of `fp32` to `target`, calibrated on `calibration` (the
    graph's uint8 input batches); returns what was quantized and what stayed in float."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Patches(CalibrationDataReader):
        def __init__(self, patches: np.ndarray):
            self.batches: Iterator[np.ndarray] = iter(
                [patches[i:i + batch_size] for i in range(0, len(patches), batch_size)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    kept = float_convs(fp32, keep_float)
    quantize_static(str(fp32), str(target), Patches(calibration), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=kept, calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    quantized = [name for name in conv_nodes(fp32) if name not in kept]
    return {"method": "static QDQ (onnxruntime.quantization.quantize_static)", "weights": "int8 per channel",
            "activations": "uint8 per tensor, MinMax", "calibration_patches": int(len(calibration)),
            "quantized": quantized, "float": [*kept, "uint8 casts", "clamp and rounding", "Resize",
                                              "PixelShuffle / DepthToSpace"]}
