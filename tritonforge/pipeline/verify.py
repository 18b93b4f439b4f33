"""`verify`: rebuild the PyTorch reference from the manifest, then parity, gates and latency.

The steps, in order (`verify_pipeline`): load the reference and open the runtimes, parity on
the whole evaluation set, the family's publish gates, quality, parity through Triton (with a
server), interleaved latency at the batch shape and at the modality's serving request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tritonforge.batching import batch_count, batches
from tritonforge.errors import TritonForgeError
from tritonforge.family import PRECISE_VERIFY, Family, get_family
from tritonforge.modalities import manifest_io
from tritonforge.pipeline.steps import (
    CheckParity,
    Context,
    MeasureQuality,
    Pipeline,
    RunGates,
    Step,
    artifact_session,
    as_tick,
)
from tritonforge.runtime import run_session
from tritonforge.serving.endpoint import Endpoint
from tritonforge.serving.repository import ModelRepository, sha256_file
from tritonforge.spec import Check, ModelIO, Parity
from tritonforge.timing import LatencyStats, measure_interleaved
from tritonforge.triton_config import MODEL_FILE
from tritonforge.verify.parity import run_steps, session_steps


@dataclass(frozen=True)
class VerifyReport:
    model: str
    version: int
    family: str
    precision: str
    parity: Parity
    latency: dict[str, LatencyStats]
    batch_size: int
    shape: Mapping[str, int | None]  # the modality's shape options: seq_len, image_size, ...
    threads: int
    provider: str
    runtime: str = "onnxruntime"  # what ran the graph: onnxruntime or openvino (the export's target)
    # The common serving request (text: 1 x 32 tokens), timed in its own interleaved rounds.
    serving_latency: dict[str, LatencyStats] | None = None
    serving_request: Mapping[str, int] | None = None  # {"batch_size": 1, "seq_len": 32}
    triton_parity: Parity | None = None  # with --triton: the served model against PyTorch
    triton_url: str | None = None
    quality: dict[str, Any] | None = None  # lossy exports: quality against full precision
    gates: tuple[Check, ...] = ()  # the family's publish gates, run again on the artifact

    @property
    def gates_passed(self) -> bool:
        return all(gate.passed for gate in self.gates)

    @property
    def passed(self) -> bool:
        return (self.parity.passed and (self.triton_parity is None or self.triton_parity.passed)
                and self.gates_passed)

    @property
    def speedup(self) -> float:
        """PyTorch p50 over the runtime's p50."""
        return speedup(self.latency, self.runtime)

    @property
    def serving_speedup(self) -> float | None:
        return None if self.serving_latency is None else speedup(self.serving_latency, self.runtime)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "version": self.version, "family": self.family,
            "precision": self.precision, "parity": self.parity.to_json(),
            "gates": [gate.to_json() for gate in self.gates],
            "latency_ms": {name: stats.to_json() for name, stats in self.latency.items()},
            "runtime": self.runtime, "speedup_vs_pytorch": round(self.speedup, 3),
            **({"serving_request": {**dict(self.serving_request),
                                    "latency_ms": {k: v.to_json() for k, v in self.serving_latency.items()},
                                    "speedup_vs_pytorch": round(self.serving_speedup, 3)}}
               if self.serving_latency is not None else {}),
            "batch_size": self.batch_size, "shape": dict(self.shape), **dict(self.shape),
            "threads": self.threads,
            "provider": self.provider,
            **({"triton": {"url": self.triton_url, "parity": self.triton_parity.to_json()}}
               if self.triton_parity is not None else {}),
            **({"quality": self.quality} if self.quality is not None else {}),
        }


def speedup(latency: Mapping[str, LatencyStats], runtime: str) -> float:
    return latency["pytorch"].percentile(50) / latency[runtime].percentile(50)


@dataclass
class VerifyPlan:
    """Everything verify needs, loaded and checked before anything is measured."""

    name: str
    version: int
    family: Family
    options: Any
    io: ModelIO
    manifest: dict[str, Any]
    model_path: Path

    @property
    def runtime(self) -> str:
        """What runs the graph here: OpenVINO for an openvino export, else ONNX Runtime."""
        return "openvino" if self.manifest.get("serving", {}).get("target") == "openvino" else "onnxruntime"

    def session(self, threads: int, provider: str):
        serving = self.manifest.get("serving", {})
        return artifact_session(self.model_path, self.runtime, serving.get("bf16", False), threads, provider)


