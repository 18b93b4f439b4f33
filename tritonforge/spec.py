"""The vocabulary every other module speaks: tensors, a model's I/O, output kinds, parity.

This module sits at the bottom of the package: it imports nothing of tritonforge but the
error type. A model's pre-processing record (what a client does to its raw input) is typed
by its modality (`tritonforge.modalities`); here it is only something that serialises.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tritonforge.errors import TritonForgeError

# What an output *is*, so `query` prints it naturally and verify/serving never guess from shapes.
# The names are written into manifests and configs; how each kind is printed, saved and judged
# lives in `tritonforge.outputs`, where a family registers kinds of its own.
EMBEDDING = "embedding"  # [batch, width] vectors: printed as norms and cosine similarities
CLASS_SCORES = "class_scores"  # [batch, classes] logits: printed as top labels with probabilities
CLASS_PROBABILITIES = "class_probabilities"  # [batch, classes] already softmaxed: never again
DETECTION_BOXES = "detection_boxes"  # [batch, k, 4] x1, y1, x2, y2 in input-image pixels
DETECTION_SCORES = "detection_scores"  # [batch, k]
DETECTION_LABELS = "detection_labels"  # [batch, k] integer class ids
IMAGE = "image"  # [batch, channels, height, width] uint8 pixels: printed as sizes, `query --save` writes PNGs
DEPTH_MAP = "depth_map"  # [batch, 1, height, width] or [batch, height, width] depth; <= 0 or non-finite: none
BOXES_3D = "boxes_3d"  # [batch, k, 7] centre x, y, z, size l, w, h, yaw about the vertical axis
VOCABULARY_LABELS = "vocabulary_labels"  # [batch, k] indices into the vocabulary sent with the request
FLAG = "flag"  # [batch] booleans (a screen's verdict per sample), read with its FLAG_SCORE
FLAG_SCORE = "flag_score"  # [batch] the score the flag was decided on
TENSOR = "tensor"  # anything else (hidden states, feature maps): printed as shape and stats
KIND_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. `dims` excludes the batch dimension; -1 marks a dynamic axis."""

    name: str
    dtype: str  # numpy dtype name: "int64", "float32", "float16", "object" (strings)
    dims: tuple[int, ...]
    kind: str = TENSOR  # outputs: a kind registered in tritonforge.outputs (looked up when read)

    def __post_init__(self):
        if not isinstance(self.kind, str) or not KIND_NAME.fullmatch(self.kind):
            raise TritonForgeError(f"tensor {self.name!r} has kind {self.kind!r}: a kind is a lowercase "
                                   f"identifier such as {EMBEDDING!r} or {DEPTH_MAP!r}")

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

    `request_inputs` names inputs that belong to the whole request, not to each sample (the
    vocabulary an open-vocabulary model's labels index): their first axis is not the batch, so
    `tritonforge.batching` sends them whole with every batch and counts samples on the others.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    preprocessing: Record
    labels: tuple[str, ...] | None = None
    state: tuple[tuple[str, str], ...] = ()
    request_inputs: tuple[str, ...] = ()

    def __post_init__(self):
        unknown = [name for name in self.request_inputs if name not in self.input_names]
        if unknown or len(self.request_inputs) >= max(len(self.inputs), 1):
            raise TritonForgeError(f"request inputs {list(self.request_inputs)} must name some, not all, of "
                                   f"the inputs {self.input_names} (unknown: {unknown})")

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
        if self.request_inputs:
            data["request_inputs"] = list(self.request_inputs)
        return data


# -- parity --------------------------------------------------------------------------------

# How a check's values on separate batches become one (`Check.merge`, `Parity.merge`).
WORST = "worst"  # the batch furthest on the wrong side: the lowest when higher is better, else the highest
MEAN = "mean"  # the mean weighted by each batch's samples
MERGES = (WORST, MEAN)


@dataclass(frozen=True)
class Check:
    """One metric against its declared tolerance (a floor when higher is better, else a ceiling).

    `merge` says how values measured batch by batch combine: WORST for an extreme (a maximum
    difference, a minimum cosine: the whole set's is its worst batch's); MEAN for a rate or an
    average (top-1 agreement, a mean cosine), which no single batch of 8 stands for.
    """

    metric: str
    value: float
    tolerance: float
    higher_is_better: bool
    merge: str = WORST

    def __post_init__(self):
        if self.merge not in MERGES:
            raise TritonForgeError(f"check {self.metric!r} merges by {self.merge!r}: choose one of "
                                   f"{', '.join(MERGES)}")

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


def describe_checks(checks: Sequence[Check]) -> str:
    """`cosine 0.9999 >= 0.999 ok, max_abs_diff 0.2 <= 0.1 FAILED`: checks for an error message."""
    return ", ".join(
        f"{c.metric} {c.value:.6g} {'>=' if c.higher_is_better else '<='} {c.tolerance:g}"
        f" {'ok' if c.passed else 'FAILED'}" for c in checks)


@dataclass(frozen=True)
class Parity:
    """The family's verdict on candidate vs reference. The first check is the headline metric.

    `totals` names the details that count something over the samples (summed when the verdicts
    on separate batches merge); every other detail is the worst batch's.
    """

    checks: tuple[Check, ...]
    details: Mapping[str, Any] = field(default_factory=dict)
    totals: tuple[str, ...] = ("samples",)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def primary(self) -> Check:
        return self.checks[0]

    def describe(self) -> str:
        return describe_checks(self.checks)

    @classmethod
    def merge(cls, parts: Sequence[Parity], samples: Sequence[int]) -> Parity:
        """One verdict from the verdicts on separate batches, `samples[i]` samples in batch i.

        Each check merges as it declares (`Check.merge`); a check some batches lack merges over
        the others, at the strictest tolerance any batch declared. The details are those of the
        worst batch (the most failed checks, then the worst headline value), `totals` summed.
        """
        if not parts or len(parts) != len(samples):
            raise TritonForgeError(f"cannot merge {len(parts)} parity results with {len(samples)} sample "
                                   "counts: give one count per result, and at least one result")
        if len(parts) == 1:
            return parts[0]
        found: dict[str, list[tuple[Check, int]]] = {}
        for part, count in zip(parts, samples, strict=True):
            for check in part.checks:
                found.setdefault(check.metric, []).append((check, count))
        worst = max(parts, key=_badness)  # the first of equals
        details = dict(worst.details)
        for key in worst.totals:
            counts = [part.details.get(key) for part in parts]
            if all(isinstance(c, int | float) and not isinstance(c, bool) for c in counts):
                details[key] = sum(counts)
        return cls(tuple(_merge_check(batches) for batches in found.values()), details, worst.totals)

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.primary.metric,
            "value": float(self.primary.value),
            "tolerance": float(self.primary.tolerance),
            "passed": self.passed,
            "details": {"checks": [c.to_json() for c in self.checks], **dict(self.details)},
        }


