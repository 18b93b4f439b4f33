"""What an output kind is: the object that shows, writes and judges one kind of output.

A kind reads a `Part`: one output, or the outputs of a group read together (detections are
boxes, scores and labels), its arrays keyed by role. The base class is a plain tensor: shown
only in the table of shapes, written by no `--save`, judged sample by sample (floats by cosine,
anything else by equality); a kind overrides what it does differently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.outputs.metrics import equal_samples, sample_cosines
from tritonforge.spec import MEAN, Check, Parity

COSINE_MIN = "cosine_min"  # the metric `soak --min-cosine` bounds, wherever a kind judges by cosine
LONE = "value"  # the role of an output that is read by itself


@dataclass(frozen=True)
class Part:
    """One output, or the outputs of one group read together, as its kind reads them."""

    label: str  # the output's name; a group's: the group's name ("detections")
    names: Mapping[str, str]  # role -> output name
    arrays: Mapping[str, np.ndarray]  # role -> the output's values, batch first

    @classmethod
    def lone(cls, name: str, values: np.ndarray) -> Part:
        return cls(name, {LONE: name}, {LONE: values})

    @property
    def value(self) -> np.ndarray:
        """A lone output's values."""
        return self.arrays[LONE]

    @property
    def batch(self) -> int:
        return len(next(iter(self.arrays.values())))


@dataclass(frozen=True)
class QueryContext:
    """What a kind may need beyond its own arrays to show an answer."""

    model: str = ""
    labels: Sequence[str] | None = None  # the model's class names (class scores, detection labels)
    kinds: Mapping[str, str] = field(default_factory=dict)  # every output's kind, by output name
    inputs: Mapping[str, np.ndarray] = field(default_factory=dict)  # the request (e.g. a vocabulary sent)
    raw: Sequence[bytes] = ()  # the raw items sent (each --image file's bytes), to draw on
    rows: Sequence[str] = ()  # a name per sample: the input it came from ("china.jpg", "frame 2/8")
    min_score: float = 0.5  # detections: the lowest score shown
    vocabulary: str = ""  # the request input that holds its vocabulary, when the modality says

    def row_names(self, count: int) -> list[str]:
        return list(self.rows) or [f"#{index}" for index in range(count)]


@dataclass(frozen=True)
class Table:
    """A table `query` prints (rendered by the CLI, so kinds need no terminal library)."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Summary:
    """What `query` shows of a part: `data` (JSON-able) goes into the summary `query --json`
    writes, under `section` and the output's name (`key`), or as the section itself (`key`
    None: a group); `tables` and `lines` (rich markup) are printed, the tables first."""

    section: str
    key: str | None
    data: Any
    tables: tuple[Table, ...] = ()
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class Tolerances:
    """The bars an answer is held to against the reference's; each kind reads its own."""

    min_cosine: float = 0.9999  # embeddings, class scores, float tensors: per-sample cosine
    min_iou: float = 0.99  # matched boxes, 2-D and 3-D
    score_tie: float = 1e-3  # detections this close to the lowest kept score may swap at the cut
    min_psnr_db: float = 40.0  # images
    max_abs_rel: float = 1e-3  # depth maps: mean relative depth error per sample


@dataclass(frozen=True)
class SavePaths:
    """Where `query --save PATH` writes: when only one file is written it is PATH itself,
    otherwise PATH's stem with `_<output>_<index>` added."""

    path: Path
    single: bool

    def for_sample(self, output: str, index: int, suffix: str = ".png") -> Path:
        path = self.path if self.single else self.path.with_name(
            f"{self.path.stem}_{output}_{index}{self.path.suffix or suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


@dataclass(frozen=True)
class Written:
    path: Path
    message: str  # what `query` prints: "image written to PATH"


class OutputKind:
    """One kind of output, registered by `name` (`tritonforge.outputs.register_kind`).

    Kinds read together share a `group` and each has its `role` in it; the group's behaviour
    is its members' (they subclass one class), and a member may be absent (a detector without
    labels), so a group kind reads its roles with `Part.arrays.get`."""

    name: ClassVar[str]
    group: ClassVar[str] = ""
    role: ClassVar[str] = LONE

    def summarize(self, part: Part, context: QueryContext) -> Summary | None:
        """What `query` shows beyond the table of shapes (None: nothing)."""
        return None

    def to_json(self, values: np.ndarray, context: QueryContext) -> dict[str, Any] | None:
        """`query --json`'s entry for one output, beside its kind, shape and dtype (None: the
        output is left out, as strings are)."""
        return None if values.dtype == object else {"values": values.tolist()}

    def cannot_save(self, part: Part, context: QueryContext) -> str | None:
        """Why `query --save` cannot write this part (None: it can)."""
        return f"{self.name} outputs have no file form"

    def save(self, part: Part, paths: SavePaths, context: QueryContext) -> list[Written]:
        """Write the part for `query --save`; called only when `cannot_save` says nothing."""
        raise TritonForgeError(f"{part.label}: {self.cannot_save(part, context)}")

    def agreement(self, reference: Part, candidate: Part, tolerances: Tolerances) -> Parity:
        """How well the candidate's answer agrees with the reference's (both of one shape)."""
        return Parity(tuple(check for role, values in reference.arrays.items()
                            for check in tensor_checks(values, candidate.arrays[role], tolerances,
                                                       "" if role == LONE else f"{role}_")))


def tensor_checks(reference: np.ndarray, candidate: np.ndarray, tolerances: Tolerances,
                  prefix: str = "") -> tuple[Check, ...]:
    """A plain tensor's agreement: the lowest per-sample cosine for floating point values,
    else the share of samples that are exactly equal (integers stay integers)."""
    if np.issubdtype(reference.dtype, np.floating):
        cosines = sample_cosines(reference, candidate)
        return (Check(prefix + COSINE_MIN, float(cosines.min()) if cosines.size else 1.0,
                      tolerances.min_cosine, True),)
    return (Check(prefix + "equal_samples", equal_samples(reference, candidate), 1.0, True, MEAN),)
