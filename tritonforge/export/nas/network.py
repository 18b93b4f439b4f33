"""DARTS networks: the search network (every edge a weighted mix of all primitives) and the
network a genotype describes, both stacks of normal and reduction cells.

Layout as in DARTS' CIFAR networks, scaled to 8 x 8 digits: a 3 x 3 stem of `stem_multiplier x
width` channels, `layers` cells with reductions at a third and two thirds of the depth (each
doubles the width), global average pooling and a linear classifier. `NetworkSize` fixes the
shapes, and `edge_shapes` lists the shape every edge operation runs at: the latency table's keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from tritonforge.errors import TritonForgeError
from tritonforge.export.nas.space import CELL_KINDS, EDGES, NODES, PRIMITIVES, Genotype, edge_inputs


@dataclass(frozen=True)
class NetworkSize:
    """The shapes of a network: input, width, depth and classes."""

    channels: int = 1
    image_size: int = 8
    width: int = 16
    layers: int = 5
    classes: int = 10
    stem_multiplier: int = 3

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise TritonForgeError(f"channels {self.channels}: images are grayscale (1) or RGB (3)")
        if self.image_size < 4 or self.width < 2 or self.width % 2 or self.layers < 3 or self.classes < 2:
            raise TritonForgeError(f"network size {asdict(self)}: images of at least 4 x 4, an even width "
                                   "of at least 2, at least 3 layers (two reduce) and 2 classes")

    def reductions(self) -> tuple[int, int]:
        return self.layers // 3, 2 * self.layers // 3

    def cells(self) -> list[tuple[str, int, int]]:
        """(kind, width, input resolution) of each cell."""
        found, width, size = [], self.width, self.image_size
        for layer in range(self.layers):
            kind = "reduce" if layer in self.reductions() else "normal"
            if kind == "reduce":
                width *= 2
            found.append((kind, width, size))
            if kind == "reduce":
                size = (size + 1) // 2
        return found

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def edge_key(op: str, width: int, size: int, stride: int) -> str:
    """How the latency table names one operation at one shape."""
    return f"{op}@{width}x{size}x{size}/s{stride}"


def edge_shapes(size: NetworkSize) -> list[tuple[str, list[tuple[int, int, int]]]]:
    """For each cell, its kind and the (width, resolution, stride) of each of its 14 edges."""
    shapes = []
    for kind, width, resolution in size.cells():
        reduced = (resolution + 1) // 2 if kind == "reduce" else resolution
        shapes.append((kind, [(width, resolution, 2) if kind == "reduce" and j < 2 else (width, reduced, 1)
                              for _node, j in edge_inputs()]))
    return shapes


# -- operations --------------------------------------------------------------------------------


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(nn.ReLU(), nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False),
                         nn.BatchNorm2d(c_out, affine=affine))


class DilConv(nn.Sequential):
    """ReLU, depthwise (dilated) convolution, pointwise convolution, BatchNorm."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int,
                 affine: bool = True):
        super().__init__(nn.ReLU(), nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation, groups=c_in,
                                              bias=False),
                         nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out, affine=affine))


class SepConv(nn.Sequential):
    """Two DilConv blocks of dilation 1 (the first carries the stride), as DARTS stacks them."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
                         DilConv(c_in, c_out, kernel, 1, padding, 1, affine))


class Zero(nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return (x if self.stride == 1 else x[:, :, ::self.stride, ::self.stride]) * 0.0


class FactorizedReduce(nn.Module):
    """Halve the resolution with two 1 x 1 stride-2 convolutions, one shifted by a pixel."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        self.relu = nn.ReLU()
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


