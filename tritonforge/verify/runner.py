"""`verify`: rebuild the PyTorch reference from the manifest, then parity and latency."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonforge.batching import batch_count, batches
from tritonforge.errors import TritonForgeError
from tritonforge.family import Family, get_family
from tritonforge.modalities import manifest_io
from tritonforge.runtime import open_session, ort_session, run_session
from tritonforge.serving.endpoint import Endpoint
from tritonforge.spec import ModelIO, Parity
from tritonforge.timing import LatencyStats, measure_interleaved
from tritonforge.verify.parity import parity_check, run_steps, session_steps

# -- verify --------------------------------------------------------------------------------


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

    @property
    def passed(self) -> bool:
        return self.parity.passed and (self.triton_parity is None or self.triton_parity.passed)

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
        if self.runtime == "openvino" and provider == "cpu":
            bf16 = self.manifest.get("serving", {}).get("bf16", False)
            return open_session(self.model_path, "openvino", threads, "bf16" if bf16 else "fp32")
        return ort_session(self.model_path, threads, provider)


def plan_verify(repo: Path | str, name: str, version: int | None = None) -> VerifyPlan:
    from tritonforge.serving.repository import ModelRepository, sha256_file
    from tritonforge.triton_config import MODEL_FILE

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


def verify_model(repo: Path | str, name: str, version: int | None = None, batch_size: int = 8,
                 shape: Mapping[str, int | None] | None = None, threads: int = 2, samples: int | None = None,
                 iterations: int = 30, provider: str = "cpu",
                 stage: Callable[[str, int], Callable[[], None]] | None = None,
                 triton_url: Endpoint | str | None = None) -> VerifyReport:
    """Parity (all evaluation samples) and interleaved latency (one batch) of a version.

    With `triton_url` (gRPC, e.g. 127.0.0.1:8001, or an Endpoint with TLS and headers) the served
    model gets the same parity check and its end-to-end gRPC latency is measured in the same
    interleaved rounds.

    `stage(description, total)` is told about each long step and returns a tick function.
    """
    import torch

    if batch_size < 1 or threads < 1 or iterations < 1:
        raise TritonForgeError(
            f"batch size ({batch_size}), threads ({threads}) and iterations ({iterations}) "
            "must all be at least 1")
    stage = stage or (lambda _description, _total: (lambda: None))
    plan = plan_verify(repo, name, version)
    shape = plan.io.preprocessing.resolve_shape(shape)
    session = plan.session(threads, provider)
    runtime = plan.runtime if provider == "cpu" else "onnxruntime"
    served = None
    if triton_url:  # fail before the long steps when no server answers
        from tritonforge.serving.client import TritonSession

        served = TritonSession(triton_url, plan.name, plan.version)
    torch.set_num_threads(threads)
    stage("loading the PyTorch reference", 0)
    model = plan.family.load_version(plan.options, plan.model_path.parent)
    inputs = plan.family.sample_inputs(model, plan.options, samples, shape)
    count = batch_count(inputs)
    tick = stage(f"parity on {count} real inputs", -(-count // batch_size))
    parity = parity_check(plan.family, model, plan.options, plan.io, session, inputs,
                          batch_size, tick)
    stage("quality against full precision", 0)
    quality = plan.family.quality(model, plan.options, lambda feed: run_session(session, feed))
    batch = next(batches(inputs, batch_size))
    if batch_count(batch) < batch_size:
        batch = plan.family.sample_inputs(model, plan.options, batch_size, shape)
    # A streaming model is timed over a whole sequence of steps, state carried, from a reset.
    steps = plan.family.steps(batch, plan.io)
    baseline = plan.family.latency_baseline(model)

    def pytorch() -> None:
        plan.family.reset_state(baseline)
        run_steps(lambda feed: plan.family.reference_outputs(baseline, feed, plan.io), steps, plan.io)

    runners = {"pytorch": pytorch, runtime: lambda: session_steps(session, steps, plan.io)}
    triton_parity = None
    if served is not None:
        tick = stage(f"Triton at {triton_url}: parity on {count} real inputs", -(-count // batch_size))
        triton_parity = parity_check(plan.family, model, plan.options, plan.io, served, inputs,
                                     batch_size, tick)
        runners["triton"] = lambda: session_steps(served, steps, plan.io)
    tick = stage(f"latency, {', '.join(runners)} interleaved", iterations)
    latency = measure_interleaved(runners, iterations, tick=tick)
    serving_latency = request = None
    if plan.io.preprocessing.serving_request is not None and not plan.io.state:
        # The same runtimes on the common serving request (text: one sentence of 32 tokens).
        request_batch, request_shape = plan.io.preprocessing.serving_request
        small = plan.family.sample_inputs(model, plan.options, request_batch, request_shape)
        small_runners = {
            "pytorch": lambda: plan.family.reference_outputs(baseline, small, plan.io),
            runtime: lambda: run_session(session, small),
            **({"triton": lambda: run_session(served, small)} if served is not None else {})}
        tick = stage(f"latency at batch {request_batch}, "
                     + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in request_shape.items()), iterations)
        serving_latency = measure_interleaved(small_runners, iterations, tick=tick)
        request = {"batch_size": request_batch, **request_shape}
    return VerifyReport(plan.name, plan.version, plan.family.name,
                        plan.manifest.get("precision", ""), parity, latency, batch_size, shape,
                        threads, provider, runtime, serving_latency, request, triton_parity,
                        str(triton_url) if triton_url else None, quality)