def _merge_check(batches: Sequence[tuple[Check, int]]) -> Check:
    """One check from its values on several batches (check, samples in the batch)."""
    first = batches[0][0]
    if any((c.higher_is_better, c.merge) != (first.higher_is_better, first.merge) for c, _ in batches):
        raise TritonForgeError(f"check {first.metric!r} changes direction or merge rule between batches: "
                               "a family must declare each check the same way for every batch")
    values = np.array([c.value for c, _ in batches], dtype=np.float64)
    tolerances = [c.tolerance for c, _ in batches]
    weights = [n for _, n in batches]
    if first.merge == MEAN:
        value = float(np.average(values, weights=weights) if sum(weights) > 0 else values.mean())
    elif np.isnan(values).any():
        value = float("nan")
    else:
        value = float(values.min() if first.higher_is_better else values.max())
    tolerance = max(tolerances) if first.higher_is_better else min(tolerances)
    return Check(first.metric, value, tolerance, first.higher_is_better, first.merge)


def _badness(parity: Parity) -> tuple[int, float]:
    """How bad a batch's verdict is: its failed checks, then how far its headline value lies
    on the wrong side (NaN: furthest)."""
    primary = parity.primary
    value = float(primary.value)
    distance = float("inf") if np.isnan(value) else (-value if primary.higher_is_better else value)
    return sum(not c.passed for c in parity.checks), distance
