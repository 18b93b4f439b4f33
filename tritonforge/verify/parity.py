"""Parity: the PyTorch reference and a runtime (ONNX Runtime, Triton) on the same real inputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from tritonforge.batching import batch_count, batches
from tritonforge.errors import TritonForgeError
from tritonforge.family import Family
from tritonforge.runtime import run_session
from tritonforge.spec import ModelIO, Parity

Run = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


def run_steps(run: Run, steps: list[dict[str, np.ndarray]], io: ModelIO) -> dict[str, np.ndarray]:
    """Run a model over `steps` (one request each), feeding each step's state outputs back as
    the next step's state inputs (zeros at the first). One step: the outputs as they are;
    several: each output stacked along a new axis 1 (batch, step, ...)."""
    if len(steps) == 1 and not io.state:
        return dict(run(steps[0]))
    count = batch_count(steps[0], io.request_inputs)
    specs = {spec.name: spec for spec in io.inputs}
    state = {name: np.zeros((count, *specs[name].dims), dtype=specs[name].dtype) for name, _out in io.state}
    collected: dict[str, list[np.ndarray]] = {name: [] for name in io.output_names}
    for step in steps:
        outputs = run({**step, **state})
        state = {name: outputs[out] for name, out in io.state}
        for name in io.output_names:
            collected[name].append(outputs[name])
    return {name: np.stack(parts, axis=1) for name, parts in collected.items()}


def session_steps(session, steps: list[dict[str, np.ndarray]], io: ModelIO) -> dict[str, np.ndarray]:
    """`run_steps` on a session: ONNX Runtime carries the state through its inputs; a served
    streaming model (`run_sequence`) keeps it on the server, one sequence per batch row."""
    if io.state and hasattr(session, "run_sequence"):
        return session.run_sequence(steps, io)
    return run_steps(lambda feed: run_session(session, feed), steps, io)


def parity_check(family: Family, model: Any, options: Any, io: ModelIO, session,
                 inputs: Mapping[str, np.ndarray], batch_size: int = 8,
                 tick: Callable[[], None] | None = None) -> Parity:
    """Run PyTorch and `session` (ONNX Runtime, or a served model that acts like one) on the
    same inputs, batch by batch (and step by step for a streaming model), and compare each
    batch on its own: outputs may differ in size between batches (another vocabulary, another
    number of points), and request inputs (`io.request_inputs`) go whole with every batch. The
    verdicts merge as each check declares (`Parity.merge`). A served streaming model returns
    no state outputs: the server keeps them."""
    parts: list[Parity] = []
    samples: list[int] = []
    for batch in batches(inputs, batch_size, io.request_inputs):
        steps = family.steps(batch, io)
        family.reset_state(model)
        reference = run_steps(lambda feed: family.reference_outputs(model, feed, io), steps, io)
        candidate = session_steps(session, steps, io)
        parts.append(family.compare(reference, candidate, options, batch))
        samples.append(batch_count(batch, io.request_inputs))
        if tick:
            tick()
    if not parts:
        raise TritonForgeError("parity needs at least one input; the family's sample inputs are empty")
    return Parity.merge(parts, samples)
