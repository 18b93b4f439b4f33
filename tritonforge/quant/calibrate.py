"""Post-training quantization of a `Quantizable` model: weights, activation ranges,
Token-Wise Clipping or channel-wise shifting and scaling, and LSQ+."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tritonforge.errors import TritonForgeError
from tritonforge.quant.migration import choose_shift_scale, gamma_migrate, shift_scale_norm
from tritonforge.quant.quantizable import Quantizable
from tritonforge.quant.quantizers import (
    MAX_BITS,
    MIN_BITS,
    ActQuantizer,
    QuantizedWeight,
    gptq_weight,
    quantize_weight,
)
from tritonforge.quant.steps import (  # noqa: F401  (Stage and the helpers stay importable from here)
    Stage,
    load_quantized_weights,
    set_mode,
    start_stage,
    tensor_batches,
)
from tritonforge.safe_load import load_weights

METHODS = ("os", "os+", "minmax", "percentile")
WEIGHT_OBSERVERS = ("minmax", "mse", "gptq")
# What LSQ+ matches to FP: every real token's final hidden state (MSE), the pooled output (the
# masked mean over real tokens, what a sentence-embedding user consumes; 1 - cosine), or both.
OBJECTIVES = ("hidden", "pooled", "both")
# Which activations are quantized: every slot the model offers ("all": Outlier Suppression's
# placement, attention's Q, K, V and probabilities included), or only the inputs of its Linears
# ("linear": what NNCF's transformer preset quantizes; attention computes in float, so OpenVINO
# keeps it one fused kernel and every quantized MatMul runs an integer one).
PLACEMENTS = ("all", "linear")

@dataclass(frozen=True)
class QuantRecipe:
    """How a quantized artifact was made; written into its manifest. The one place where
    the bit widths a person asked for are checked."""

    # os: Gamma Migration + Token-Wise Clipping (+ LSQ+); os+: channel-wise shifting and
    # scaling + percentile clipping (+ LSQ+); minmax; percentile
    method: str = "os"
    wbits: int = 8
    abits: int = 8
    weight_observer: str = "minmax"  # minmax, mse (per-row clipping search) or gptq
    percentile: float = 99.99
    alpha_grid: int = 30  # Token-Wise Clipping candidates per quantizer
    shift_scale_grid: int = 20  # OS+ threshold candidates per LayerNorm
    lsq_epochs: int = 0  # fine stage: LSQ+ epochs over the calibration set (0: coarse only)
    lsq_lr: float = 3e-2  # relative to each quantizer's scale (see train_lsq_plus)
    objective: str = "hidden"  # what LSQ+ matches to FP: see OBJECTIVES
    # Block-wise reconstruction (BRECQ + QDrop, tritonforge.quant.reconstruct) after the coarse
    # stage: each block's weight rounding and activation ranges learned on its FP output.
    reconstruct: bool = False
    reconstruct_iters: int = 200  # optimisation steps per block
    reconstruct_batch: int = 8  # texts per step
    qdrop: float = 0.5  # QDrop probability of keeping an activation element FP while learning
    placement: str = "all"  # which activations are quantized: see PLACEMENTS

    def __post_init__(self):
        self.check_bits()
        if self.weight_observer not in WEIGHT_OBSERVERS:
            raise TritonForgeError(f"weight observer {self.weight_observer!r} is unknown: choose "
                                   f"{', '.join(WEIGHT_OBSERVERS)}")
        if self.method not in METHODS:
            raise TritonForgeError(f"--method {self.method!r} is unknown: choose {', '.join(METHODS)}")
        if self.objective not in OBJECTIVES:
            raise TritonForgeError(f"--objective {self.objective!r} is unknown: choose "
                                   f"{', '.join(OBJECTIVES)}")
        if self.placement not in PLACEMENTS:
            raise TritonForgeError(f"--placement {self.placement!r} is unknown: choose "
                                   f"{', '.join(PLACEMENTS)}")
        if not 0.0 <= self.qdrop < 1.0 or self.reconstruct_iters < 0 or self.reconstruct_batch < 1:
            raise TritonForgeError("reconstruction needs 0 <= qdrop < 1, reconstruct_iters >= 0 and "
                                   "reconstruct_batch >= 1")

    def check_bits(self) -> None:
        """Refuse widths outside 2..8, named by the option that sets them: --bits when weights
        and activations share the width, else --wbits or --abits."""
        bad = [name for name in ("wbits", "abits") if not MIN_BITS <= getattr(self, name) <= MAX_BITS]
        if not bad:
            return
        value = getattr(self, bad[0])
        shared = self.wbits == self.abits
        flag = "--bits" if shared else f"--{bad[0]}"
        hint = "" if shared else " (--bits sets it when --wbits/--abits are left out)"
        raise TritonForgeError(
            f"{flag} {value} is outside {MIN_BITS}..{MAX_BITS}{hint}: quantized graphs hold k-bit "
            "grids in 8-bit containers, so choose 8, 6 or 4 (or another value in that range)")


def quantized_slots(model: Quantizable, placement: str) -> list[str]:
    """The activation slots that `placement` quantizes, in execution order."""
    slots = model.activation_slots()
    if placement == "linear":
        feeding = set(model.linear_inputs().values())
        return [slot for slot in slots if slot in feeding]
    return slots


def attach_quantizers(model: Quantizable, abits: int | Mapping[str, int], placement: str = "all"
                      ) -> dict[str, ActQuantizer]:
    """An activation quantizer (off until set) in each slot that `placement` quantizes, by slot:
    `abits` wide, or as wide as `abits[slot]` says (mixed precision; then exactly the slots
    `abits` names). The other slots keep their Identity: those activations stay float."""
    quantizers = {}
    slots = quantized_slots(model, placement) if isinstance(abits, int) else \
        [slot for slot in model.activation_slots() if slot in abits]
    for slot in slots:
        bits = abits if isinstance(abits, int) else abits[slot]
        quantizers[slot] = ActQuantizer(bits, model.sample_mask, model.token_axis(slot), slot)
        model.set_slot(slot, quantizers[slot])
    return quantizers


@torch.no_grad()
def quantize_weights(model: Quantizable, bits: int | Mapping[str, int], observer: str,
                     quantizers: Mapping[str, ActQuantizer]) -> dict[str, QuantizedWeight]:
    """Replace each weight by its k-bit value (kept as float for the PyTorch reference): `bits`
    wide, or `bits[name]` (mixed precision: GPTQ below 6 bits, MinMax from 6 up, whatever
    `observer` says). GPTQ reads each Linear's observed inputs from the quantizer that feeds it."""
    quantized = {}
    inputs = model.linear_inputs()
    for name, weight in model.weight_tables().items():
        width = bits if isinstance(bits, int) else bits[name]
        chosen = observer if isinstance(bits, int) else ("gptq" if width < 6 else "minmax")
        if chosen == "gptq" and name in inputs:
            quantized[name] = gptq_weight(weight, quantizers[inputs[name]].sample(), width)
        else:  # embedding tables are looked up, not multiplied: per-row MSE is their best
            quantized[name] = quantize_weight(weight, width, "mse" if chosen == "gptq" else chosen)
    load_quantized_weights(model, quantized)
    return quantized


