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
  layers moves every edge;
- every MatMul's output (FLOAT_OUTPUTS): its inputs are quantized, its result is not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tritonforge.quant.static import QUANTIZED_OP_TYPES, STATIC_QDQ_METHOD, openvino_float_nodes, static_qdq

FLOAT_NODES = {
    "sampling_offsets": "deformable attention's sampling offsets: an error moves where a query looks",
    "attention_weights": "deformable attention's weights over sampled points",
    "bbox_embed": "the box head (Deformable DETR): a grid step there moves every box edge",
    "bbox_predictor": "the box head (DETR): a grid step there moves every box edge",
}
# quantize_static also quantizes every quantized node's output by default. A MatMul's output
# (before its bias Add, the residual and LayerNorm) is left float: quantized there, a random R50
# DETR's INT8 logits read cosine 0.972 against FP32 on the photographs, float 0.998 (MTTrans
# 0.989 -> 0.998), at the same speed on ONNX Runtime (a Conv's output stays quantized: float
# there, the backbone's Convs lose their integer fusion and DETR ran 2.4x slower).
FLOAT_OUTPUTS = {"MatMul": "its output feeds the bias Add, the residual and LayerNorm: rounded to "
                           "a per-tensor 8-bit grid there, DETR's logits lost 2.6 points of cosine"}
QDQ_OPTIONS = {"OpTypesToExcludeOutputQuantization": list(FLOAT_OUTPUTS)}
FLOAT_OP_TYPES = {
    "LayerNormalization": "normalises a few large activations that an 8-bit grid would flatten",
    "Softmax": "attention probabilities span orders of magnitude",
    "Add": "residual sums carry the largest activations",
}


def float_nodes(path: Path) -> list[str]:
    """The names of the quantizable nodes that stay in float (FLOAT_NODES)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return [node.name for node in graph.node
            if node.op_type in QUANTIZED_OP_TYPES and any(part in node.name for part in FLOAT_NODES)]


def quantize_detector(fp32: Path, target: Path, feeds: Iterable[Mapping[str, np.ndarray]],
                      openvino: bool = False) -> dict[str, Any]:
    """Write the INT8 QDQ graph of `fp32` to `target`, calibrated on `feeds`; returns the
    manifest's record of what was quantized and what stayed float, and why. For OpenVINO the
    graph keeps the nodes its plugin cannot compile quantized in float too."""
    kept = float_nodes(fp32)
    openvino_kept = {name: why for name, why in openvino_float_nodes(fp32).items()
                     if name not in kept} if openvino else {}
    feeds = list(feeds)
    quantize_linear_nodes = static_qdq(fp32, target, feeds, kept + list(openvino_kept), QDQ_OPTIONS)
    return {"method": STATIC_QDQ_METHOD,
            "calibration_images": len(feeds),
            "quantized_op_types": list(QUANTIZED_OP_TYPES),
            "quantize_linear_nodes": quantize_linear_nodes,
            "float_nodes": {"count": len(kept), "why": FLOAT_NODES, "names": kept},
            **({"openvino_float_nodes": openvino_kept} if openvino else {}),
            "float_op_types": FLOAT_OP_TYPES, "float_outputs": FLOAT_OUTPUTS}
