"""Fake quantizers for 2..8 bits, their observers, and LSQ+ learnable parameters.

Weights: symmetric, per output channel (rows of a Linear's [out, in] weight, rows of an
embedding table), q in [-2^(b-1), 2^(b-1) - 1], zero point 0.
Activations: asymmetric, per tensor, q in [0, 2^b - 1], scale and zero point from an
observer (MinMax, percentile, token-wise clipping) and optionally trained (LSQ+).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tritonforge.errors import TritonForgeError

# Quantized graphs hold k-bit grids in 8-bit containers. User-facing widths are validated,
# with a message for people, by `tritonforge.quant.calibrate.QuantRecipe`.
MIN_BITS, MAX_BITS = 2, 8


def signed_range(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def unsigned_range(bits: int) -> tuple[int, int]:
    return 0, 2**bits - 1


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round() whose gradient is the identity (straight-through), so LSQ+ can learn."""
    return (x.round() - x).detach() + x


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int,
                  qmax: int) -> torch.Tensor:
    """Quantize to integers in [qmin, qmax] and back: (clamp(round(x/s) + z) - z) * s."""
    q = torch.clamp(round_ste(x / scale) + round_ste(zero_point), qmin, qmax)
    return (q - round_ste(zero_point)) * scale


# -- weights -------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizedWeight:
    """Integers on the k-bit grid and per-row scales: weight ~= values * scale[:, None]."""

    values: torch.Tensor  # int8 container, every value within the k-bit signed range
    scale: torch.Tensor  # [rows], float32
    bits: int

    def dequantize(self) -> torch.Tensor:
        return self.values.float() * self.scale[:, None]


@torch.no_grad()
def quantize_weight(weight: torch.Tensor, bits: int, method: str = "minmax",
                    grid: int = 100) -> QuantizedWeight:
    """Symmetric per-row quantization of a 2-D weight.

    `minmax` maps each row's max |w| to the top of the grid. `mse` shrinks each row's range
    by the factor in (0.3, 1] that minimises that row's squared rounding error: at 4 bits the
    largest weights are rarer than the precision lost on all the others.
    """
    assert MIN_BITS <= bits <= MAX_BITS, bits
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
    qmin, qmax = signed_range(bits)
    w = weight.detach().float()
    peak = w.abs().amax(dim=1).clamp(min=1e-12)
    if method == "minmax":
        scale = peak / qmax
    elif method == "mse":
        best_err = torch.full_like(peak, float("inf"))
        scale = peak / qmax
        for ratio in torch.linspace(1.0, 0.3, grid):
            candidate = peak * ratio / qmax
            q = torch.clamp(torch.round(w / candidate[:, None]), qmin, qmax)
            err = ((q * candidate[:, None] - w) ** 2).sum(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            scale = torch.where(better, candidate, scale)
    else:
        raise ValueError(f"unknown weight observer {method!r}: use minmax, mse (or gptq)")
    values = torch.clamp(torch.round(w / scale[:, None]), qmin, qmax).to(torch.int8)
    return QuantizedWeight(values, scale, bits)


@torch.no_grad()
def gptq_weight(weight: torch.Tensor, inputs: torch.Tensor, bits: int, damping: float = 0.01,
                block: int = 128) -> QuantizedWeight:
    """GPTQ for a Linear weight on real `inputs` [tokens, in] (`gptq_values`). Per-row scales
    come from the MSE observer; what GPTQ changes is which grid point each weight rounds to.
    Input channels never active get zero weights: nothing to protect."""
    qmin, qmax = signed_range(bits)
    scale = quantize_weight(weight, bits, "mse").scale
    x = inputs.double()
    hessian = x.T @ x / len(x)
    weight = weight.detach().clone()
    weight[:, hessian.diagonal() == 0] = 0.0
    values = gptq_values(weight, hessian, scale, qmin, qmax, damping, block)
    return QuantizedWeight(values.to(torch.int8), scale.float(), bits)


@torch.no_grad()
def gptq_values(weight: torch.Tensor, hessian: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int,
                damping: float = 0.01, block: int = 128) -> torch.Tensor:
    """GPTQ (Frantar et al., 2023): round a 2-D weight [out, in] onto the per-row grid `scale`
    [out], column by column, pushing each column's rounding error onto the columns not yet
    rounded, weighted by the inverse of `hessian` [in, in] (sum x x^T of the layer's inputs,
    any positive multiple). Returns the grid values, in [qmin, qmax], as floats. `damping`
    (of the mean diagonal) keeps the inverse stable; inputs never active pass nothing on."""
    w = weight.detach().double().clone()
    scale = scale.double()
    hessian = hessian.double().clone()
    dead = hessian.diagonal() == 0
    hessian[dead, dead] = 1.0
    hessian += damping * hessian.diagonal().mean() * torch.eye(len(hessian), dtype=hessian.dtype)
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hessian)), upper=True)
    values = torch.zeros_like(w)
    for start in range(0, w.shape[1], block):
        end = min(start + block, w.shape[1])
        errors = torch.zeros(w.shape[0], end - start, dtype=w.dtype)
        for j in range(start, end):
            q = torch.clamp(torch.round(w[:, j] / scale), qmin, qmax)
            values[:, j] = q
            error = (w[:, j] - q * scale) / inverse[j, j]
            w[:, j:end] -= error[:, None] * inverse[j, j:end][None, :]
            errors[:, j - start] = error
        w[:, end:] -= errors @ inverse[start:end, end:]
    return values


