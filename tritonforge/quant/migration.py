"""Gamma Migration (Outlier Suppression, NeurIPS 2022): an exact FP rewrite of a post-LN
network's LayerNorms (BERT's, first), applied to the `NormSite`s a `Quantizable` names.

LN(x) = gamma * X' with X' = (x - mu) / sigma + beta / gamma. The LayerNorm keeps only the
non-scaling part (weight 1, bias beta/gamma); gamma moves into whatever reads the output:
each following Linear (W' = W diag(gamma): column j scaled by gamma_j, bias unchanged) and the
residual shortcut (gamma * X'). Quantizing X' instead of LN(x) removes the outlier channels
that gamma amplifies.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tritonforge.quant.quantizable import Quantizable, ShortcutLayerNorm
from tritonforge.quant.quantizers import quantize_over, unsigned_range

# |gamma| below this is raised to it (keeping the sign): beta/gamma would overflow, and the
# channel's contribution gamma * X'_j = gamma * x_hat_j + beta_j changes by at most eps * |x_hat_j|.
GAMMA_FLOOR = 1e-4


@torch.no_grad()
def gamma_migrate_norm(norm: nn.LayerNorm, linears: list[nn.Linear],
                       shortcut: ShortcutLayerNorm | None) -> torch.Tensor:
    """Move `norm`'s gamma into `linears` and `shortcut`, in place; returns the gamma moved."""
    width = norm.normalized_shape[-1]
    assert norm.weight.shape == (width,) and all(lin.in_features == width for lin in linears)
    gamma = norm.weight.detach().clone()
    sign = torch.where(gamma < 0, -1.0, 1.0)
    gamma = torch.where(gamma.abs() < GAMMA_FLOOR, sign * GAMMA_FLOOR, gamma)
    norm.bias.div_(gamma)
    norm.weight.fill_(1.0)
    for linear in linears:
        linear.weight.mul_(gamma)  # [out, in] * [in]: scales input column j by gamma_j
    if shortcut is not None:
        shortcut.shortcut_scale.mul_(gamma)
    return gamma


def gamma_migrate(model: Quantizable) -> Quantizable:
    """Migrate every LayerNorm's gamma into what reads its output, in place, except where
    nothing downstream can absorb it: the last LayerNorm, whose output is the model's."""
    for site in model.norm_sites():
        if site.shortcut is not None:
            gamma_migrate_norm(site.norm, site.linears, site.shortcut)
    return model


# -- Outlier Suppression+ (EMNLP 2023): channel-wise shifting and scaling ------------------


@torch.no_grad()
def shift_scale_norm(norm: nn.LayerNorm, linears: list[nn.Linear], shortcut: ShortcutLayerNorm,
                     shift: torch.Tensor, scale: torch.Tensor) -> None:
    """Make `norm` output X~ = (X - shift) / scale instead of X, in place, without changing
    what the model computes: the Linears read X = X~ * scale + shift (W' = W diag(scale),
    b' = b + W shift) and so does the shortcut."""
    width = norm.normalized_shape[-1]
    assert shift.shape == scale.shape == (width,) and bool((scale > 0).all())
    assert all(lin.in_features == width and lin.bias is not None for lin in linears)
    norm.weight.div_(scale)
    norm.bias.sub_(shift).div_(scale)
    for linear in linears:
        linear.bias.add_(linear.weight @ shift)  # with the original W
        linear.weight.mul_(scale)
    shortcut.shortcut_shift.add_(shortcut.shortcut_scale * shift)
    shortcut.shortcut_scale.mul_(scale)


@torch.no_grad()
def choose_shift_scale(sample: torch.Tensor, channel_min: torch.Tensor, channel_max: torch.Tensor,
                       weight: torch.Tensor, bits: int, grid: int = 20
                       ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """OS+ shift z = (max + min) / 2 per channel, and scale s = max(1, halfrange / t) with the
    threshold t that minimises the error the quantized X~ causes in the Linears' outputs.

    `sample` is [tokens, channels] of X, `weight` the consumers' weights stacked [out, channels];
    X~ is quantized to `bits` on the grid that covers its range.
    """
    qmin, qmax = unsigned_range(bits)
    shift = (channel_max + channel_min) / 2
    halfrange = ((channel_max - channel_min) / 2).clamp(min=1e-6)
    centred = sample - shift
    best = (float("inf"), None, None)
    top = float(halfrange.max())
    floor = float(halfrange.median())
    for t in torch.logspace(math.log10(top), math.log10(floor), grid).tolist():
        scale = (halfrange / t).clamp(min=1.0)
        shifted = centred / scale
        quantized = quantize_over(shifted, float(shifted.min()), float(shifted.max()), qmin, qmax)
        error = float((((quantized - shifted) * scale) @ weight.T).pow(2).mean())
        if error < best[0]:
            best = (error, scale, t)
    return shift, best[1], best[2]
