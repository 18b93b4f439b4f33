"""Post-training quantization of a QuantBert: weights, activation ranges, Token-Wise Clipping."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from tritonforge.errors import TritonForgeError
from tritonforge.quant.bert import QuantBert
from tritonforge.quant.migration import choose_shift_scale, gamma_migrate, shift_scale_norm
from tritonforge.quant.quantizers import (
    ActQuantizer,
    QuantizedWeight,
    check_bits,
    gptq_weight,
    quantize_weight,
)
from tritonforge.verify.runner import batches

METHODS = ("os", "os+", "minmax", "percentile")
WEIGHT_OBSERVERS = ("minmax", "mse", "gptq")


@dataclass(frozen=True)
class QuantRecipe:
    """How a quantized artifact was made; written into its manifest."""

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

    def __post_init__(self):
        check_bits(self.wbits, "--wbits")
        check_bits(self.abits, "--abits")
        if self.weight_observer not in WEIGHT_OBSERVERS:
            raise TritonForgeError(f"weight observer {self.weight_observer!r} is unknown: choose "
                                   f"{', '.join(WEIGHT_OBSERVERS)}")
        if self.method not in METHODS:
            raise TritonForgeError(f"--method {self.method!r} is unknown: choose {', '.join(METHODS)}")


def token_batches(inputs: Mapping[str, np.ndarray], size: int):
    for batch in batches(inputs, size):
        yield {k: torch.from_numpy(v) for k, v in batch.items()}


def attach_quantizers(model: QuantBert, abits: int) -> dict[str, ActQuantizer]:
    quantizers = {}
    for slot in model.activation_slots():
        axis = 2 if slot.endswith(".probs") else 1  # a query token's row of probabilities
        quantizers[slot] = ActQuantizer(abits, model.token_mask, axis, slot)
        model.set_slot(slot, quantizers[slot])
    return quantizers


@torch.no_grad()
def quantize_weights(model: QuantBert, bits: int, observer: str,
                     quantizers: Mapping[str, ActQuantizer]) -> dict[str, QuantizedWeight]:
    """Replace each weight by its k-bit value (kept as float for the PyTorch reference).
    GPTQ reads each Linear's observed inputs from the quantizer that feeds it."""
    quantized = {}
    inputs = model.linear_inputs()
    for name, weight in model.weight_tables().items():
        if observer == "gptq" and name in inputs:
            quantized[name] = gptq_weight(weight, quantizers[inputs[name]].sample(), bits)
        else:  # embedding tables are looked up, not multiplied: per-row MSE is their best
            quantized[name] = quantize_weight(weight, bits, "mse" if observer == "gptq" else observer)
    load_quantized_weights(model, quantized)
    return quantized


@torch.no_grad()
def load_quantized_weights(model: QuantBert, weights: Mapping[str, QuantizedWeight]) -> None:
    """Set each weight to its k-bit value; Linears also keep their per-row scales, which the
    integer-exact reference needs to recover the integers."""
    linears = model.linears()
    for name, weight in model.weight_tables().items():
        weight.copy_(weights[name].dequantize())
        if name in linears:
            linears[name].weight_scale = weights[name].scale


def set_mode(quantizers: Mapping[str, ActQuantizer], mode: str) -> None:
    for quantizer in quantizers.values():
        quantizer.mode = mode


@torch.no_grad()
def hidden_states(model: nn.Module, inputs: Mapping[str, np.ndarray], batch_size: int = 32
                  ) -> list[torch.Tensor]:
    return [model(**batch).last_hidden_state for batch in token_batches(inputs, batch_size)]


def real_token_squared_error(out: torch.Tensor, ref: torch.Tensor, attention_mask: torch.Tensor
                             ) -> torch.Tensor:
    """Squared error of hidden states at real (non-padding) tokens: [real tokens, features]."""
    return ((out - ref) ** 2)[attention_mask.bool()]


def output_error(model: nn.Module, inputs, reference: list[torch.Tensor], batch_size: int = 32) -> float:
    """Mean squared error of the final hidden states over real tokens."""
    total, count = 0.0, 0
    for batch, ref in zip(token_batches(inputs, batch_size), reference, strict=True):
        errors = real_token_squared_error(model(**batch).last_hidden_state, ref, batch["attention_mask"])
        total += float(errors.sum())
        count += errors.numel()
    return total / count