@torch.no_grad()
def model_outputs(model: Quantizable, inputs: Mapping[str, np.ndarray], batch_size: int = 32
                  ) -> list[torch.Tensor]:
    """`model.output` of every batch of `inputs`."""
    return [model.output(batch) for batch in tensor_batches(inputs, batch_size)]


def at_real(values: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """`values` at the real positions only: [real positions, ...] (all when `real` is None)."""
    return values if real is None else values[real]


def output_error(model: Quantizable, inputs: Mapping[str, np.ndarray], reference: list[torch.Tensor],
                 batch_size: int = 32) -> float:
    """Mean squared error of the model's output against `reference`, over real positions."""
    total, count = 0.0, 0
    for batch, ref in zip(tensor_batches(inputs, batch_size), reference, strict=True):
        errors = at_real((model.output(batch) - ref) ** 2, model.real_positions(batch))
        total += float(errors.sum())
        count += errors.numel()
    return total / count


@dataclass
class CalibrationResult:
    """A model quantized by `calibrate`: its k-bit weights, its activation quantizers (in
    the model's slots, quantizing) and what the calibration chose."""

    model: Quantizable
    recipe: QuantRecipe
    weights: dict[str, QuantizedWeight] = field(default_factory=dict)
    quantizers: dict[str, ActQuantizer] = field(default_factory=dict)
    alphas: dict[str, float] = field(default_factory=dict)  # token-wise clipping quantiles
    thresholds: dict[str, float] = field(default_factory=dict)  # OS+ scaling thresholds t
    calibration_error: float | None = None


@torch.no_grad()
def observe(model: Quantizable, quantizers: Mapping[str, ActQuantizer], calib: Mapping[str, np.ndarray],
            batch_size: int) -> list[torch.Tensor]:
    """Run `calib` through `model` with every quantizer recording statistics; returns the
    outputs (observing passes every value through as it is)."""
    for quantizer in quantizers.values():
        quantizer.reset_statistics()
    set_mode(quantizers, "observe")
    outputs = model_outputs(model, calib, batch_size)
    set_mode(quantizers, "off")
    return outputs


@torch.no_grad()
def shift_and_scale(model: Quantizable, quantizers: Mapping[str, ActQuantizer], grid: int
                    ) -> dict[str, float]:
    """OS+ on every LayerNorm output that is quantized, from the statistics just observed;
    returns each site's threshold t."""
    thresholds = {}
    for site in model.norm_sites():
        if site.quantizer is None:
            continue
        quantizer = quantizers[site.quantizer]
        weight = torch.cat([linear.weight for linear in site.linears])
        shift, scale, thresholds[site.quantizer] = choose_shift_scale(
            quantizer.sample(), quantizer.channel_min, quantizer.channel_max, weight, quantizer.bits, grid)
        shift_scale_norm(site.norm, site.linears, site.shortcut, shift, scale)
    return thresholds


CLIP_SEARCH_VALUES = 1 << 18  # activation values the clipping search scores each candidate on


@torch.no_grad()
def token_wise_clip(quantizer: ActQuantizer, grid: int, lowest: float = 0.5) -> float:
    """Token-Wise Clipping for one quantizer: the quantile alpha of the per-token extremes
    whose range adds the least squared error to the observed activations. Sets the range and
    returns alpha (1 = no clipping)."""
    sample = quantizer.sample().flatten()
    if sample.numel() > CLIP_SEARCH_VALUES:
        keep = torch.randperm(sample.numel(), generator=torch.Generator().manual_seed(0))
        sample = sample[keep[:CLIP_SEARCH_VALUES]]
    errors = [(quantizer.quantization_error(*quantizer.token_wise_range(alpha), sample), alpha)
              for alpha in np.linspace(1.0, lowest, grid).tolist()]
    alpha = min(errors)[1]
    quantizer.set_range(*quantizer.token_wise_range(alpha))
    return alpha


@torch.no_grad()
def calibrate(model: Quantizable, recipe: QuantRecipe, calib: Mapping[str, np.ndarray],
              batch_size: int = 32, stage: Stage | None = None,
              widths: Mapping[str, Mapping[str, int]] | None = None) -> CalibrationResult:
    """Quantize `model` in place with `recipe`, calibrated on the input arrays `calib`.
    `widths` ({"weights": {name: bits}, "activations": {slot: bits}}) overrides the recipe's
    wbits/abits per quantizer (mixed precision, `tritonforge.quant.mixed`).

    `model` must still compute in FP (its slots empty): its outputs are the reference that
    clipping searches and LSQ+ match. `stage` is told about each step (see `start_stage`).
    """
    quantizers = attach_quantizers(model, widths["activations"] if widths else recipe.abits, recipe.placement)
    result = CalibrationResult(model, recipe, quantizers=quantizers)
    if recipe.method == "os":
        start_stage(stage, "FP reference outputs")
        reference = model_outputs(model, calib, batch_size)  # quantizers off: the FP model
        start_stage(stage, "Gamma Migration")
        gamma_migrate(model)
        start_stage(stage, "observing activations")
        observe(model, quantizers, calib, batch_size)  # FP weights: ranges of the model being copied
    else:  # one FP pass gives the reference outputs and the ranges (observing changes no value)
        start_stage(stage, "FP reference outputs, observing activations")
        reference = observe(model, quantizers, calib, batch_size)
    if recipe.method == "os+":
        start_stage(stage, "channel-wise shifting and scaling")
        result.thresholds = shift_and_scale(model, quantizers, recipe.shift_scale_grid)
        observe(model, quantizers, calib, batch_size)
    # Block-wise reconstruction learns each weight's rounding from its (equivalently rewritten) FP value.
    fp_weights = {name: weight.detach().clone() for name, weight in model.weight_tables().items()} \
        if recipe.reconstruct else {}
    if recipe.weight_observer == "gptq":
        start_stage(stage, "GPTQ weights")
    result.weights = quantize_weights(model, widths["weights"] if widths else recipe.wbits,
                                      recipe.weight_observer, quantizers)
    start_stage(stage, "activation ranges")
    for name, quantizer in quantizers.items():
        if recipe.method == "minmax":
            quantizer.set_range(*quantizer.minmax_range())
        elif recipe.method in ("percentile", "os+"):
            # After channel-wise shifting and scaling every channel spans at most +-t, and each
            # scaled channel is multiplied back by s in the next Linear: clipping the token
            # extremes, which the activation-MSE search does, costs more than it saves there
            # (MiniLM W6A6: 0.965 embedding cosine with token-wise clipping, 0.977 with the
            # 99.99th percentile, both before LSQ+). So os+ starts LSQ+ from the percentile.
            quantizer.set_range(*quantizer.percentile_range(recipe.percentile))
        else:
            result.alphas[name] = token_wise_clip(quantizer, recipe.alpha_grid)
        quantizer.reset_statistics()
    set_mode(quantizers, "quantize")
    if recipe.reconstruct:
        from tritonforge.quant.reconstruct import reconstruct_blocks

        reconstruct_blocks(result, fp_weights, calib, batch_size, stage)
        del fp_weights
    if recipe.lsq_epochs:
        advance = start_stage(stage, "LSQ+ (fine)", recipe.lsq_epochs * len(reference))
        train_lsq_plus(model, quantizers, calib, reference, recipe.lsq_epochs, recipe.lsq_lr, batch_size,
                       advance, recipe.objective)
    if recipe.lsq_epochs or recipe.reconstruct:
        start_stage(stage, "output error against FP")
    model.set_exact(True)
    # A record, not a choice: the first batches (ERROR_TEXTS texts) tell it as well as all of them.
    kept = -(-ERROR_TEXTS // batch_size)
    few = {name: values[:kept * batch_size] for name, values in calib.items()}
    result.calibration_error = output_error(model, few, reference[:kept], batch_size)
    return result


ERROR_TEXTS = 64  # calibration texts the recorded output error is measured on
LSQ_MICRO_BATCH = 16  # samples per forward/backward pass of LSQ+ (bounds its memory)


def pooled(output: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """The masked mean of `output` [B, L, ...] over its real positions `real` [B, L]: [B, ...]."""
    if real is None:
        return output.flatten(1, -2).mean(1) if output.dim() > 2 else output
    mask = real.reshape(*real.shape, *([1] * (output.dim() - real.dim()))).to(output.dtype)
    dims = tuple(range(1, real.dim()))
    return (output * mask).sum(dims) / mask.sum(dims).clamp(min=1e-9)


def trimmed(batch: Mapping[str, torch.Tensor], reference: torch.Tensor, real: torch.Tensor | None
            ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """`batch` and its `reference` output without the trailing padding columns, when every input
    is a [B, L] token array (right-padded text) that `real` [B, L] marks: padding changes no real
    position's output and adds nothing to any loss or gradient, but costs as much as a token."""
    if real is None or real.dim() != 2 or reference.shape[:2] != real.shape or \
            any(v.shape != real.shape for v in batch.values()):
        return dict(batch), reference
    columns = real.any(0).nonzero()
    length = int(columns.max()) + 1 if len(columns) else 1
    return {k: v[:, :length] for k, v in batch.items()}, reference[:, :length]


def output_loss(output: torch.Tensor, reference: torch.Tensor, real: torch.Tensor | None, count: int,
                rows: int, objective: str, power: float = 1.0) -> torch.Tensor:
    """The part of a batch's loss that one micro-batch contributes: the squared error of every
    real position (summed, over `count` in the batch), 1 - the cosine of the pooled outputs (over
    `rows` in the batch), or both (the squared error relative to the reference's mean square
    `power`, plus the pooled term)."""
    loss = output.new_zeros(())
    if objective in ("hidden", "both"):
        scale = power if objective == "both" else 1.0
        loss = loss + at_real((output - reference) ** 2, real).sum() / count / scale
    if objective in ("pooled", "both"):
        cosine = torch.nn.functional.cosine_similarity(pooled(output, real).flatten(1),
                                                       pooled(reference, real).flatten(1), dim=1)
        loss = loss + (1.0 - cosine).sum() / rows
    return loss


@torch.enable_grad()
def train_lsq_plus(model: Quantizable, quantizers: Mapping[str, ActQuantizer],
                   calib: Mapping[str, np.ndarray], reference: list[torch.Tensor], epochs: int, lr: float,
                   batch_size: int = 32, advance: Callable[[], None] | None = None,
                   objective: str = "hidden") -> None:
    """LSQ+: learn every activation quantizer's scale and zero point on the final-output
    error against FP (Adam, cosine decay), starting from the calibrated ranges; `objective`
    says which error (see `output_loss`). `advance` is called after each of the
    epochs x len(reference) optimisation steps."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    learnable = [p for q in quantizers.values() for p in (q.scale, q.zero_point)]
    for parameter in learnable:
        parameter.requires_grad_(True)
    steps = epochs * len(reference)
    # Adam moves every parameter by about lr per step whatever its size, and the scales span
    # three orders of magnitude (softmax outputs ~1e-3, GELU outputs ~0.1). So `lr` is relative:
    # a fraction of each quantizer's starting scale, and of its grid for the zero point.
    groups = [group for q in quantizers.values() for group in (
        {"params": [q.scale], "lr": lr * float(q.scale.detach())},
        {"params": [q.zero_point], "lr": lr * (q.qmax - q.qmin)})]
    optimizer = torch.optim.Adam(groups)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    power = float(torch.stack([at_real(ref ** 2, model.real_positions(batch)).mean()
                               for batch, ref in zip(tensor_batches(calib, batch_size), reference,
                                                     strict=True)]).mean())
    for _ in range(epochs):
        for batch, ref in zip(tensor_batches(calib, batch_size), reference, strict=True):
            # One step per batch, its gradient accumulated over micro-batches to bound memory.
            count = at_real(ref, model.real_positions(batch)).numel()
            optimizer.zero_grad()
            for start in range(0, len(ref), LSQ_MICRO_BATCH):
                part = {k: v[start:start + LSQ_MICRO_BATCH] for k, v in batch.items()}
                part, target = trimmed(part, ref[start:start + LSQ_MICRO_BATCH], model.real_positions(part))
                loss = output_loss(model.output(part), target, model.real_positions(part), count, len(ref),
                                   objective, power)
                loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                for quantizer in quantizers.values():
                    quantizer.scale.clamp_(min=1e-8)
                    quantizer.zero_point.clamp_(quantizer.qmin, quantizer.qmax)
            if advance is not None:
                advance()
    for parameter in learnable:
        parameter.requires_grad_(False)


# -- a calibrated model, saved and loaded ---------------------------------------------------


def save_calibration(result: CalibrationResult, record: Mapping[str, Any], path: Path) -> None:
    """What rebuilds `result` without calibrating again: the model's float state (norms,
    biases, the quantizers' ranges), its k-bit weights as integers and scales, the choices
    made, and `record` (e.g. which texts it was calibrated on)."""
    tables = {f"{name}.weight" for name in result.model.weight_tables()}  # saved as integers below
    state = {k: v for k, v in result.model.state_dict().items() if k not in tables}
    torch.save({"state": state,
                "weights": {name: {"values": w.values, "scale": w.scale, "bits": w.bits}
                            for name, w in result.weights.items()},
                "activation_bits": {slot: q.bits for slot, q in result.quantizers.items()},
                "alphas": result.alphas, "thresholds": result.thresholds,
                "calibration": dict(record), "calibration_error": result.calibration_error}, path)


def load_calibration(model: Quantizable, recipe: QuantRecipe, path: Path
                     ) -> tuple[CalibrationResult, dict[str, Any]]:
    """`model` (a fresh FP copy with empty slots) made the saved calibrated model again, and
    the saved record; the file is loaded weights_only."""
    if not Path(path).is_file():
        raise TritonForgeError(f"{path} is missing: the quantized reference was not saved with this "
                               "version; export the model again")
    saved = load_weights(path, str(path), "export the model again")
    # Each quantizer's own width (mixed precision); files from before widths were saved: the recipe's.
    quantizers = attach_quantizers(model, saved.get("activation_bits") or recipe.abits, recipe.placement)
    weights = {name: QuantizedWeight(w["values"], w["scale"], int(w["bits"]))
               for name, w in saved["weights"].items()}
    state = dict(saved["state"])
    for name, weight in weights.items():
        state[f"{name}.weight"] = weight.dequantize()
    model.load_state_dict(state, strict=True)
    load_quantized_weights(model, weights)
    set_mode(quantizers, "quantize")
    model.set_exact(True)
    result = CalibrationResult(model, recipe, weights, quantizers, dict(saved["alphas"]),
                               dict(saved["thresholds"]), saved["calibration_error"])
    return result, dict(saved["calibration"])