def plan_verify(repo: Path | str, name: str, version: int | None = None) -> VerifyPlan:
    repository = ModelRepository(repo)
    manifest = repository.read_manifest(name, version)
    number, folder = repository.resolve(name, version)
    model_path = folder / MODEL_FILE
    if not model_path.is_file():
        raise TritonForgeError(f"{model_path} is missing: export the model again")
    expected = manifest.get("onnx", {}).get("sha256")
    if expected and sha256_file(model_path) != expected:
        raise TritonForgeError(
            f"{model_path} does not match the sha256 in its manifest: the file was changed or "
            "damaged after export; export the model again (a new version)")
    family = get_family(manifest["family"])
    return VerifyPlan(name, number, family, family.options_from_json(manifest["recipe"]),
                      manifest_io(manifest), manifest, model_path)


@dataclass
class VerifyContext(Context):
    """What verify's steps share beyond the common context."""

    plan: VerifyPlan | None = None
    shape: Mapping[str, int | None] | None = None  # asked for; resolved by the load step
    samples: int | None = None
    threads: int = 2
    iterations: int = 30
    provider: str = "cpu"
    runtime: str = "onnxruntime"
    triton_url: Endpoint | str | None = None
    served: Any = None  # the Triton model, with a triton_url
    triton_parity: Parity | None = None
    latency: dict[str, LatencyStats] = field(default_factory=dict)
    serving_latency: dict[str, LatencyStats] | None = None
    serving_request: dict[str, int] | None = None


@dataclass
class LoadFromManifest(Step):
    """The runtimes (the export's target here, the Triton model when asked: both before the
    long steps, so a missing server fails fast), then the reference and its real inputs."""

    name: ClassVar[str] = "load"

    def run(self, context: VerifyContext) -> None:
        import torch

        plan = context.plan
        context.shape = plan.io.preprocessing.resolve_shape(context.shape)
        context.session = plan.session(context.threads, context.provider)
        context.runtime = plan.runtime if context.provider == "cpu" else "onnxruntime"
        if context.triton_url:
            from tritonforge.serving.client import TritonSession

            context.served = TritonSession(context.triton_url, plan.name, plan.version)
        torch.set_num_threads(context.threads)
        context.progress("loading the PyTorch reference", 0)
        context.model = plan.family.load_version(plan.options, context.folder)
        context.inputs = plan.family.sample_inputs(context.model, plan.options, context.samples,
                                                   context.shape)


@dataclass
class CheckServedParity(CheckParity):
    """Parity of the model Triton serves, on the same inputs (only with a server)."""

    name: ClassVar[str] = "triton parity"

    def skip(self, context: VerifyContext) -> bool:
        return context.served is None

    def runtime(self, context: VerifyContext) -> Any:
        return context.served

    def record(self, context: VerifyContext, parity: Parity) -> None:
        context.triton_parity = parity


@dataclass
class MeasureLatency(Step):
    """PyTorch, the runtime (and Triton) timed in interleaved rounds on one batch; a streaming
    model over a whole sequence of steps, state carried, from a reset."""

    name: ClassVar[str] = "latency"

    def run(self, context: VerifyContext) -> None:
        family, io, options, session, served = (context.family, context.io, context.options,
                                                context.session, context.served)
        batch = next(batches(context.inputs, context.batch_size, io.request_inputs))
        if batch_count(batch, io.request_inputs) < context.batch_size:
            batch = family.sample_inputs(context.model, options, context.batch_size, context.shape)
        steps = family.steps(batch, io)
        baseline = family.latency_baseline(context.model)

        def pytorch() -> None:
            family.reset_state(baseline)
            run_steps(lambda feed: family.reference_outputs(baseline, feed, io), steps, io)

        runners = {"pytorch": pytorch, context.runtime: lambda: session_steps(session, steps, io)}
        if served is not None:
            runners["triton"] = lambda: session_steps(served, steps, io)
        tick = context.progress(f"latency, {', '.join(runners)} interleaved", context.iterations)
        context.latency = measure_interleaved(runners, context.iterations, tick=tick)