# -- activations ---------------------------------------------------------------------------


class SampleMask:
    """Which positions of each sample in the running batch are real, not padding: set by the
    model for every batch it runs, read by every observer, so statistics never include padding.

    `mask` is [B, L] bool over the position axis (the tokens of a text); None means every
    position is real (images, feature maps, unpadded batches).
    """

    def __init__(self):
        self.mask: torch.Tensor | None = None


def affine_range(low: float, high: float, qmin: int, qmax: int) -> tuple[float, float]:
    """(scale, zero point) of the asymmetric grid covering [low, high], widened to include 0
    (the grid must represent 0 exactly: padding, ReLU-like zeros)."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = max((high - low) / (qmax - qmin), 1e-8)
    return scale, float(min(max(round(-low / scale), qmin), qmax))


def quantize_over(x: torch.Tensor, low: float, high: float, qmin: int, qmax: int) -> torch.Tensor:
    """Fake-quantize x on the asymmetric grid that covers [low, high]."""
    scale, zero = affine_range(low, high, qmin, qmax)
    return fake_quantize(x, torch.tensor(scale), torch.tensor(zero), qmin, qmax)


ROWS_PER_BATCH = 256  # tokens kept per observed batch for range searches and percentiles


class ActQuantizer(nn.Module):
    """Asymmetric per-tensor activation quantizer with three modes:

    - "observe": pass x through and record, over real positions ("tokens"), each token's max
      and min (what token-wise clipping needs), each channel's max and min (what
      channel-wise shifting and scaling needs), and a sample of whole token rows (for range
      searches);
    - "quantize": fake-quantize with `scale` and `zero_point` (trainable: LSQ+);
    - "off": identity.

    `token_axis` is where the positions are: 1 for [B, L, C] activations, 2 for attention
    probabilities [B, H, L, L] (a query token's row); `sample_mask` says which are real.
    """

    def __init__(self, bits: int, sample_mask: SampleMask, token_axis: int = 1, name: str = ""):
        super().__init__()
        assert MIN_BITS <= bits <= MAX_BITS, bits
        self.bits = int(bits)
        self.qmin, self.qmax = unsigned_range(bits)
        self.sample_mask, self.token_axis, self.name = sample_mask, token_axis, name
        self.mode = "off"
        # QDrop (Wei et al., 2022): while a block is reconstructed, each element keeps its FP
        # value with this probability instead of its quantized one (0 outside reconstruction).
        self.drop = 0.0
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.zero_point = nn.Parameter(torch.tensor(0.0))
        self.reset_statistics()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "quantize":
            quantized = fake_quantize(x, self.scale, self.zero_point, self.qmin, self.qmax)
            if self.drop > 0.0:
                return torch.where(torch.rand_like(x) < self.drop, x, quantized)
            return quantized
        if self.mode == "observe":
            self.observe(x.detach())
        return x

    def observe(self, x: torch.Tensor) -> None:
        if not torch.isfinite(x).all():
            raise TritonForgeError(
                f"NaN or Inf in activation {self.name!r} during calibration: the model or the "
                "calibration text is broken there; check the checkpoint")
        tokens = x.movedim(self.token_axis, 1)  # [B, L, ...]
        tokens = tokens.reshape(tokens.shape[0], tokens.shape[1], -1)
        mask = self.sample_mask.mask
        if mask is not None:
            tokens = tokens[mask[:, : tokens.shape[1]]]  # [real tokens, features]
        else:
            tokens = tokens.flatten(0, 1)
        self.token_max.append(tokens.amax(dim=1))
        self.token_min.append(tokens.amin(dim=1))
        high, low = tokens.amax(dim=0), tokens.amin(dim=0)
        self.channel_max = high if self.channel_max is None else torch.maximum(self.channel_max, high)
        self.channel_min = low if self.channel_min is None else torch.minimum(self.channel_min, low)
        generator = torch.Generator().manual_seed(len(self.rows))
        keep = torch.randperm(tokens.shape[0], generator=generator)[:ROWS_PER_BATCH]
        self.rows.append(tokens[keep])

    def reset_statistics(self) -> None:
        self.token_max: list[torch.Tensor] = []
        self.token_min: list[torch.Tensor] = []
        self.rows: list[torch.Tensor] = []  # sampled real-token rows, [tokens, features]
        self.channel_max: torch.Tensor | None = None
        self.channel_min: torch.Tensor | None = None

    def sample(self) -> torch.Tensor:
        """The sampled real-token rows seen so far, [tokens, features]."""
        return torch.cat(self.rows)

    # ranges -> (scale, zero point) -------------------------------------------------------

    @torch.no_grad()
    def set_range(self, low: float, high: float) -> None:
        scale, zero = affine_range(low, high, self.qmin, self.qmax)
        self.scale.fill_(scale)
        self.zero_point.fill_(zero)

    def range(self) -> tuple[float, float]:
        scale, zero = float(self.scale.detach()), float(torch.round(self.zero_point.detach()))
        return (self.qmin - zero) * scale, (self.qmax - zero) * scale

    def minmax_range(self) -> tuple[float, float]:
        return float(torch.cat(self.token_min).min()), float(torch.cat(self.token_max).max())

    def percentile_range(self, percentile: float = 99.99) -> tuple[float, float]:
        values = self.sample().flatten().double()
        q = percentile / 100.0
        low, high = torch.quantile(values, torch.tensor([1.0 - q, q], dtype=values.dtype))  # one sort
        return float(low), float(high)

    def token_wise_range(self, alpha: float) -> tuple[float, float]:
        """Token-Wise Clipping, coarse stage: clip at the alpha-quantile of the per-token
        maxima (and the (1 - alpha)-quantile of the per-token minima)."""
        high = torch.quantile(torch.cat(self.token_max).double(), alpha)
        low = torch.quantile(torch.cat(self.token_min).double(), 1.0 - alpha)
        return float(low), float(high)

    @torch.no_grad()
    def quantization_error(self, low: float, high: float, values: torch.Tensor | None = None) -> float:
        """Mean squared error that the grid covering [low, high] adds to the sampled values."""
        values = self.sample() if values is None else values
        return float(((quantize_over(values, low, high, self.qmin, self.qmax) - values) ** 2).mean())
