"""INT8 for super-resolution: static QDQ, per-channel weights, calibrated on real LR patches.

ONNX Runtime's own machinery (`quantize_static`) inserts QuantizeLinear/DequantizeLinear pairs
around the convolutions and their ReLUs: the uint8 input cast, the clamp, the rounding and the
output cast stay as they are (in float), as do PixelShuffle's reshapes and SRCNN's bicubic
Resize. A ReLU is quantized with the conv before it, so the two share one uint8 tensor on
[0, max]; with the convs alone, the conv's output was quantized over its negative values too,
which the ReLU then drops, and that coarser step cost ESPCN 0.1 dB. Weights
are symmetric int8 per output channel, activations asymmetric uint8 per tensor (MinMax over the
calibration patches). The first and last convolutions can stay in float (`keep_float`): they
see raw 0-255 pixels and produce them, where one int8 step is a visible grey level.

Weight rounding (`gptq_round`, the default): the networks EMT trains carry the RGB pixels
through a few channels (0-255 values), so rounding a weight to the nearest int8 level, times a
pixel, moves the output by grey levels. On a meta-trained ESPCN x2, nearest rounding of the
second conv alone cost 0.22 dB. GPTQ (Frantar et al., ICLR 2023) rounds a conv's weights one
input position at a time and moves the weights not yet rounded to cancel the error on the
calibration inputs (least squares, through the inverse Hessian of the conv's inputs); the
weights land on the same per-channel grid ONNX Runtime stores, whose scales are handed over as
tensor overrides, so the int8 values are exactly the ones chosen.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from tritonforge.errors import TritonForgeError
from tritonforge.quant.quantizers import gptq_values

KEEP_FLOAT = ("none", "first", "last", "ends")
ROUNDINGS = ("gptq", "nearest")
QUANTIZED_OPS = ("Conv", "ConvTranspose")
FUSED_OPS = ("Relu",)  # quantized with the conv before it: one uint8 tensor on [0, max]
CONV_MODULES = (nn.Conv2d, nn.ConvTranspose2d)
INT8_LEVELS = 127  # symmetric int8 weights: [-127, 127], as ONNX Runtime stores them
GPTQ_DAMPING = 0.01  # of the Hessian's mean diagonal, added to its diagonal (GPTQ's default)
GPTQ_POSITIONS = 1024  # output positions per calibration image that enter a conv's Hessian


def conv_nodes(path: Path) -> list[onnx.NodeProto]:
    """The graph's convolutions, in order."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return [node for node in graph.node if node.op_type in QUANTIZED_OPS]


def float_positions(count: int, keep_float: str) -> list[int]:
    """The positions, among `count` convolutions in order, that `keep_float` leaves in float."""
    if keep_float not in KEEP_FLOAT:
        raise TritonForgeError(f"unknown --keep-float {keep_float!r}: choose one of {', '.join(KEEP_FLOAT)}")
    chosen = {"none": [], "first": [0], "last": [count - 1], "ends": [0, count - 1]}[keep_float]
    return sorted({position for position in chosen if 0 <= position < count})


