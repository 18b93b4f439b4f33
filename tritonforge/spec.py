"""The vocabulary every other module speaks: tensors, a model's I/O, output kinds, parity.

This module sits at the bottom of the package: it imports nothing of tritonforge but the
error type. A model's pre-processing record (what a client does to its raw input) is typed
by its modality (`tritonforge.modalities`); here it is only something that serialises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tritonforge.errors import TritonForgeError

# What an output *is*, so `query` prints it naturally and verify/serving never guess from shapes.
EMBEDDING = "embedding"  # [batch, width] vectors: printed as norms and cosine similarities
CLASS_SCORES = "class_scores"  # [batch, classes] logits: printed as top labels with probabilities
CLASS_PROBABILITIES = "class_probabilities"  # [batch, classes] already softmaxed: never again
DETECTION_BOXES = "detection_boxes"  # [batch, k, 4] x1, y1, x2, y2 in input-image pixels
DETECTION_SCORES = "detection_scores"  # [batch, k]
DETECTION_LABELS = "detection_labels"  # [batch, k] integer class ids
IMAGE = "image"  # [batch, channels, height, width] uint8 pixels: printed as sizes, `query --save` writes PNGs
TENSOR = "tensor"  # anything else (hidden states, feature maps): printed as shape and stats
OUTPUT_KINDS = (EMBEDDING, CLASS_SCORES, CLASS_PROBABILITIES, DETECTION_BOXES, DETECTION_SCORES,
                DETECTION_LABELS, IMAGE, TENSOR)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. `dims` excludes the batch dimension; -1 marks a dynamic axis."""

    name: str
    dtype: str  # numpy dtype name: "int64", "float32", "float16", "object" (strings)
    dims: tuple[int, ...]
    kind: str = TENSOR  # outputs: one of OUTPUT_KINDS

    def __post_init__(self):
        if self.kind not in OUTPUT_KINDS:
            raise TritonForgeError(f"tensor {self.name!r} has kind {self.kind!r}: choose one of "
                                   f"{', '.join(OUTPUT_KINDS)}")

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "dims": list(self.dims)}
        if self.kind != TENSOR:
            data["kind"] = self.kind
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(data["name"], data["dtype"], tuple(data["dims"]), data.get("kind", TENSOR))


class Record(Protocol):
    """A typed pre-processing record (a modality): how a client's raw input becomes tensors."""

    kind: str

    def to_json(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ModelIO:
    """What goes in and out of the exported graph, and what a client must do to its raw input.

    `preprocessing` is the modality record (Text, Image, Tensors, ...); `labels` names the
    classes of CLASS_SCORES and DETECTION_LABELS outputs; `state` pairs (input, output) names
    of state a streaming model carries from one step to the next.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    preprocessing: Record
    labels: tuple[str, ...] | None = None
    state: tuple[tuple[str, str], ...] = ()

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)

    def outputs_of_kind(self, kind: str) -> list[TensorSpec]:
        return [t for t in self.outputs if t.kind == kind]

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "preprocessing": self.preprocessing.to_json(),
        }
        if self.labels is not None:
            data["labels"] = list(self.labels)
        if self.state:
            data["state"] = [list(pair) for pair in self.state]
        return data


# -- parity --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One metric against its declared tolerance (a floor when higher is better, else a ceiling)."""

    metric: str
    value: float
    tolerance: float
    higher_is_better: bool

    @property
    def passed(self) -> bool:
        if not np.isfinite(self.value):
            return False
        return self.value >= self.tolerance if self.higher_is_better else self.value <= self.tolerance

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "value": float(self.value),
            "tolerance": float(self.tolerance),
            "passed": self.passed,
        }


@dataclass(frozen=True)
class Parity:
    """The family's verdict on candidate vs reference. The first check is the headline metric."""

    checks: tuple[Check, ...]
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def primary(self) -> Check:
        return self.checks[0]

    def describe(self) -> str:
        return ", ".join(
            f"{c.metric} {c.value:.6g} {'>=' if c.higher_is_better else '<='} {c.tolerance:g}"
            f" {'ok' if c.passed else 'FAILED'}" for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.primary.metric,
            "value": float(self.primary.value),
            "tolerance": float(self.primary.tolerance),
            "passed": self.passed,
            "details": {"checks": [c.to_json() for c in self.checks], **dict(self.details)},
        }
