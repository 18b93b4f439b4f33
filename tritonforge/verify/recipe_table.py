"""`tritonforge quality <family>`: rows of quality against full precision and latency, per recipe.

A family builds the rows (`Family.quality_table`); printing, JSON and the plot are shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.figures import save_figure


@dataclass
class QualityRow:
    """One variant: its quality metrics (the first is the headline, higher is better) and its
    p50 latency, measured interleaved with every other row's."""

    variant: str
    runtime: str
    metrics: dict[str, float]
    latency_p50_ms: float | None = None
    details: dict[str, Any] = field(default_factory=dict)  # precision, method, file size, ...
    # p50 on the modality's common serving request (text: 1 x 32), where the family times it
    serving_p50_ms: float | None = None
    # rows of one group (e.g. one architecture) are timed against the group's first row
    group: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"variant": self.variant, "runtime": self.runtime,
                **({"group": self.group} if self.group else {}), **self.metrics,
                "latency_p50_ms": self.latency_p50_ms,
                **({"serving_p50_ms": self.serving_p50_ms} if self.serving_p50_ms is not None else {}),
                **self.details}


def speedups(rows: Sequence[QualityRow], serving: bool = False) -> list[float]:
    """How many times faster each row runs than the first row of its group: that row's p50
    over this row's (`serving`: on the common serving request)."""
    def p50(row: QualityRow) -> float:
        return row.serving_p50_ms if serving else row.latency_p50_ms

    first: dict[str, QualityRow] = {}
    for row in rows:
        first.setdefault(row.group, row)
    return [p50(first[row.group]) / p50(row) for row in rows]


def parse_list(text: str, what: str) -> list[str]:
    """A comma-separated option value as its items."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise TritonForgeError(f"{what} {text!r} names nothing: give a comma-separated list")
    return items


def plot_quality(rows: Sequence[QualityRow], path: Path, family: str) -> Path:
    """The headline metric (left) and latency (right) per variant, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = next(iter(rows[0].metrics))
    values = [row.metrics[metric] for row in rows]
    names = [row.variant for row in rows]
    colours = ["#4c72b0" if row.runtime == "pytorch" or not row.details.get("method") else "#dd8452"
               for row in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 0.42 * len(rows) + 1.6), sharey=True)
    positions = np.arange(len(rows))
    left.barh(positions, values, color=colours)
    left.set_xlim(min(0.8, min(values) - 0.01), 1.0)
    left.set_xlabel(f"{metric.replace('_', ' ')} (held-out inputs)")
    for position, value in zip(positions, values, strict=True):
        left.text(value, position, f" {value:.4f}", va="center", fontsize=8)
    right.barh(positions, [row.latency_p50_ms or 0 for row in rows], color=colours)
    right.set_xlabel("p50 latency, ms (interleaved)")
    left.set_yticks(positions, names)
    left.invert_yaxis()
    figure.suptitle(f"{family}: quality vs speed")
    return save_figure(figure, path)


def pareto_front(rows: Sequence[QualityRow], runtime: str) -> list[QualityRow]:
    """The rows of `runtime` with an average width that no other row beats on both counts:
    fewer bits and a higher headline metric."""
    candidates = [r for r in rows if r.runtime == runtime and "average_bits" in r.details]
    metric = next(iter(rows[0].metrics))

    def dominated(row: QualityRow) -> bool:
        return any(o.details["average_bits"] <= row.details["average_bits"]
                   and o.metrics[metric] >= row.metrics[metric]
                   and (o.details["average_bits"], o.metrics[metric])
                   != (row.details["average_bits"], row.metrics[metric]) for o in candidates)

    return sorted((r for r in candidates if not dominated(r)), key=lambda r: r.details["average_bits"])


def plot_pareto(rows: Sequence[QualityRow], path: Path, family: str, runtime: str) -> Path:
    """Average bits against the headline metric for every quantized row of `runtime`, the
    Pareto front drawn through the rows nothing beats."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = next(iter(rows[0].metrics))
    points = [r for r in rows if r.runtime == runtime and "average_bits" in r.details]
    front = pareto_front(rows, runtime)
    figure, axes = plt.subplots(figsize=(8, 5))
    for row in points:
        point = (row.details["average_bits"], row.metrics[metric])
        mixed = row.details.get("precision") == "mixed"
        axes.scatter(*point, color="#dd8452" if mixed else "#4c72b0")
        axes.annotate(row.variant.replace(f" ({runtime})", ""), point, fontsize=7, xytext=(3, 3),
                      textcoords="offset points")
    axes.plot([r.details["average_bits"] for r in front], [r.metrics[metric] for r in front], color="#55a868",
              label="Pareto front")
    axes.set_xlabel("average bits per quantizer")
    axes.set_ylabel(f"{metric.replace('_', ' ')} (held-out inputs)")
    axes.set_title(f"{family}: bits against quality ({runtime})")
    axes.legend()
    return save_figure(figure, path)
