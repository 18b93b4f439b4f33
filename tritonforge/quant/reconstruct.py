"""Block-wise reconstruction (BRECQ, Li et al., 2021, with QDrop, Wei et al., 2022), applied by
`tritonforge.quant.calibrate.calibrate` after the coarse stage when a recipe asks for it.

Block by block, in execution order, the block's weight rounding (AdaRound: a soft rounding
variable per weight, regularised towards hard 0 or 1; optionally straight-through, so that the
block always computes with the hard weights it will keep) and its activation quantizers' scales
and zero points (LSQ+; SCALE_LR) are learned so that the block's quantized
output, computed from the *quantized* model's input to the block, matches the FP model's output
of that block. With QDrop, every activation element inside the block keeps its FP value with
probability `qdrop` while learning, which makes what is learned robust to the errors still to
come.

The rounding only ever chooses between the two grid points around each FP weight, and the
per-row scales stay those of the weight observer: the result is still integers on the k-bit
grid with per-row scales (`QuantizedWeight`), so the QDQ export and the saved reference are
unchanged.

A block is a transformer layer of a model that exposes `layers` (modules called as
`layer(x, attention_mask_bias, in_quant, out_quant)`) and `out_quant` (each layer's output
quantizer), as `tritonforge.encoders.slotted_bert.SlottedBert` does; models without them are
left as they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from tritonforge.quant.quantizers import ActQuantizer, QuantizedWeight, signed_range
from tritonforge.quant.steps import load_quantized_weights, set_mode, start_stage, tensor_batches

# AdaRound's rectified sigmoid stretch and its regulariser (Nagel et al., 2020; BRECQ's defaults)
ZETA, GAMMA = 1.1, -0.1
ROUND_WEIGHT = 0.01  # lambda of the rounding regulariser
WARMUP = 0.2  # fraction of the steps before the regulariser starts
BETA = (20.0, 2.0)  # its exponent, annealed from sharp-everywhere to pushing every value to 0/1
ROUNDING_LR = 1e-2  # Adam on the rounding variables
# Activation ranges learned block by block, relative to each quantizer's scale and grid as in
# train_lsq_plus (0: kept as calibrated). These are the settings measured on MiniLM (W8A8 with
# pooled LSQ+ after: embedding cosine 0.9987, NN 0.9625). On the tiny random test BERT, learning
# the ranges here raised the block's own error while learning the rounding alone lowered it.
SCALE_LR = 1e-2
ZERO_POINT_LR = 1e-2
# A few hundred steps are too few for the regulariser to harden every rounding (BRECQ runs 20k):
# the soft weights then differ from the hard ones kept. Straight-through, the block is always
# learned with the hard weights it will keep (not yet measured on MiniLM, so off by default).
STRAIGHT_THROUGH = False  # relative to each quantizer's scale, as in LSQ+ (train_lsq_plus)


class SoftRound(nn.Module):
    """A weight on its per-row grid with learned rounding: scale * clamp(floor(w/scale) + h),
    h in [0, 1] a rectified sigmoid of `alpha`, initialised to the FP weight itself."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bits: int):
        super().__init__()
        self.qmin, self.qmax = signed_range(bits)
        self.register_buffer("scale", scale.detach().float()[:, None])
        scaled = weight.detach().float() / self.scale
        self.register_buffer("floor", torch.floor(scaled))
        rest = (scaled - self.floor).clamp(1e-4, 1 - 1e-4)
        self.alpha = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))
        self.straight_through = STRAIGHT_THROUGH

    def soft(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def forward(self, _weight: torch.Tensor) -> torch.Tensor:  # a parametrization of the weight
        soft = self.soft()
        if self.straight_through:  # the hard choice forward, the soft rounding's gradient back
            soft = soft + ((self.alpha >= 0).float() - soft).detach()
        return torch.clamp(self.floor + soft, self.qmin, self.qmax) * self.scale

    def regulariser(self, beta: float) -> torch.Tensor:
        return (1 - (2 * self.soft() - 1).abs().pow(beta)).sum()

    @torch.no_grad()
    def hard(self) -> torch.Tensor:
        """The chosen integers: floor + 1 where the soft rounding passed one half."""
        return torch.clamp(self.floor + (self.alpha >= 0).float(), self.qmin, self.qmax)


def has_blocks(model) -> bool:
    return isinstance(getattr(model, "layers", None), nn.ModuleList) and hasattr(model, "out_quant")


def layer_quantizers(model, index: int) -> list[ActQuantizer]:
    """The activation quantizers inside layer `index` and at its output."""
    layer = model.layers[index]
    found = [q for q in layer.modules() if isinstance(q, ActQuantizer)]
    out = model.out_quant[index]
    return found + ([out] if isinstance(out, ActQuantizer) else [])


def real_length(mask: torch.Tensor) -> int:
    """Positions up to the last real one of any row (padding is on the right)."""
    columns = mask.any(0).nonzero()
    return int(columns.max()) + 1 if len(columns) else 1


@torch.no_grad()
def block_io(model, calib: Mapping[str, np.ndarray], batch_size: int) -> tuple[list, list[list]]:
    """Per calibration batch: the first layer's (input, attention bias, real mask), trimmed to
    the batch's real length, and every layer's output on it."""

    captured: dict[str, object] = {}

    def take_input(_module, args):
        captured["x"], captured["bias"] = args[0], args[1]

    def take_output(index):
        def hook(_module, _args, output):
            captured[index] = output
        return hook

    handles = [model.layers[0].register_forward_pre_hook(take_input)]
    handles += [layer.register_forward_hook(take_output(i)) for i, layer in enumerate(model.layers)]
    inputs, outputs = [], []
    try:
        for batch in tensor_batches(calib, batch_size):
            model.output(batch)
            real = model.real_positions(batch)
            length = real_length(real)
            bias = captured["bias"]
            bias = bias[..., :length, :length] if bias.shape[-2] > 1 else bias[..., :length]
            inputs.append((captured["x"][:, :length].clone(), bias.clone(), real[:, :length]))
            outputs.append([captured[i][:, :length].clone() for i in range(len(model.layers))])
    finally:
        for handle in handles:
            handle.remove()
    return inputs, outputs


def reconstruct_blocks(result, fp_weights: Mapping[str, torch.Tensor], calib: Mapping[str, np.ndarray],
                       batch_size: int = 32, stage=None) -> None:
    """BRECQ + QDrop over every layer of `result.model` (see the module doc), in place: the
    model's weights and `result.weights` get the learned rounding, its quantizers the learned
    ranges. `fp_weights` are the FP values (after any equivalent rewrite) of every weight table."""

    model, recipe = result.model, result.recipe
    if not has_blocks(model) or recipe.reconstruct_iters == 0:
        return
    quantizers = result.quantizers
    tables = model.weight_tables()
    # FP targets: FP weights, no quantizer; then the quantized model's input to the first layer.
    start_stage(stage, "reconstruction: FP block outputs")
    with torch.no_grad():
        for name, table in tables.items():
            table.copy_(fp_weights[name])
    set_mode(quantizers, "off")
    _, targets = block_io(model, calib, batch_size)
    load_quantized_weights(model, result.weights)
    set_mode(quantizers, "quantize")
    inputs, _ = block_io(model, calib, batch_size)
    names = {id(linear): name for name, linear in model.linears().items()}
    advance = start_stage(stage, "block reconstruction (BRECQ + QDrop)",
                          len(model.layers) * recipe.reconstruct_iters)
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):  # QDrop's draws: the same calibration every time
        torch.manual_seed(0)
        for index, layer in enumerate(model.layers):
            linears = {names[id(m)]: m for m in layer.modules() if id(m) in names}
            reconstruct_layer(model, index, linears, result, fp_weights, inputs,
                              [outs[index] for outs in targets], generator, advance)
            with torch.no_grad():  # the next layer's input: this layer, quantized, without drops
                inputs = [(layer(x, bias, nn.Identity(), model.out_quant[index]), bias, real)
                          for x, bias, real in inputs]


