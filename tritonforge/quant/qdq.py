"""Emit a quantized model as an ONNX QDQ graph that ONNX Runtime runs with integer kernels.

ONNX Runtime's integer kernels are 8-bit, so a k-bit grid is computed in 8-bit containers:
- activations: Clip to the k-bit range, then QuantizeLinear(uint8) -> DequantizeLinear with
  the calibrated scale and zero point (the Clip is what keeps values on 2^k levels);
- weights: int8 values in [-2^(k-1), 2^(k-1) - 1] and a per-channel DequantizeLinear (axis 1
  for a MatMul's [in, out] weight; embedding rows are looked up, then scaled). Weights of 4
  bits or fewer are stored at 4 bits (INT4, packed nibbles) and widened to int8 in the graph.

ONNX Runtime's QDQ fusion turns DequantizeLinear(act) x DequantizeLinear(weight) -> MatMul
into MatMulIntegerToFloat (u8 x s8 integer GEMM); `integer_kernels` reports what it ran.
The non-scaling LayerNorm and the shortcut scale/shift are ordinary LayerNormalization, Mul
and Add nodes of the traced graph.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

import ml_dtypes
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
    """A copy of the quantized model whose activation quantizers trace to Q/DQ nodes (slots
    without a quantizer stay float)."""
    traced = copy.deepcopy(model)
    for slot, quantizer in quantizers.items():
        traced.set_slot(slot, QDQ(quantizer))
    return traced


INT4_OPSET = 21  # Cast (and DequantizeLinear) read INT4 from opset 21 on
INT4_IR_VERSION = 10  # the first IR version with INT4 tensors


def dequantize_weights(path: Path, weights: Mapping[str, QuantizedWeight], pack_int4: bool = True) -> int:
    """Replace each float weight initializer of the traced graph by its integer values and a
    per-channel DequantizeLinear, in place; returns how many were replaced.

    The traced graph holds each weight as float32 values on the k-bit grid (transposed to
    [in, out] for MatMul), so each is found by its exact bytes. Weights of 8..5 bits are int8;
    with `pack_int4`, weights of 4 bits or fewer are stored at 4 bits, two per byte:
    - MatMul weights as INT4 initializers read through Cast(int8) -> DequantizeLinear(int8).
      ONNX Runtime folds the Cast of a constant when it loads the model, so the QDQ fusion
      still finds int8 weights and runs MatMulIntegerToFloat, as fast as the int8 file and
      with the same outputs; a DequantizeLinear reading INT4 directly is not fused (CPU: a
      float MatMul after dequantizing every weight on every request, 2x slower on MiniLM).
      Cast reads INT4 from opset 21 on, so the model's opset is raised to 21 (`raise_opset`);
    - embedding tables as packed nibbles (`gather_rows`): Gather takes no INT4.
    The integers, scales and axes are the same either way, so the outputs are too.
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
    int4 = False
    for initializer in graph.initializer:
        array = numpy_helper.to_array(initializer)
        match = wanted.get(array.tobytes()) if array.dtype == np.float32 and array.ndim == 2 else None
        if match is None or match[0] in found:
            kept.append(initializer)
            continue
        name, weight, axis = match
        found.add(name)
        values = np.ascontiguousarray(weight.values.numpy() if axis == 0 else weight.values.numpy().T)
        base = initializer.name
        nibbles = pack_int4 and weight.bits <= 4
        kept.append(numpy_helper.from_array(weight.scale.numpy().astype(np.float32), f"{base}_scale"))
        if axis == 0 and gather_rows(graph, base, packed=nibbles and values.shape[1] % 2 == 0):
            kept.append(numpy_helper.from_array(np.array([-1], np.int64), f"{base}_last_axis"))
            if nibbles and values.shape[1] % 2 == 0:
                kept += [numpy_helper.from_array(pack_nibbles(values), f"{base}_quantized"),
                         numpy_helper.from_array(NIBBLE_VALUES, f"{base}_nibbles"),
                         numpy_helper.from_array(np.array([values.shape[1]], np.int64), f"{base}_width")]
            else:
                kept.append(numpy_helper.from_array(values, f"{base}_quantized"))
            continue
        integers = f"{base}_quantized"
        if nibbles:  # INT4 on disk, Cast to int8 in the graph: see the docstring
            int4 = True
            kept.append(numpy_helper.from_array(values.astype(ml_dtypes.int4), integers))
            nodes.append(helper.make_node("Cast", [integers], [f"{base}_int8"], name=f"{base}_unpack",
                                          to=onnx.TensorProto.INT8))
            integers = f"{base}_int8"
        else:
            kept.append(numpy_helper.from_array(values, integers))
        kept.append(numpy_helper.from_array(np.zeros(len(weight.scale), np.int8), f"{base}_zero_point"))
        nodes.append(helper.make_node(
            "DequantizeLinear", [integers, f"{base}_scale", f"{base}_zero_point"], [base],
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
    if int4:
        raise_opset(model, INT4_OPSET, INT4_IR_VERSION)
    onnx.save(model, str(path))
    return len(found)


def raise_opset(model: onnx.ModelProto, opset: int, ir_version: int) -> None:
    """Declare at least `opset` for the default domain (and `ir_version`), keeping what the
    graph computes. From 17 to 21 the operators a traced transformer uses gained types (float8,
    int4) and attributes whose defaults keep their old meaning (Cast/QuantizeLinear `saturate`
    concerns float8 only, DequantizeLinear `block_size` 0 is per-axis); the Reduce operators
    other than ReduceSum take their axes as an input from opset 18, so those are moved there.
    Operators whose meaning changed (GroupNormalization, GridSample's mode names) are refused."""
    current = next(o for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if current.version >= opset:
        return
    default = [node for node in model.graph.node if node.domain in ("", "ai.onnx")]
    changed = sorted({node.op_type for node in default if node.op_type in CHANGED_MEANING})
    if changed:
        raise TritonForgeError(
            f"the graph uses {changed}, whose meaning changed between opset {current.version} and "
            f"{opset}: 4-bit weights need opset {opset}; trace the model at opset {opset}")
    if current.version < 18 <= opset:
        for node in default:
            axes = next((a for a in node.attribute if a.name == "axes"), None)
            if node.op_type in AXES_INPUT_FROM_18 and axes is not None:
                name = f"{node.name or node.output[0]}_axes"
                model.graph.initializer.append(numpy_helper.from_array(np.array(axes.ints, np.int64), name))
                node.attribute.remove(axes)
                node.input.append(name)
    current.version = opset
    model.ir_version = max(model.ir_version, ir_version)


# Reduce operators whose `axes` attribute became an input at opset 18 (ReduceSum's did at 13).
AXES_INPUT_FROM_18 = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                      "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}
# Operators that compute something else at opset 21 than at 17 for the same attributes.
CHANGED_MEANING = {"GroupNormalization", "GridSample"}


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """Two signed 4-bit values per byte along the last axis, the even one in the low nibble
    (ONNX's INT4 layout): [..., 2n] int8 -> [..., n] uint8."""
    nibbles = values.astype(np.uint8) & 0x0F
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


# Byte -> its (low, high) signed nibbles as floats: unpacking is one lookup per byte.
NIBBLE_VALUES = np.array([[(b & 15) - 16 * ((b & 15) >= 8), (b >> 4) - 16 * ((b >> 4) >= 8)]
                          for b in range(256)], np.float32)


def gather_rows(graph, table: str, packed: bool = False) -> bool:
    """Look up embedding rows in the integer table and dequantize only the rows looked up:
    Gather(int8) -> Cast -> Mul by the gathered row scales. A DequantizeLinear of the whole
    table would run on every request (30522 x 384 values for MiniLM's word table), since
    ONNX Runtime does not constant-fold it. Returns False when `table` has other readers.
    The caller adds the initializers `<table>_quantized`, `<table>_scale`, `<table>_last_axis`
    ([-1]) and, when `packed`, `<table>_nibbles` (NIBBLE_VALUES) and `<table>_width` ([columns]).

    `packed` tables hold two 4-bit values per byte (`pack_nibbles`): Gather accepts no INT4,
    so the rows are gathered as bytes, each byte looked up in NIBBLE_VALUES and the pairs
    reshaped to the table's width."""
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
        if packed:
            unpack = [
                helper.make_node("Gather", [f"{table}_quantized", ids], [f"{tag}_p"], name=f"{tag}_gather"),
                helper.make_node("Cast", [f"{tag}_p"], [f"{tag}_b"], name=f"{tag}_cast",
                                 to=onnx.TensorProto.INT32),
                helper.make_node("Gather", [f"{table}_nibbles", f"{tag}_b"], [f"{tag}_pairs"],
                                 name=f"{tag}_unpack"),
                helper.make_node("Shape", [ids], [f"{tag}_ids_shape"], name=f"{tag}_ids_shape"),
                helper.make_node("Concat", [f"{tag}_ids_shape", f"{table}_width"], [f"{tag}_shape"],
                                 name=f"{tag}_shape", axis=0),
                helper.make_node("Reshape", [f"{tag}_pairs", f"{tag}_shape"], [f"{tag}_f"],
                                 name=f"{tag}_reshape"),
            ]
        else:
            unpack = [
                helper.make_node("Gather", [f"{table}_quantized", ids], [f"{tag}_q"], name=f"{tag}_gather"),
                helper.make_node("Cast", [f"{tag}_q"], [f"{tag}_f"], name=f"{tag}_cast",
                                 to=onnx.TensorProto.FLOAT),
            ]
        new_nodes = [
            *unpack,
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
