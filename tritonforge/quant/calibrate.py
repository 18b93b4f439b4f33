"""Post-training quantization of a QuantBert: weights, activation ranges, Token-Wise Clipping."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tritonforge.errors import TritonForgeError
from tritonforge.quant.bert import QuantBert
from tritonforge.quant.migration import gamma_migrate
from tritonforge.quant.quantizers import ActQuantizer, QuantizedWeight, check_bits, quantize_weight
from tritonforge.verify.runner import batches

METHODS = ("os", "minmax", "percentile")


@dataclass(frozen=True)
class QuantRecipe:
    """How a quantized artifact was made; written into its manifest."""

    method: str = "os"  # os: Gamma Migration + Token-Wise Clipping; minmax; percentile
    wbits: int = 8
    abits: int = 8
    weight_observer: str = "minmax"  # minmax or mse (per-row clipping search)
    percentile: float = 99.99
    alpha_grid: int = 30  # coarse-stage candidates for the clipping quantile
    lsq_epochs: int = 0  # fine stage: LSQ+ epochs over the calibration set (0: coarse only)
    lsq_lr: float = 1e-5

    def __post_init__(self):
        check_bits(self.wbits, "--wbits")
        check_bits(self.abits, "--abits")
        if self.method not in METHODS:
            raise TritonForgeError(f"--method {self.method!r} is unknown: choose {', '.join(METHODS)}")


def token_batches(inputs: Mapping[str, np.ndarray], size: int):
    for batch in batches(inputs, size):
        yield {k: torch.from_numpy(v) for k, v in batch.items()}


def attach_quantizers(model: QuantBert, abits: int) -> dict[str, ActQuantizer]:
    quantizers = {}
    for name, owner, key in model.activation_slots():
        axis = 2 if key == "probs" else 1
        quantizers[name] = ActQuantizer(abits, model.token_mask, axis, name)
        if isinstance(owner, nn.ModuleList):
            owner[int(key)] = quantizers[name]
        elif isinstance(owner, nn.ModuleDict):
            owner[key] = quantizers[name]
        else:
            setattr(owner, key, quantizers[name])
    return quantizers


@torch.no_grad()
def quantize_weights(model: QuantBert, bits: int, observer: str) -> dict[str, QuantizedWeight]:
    """Replace each weight by its k-bit value (kept as float for the PyTorch reference)."""
    quantized = {}
    for name, weight in model.weight_tables().items():
        quantized[name] = quantize_weight(weight, bits, observer)
        weight.copy_(quantized[name].dequantize())
    return quantized


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
    weights: dict[str, QuantizedWeight]
    quantizers: dict[str, ActQuantizer]
    alpha: float | None = None
    calibration_error: float | None = None


@torch.no_grad()
def quantize_bert(bert: nn.Module, recipe: QuantRecipe, calib: Mapping[str, np.ndarray],
                  batch_size: int = 32, tick: Callable[[str], None] | None = None) -> QuantizedBert:
    """Quantize a Hugging Face BertModel with `recipe`, calibrated on token arrays `calib`."""
    tick = tick or (lambda _stage: None)
    reference = hidden_states(bert.eval(), calib, batch_size)  # FP targets
    model = QuantBert(copy.deepcopy(bert)).eval()
    if recipe.method == "os":
        tick("Gamma Migration")
        gamma_migrate(model)
    quantizers = attach_quantizers(model, recipe.abits)
    tick("observing activations")
    set_mode(quantizers, "observe")
    hidden_states(model, calib, batch_size)  # FP weights: ranges of the model being copied
    weights = quantize_weights(model, recipe.wbits, recipe.weight_observer)
    result = QuantizedBert(model, recipe, weights, quantizers)
    if recipe.method == "minmax":
        for quantizer in quantizers.values():
            quantizer.set_range(*quantizer.minmax_range())
    elif recipe.method == "percentile":
        for quantizer in quantizers.values():
            quantizer.set_range(*quantizer.percentile_range(recipe.percentile))
    else:
        tick("Token-Wise Clipping (coarse)")
        # One clipping quantile for all activations, chosen by the final-output error.
        best = (float("inf"), 1.0)
        set_mode(quantizers, "quantize")
        for alpha in np.linspace(1.0, 0.95, recipe.alpha_grid):
            for quantizer in quantizers.values():
                quantizer.set_range(*quantizer.token_wise_range(float(alpha)))
            error = output_error(model, calib, reference, batch_size)
            best = min(best, (error, float(alpha)))
        for quantizer in quantizers.values():
            quantizer.set_range(*quantizer.token_wise_range(best[1]))
        result.alpha = best[1]
    set_mode(quantizers, "quantize")
    for quantizer in quantizers.values():
        quantizer.reset_statistics()
    if recipe.lsq_epochs:
        tick("LSQ+ (fine)")
        train_lsq_plus(model, quantizers, calib, reference, recipe.lsq_epochs, recipe.lsq_lr, batch_size)
    result.calibration_error = output_error(model, calib, reference, batch_size)
    return result


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
    optimizer = torch.optim.Adam(learnable, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(epochs):
        for batch, ref in zip(token_batches(calib, batch_size), reference, strict=True):
            loss = real_token_squared_error(model(**batch).last_hidden_state, ref,
                                            batch["attention_mask"]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                for quantizer in quantizers.values():
                    quantizer.scale.clamp_(min=1e-8)
                    quantizer.zero_point.clamp_(quantizer.qmin, quantizer.qmax)
    for parameter in learnable:
        parameter.requires_grad_(False)