def reconstruct_layer(model, index: int, linears: Mapping[str, nn.Linear], result, fp_weights,
                      inputs: list, targets: list[torch.Tensor], generator: torch.Generator,
                      advance) -> None:
    recipe = result.recipe
    layer, out_quant = model.layers[index], model.out_quant[index]
    acts = layer_quantizers(model, index)
    rounding = {}
    for name, linear in linears.items():
        weight = result.weights[name]
        rounding[name] = SoftRound(fp_weights[name], weight.scale, weight.bits)
        parametrize.register_parametrization(linear, "weight", rounding[name], unsafe=True)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    acts_learned = acts if SCALE_LR > 0 else []
    learnable = [p for q in acts_learned for p in (q.scale, q.zero_point)] + \
        [r.alpha for r in rounding.values()]
    for parameter in learnable:
        parameter.requires_grad_(True)
    groups = [{"params": [r.alpha for r in rounding.values()], "lr": ROUNDING_LR}]
    groups += [group for q in acts_learned for group in (
        {"params": [q.scale], "lr": SCALE_LR * float(q.scale.detach())},
        {"params": [q.zero_point], "lr": ZERO_POINT_LR * (q.qmax - q.qmin)})]
    optimizer = torch.optim.Adam(groups)
    steps = recipe.reconstruct_iters
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for quantizer in acts:
        quantizer.drop = recipe.qdrop
    sizes = [len(x) for x, _, _ in inputs]
    try:
        with torch.enable_grad():
            for step in range(steps):
                which = int(torch.randint(len(inputs), (1,), generator=generator))
                rows = torch.randperm(sizes[which], generator=generator)[:recipe.reconstruct_batch]
                x, bias, real = (t[rows] for t in inputs[which])
                length = real_length(real)
                x, real = x[:, :length], real[:, :length]
                bias = bias[..., :length, :length] if bias.shape[-2] > 1 else bias[..., :length]
                target = targets[which][rows][:, :length]
                output = layer(x, bias, nn.Identity(), out_quant)
                loss = ((output - target)[real] ** 2).sum(-1).mean()
                progress = step / steps
                if progress >= WARMUP:
                    decay = (progress - WARMUP) / (1 - WARMUP)
                    beta = BETA[1] + 0.5 * (BETA[0] - BETA[1]) * (1 + math.cos(math.pi * decay))
                    loss = loss + ROUND_WEIGHT * sum(r.regulariser(beta) for r in rounding.values())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                with torch.no_grad():
                    for quantizer in acts:
                        quantizer.scale.clamp_(min=1e-8)
                        quantizer.zero_point.clamp_(quantizer.qmin, quantizer.qmax)
                advance()
    finally:
        for quantizer in acts:
            quantizer.drop = 0.0
        for parameter in learnable:
            parameter.requires_grad_(False)
        for name, linear in linears.items():
            parametrize.remove_parametrizations(linear, "weight", leave_parametrized=False)
            hard = rounding[name].hard()
            result.weights[name] = QuantizedWeight(hard.to(torch.int8), result.weights[name].scale,
                                                   result.weights[name].bits)
            with torch.no_grad():
                linear.weight.copy_(result.weights[name].dequantize())
            linear.weight_scale = result.weights[name].scale
