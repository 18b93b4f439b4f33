"""What a model offers the quantization core, and the building blocks slotted models share.

The core (calibration, Gamma Migration and OS+, LSQ+, QDQ emission) never sees a model's
architecture. A family writes its model out with a *slot* at every activation it quantizes
and describes it through `Quantizable`: the slots, the weights to quantize, the Linears and
which slot feeds each, and the LayerNorms whose outputs an equivalent transformation may
rewrite. BERT's wiring is `tritonforge.encoders.slotted_bert.SlottedBert`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import NamedTuple, Protocol

import torch
from torch import nn

from tritonforge.quant.quantizers import ActQuantizer, SampleMask


class ShortcutLayerNorm(nn.Module):
    """LayerNorm(sublayer + shortcut_scale * shortcut + shortcut_shift): a post-LN residual
    block's end.

    `shortcut_scale` is 1 and `shortcut_shift` 0 until an equivalent transformation of the
    previous LayerNorm (Gamma Migration, channel-wise shifting and scaling) moves them there.
    """

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.norm = norm
        self.register_buffer("shortcut_scale", torch.ones(norm.normalized_shape))
        self.register_buffer("shortcut_shift", torch.zeros(norm.normalized_shape))

    def forward(self, sublayer: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        return self.norm(sublayer + self.shortcut_scale * shortcut + self.shortcut_shift)


class NormSite(NamedTuple):
    """A LayerNorm, the Linears that read its output, the block end that adds it back as a
    shortcut (None for the last LayerNorm, whose output is the model's), and the activation
    slot quantizing its output (None for the last)."""

    norm: nn.LayerNorm
    linears: list[nn.Linear]
    shortcut: ShortcutLayerNorm | None
    quantizer: str | None


class Quantizable(Protocol):
    """A model written out with activation slots: what the quantization core calibrates.

    It is an `nn.Module` whose slots hold `nn.Identity()` until quantizers are attached, so
    that, before calibration, it computes exactly what the FP model computes. Slot and weight
    names are the model's own ("layers.0.query"); they key the calibration's results.
    """

    # Which positions of the running batch are real (not padding); the model sets it for
    # each batch it runs, and every observer reads it.
    sample_mask: SampleMask

    def activation_slots(self) -> list[str]:
        """Every activation slot, in execution order."""
        ...

    def set_slot(self, slot: str, module: nn.Module) -> None:
        """Put `module` (a quantizer, its traceable QDQ form, or Identity) into `slot`."""
        ...

    def token_axis(self, slot: str) -> int:
        """The axis of `slot`'s activation that runs over positions (the tokens of a text,
        the pixels of a feature map): observers keep each position's extremes along it."""
        ...

    def weight_tables(self) -> dict[str, nn.Parameter]:
        """Every weight to quantize per row: Linear weights [out, in] and embedding tables."""
        ...

    def linears(self) -> dict[str, nn.Linear]:
        """The Linears among `weight_tables`, by the same names."""
        ...

    def linear_inputs(self) -> dict[str, str]:
        """Which activation slot feeds each Linear."""
        ...

    def norm_sites(self) -> list[NormSite]:
        """Every LayerNorm, in execution order, with what reads its output."""
        ...

    def set_exact(self, exact: bool) -> None:
        """Integer-exact products between quantized operands (the reference of an exported
        graph, see `grid_matmul`), or plain float products (calibration, LSQ+ training)."""
        ...

    def output(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Run one batch of inputs; the output that calibration matches to FP, [B, ...]."""
        ...

    def real_positions(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Which positions of `output(batch)` are real, as a boolean mask over its leading
        axes ([B, L] for token outputs); None when every position is."""
        ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        ...


def quantizing(module: nn.Module) -> bool:
    """Whether `module` is an activation quantizer that currently rounds to its grid."""
    return isinstance(module, ActQuantizer) and module.mode == "quantize"


def grid_matmul(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor
                ) -> torch.Tensor:
    """a @ b for operands on quantization grids (a = i * a_scale, b = j * b_scale, b_scale per
    column or scalar): the integer products summed exactly,
    converted to float32 and scaled once by a_scale * b_scale, like MatMulIntegerToFloat.

    A slotted model's integer-exact mode (`set_exact`) uses it: float sums round differently,
    and at 6 bits a value that lands on the other side of a rounding boundary moves a whole
    grid step and drags later quantizers along, so the reference must round where the graph
    rounds."""
    ia, ib = torch.round(a / a_scale), torch.round(b / b_scale)
    # float32 sums integers exactly below 2^24; beyond (8-bit x 8-bit over long rows) use float64.
    if float(ia.abs().max()) * float(ib.abs().max()) * a.shape[-1] >= 2**24:
        ia, ib = ia.double(), ib.double()
    return (ia @ ib).float() * (a_scale * b_scale)