@dataclass
class MeasureServingLatency(Step):
    """The same runtimes on the modality's common serving request (text: one sentence of 32
    tokens); not for streaming models."""

    name: ClassVar[str] = "serving latency"

    def skip(self, context: VerifyContext) -> bool:
        return context.io.preprocessing.serving_request is None or bool(context.io.state)

    def run(self, context: VerifyContext) -> None:
        family, io, session, served = context.family, context.io, context.session, context.served
        request_batch, request_shape = io.preprocessing.serving_request
        small = family.sample_inputs(context.model, context.options, request_batch, request_shape)
        baseline = family.latency_baseline(context.model)
        runners = {"pytorch": lambda: family.reference_outputs(baseline, small, io),
                   context.runtime: lambda: run_session(session, small),
                   **({"triton": lambda: run_session(served, small)} if served is not None else {})}
        tick = context.progress(f"latency at batch {request_batch}, " + ", ".join(
            f"{k.replace('_', ' ')} {v}" for k, v in request_shape.items()), context.iterations)
        context.serving_latency = measure_interleaved(runners, context.iterations, tick=tick)
        context.serving_request = {"batch_size": request_batch, **request_shape}


def verify_pipeline() -> Pipeline:
    """verify's steps."""
    return Pipeline([
        LoadFromManifest(),
        CheckParity(label=lambda context, count: f"parity on {count} real inputs"),
        RunGates(),
        MeasureQuality(label="quality against full precision"),
        CheckServedParity(label=lambda context, count: f"Triton at {context.triton_url}: parity on "
                                                        f"{count} real inputs"),
        MeasureLatency(),
        MeasureServingLatency(),
    ])


def verify_model(repo: Path | str, name: str, version: int | None = None, batch_size: int | None = None,
                 shape: Mapping[str, int | None] | None = None, threads: int = 2, samples: int | None = None,
                 iterations: int | None = None, provider: str = "cpu",
                 stage: Callable[[str, int], Callable[[], None]] | None = None,
                 triton_url: Endpoint | str | None = None, precise: bool = False) -> VerifyReport:
    """Parity (on `samples` evaluation samples), the publish gates and interleaved latency (one
    batch) of a version.

    `batch_size`, `iterations` and `samples` not given come from the family's `verify_defaults`
    (a first answer within about two minutes on 2 cores), or with `precise` from
    `PRECISE_VERIFY` (the whole evaluation set, 30 timed runs).

    With `triton_url` (gRPC, e.g. 127.0.0.1:8001, or an Endpoint with TLS and headers) the served
    model gets the same parity check and its end-to-end gRPC latency is measured in the same
    interleaved rounds.

    `stage(description, total)` is told about each long step and returns a tick function.
    """
    plan = plan_verify(repo, name, version)
    defaults = PRECISE_VERIFY if precise else plan.family.verify_defaults
    batch_size = defaults.batch_size if batch_size is None else batch_size
    iterations = defaults.iterations if iterations is None else iterations
    samples = defaults.samples if samples is None else samples
    if batch_size < 1 or threads < 1 or iterations < 1:
        raise TritonForgeError(
            f"batch size ({batch_size}), threads ({threads}) and iterations ({iterations}) "
            "must all be at least 1")
    stage = stage or (lambda _description, _total: (lambda: None))
    context = VerifyContext(plan.family, plan.options,
                            lambda description, total=0: as_tick(stage(description, total)),
                            io=plan.io, folder=plan.model_path.parent, batch_size=batch_size, plan=plan,
                            shape=shape, samples=samples, threads=threads, iterations=iterations,
                            provider=provider, triton_url=triton_url)
    verify_pipeline().run(context)
    return VerifyReport(plan.name, plan.version, plan.family.name, plan.manifest.get("precision", ""),
                        context.parity, context.latency, batch_size, context.shape, threads, provider,
                        context.runtime, context.serving_latency, context.serving_request,
                        context.triton_parity, str(triton_url) if triton_url else None, context.quality,
                        context.gates)
