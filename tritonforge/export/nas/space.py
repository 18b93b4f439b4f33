"""The DARTS search space: eight primitives on the edges of a cell, and genotypes as small JSON
files.

A cell takes the outputs of the two cells before it (inputs 0 and 1) and computes `NODES`
intermediate nodes; node i sums two operations applied to earlier inputs or nodes (indices
0 .. i + 1), and the cell's output concatenates all four nodes. In the search every one of the
14 possible edges carries a softmax-weighted mix of all primitives; a genotype keeps, for each
node, the two strongest incoming edges and each one's strongest primitive other than `none`.
A normal cell keeps the resolution; a reduction cell halves it on the edges that read its
inputs (stride 2).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonforge.errors import TritonForgeError

PRIMITIVES = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
              "dil_conv_3x3", "dil_conv_5x5")
CHOSEN = PRIMITIVES[1:]  # what a genotype may name: `none` only means "no edge" in the search
NODES = 4
EDGES = sum(i + 2 for i in range(NODES))  # 14
CELL_KINDS = ("normal", "reduce")
GENOTYPE_FORMAT = "tritonforge.nas.genotype/1"

Edge = tuple[str, int]  # (primitive, input index)


def edge_inputs() -> list[tuple[int, int]]:
    """(node, input) of each of the 14 search edges, in the order the search weights them."""
    return [(node, j) for node in range(NODES) for j in range(node + 2)]


@dataclass(frozen=True)
class Genotype:
    """Two (primitive, input) pairs per node, for the normal and for the reduction cell."""

    normal: tuple[Edge, ...]
    reduce: tuple[Edge, ...]

    def __post_init__(self):
        for kind in CELL_KINDS:
            check_cell(kind, getattr(self, kind))

    def cell(self, kind: str) -> tuple[Edge, ...]:
        return getattr(self, kind)

    def to_json(self) -> dict[str, Any]:
        return {kind: [[op, index] for op, index in self.cell(kind)] for kind in CELL_KINDS}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "the genotype") -> Genotype:
        cells = {}
        for kind in CELL_KINDS:
            edges = data.get(kind) if isinstance(data, Mapping) else None
            if not isinstance(edges, Sequence) or isinstance(edges, str):
                raise TritonForgeError(f"{where} has no {kind!r} list of [primitive, input] pairs: write "
                                       f"one, e.g. \"{kind}\": [[\"sep_conv_3x3\", 0], "
                                       "[\"skip_connect\", 1], ...] (two per node)")
            pairs = []
            for position, edge in enumerate(edges):
                if (not isinstance(edge, Sequence) or isinstance(edge, str) or len(edge) != 2
                        or not isinstance(edge[0], str) or isinstance(edge[1], bool)
                        or not isinstance(edge[1], int)):
                    raise TritonForgeError(f"{where}: {kind} edge {position} is {edge!r}; each edge is "
                                           "[primitive name, input index]")
                pairs.append((edge[0], edge[1]))
            cells[kind] = tuple(pairs)
        try:
            return cls(**cells)
        except TritonForgeError as exc:
            raise TritonForgeError(f"{where}: {exc}") from None

    def describe(self) -> str:
        return "; ".join(f"{kind}: " + ", ".join(f"{op}<-{index}" for op, index in self.cell(kind))
                         for kind in CELL_KINDS)


def check_cell(kind: str, edges: Sequence[Edge]) -> None:
    """Refuse a cell whose edges name an unknown primitive or an input its node cannot read."""
    if len(edges) != 2 * NODES:
        raise TritonForgeError(f"the {kind} cell has {len(edges)} edges; a cell has {NODES} nodes of two "
                               f"edges each ({2 * NODES})")
    for position, (op, index) in enumerate(edges):
        node = position // 2
        if op not in CHOSEN:
            hint = (" (`none` is the search's 'no edge'; a genotype names an operation)"
                    if op == "none" else "")
            raise TritonForgeError(f"{kind} edge {position} (node {node}) names the unknown primitive "
                                   f"{op!r}{hint}: choose one of {', '.join(CHOSEN)}")
        if not 0 <= index < node + 2:
            raise TritonForgeError(f"{kind} edge {position} reads input {index}, out of range for node "
                                   f"{node}: it may read 0 .. {node + 1} (the two previous cells, then "
                                   "earlier nodes)")


def derive(weights: Mapping[str, np.ndarray]) -> Genotype:
    """DARTS' rule: per node the two incoming edges whose strongest primitive other than `none`
    weighs most, each with that primitive. `weights[kind]` is [14, 8] softmax weights."""
    none = PRIMITIVES.index("none")
    cells = {}
    for kind in CELL_KINDS:
        w = np.asarray(weights[kind], dtype=np.float64).copy()
        w[:, none] = -np.inf
        pairs: list[Edge] = []
        start = 0
        for node in range(NODES):
            rows = w[start:start + node + 2]
            best = rows.max(axis=1)
            for j in sorted(np.argsort(-best, kind="stable")[:2]):
                pairs.append((PRIMITIVES[int(rows[j].argmax())], int(j)))
            start += node + 2
        cells[kind] = tuple(pairs)
    return Genotype(**cells)


def random_genotype(rng: np.random.Generator) -> Genotype:
    """A uniformly random genotype: per node two distinct inputs, each with a random primitive."""
    cells = {}
    for kind in CELL_KINDS:
        pairs: list[Edge] = []
        for node in range(NODES):
            for j in sorted(rng.choice(node + 2, size=2, replace=False)):
                pairs.append((CHOSEN[int(rng.integers(len(CHOSEN)))], int(j)))
        cells[kind] = tuple(pairs)
    return Genotype(**cells)


def read_genotype(path: Path) -> tuple[Genotype, dict[str, Any]]:
    """A genotype file (`nas search` writes them) and everything else it records."""
    path = Path(path)
    if not path.is_file():
        raise TritonForgeError(f"--genotype {path} does not exist: search one with `tritonforge nas search`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TritonForgeError(f"--genotype {path} is not JSON ({exc}): pass a file `nas search` "
                               "wrote") from None
    if not isinstance(data, dict):
        raise TritonForgeError(f"--genotype {path} holds a {type(data).__name__}, not a genotype object")
    return Genotype.from_json(data.get("genotype", data), f"--genotype {path}"), data


def write_genotype(path: Path, genotype: Genotype, record: Mapping[str, Any]) -> Path:
    """The genotype and its search record as JSON, written whole or not at all."""
    from tritonforge.files import write_text_atomic

    path = Path(path)
    text = json.dumps({"format": GENOTYPE_FORMAT, "genotype": genotype.to_json(), **record}, indent=2) + "\n"
    write_text_atomic(path, text)
    return path


def search_record(record: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """What a genotype file says of its search, for a checkpoint and a manifest: the file, the
    data and recipe it was searched with, and predicted against measured latency."""
    search = record.get("search") or {}
    return {"genotype_file": str(path), "data": (search.get("recipe") or {}).get("data"),
            "recipe": search.get("recipe"), "latency": record.get("latency")}