@dataclass
class QuantizedBert:
    model: QuantBert
    recipe: QuantRecipe
    weights: dict[str, QuantizedWeight] = field(default_factory=dict)
    quantizers: dict[str, ActQuantizer] = field(default_factory=dict)
    alphas: dict[str, float] = field(default_factory=dict)  # token-wise clipping quantiles
    thresholds: dict[str, float] = field(default_factory=dict)  # OS+ scaling thresholds t
    calibration_error: float | None = None


@torch.no_grad()
def observe(model: QuantBert, quantizers: Mapping[str, ActQuantizer], calib, batch_size: int) -> None:
    for quantizer in quantizers.values():
        quantizer.reset_statistics()
    set_mode(quantizers, "observe")
    hidden_states(model, calib, batch_size)
    set_mode(quantizers, "off")


@torch.no_grad()
def shift_and_scale(model: QuantBert, quantizers: Mapping[str, ActQuantizer], grid: int) -> dict[str, float]:
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
def quantize_bert(bert: nn.Module, recipe: QuantRecipe, calib: Mapping[str, np.ndarray],
                  batch_size: int = 32, tick: Callable[[str], None] | None = None) -> QuantizedBert:
    """Quantize a Hugging Face BertModel with `recipe`, calibrated on token arrays `calib`."""
    tick = tick or (lambda _stage: None)
    tick("FP reference outputs")
    reference = hidden_states(bert.eval(), calib, batch_size)
    model = QuantBert(copy.deepcopy(bert)).eval()
    quantizers = attach_quantizers(model, recipe.abits)
    result = QuantizedBert(model, recipe, quantizers=quantizers)
    if recipe.method == "os":
        tick("Gamma Migration")
        gamma_migrate(model)
    tick("observing activations")
    observe(model, quantizers, calib, batch_size)  # FP weights: ranges of the model being copied
    if recipe.method == "os+":
        tick("channel-wise shifting and scaling")
        result.thresholds = shift_and_scale(model, quantizers, recipe.shift_scale_grid)
        observe(model, quantizers, calib, batch_size)
    if recipe.weight_observer == "gptq":
        tick("GPTQ weights")
    result.weights = quantize_weights(model, recipe.wbits, recipe.weight_observer, quantizers)
    tick("activation ranges")
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
    if recipe.lsq_epochs:
        tick("LSQ+ (fine)")
        train_lsq_plus(model, quantizers, calib, reference, recipe.lsq_epochs, recipe.lsq_lr, batch_size)
    model.set_exact(True)
    result.calibration_error = output_error(model, calib, reference, batch_size)
    return result


LSQ_MICRO_BATCH = 16  # texts per forward/backward pass of LSQ+ (bounds its memory)


@torch.enable_grad()
def train_lsq_plus(model: QuantBert, quantizers: Mapping[str, ActQuantizer], calib,
                   reference: list[torch.Tensor], epochs: int, lr: float, batch_size: int = 32) -> None:
    """LSQ+: learn every activation quantizer's scale and zero point on the final-output
    error against FP (Adam, cosine decay), starting from the calibrated ranges."""
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
    for _ in range(epochs):
        for batch, ref in zip(token_batches(calib, batch_size), reference, strict=True):
            # One step per batch, its gradient accumulated over micro-batches to bound memory.
            count = int(batch["attention_mask"].sum()) * ref.shape[-1]
            optimizer.zero_grad()
            for start in range(0, len(ref), LSQ_MICRO_BATCH):
                part = {k: v[start:start + LSQ_MICRO_BATCH] for k, v in batch.items()}
                errors = real_token_squared_error(model(**part).last_hidden_state,
                                                  ref[start:start + LSQ_MICRO_BATCH], part["attention_mask"])
                (errors.sum() / count).backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                for quantizer in quantizers.values():
                    quantizer.scale.clamp_(min=1e-8)
                    quantizer.zero_point.clamp_(quantizer.qmin, quantizer.qmax)
    for parameter in learnable:
        parameter.requires_grad_(False)
