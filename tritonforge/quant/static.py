"""Static QDQ quantization of an exported graph with ONNX Runtime's own machinery.

`quantize_static` writes per-channel int8 weights and per-tensor uint8 activations calibrated
on real inputs. Nodes a family keeps in float are excluded, and because the quantizer shares
one QuantizeLinear -> DequantizeLinear pair among all readers of a tensor, the excluded nodes
are rewired to read the float tensor itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

QUANTIZED_OP_TYPES = ("Conv", "MatMul", "Gemm")

# What `static_qdq` does, as every family's manifest records it.
STATIC_QDQ_METHOD = ("onnxruntime.quantization.quantize_static (QDQ, per-channel int8 weights, "
                     "per-tensor uint8 activations, MinMax calibration)")


class FeedReader:
    """onnxruntime.quantization's CalibrationDataReader over prepared feeds."""

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]]):
        self.feeds = iter(list(feeds))

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self.feeds, None)
        return None if feed is None else dict(feed)

    def rewind(self) -> None:  # part of the reader interface; one pass is all calibration needs
        return None


def read_float_inputs(path: Path, names: set[str]) -> int:
    """Make the float nodes `names` read their inputs before quantization, in place; returns
    how many inputs were rewired to the float tensor."""
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


# What OpenVINO 2026.4's CPU plugin gets wrong with a quantized node (its low-precision
# transformations), each found on a family's graph and reproduced on a two-layer one.
OPENVINO_CONCAT = ("reads a Concat along the token axis (Deformable DETR's feature levels, "
                   "MTTrans's domain query): quantized, the MatMul fails to compile (the "
                   "dequantization is folded into a per-token constant it cannot broadcast)")
OPENVINO_REDUCTION = ("is reshaped into a mean or sum over an axis (the average over time steps of a "
                      "spiking network's head): quantized, every row of a batch gets wrong values")
SHAPE_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose")


def openvino_float_nodes(path: Path) -> dict[str, str]:
    """The quantizable nodes of the float graph at `path` that a graph for OpenVINO keeps in
    float, with the reason (OPENVINO_CONCAT, OPENVINO_REDUCTION)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    producers = {output: node.op_type for node in graph.node for output in node.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def reduced(tensor: str) -> bool:
        return any(reader.op_type in ("ReduceMean", "ReduceSum")
                   or (reader.op_type in SHAPE_OPS and reduced(reader.output[0]))
                   for reader in readers.get(tensor, []))

    kept = {}
    for node in graph.node:
        if node.op_type not in QUANTIZED_OP_TYPES:
            continue
        # A convolution reading a channel Concat (a U-Net's skip connections) compiles and runs
        # quantized (spikedepth's decoders); the failure is the MatMul's.
        if producers.get(node.input[0]) == "Concat" and node.op_type != "Conv":
            kept[node.name] = OPENVINO_CONCAT
        elif reduced(node.output[0]):
            kept[node.name] = OPENVINO_REDUCTION
    return kept


def float_outside(path: Path, quantized: Sequence[str], reason: str) -> dict[str, str]:
    """The quantizable nodes of the graph at `path` outside the modules named by `quantized`
    (ONNX node-name prefixes, e.g. "/encoder/"), each with `reason`: what `static_qdq` keeps in
    float when only part of a network is quantized."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return {node.name: reason for node in graph.node
            if node.op_type in QUANTIZED_OP_TYPES and not node.name.startswith(tuple(quantized))}


def static_qdq(fp32: Path, target: Path, feeds: Iterable[Mapping[str, np.ndarray]],
               keep_float: Iterable[str] = (), options: Mapping[str, object] | None = None) -> int:
    """Write the INT8 QDQ graph of `fp32` to `target`, calibrated on `feeds` (MinMax), with the
    nodes named in `keep_float` left in float and `options` given to quantize_static as its
    `extra_options` (e.g. `MatMulConstBOnly`). Returns the number of QuantizeLinear nodes."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    kept = list(keep_float)
    root = logging.getLogger()  # quantize_static warns through it (advice to pre-process, biases)
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(str(fp32), str(target), FeedReader(feeds), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(QUANTIZED_OP_TYPES), nodes_to_exclude=kept,
                        extra_options=dict(options or {}))
    finally:
        root.setLevel(level)
    read_float_inputs(target, set(kept))
    graph = onnx.load(str(target), load_external_data=False).graph
    return sum(node.op_type == "QuantizeLinear" for node in graph.node)
