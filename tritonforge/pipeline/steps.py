"""Pipeline steps: small objects, each with a name, a `run` and a status, listed as data.

`export` and `verify` are each a `Pipeline` (`tritonforge.pipeline.export`, `.verify`): steps
run in order on one `Context` that carries what they share (the family, the reference, the
graph's runtime, the real inputs, the verdicts). The steps both use live here: parity, the
publish gates and quality. A step announces itself through `Context.progress`, the caller's
`stage` callback (the CLI shows one progress line per announcement).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tritonforge.batching import batch_count
from tritonforge.errors import TritonForgeError
from tritonforge.family import Family
from tritonforge.runtime import open_session, ort_session, run_session
from tritonforge.spec import Check, ModelIO, Parity, describe_checks
from tritonforge.verify.parity import parity_check

Tick = Callable[[], None]
Progress = Callable[[str, int], Tick]  # progress(description, total) -> advance by one


def as_tick(value: Any) -> Tick:
    """What a `stage` callback returned, as a tick (a callback that returns none ticks nothing)."""
    return value if callable(value) else (lambda: None)


class Status(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass
class Context:
    """What the steps of one run share; each step reads what earlier ones set."""

    family: Family
    options: Any
    progress: Progress
    model: Any = None  # the PyTorch reference
    io: ModelIO | None = None
    folder: Path | None = None  # the version folder (during export: the staging one)
    session: Any = None  # what runs the exported graph here (ONNX Runtime or OpenVINO)
    inputs: dict[str, np.ndarray] | None = None  # real inputs: parity's
    batch_size: int = 8
    parity: Parity | None = None
    gates: tuple[Check, ...] = ()
    quality: dict[str, Any] | None = None

    def run_graph(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The exported graph's outputs on `feed`."""
        return run_session(self.session, feed)


@dataclass
class Step(ABC):
    """One step: `run` does it on the context; the pipeline keeps `status`."""

    name: ClassVar[str]
    status: Status = field(default=Status.PENDING, init=False)

    def skip(self, context: Context) -> bool:
        """True when there is nothing to do in this run (the step is then marked skipped)."""
        return False

    @abstractmethod
    def run(self, context: Context) -> None: ...

    def inner(self) -> Sequence[Step]:
        """Steps this one runs inside itself (publish: the steps that build the version)."""
        return ()


@dataclass
class Pipeline:
    """Steps run in order on one context. A step that raises is marked failed and stops the
    run; the error goes to the caller as it was."""

    steps: list[Step]

    def run(self, context: Context) -> None:
        for step in self.steps:
            if step.skip(context):
                step.status = Status.SKIPPED
                continue
            step.status = Status.RUNNING
            try:
                step.run(context)
            except BaseException:
                step.status = Status.FAILED
                raise
            step.status = Status.DONE

    def walk(self) -> Iterator[Step]:
        """Every step in the order it finishes: a step's inner steps before it."""
        for step in self.steps:
            yield from Pipeline(list(step.inner())).walk()
            yield step

    def report(self) -> list[tuple[str, str]]:
        """(name, status) of every step."""
        return [(step.name, step.status.value) for step in self.walk()]


def artifact_session(path: Path, target: str, bf16: bool = False, threads: int = 2, provider: str = "cpu"):
    """A session that computes as the served model will: OpenVINO for an openvino target on the
    CPU (in BF16 when it serves in BF16), else ONNX Runtime with `provider`."""
    if target == "openvino" and provider == "cpu":
        return open_session(path, "openvino", threads, "bf16" if bf16 else "fp32")
    return ort_session(path, threads, provider)


# -- the steps export and verify share -------------------------------------------------------


@dataclass
class CheckParity(Step):
    """PyTorch and the exported graph on the context's real inputs, batch by batch.

    `required`: a miss stops the pipeline, so nothing is published (export); otherwise the
    verdict is only recorded (verify reports it). `label(context, samples)` is the progress line,
    ticked per batch; None: the previous step's line covers it.
    """

    name: ClassVar[str] = "parity"
    required: bool = False
    label: Callable[[Context, int], str] | None = None

    def runtime(self, context: Context) -> Any:
        """What runs the graph: the context's session."""
        return context.session

    def record(self, context: Context, parity: Parity) -> None:
        context.parity = parity

    def run(self, context: Context) -> None:
        count = batch_count(context.inputs, context.io.request_inputs)
        tick = (context.progress(self.label(context, count), -(-count // context.batch_size))
                if self.label else None)
        parity = parity_check(context.family, context.model, context.options, context.io,
                              self.runtime(context), context.inputs, context.batch_size, tick)
        self.record(context, parity)
        if self.required and not parity.passed:
            raise TritonForgeError(
                f"the exported graph does not match PyTorch ({parity.describe()}); "
                f"nothing was written. {context.family.parity_advice(context.options)}")


@dataclass
class RunGates(Step):
    """The family's publish gates (`Family.gates`) on the exported graph, after parity.

    `required`: a failed gate stops the pipeline, so nothing is published (export); otherwise
    the results are only recorded (verify reports them and fails).
    """

    name: ClassVar[str] = "gates"
    required: bool = False

    def run(self, context: Context) -> None:
        family = context.family
        if type(family).gates is not Family.gates:  # families without gates show no extra line
            context.progress("checking the publish gates", 0)
        gates = tuple(family.gates(context.model, context.options, context.io, context.run_graph,
                                   context.folder))
        wrong = [gate for gate in gates if not isinstance(gate, Check)]
        if wrong:
            raise TritonForgeError(f"the {family.name} family's gates returned {wrong[0]!r}: a gate is a "
                                   "tritonforge.spec.Check")
        context.gates = gates
        failed = [gate for gate in gates if not gate.passed]
        if self.required and failed:
            raise TritonForgeError(
                f"the exported graph failed {len(failed)} of its {len(gates)} publish gates "
                f"({describe_checks(gates)}); nothing was written. "
                f"{family.gate_advice(context.options, failed)}")


@dataclass
class MeasureQuality(Step):
    """Task quality of the exported graph against full precision (`Family.quality`; lossy
    recipes only, None otherwise), announced as `label`."""

    name: ClassVar[str] = "quality"
    label: str = "quality against full precision"

    def run(self, context: Context) -> None:
        context.progress(self.label, 0)
        context.quality = context.family.quality(context.model, context.options, context.run_graph)
