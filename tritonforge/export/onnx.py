"""ONNX steps every family shares: trace to ONNX and declare the output dims, check the file,
read its I/O signature, optimize transformer graphs, convert to FP16, pick the faster graph."""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tritonforge.errors import TritonForgeError
from tritonforge.spec import ModelIO

MIN_OPSET = 17


def torch_to_onnx(module, inputs: Mapping[str, np.ndarray], path: Path, io: ModelIO,
                  dynamic_axes: Mapping[str, Mapping[int, str]], opset: int = MIN_OPSET) -> None:
    """Trace `module(**inputs)` into `path` with named, dynamic axes.

    The TorchScript tracer is used rather than the dynamo exporter: on BERT its graph is the
    one ONNX Runtime's transformer optimizer recognises (fused Attention, SkipLayerNorm), and
    it exports in a fraction of the time.
    """
    import torch

    if opset < MIN_OPSET:
        raise TritonForgeError(f"opset {opset} is too old: use {MIN_OPSET} or newer")
    args = tuple(torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in io.input_names)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path),
            input_names=io.input_names, output_names=io.output_names,
            dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
            opset_version=opset, dynamo=False, do_constant_folding=True,
        )
    declare_output_dims(path, io)


def declare_output_dims(path: Path, io: ModelIO) -> None:
    """Write the declared static dims onto the graph outputs (the tracer leaves some of them
    symbolic), so the ONNX file and the Triton config state the same shapes."""
    model = onnx.load(str(path))
    for output in model.graph.output:
        spec = next(s for s in io.outputs if s.name == output.name)
        dims = output.type.tensor_type.shape.dim
        if len(dims) != len(spec.dims) + 1:
            raise ValueError(f"output {output.name} has rank {len(dims)}, declared {spec.dims}")
        for dim, declared in zip(list(dims)[1:], spec.dims, strict=True):
            if declared >= 0:
                dim.Clear()
                dim.dim_value = declared
    onnx.save(model, str(path))


# Hugging Face fills masked attention scores with float32's minimum, so exp() underflows to
# exactly 0. ONNX Runtime's CPU Softmax takes a slow path for inputs below exp's range
# (about -87): 21 ms instead of 2.4 ms per MiniLM batch of 8x128 with padding, measured here,
# and float32's minimum becomes -inf in fp16. A fill of -50 leaves a masked key a weight of
# at most exp(score gap - 50): under 1e-13 for score gaps up to +20, far below fp32
# resolution (MiniLM's real-token outputs are bit-for-bit as close to PyTorch as before,
# 3.7e-6), and every export's parity check would catch a model where it is not.
# The fused graph (optimize_transformer) does not read this constant: ONNX Runtime's optimizer
# recognises transformers 5's eager mask (Where <- Expand <- And <- ... <- Flatten(mask)) by its
# shape and its Attention applies its own fill (mask_filter_value, -10000).
MASK_FILL = -50.0


def soften_mask_constants(path: Path) -> int:
    """Replace scalar float constants at float32's minimum (the mask fill that Hugging Face
    models use) with MASK_FILL, in place. Returns how many were replaced."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    replaced = 0

    def soften(tensor) -> bool:
        value = numpy_helper.to_array(tensor)
        if value.dtype.kind != "f" or value.size != 1 or value.item() > -1e30:
            return False
        tensor.CopyFrom(numpy_helper.from_array(np.full_like(value, MASK_FILL), tensor.name))
        return True

    for node in model.graph.node:
        if node.op_type == "Constant":
            replaced += sum(soften(a.t) for a in node.attribute if a.name == "value")
    replaced += sum(soften(t) for t in model.graph.initializer)
    if replaced:
        onnx.save(model, str(path))
    return replaced


def optimize_transformer(source: Path, target: Path, model_type: str, num_heads: int,
                         hidden_size: int) -> dict[str, int]:
    """ONNX Runtime's transformer optimizer (fused Attention, EmbedLayerNormalization,
    SkipLayerNormalization, BiasGelu) from `source` into `target`; returns the fused operators
    it made and how many of each.

    The Attention nodes get the raw 2-D attention mask. For BERT the optimizer's default is a
    1-D mask index, each row's count of real tokens, which the kernel reads as "the first n
    tokens are real": a left-padded row, or a mask with holes, then attends to padding and drops
    real tokens (MiniLM, left-padded: sentence-embedding cosine 0.12 to 0.39 against PyTorch).
    The raw mask gives PyTorch's answer for every mask, as fast on CPU (within measurement
    noise); on CUDA it may select other Attention kernels than the mask index (not measured)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    fusion = FusionOptions(model_type)
    fusion.use_raw_attention_mask(True)
    optimized = optimize_model(str(source), model_type=model_type, opt_level=0, num_heads=num_heads,
                               hidden_size=hidden_size, optimization_options=fusion)
    optimized.save_model_to_file(str(target))
    return {op: count for op, count in optimized.get_fused_operator_statistics().items() if count}


def check_onnx(path: Path) -> int:
    """Run onnx.checker on the file and return its default-domain opset."""
    onnx.checker.check_model(str(path))
    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def fastest_graph(candidates: Mapping[str, Path], feed: Mapping[str, np.ndarray], threads: int,
                  rounds: int = 8) -> tuple[str, dict[str, float]]:
    """Time each candidate ONNX file in ONNX Runtime, interleaved; return the fastest name and
    every candidate's median milliseconds."""
    from tritonforge.runtime import ort_session

    sessions = {name: ort_session(path, threads) for name, path in candidates.items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for session in sessions.values():  # warm up: first runs allocate and pre-pack
        session.run(None, dict(feed))
    for _ in range(rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, dict(feed))
            times[name].append((time.perf_counter() - start) * 1e3)
    medians = {name: float(np.median(t)) for name, t in times.items()}
    return min(medians, key=medians.__getitem__), medians


def to_float16(path: Path) -> Path:
    """FP16 weights and activations, in place; inputs and outputs keep their types, so clients
    need not change.

    ONNX Runtime's converter casts a float32 tensor back once per reader it keeps in float32,
    each time under the same output name: on detectors (whose position embedding feeds several
    kept nodes) that breaks single assignment and leaves nodes out of order. The repeated
    casts are identical, so all but the first are dropped and the graph is sorted again."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(path)))
    model.convert_float_to_float16(keep_io_types=True)
    drop_repeated_nodes(model.model.graph)
    model.topological_sort()
    model.save_model_to_file(str(path))
    return path


def drop_repeated_nodes(graph) -> int:
    """Remove nodes that repeat an earlier node exactly (same op, inputs, attributes and
    outputs); a node that reuses an output name for anything else is an error. Returns how many
    were removed."""
    first: dict[str, Any] = {}
    kept, removed = [], 0
    for node in graph.node:
        earlier = next((first[o] for o in node.output if o in first), None)
        if earlier is None:
            first.update({o: node for o in node.output})
            kept.append(node)
            continue
        if earlier.SerializeToString(deterministic=True).replace(earlier.name.encode(), b"") != \
                node.SerializeToString(deterministic=True).replace(node.name.encode(), b""):
            raise TritonForgeError(f"the FP16 graph assigns {list(node.output)} twice, by different nodes "
                                   f"({earlier.name}, {node.name}): export FP32 and report the model")
        removed += 1
    del graph.node[:]
    graph.node.extend(kept)
    return removed
