"""`tritonforge speed <family>`: one recipe on every CPU runtime and precision, timed side by side.

PyTorch eager (the reference), then the recipe's graph on ONNX Runtime and on OpenVINO in FP32,
in BF16 (`--bits 16` on OpenVINO, where the CPU has it) and the family's INT8 graph on both.
Each variant is exported as `export <family> --target ... --bits ...` would export it, checked
against its PyTorch reference with the family's own parity bar on the timed batch, and all are
timed in the same interleaved rounds (`timing.measure_interleaved`), so the ratios compare like
with like on one machine. A variant this machine or this recipe cannot make (no BF16, no INT8
for a preset) is listed with the reason instead of a time.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.family import Family
from tritonforge.runtime import cpu_has_bf16, open_session, openvino_core
from tritonforge.timing import measure_interleaved
from tritonforge.triton_config import MODEL_FILE, ServingOptions
from tritonforge.verify.parity import run_steps, session_steps

Stage = Callable[[str, int], Callable[[], None]]
PYTORCH = "pytorch eager fp32"
# (label, --target, --bits, what the runtime computes in): the rows after PyTorch's
VARIANTS = (("onnxruntime fp32", "onnxruntime", 32, "fp32"), ("openvino fp32", "openvino", 32, "fp32"),
            ("openvino bf16", "openvino", 16, "bf16"), ("onnxruntime int8", "onnxruntime", 8, "fp32"),
            ("openvino int8", "openvino", 8, "fp32"))


@dataclass
class SpeedRow:
    """One variant: p50/p95 over the interleaved rounds, its speed against PyTorch eager, and its
    parity against its own PyTorch reference on the timed batch (None: the reference itself)."""

    variant: str
    runtime: str
    precision: str
    p50_ms: float | None = None
    p95_ms: float | None = None
    speedup: float | None = None  # PyTorch eager p50 / this p50
    parity: dict[str, Any] | None = None  # {"metric", "value", "tolerance", "passed"}
    onnx_mb: float | None = None
    skipped: str | None = None  # why this machine or recipe has no such variant

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class SpeedReport:
    family: str
    recipe: dict[str, Any]
    batch_size: int
    iterations: int
    threads: int
    machine: dict[str, Any]
    request: str  # the timed batch's shapes (a stream: per step, times its steps)
    rows: list[SpeedRow] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"family": self.family, "recipe": self.recipe, "batch_size": self.batch_size,
                "request": self.request, "iterations": self.iterations, "threads": self.threads,
                "machine": self.machine, "rows": [row.to_json() for row in self.rows]}


def machine() -> dict[str, Any]:
    """What the table was measured on: the CPU, its cores, and what OpenVINO finds in it."""
    found: dict[str, Any] = {"cores": os.cpu_count(), "bf16": cpu_has_bf16()}
    try:
        core = openvino_core()
        found["cpu"] = str(core.get_property("CPU", "FULL_DEVICE_NAME")).strip()
        capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        found["openvino_capabilities"] = [str(c) for c in capabilities]
    except TritonForgeError:
        from tritonforge.report.machine import describe_machine

        found["cpu"] = describe_machine().cpu
    return found


def load_references(family: Family, options: Any, fp_options: Any, stage: Stage) -> tuple[Any, Any]:
    """The INT8 recipe's PyTorch reference (None when the recipe has no INT8) and the FP32 one,
    loaded once: an INT8 reference that simulates its export (fake quantization) holds its FP
    model (`latency_baseline`); any other is the FP model itself (INT8 comes at export)."""
    try:
        int8 = options.for_target("onnxruntime", 8)
    except TritonForgeError:
        return None, family.load(fp_options, stage)
    int8_model = family.load(int8, stage)
    return int8_model, family.latency_baseline(int8_model)


def speed_table(family: Family, options: Any, batch_size: int = 8, iterations: int = 20,
                stage: Stage | None = None) -> SpeedReport:
    """Export `options` of `family` as every variant, check each against PyTorch and time them
    all interleaved on one batch of the family's real inputs (a stream: a whole sequence)."""
    import torch

    if batch_size < 1 or iterations < 1:
        raise TritonForgeError(f"--batch-size {batch_size} and --iterations {iterations} must be at least 1")
    stage = stage or (lambda _description, _total=0: (lambda: None))
    torch.set_num_threads(options.threads)
    fp_options = options.for_target("onnxruntime", 32)
    stage("loading the PyTorch reference", 0)
    int8_model, fp_model = load_references(family, options, fp_options, stage)
    io = family.io(fp_model, fp_options)
    batch = family.sample_inputs(fp_model, fp_options, batch_size)
    steps = family.steps(batch, io)

    def reference(model: Any) -> dict[str, np.ndarray]:
        family.reset_state(model)
        return run_steps(lambda feed: family.reference_outputs(model, feed, io), steps, io)

    request = describe_batch(steps[0]) + (f", {len(steps)} steps" if len(steps) > 1 else "")
    report = SpeedReport(family.name, dataclasses.asdict(fp_options), batch_size, iterations,
                         options.threads, machine(), request, [SpeedRow(PYTORCH, "pytorch", "fp32")])
    runners: dict[str, Callable[[], Any]] = {PYTORCH: lambda: reference(fp_model)}
    with tempfile.TemporaryDirectory(prefix=f"tritonforge-speed-{family.name}-") as scratch:
        for label, target, bits, run_precision in VARIANTS:
            row = SpeedRow(label, target, "int8" if bits == 8 else run_precision)
            report.rows.append(row)
            try:
                recipe = options.for_target(target, bits)
            except TritonForgeError as exc:  # no BF16 here, no INT8 for this recipe, ...
                row.skipped = str(exc)
                continue
            row.precision = recipe.precision
            stage(f"{label}: exporting", 0)
            model = fp_model if bits != 8 else int8_model
            path = Path(scratch) / label.replace(" ", "_") / MODEL_FILE
            path.parent.mkdir()
            family.export(model, path, recipe)
            row.onnx_mb = round(path.stat().st_size / 1e6, 2)
            # The recipe's serving says what its float ops compute in (a quantized BERT's on
            # OpenVINO: bf16 where the CPU has it), so the row times what Triton would run.
            if family.serving(recipe, ServingOptions()).bf16:
                run_precision = "bf16"
            session = open_session(path, target, options.threads, run_precision)
            parity = family.compare(reference(model), session_steps(session, steps, io), recipe, batch)
            row.parity = {k: v for k, v in parity.to_json().items() if k != "details"}
            runners[label] = lambda s=session: session_steps(s, steps, io)
        tick = stage(f"latency, {len(runners)} variants interleaved", iterations)
        latency = measure_interleaved(runners, iterations, tick=tick)
    pytorch_p50 = latency[PYTORCH].percentile(50)
    for row in report.rows:
        if row.variant in latency:
            row.p50_ms = round(latency[row.variant].percentile(50), 3)
            row.p95_ms = round(latency[row.variant].percentile(95), 3)
            row.speedup = round(pytorch_p50 / latency[row.variant].percentile(50), 3)
    return report


def describe_batch(batch: Mapping[str, np.ndarray]) -> str:
    """The timed request's shapes, e.g. `image 8x3x640x640, orig_size 8x2`."""
    return ", ".join(f"{name} {'x'.join(map(str, array.shape))}" for name, array in batch.items())