def gptq_round(network: nn.Module, calibration: np.ndarray, keep_float: str,
               batch_size: int = 8, seed: int = 0) -> tuple[nn.Module, dict[int, np.ndarray]]:
    """A copy of `network` whose int8 convolutions hold GPTQ-rounded weights, and each one's
    per-output-channel scale by its position among the convolutions.

    Each conv's Hessian H = sum x x^T is taken over its input patches (im2col) on `calibration`
    (uint8 LR, as the graph takes them), all convs in one pass of the float network. (Taking
    each conv's inputs after the convs before it were rounded, as GPTQ does, changed the drop
    by 0.001 dB on ESPCN and re-ran the network once per conv: minutes for EDSR-16.) The grid is
    the one round to nearest would use (scale max|w| / 127 per output channel); rounded weights
    are clamped onto it. Transposed convolutions (FSRCNN's last layer) are left to ONNX
    Runtime's rounding."""
    network = copy.deepcopy(network).float().eval()
    convs = [m for m in network.modules() if isinstance(m, CONV_MODULES)]
    kept = set(float_positions(len(convs), keep_float))
    targets = {i: conv for i, conv in enumerate(convs) if i not in kept and type(conv) is nn.Conv2d}
    generator = torch.Generator().manual_seed(seed)
    hessians = {i: torch.zeros(conv.weight[0].numel(), conv.weight[0].numel(), dtype=torch.float64)
                for i, conv in targets.items()}

    def recorder(i: int, conv: nn.Conv2d):
        def record(_module, inputs):
            for image in inputs[0]:
                columns = F.unfold(image[None], conv.kernel_size, conv.dilation, conv.padding, conv.stride)[0]
                if columns.shape[1] > GPTQ_POSITIONS:
                    keep = torch.randperm(columns.shape[1], generator=generator)[:GPTQ_POSITIONS]
                    columns = columns[:, keep]
                hessians[i] += (columns @ columns.T).double()
        return record

    hooks = [conv.register_forward_pre_hook(recorder(i, conv)) for i, conv in targets.items()]
    try:
        with torch.inference_mode():
            for start in range(0, len(calibration), batch_size):
                network(torch.from_numpy(calibration[start:start + batch_size]).float())
    finally:
        for hook in hooks:
            hook.remove()
    return network, {i: _gptq_conv(conv, hessians[i]) for i, conv in targets.items()}


def _gptq_conv(conv: nn.Conv2d, hessian: torch.Tensor) -> np.ndarray:
    """Round `conv`'s weights in place, GPTQ's way, onto its per-output-channel int8 grid; returns
    the grid's scales (float32, one per output channel)."""
    weight = conv.weight.detach().reshape(conv.out_channels, -1)
    scale = weight.abs().amax(dim=1).float() / INT8_LEVELS
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    values = gptq_values(weight, hessian, scale, -INT8_LEVELS, INT8_LEVELS, GPTQ_DAMPING)
    with torch.no_grad():
        conv.weight.copy_((values * scale.double()[:, None]).reshape(conv.weight.shape).to(conv.weight.dtype))
    return scale.numpy()


def quantize_int8(fp32: Path, target: Path, input_name: str, calibration: np.ndarray,
                  keep_float: str = "ends", scales: dict[int, np.ndarray] | None = None,
                  batch_size: int = 8) -> dict:
    """Write the static-QDQ INT8 graph of `fp32` to `target`, calibrated on `calibration` (the
    graph's uint8 input batches); returns what was quantized and what stayed in float.
    `scales` (from `gptq_round`, by conv position) fix those convs' weight grids: their weights
    already lie on it."""
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

    convs = conv_nodes(fp32)
    kept = [convs[position].name for position in float_positions(len(convs), keep_float)]
    overrides = {convs[position].input[1]: [{"axis": 0, "scale": float(s), "zero_point": 0}
                                             for s in channel_scales]
                 for position, channel_scales in (scales or {}).items()}
    quantize_static(str(fp32), str(target), Patches(calibration), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=[*QUANTIZED_OPS, *FUSED_OPS], per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=kept, calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                   "TensorQuantOverrides": overrides})
    quantized = [node.name for node in convs if node.name not in kept]
    return {"method": "static QDQ (onnxruntime.quantization.quantize_static)", "weights": "int8 per channel",
            "rounding": f"GPTQ for convolutions {sorted(scales)} (in order from 0), nearest for the rest"
                        if scales else "nearest",
            "activations": "uint8 per tensor, MinMax", "calibration_patches": int(len(calibration)),
            "quantized": quantized, "float": [*kept, "uint8 casts", "clamp and rounding", "Resize",
                                              "PixelShuffle / DepthToSpace"]}
