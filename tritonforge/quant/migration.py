"""Gamma Migration (Outlier Suppression, NeurIPS 2022): an exact FP rewrite of post-LN BERT.

LN(x) = gamma * X' with X' = (x - mu) / sigma + beta / gamma. The LayerNorm keeps only the
non-scaling part (weight 1, bias beta/gamma); gamma moves into whatever reads the output:
each following Linear (W' = W diag(gamma): column j scaled by gamma_j, bias unchanged) and the
residual shortcut (gamma * X'). Quantizing X' instead of LN(x) removes the outlier channels
that gamma amplifies.
"""

from __future__ import annotations

import torch
from torch import nn

from tritonforge.quant.bert import QuantBert, ShortcutLayerNorm

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


def gamma_migrate(model: QuantBert) -> QuantBert:
    """Migrate every LayerNorm's gamma in a QuantBert except the last one, whose output is the
    model's output (nothing downstream to absorb gamma)."""
    for norm, linears, shortcut in model.norm_sites():
        if shortcut is not None:
            gamma_migrate_norm(norm, linears, shortcut)
    return model