def operation(name: str, width: int, stride: int, affine: bool = True) -> nn.Module:
    """One primitive at `width` channels (in and out) and `stride`."""
    if name == "none":
        return Zero(stride)
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        pool = (nn.MaxPool2d(3, stride, padding=1) if name == "max_pool_3x3"
                else nn.AvgPool2d(3, stride, padding=1, count_include_pad=False))
        # the search normalises pooled maps like the convolutions' (DARTS: BatchNorm, affine off)
        return pool if affine else nn.Sequential(pool, nn.BatchNorm2d(width, affine=False))
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(width, width, affine)
    kernel = int(name[-1])
    if name.startswith("sep_conv"):
        return SepConv(width, width, kernel, stride, kernel // 2, affine)
    if name.startswith("dil_conv"):
        return DilConv(width, width, kernel, stride, 2 * (kernel // 2), 2, affine)
    raise TritonForgeError(f"unknown primitive {name!r}: choose one of {', '.join(PRIMITIVES)}")


def preprocess(c_prev_prev: int, c_prev: int, width: int, reduction_prev: bool, affine: bool):
    first = (FactorizedReduce(c_prev_prev, width, affine) if reduction_prev
             else ReLUConvBN(c_prev_prev, width, 1, 1, 0, affine))
    return first, ReLUConvBN(c_prev, width, 1, 1, 0, affine)


# -- cells and networks --------------------------------------------------------------------------


class MixedOp(nn.Module):
    """Every primitive on one edge, summed with the edge's softmax weights."""

    def __init__(self, width: int, stride: int):
        super().__init__()
        self.ops = nn.ModuleList(operation(name, width, stride, affine=False) for name in PRIMITIVES)

    def forward(self, x, weights):
        # `none` adds nothing: it is skipped, and still takes its share of the softmax
        return sum(w * op(x) for w, op in zip(weights, self.ops, strict=True) if not isinstance(op, Zero))


class SearchCell(nn.Module):
    def __init__(self, c_prev_prev: int, c_prev: int, width: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0, self.preprocess1 = preprocess(c_prev_prev, c_prev, width, reduction_prev, False)
        self.edges = nn.ModuleList(MixedOp(width, 2 if reduction and j < 2 else 1) for _n, j in edge_inputs())

    def forward(self, s0, s1, weights):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for node in range(NODES):
            states.append(sum(self.edges[offset + j](h, weights[offset + j]) for j, h in enumerate(states)))
            offset += node + 2
        return torch.cat(states[2:], dim=1)


class Cell(nn.Module):
    """A cell of a genotype: each node sums its two chosen operations."""

    def __init__(self, edges, c_prev_prev: int, c_prev: int, width: int, reduction: bool,
                 reduction_prev: bool):
        super().__init__()
        self.preprocess0, self.preprocess1 = preprocess(c_prev_prev, c_prev, width, reduction_prev, True)
        self.inputs = [index for _op, index in edges]
        self.ops = nn.ModuleList(operation(op, width, 2 if reduction and index < 2 else 1)
                                 for op, index in edges)

    def forward(self, s0, s1):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in range(NODES):
            a, b = 2 * node, 2 * node + 1
            states.append(self.ops[a](states[self.inputs[a]]) + self.ops[b](states[self.inputs[b]]))
        return torch.cat(states[2:], dim=1)


class _Stack(nn.Module):
    """Stem, cells and classifier; `make_cell(kind, c_pp, c_p, width, reduction_prev)` builds each cell."""

    def __init__(self, size: NetworkSize, make_cell):
        super().__init__()
        self.size = size
        stem = size.stem_multiplier * size.width
        self.stem = nn.Sequential(nn.Conv2d(size.channels, stem, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(stem))
        c_prev_prev, c_prev, reduction_prev = stem, stem, False
        self.cells = nn.ModuleList()
        for kind, width, _resolution in size.cells():
            self.cells.append(make_cell(kind, c_prev_prev, c_prev, width, reduction_prev))
            c_prev_prev, c_prev, reduction_prev = c_prev, NODES * width, kind == "reduce"
        self.classifier = nn.Linear(c_prev, size.classes)

    def head(self, x):
        return self.classifier(x.mean(dim=(2, 3)))


class Network(_Stack):
    """The network a genotype describes; `forward(pixel_values) -> logits`."""

    def __init__(self, genotype: Genotype, size: NetworkSize):
        super().__init__(size, lambda kind, cpp, cp, width, rp: Cell(genotype.cell(kind), cpp, cp, width,
                                                                      kind == "reduce", rp))
        self.genotype = genotype

    def forward(self, pixel_values):
        s0 = s1 = self.stem(pixel_values)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.head(s1)


class SearchNetwork(_Stack):
    """Every edge a mix of all primitives, weighted by the softmax of the architecture
    parameters `alphas[kind]` ([14, 8], shared by all cells of a kind)."""

    def __init__(self, size: NetworkSize):
        super().__init__(size, lambda kind, cpp, cp, width, rp: SearchCell(cpp, cp, width, kind == "reduce",
                                                                            rp))
        self.alphas = nn.ParameterDict({kind: nn.Parameter(1e-3 * torch.randn(EDGES, len(PRIMITIVES)))
                                        for kind in CELL_KINDS})

    def edge_weights(self) -> dict[str, torch.Tensor]:
        return {kind: torch.softmax(alpha, dim=-1) for kind, alpha in self.alphas.items()}

    def weight_parameters(self):
        return [p for name, p in self.named_parameters() if not name.startswith("alphas.")]

    def forward(self, pixel_values):
        weights = self.edge_weights()
        s0 = s1 = self.stem(pixel_values)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, weights["reduce" if cell.reduction else "normal"])
        return self.head(s1)
