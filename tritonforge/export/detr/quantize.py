"""INT8 detectors: ONNX Runtime's static QDQ quantization, with what detectors cannot afford to
round kept in float.

Quantized: the Conv (backbone, input projections) and MatMul (attention projections, FFNs,
class head) weights per channel to int8, their inputs per tensor to uint8, calibrated on
photographs. Kept in float, and recorded in the manifest with the reason:

- LayerNorm, Softmax and the residual Adds are not in the quantized op types at all: their
  outputs carry the few large activations a per-tensor 8-bit grid would flatten;
- the MatMuls that compute deformable attention's sampling offsets and attention weights: an
  offset error moves where a query looks, a weight error what it mixes (and GridSample then
  interpolates between the wrong pixels);
- the box head: a box is regressed to a fraction of the image, so a grid step of its last
  layers moves every edge.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

QUANTIZED_OP_TYPES = ("Conv", "MatMul", "Gemm")
FLOAT_NODES = {
    "sampling_offsets": "deformable attention's sampling offsets: an error moves where a query looks",
    "attention_weights": "deformable attention's weights over sampled points",
    "bbox_embed": "the box head (Deformable DETR): a grid step there moves every box edge",
    "bbox_predictor": "the box head (DETR): a grid step there moves every box edge",
}
FLOAT_OP_TYPES = {
    "LayerNormalization": "normalises a few large activations that an 8-bit grid would flatten",
    "Softmax": "attention probabilities span orders of magnitude",
    "Add": "residual sums carry the largest activations",
}


class PhotographReader:
    """onnxruntime.quantization's CalibrationDataReader over prepared feeds, one image each."""

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]]):
        self.feeds = iter(list(feeds))

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self.feeds, None)
        return None if feed is None else dict(feed)

    def rewind(self) -> None:  # part of the reader interface; one pass is all calibration needs
        return None


def float_nodes(path: Path) -> list[str]:
    """The names of the quantizable nodes that stay in float (FLOAT_NODES)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return [node.name for node in graph.node
            if node.op_type in QUANTIZED_OP_TYPES and any(part in node.name for part in FLOAT_NODES)]


def read_float_inputs(path: Path, names: set[str]) -> int:
    """Make the float nodes `names` read their inputs before quantization, in place.

    ONNX Runtime's quantizer leaves an excluded node's weights in float, but a tensor that a
    quantized node also reads (the decoder output feeds the class head and the box head) goes
    through one QuantizeLinear -> DequantizeLinear pair for all its readers. Returns how many
    inputs were rewired to the float tensor."""
    model = onnx.load(str(path))
    producers = {output: node for node in model.graph.node for output in node.output}
    rewired = 0
    for node in model.graph.node:
        if node.name not in names:
            continue
        for index, name in enumerate(node.input):
            dequantize = producers.get(name)
            quantize = producers.get(dequantize.input[0]) if dequantize is not None else None
            if dequantize is not None and dequantize.op_type == "DequantizeLinear" and \
                    quantize is not None and quantize.op_type == "QuantizeLinear":
                node.input[index] = quantize.input[0]
                rewired += 1
    onnx.save(model, str(path))
    return rewired


def quantize_detector(fp32: Path, target: Path, feeds: Iterable[Mapping[str, np.ndarray]]) -> dict[str, Any]:
    """Write the INT8 QDQ graph of `fp32` to `target`, calibrated on `feeds`; returns the
    manifest's record of what was quantized and what stayed float, and why."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    kept = float_nodes(fp32)
    feeds = list(feeds)
    root = logging.getLogger()  # quantize_static warns through it (advice to pre-process, biases)
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(str(fp32), str(target), PhotographReader(feeds), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(QUANTIZED_OP_TYPES), nodes_to_exclude=kept)
    finally:
        root.setLevel(level)
    read_float_inputs(target, set(kept))
    graph = onnx.load(str(target), load_external_data=False).graph
    return {"method": "onnxruntime.quantization.quantize_static (QDQ, per-channel int8 weights, "
                      "per-tensor uint8 activations, MinMax calibration)",
            "calibration_images": len(feeds),
            "quantized_op_types": list(QUANTIZED_OP_TYPES),
            "quantize_linear_nodes": sum(node.op_type == "QuantizeLinear" for node in graph.node),
            "float_nodes": {"count": len(kept), "why": FLOAT_NODES, "names": kept},
            "float_op_types": FLOAT_OP_TYPES}
