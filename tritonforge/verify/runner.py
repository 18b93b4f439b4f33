"""`verify`: rebuild the PyTorch reference from the manifest, then parity and latency."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonforge.batching import batch_count, batches
from tritonforge.errors import TritonForgeError
from tritonforge.export.base import Family, get_family
from tritonforge.modalities import manifest_io
from tritonforge.runtime import ort_session, run_session
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
    triton_parity: Parity | None = None  # with --triton: the served model against PyTorch
    triton_url: str | None = None
    quality: dict[str, Any] | None = None  # lossy exports: quality against full precision

    @property
    def passed(self) -> bool:
        return self.parity.passed and (self.triton_parity is None or self.triton_parity.passed)

    @property
    def speedup(self) -> float:
        """PyTorch p50 over ONNX Runtime p50."""
        return self.latency["pytorch"].percentile(50) / self.latency["onnxruntime"].percentile(50)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "version": self.version, "family": self.family,
            "precision": self.precision, "parity": self.parity.to_json(),
            "latency_ms": {name: stats.to_json() for name, stats in self.latency.items()},
            "speedup_onnxruntime_vs_pytorch": round(self.speedup, 3),
            "batch_size": self.batch_size, "shape": dict(self.shape), **dict(self.shape),
            "threads": self.threads,
            "provider": self.provider,
            **({"triton": {"url": self.triton_url, "parity": self.triton_parity.to_json()}}
               if self.triton_parity is not None else {}),
            **({"quality": self.quality} if self.quality is not None else {}),
        }


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


def plan_verify(repo: Path | str, name: str, version: int | None = None) -> VerifyPlan:
    from tritonforge.export.onnx import sha256_file
    from tritonforge.serving.repository import MODEL_FILE, ModelRepository

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
                 triton_url: str | None = None) -> VerifyReport:
    """Parity (all evaluation samples) and interleaved latency (one batch) of a version.

    With `triton_url` (gRPC, e.g. 127.0.0.1:8001) the served model gets the same parity check
    and its end-to-end gRPC latency is measured in the same interleaved rounds.

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
    session = ort_session(plan.model_path, threads, provider)
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

    runners = {"pytorch": pytorch,
               "onnxruntime": lambda: session_steps(session, steps, plan.io)}
    triton_parity = None
    if served is not None:
        tick = stage(f"Triton at {triton_url}: parity on {count} real inputs", -(-count // batch_size))
        triton_parity = parity_check(plan.family, model, plan.options, plan.io, served, inputs,
                                     batch_size, tick)
        runners["triton"] = lambda: session_steps(served, steps, plan.io)
    tick = stage(f"latency, {', '.join(runners)} interleaved", iterations)
    latency = measure_interleaved(runners, iterations, tick=tick)
    return VerifyReport(plan.name, plan.version, plan.family.name,
                        plan.manifest.get("precision", ""), parity, latency, batch_size, shape,
                        threads, provider, triton_parity, triton_url, quality)

