"""Emit a quantized model as an ONNX QDQ graph that ONNX Runtime runs with integer kernels.

ONNX has 8-bit integer types only, so a k-bit grid lives in 8-bit containers:
- activations: Clip to the k-bit range, then QuantizeLinear(uint8) -> DequantizeLinear with
  the calibrated scale and zero point (the Clip is what keeps values on 2^k levels);
- weights: int8 initializers whose values lie in [-2^(k-1), 2^(k-1) - 1] and a per-channel
  DequantizeLinear (axis 1 for a MatMul's [in, out] weight, axis 0 for embedding rows).

ONNX Runtime's QDQ fusion turns DequantizeLinear(act) x DequantizeLinear(weight) -> MatMul
into MatMulIntegerToFloat (u8 x s8 integer GEMM); `integer_kernels` reports what it ran.
The non-scaling LayerNorm and the shortcut scale/shift are ordinary LayerNormalization, Mul
and Add nodes of the traced graph.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from tritonforge.errors import TritonForgeError
from tritonforge.quant.quantizable import Quantizable
from tritonforge.quant.quantizers import ActQuantizer, QuantizedWeight


class QDQ(nn.Module):
    """An ActQuantizer frozen for tracing: Clip -> QuantizeLinear(uint8) -> DequantizeLinear.

    Computes what the ActQuantizer computes: clamping x to the k-bit range first makes the
    8-bit container's rounding land on the same 2^k levels.
    """

    def __init__(self, quantizer: ActQuantizer):
        super().__init__()
        self.scale = float(quantizer.scale.detach())
        zero_point = torch.round(quantizer.zero_point.detach()).clamp(quantizer.qmin, quantizer.qmax)
        self.zero_point = int(zero_point)
        self.low = (quantizer.qmin - self.zero_point) * self.scale
        self.high = (quantizer.qmax - self.zero_point) * self.scale
        self.clip = quantizer.bits < 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.clip:
            x = torch.clamp(x, self.low, self.high)
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, 0, 255)


def qdq_module(model: Quantizable, quantizers: Mapping[str, ActQuantizer]) -> Quantizable:
    """A copy of the quantized model whose activation quantizers trace to Q/DQ nodes."""
    traced = copy.deepcopy(model)
    for slot in traced.activation_slots():
        traced.set_slot(slot, QDQ(quantizers[slot]))
    return traced


def dequantize_weights(path: Path, weights: Mapping[str, QuantizedWeight]) -> int:
    """Replace each float weight initializer of the traced graph by its int8 values and a
    per-channel DequantizeLinear, in place; returns how many were replaced.

    The traced graph holds each weight as float32 values on the k-bit grid (transposed to
    [in, out] for MatMul), so each is found by its exact bytes.
    """
    model = onnx.load(str(path))
    graph = model.graph
    wanted: dict[bytes, tuple[str, QuantizedWeight, int]] = {}
    for name, weight in weights.items():
        values = weight.dequantize().numpy().astype(np.float32)
        wanted[np.ascontiguousarray(values).tobytes()] = (name, weight, 0)  # Gather: rows
        wanted[np.ascontiguousarray(values.T).tobytes()] = (name, weight, 1)  # MatMul: [in, out]
    found: set[str] = set()
    kept, nodes = [], []
    for initializer in graph.initializer:
        array = numpy_helper.to_array(initializer)
        match = wanted.get(array.tobytes()) if array.dtype == np.float32 and array.ndim == 2 else None
        if match is None or match[0] in found:
            kept.append(initializer)
            continue
        name, weight, axis = match
        found.add(name)
        values = weight.values.numpy() if axis == 0 else weight.values.numpy().T
        base = initializer.name
        kept += [numpy_helper.from_array(np.ascontiguousarray(values), f"{base}_quantized"),
                 numpy_helper.from_array(weight.scale.numpy().astype(np.float32), f"{base}_scale")]
        if axis == 0 and gather_rows(graph, base):
            kept.append(numpy_helper.from_array(np.array([-1], np.int64), f"{base}_last_axis"))
            continue
        kept.append(numpy_helper.from_array(np.zeros(len(weight.scale), np.int8), f"{base}_zero_point"))
        nodes.append(helper.make_node(
            "DequantizeLinear", [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"], [base],
            name=f"{base}_dequantize", axis=axis))
    missing = sorted(set(weights) - found)
    if missing:
        raise TritonForgeError(
            f"the traced graph has no initializer for the quantized weights {missing}: the "
            "exporter changed them (report this with your torch and onnx versions)")
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for node in reversed(nodes):
        graph.node.insert(0, node)
    onnx.save(model, str(path))
    return len(found)


def gather_rows(graph, table: str) -> bool:
    """Look up embedding rows in the int8 table and dequantize only the rows looked up:
    Gather(int8) -> Cast -> Mul by the gathered row scales. A DequantizeLinear of the whole
    table would run on every request (30522 x 384 values for MiniLM's word table), since
    ONNX Runtime does not constant-fold it. Returns False when `table` has other readers.
    The caller adds the initializer `<table>_last_axis` ([-1])."""
    readers = [node for node in graph.node if table in node.input]

    def row_lookup(node) -> bool:
        return (node.op_type == "Gather" and node.input[0] == table
                and all(a.i == 0 for a in node.attribute if a.name == "axis"))

    if not readers or not all(row_lookup(node) for node in readers):
        return False
    for index, node in enumerate(readers):
        ids, out, tag = node.input[1], node.output[0], f"{table}_rows{index}"
        position = list(graph.node).index(node)
        graph.node.remove(node)
        new_nodes = [
            helper.make_node("Gather", [f"{table}_quantized", ids], [f"{tag}_q"], name=f"{tag}_gather"),
            helper.make_node("Cast", [f"{tag}_q"], [f"{tag}_f"], name=f"{tag}_cast",
                             to=onnx.TensorProto.FLOAT),
            helper.make_node("Gather", [f"{table}_scale", ids], [f"{tag}_s"], name=f"{tag}_scales"),
            helper.make_node("Unsqueeze", [f"{tag}_s", f"{table}_last_axis"], [f"{tag}_s1"],
                             name=f"{tag}_unsqueeze"),
            helper.make_node("Mul", [f"{tag}_f", f"{tag}_s1"], [out], name=f"{tag}_dequantize"),
        ]
        for offset, new_node in enumerate(new_nodes):
            graph.node.insert(position + offset, new_node)
    return True


def integer_kernels(path: Path, threads: int = 1) -> dict[str, int]:
    """The operators ONNX Runtime's CPU provider runs after its graph optimizations, counted:
    the evidence that quantized MatMuls run as integer kernels."""
    import tempfile

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    with tempfile.TemporaryDirectory() as scratch:
        options.optimized_model_filepath = str(Path(scratch) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    counts: dict[str, int] = {}
    for node in optimized.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))
