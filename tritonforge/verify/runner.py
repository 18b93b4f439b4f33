"""`verify`: rebuild the PyTorch reference from the manifest, then parity and latency."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.export.base import Family, ModelIO, Parity, get_family
from tritonforge.runtime import ort_session, run_session


def batches(inputs: Mapping[str, np.ndarray], size: int):
    count = len(next(iter(inputs.values())))
    for start in range(0, count, size):
        yield {k: v[start:start + size] for k, v in inputs.items()}


def parity_check(family: Family, model: Any, options: Any, io: ModelIO, session,
                 inputs: Mapping[str, np.ndarray], batch_size: int = 8,
                 tick: Callable[[], None] | None = None) -> Parity:
    """Run PyTorch and ONNX Runtime on the same inputs, batch by batch, and compare."""
    reference: dict[str, list[np.ndarray]] = {n: [] for n in io.output_names}
    candidate: dict[str, list[np.ndarray]] = {n: [] for n in io.output_names}
    for batch in batches(inputs, batch_size):
        for name, out in family.reference_outputs(model, batch, io).items():
            reference[name].append(out)
        for name, out in run_session(session, batch).items():
            candidate[name].append(out)
        if tick:
            tick()
    return family.compare({k: np.concatenate(v) for k, v in reference.items()},
                          {k: np.concatenate(v) for k, v in candidate.items()}, options, inputs)


# -- latency -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyStats:
    samples_ms: tuple[float, ...]

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.samples_ms, q))

    def to_json(self) -> dict[str, float]:
        return {"p50": round(self.percentile(50), 3), "p95": round(self.percentile(95), 3),
                "p99": round(self.percentile(99), 3),
                "mean": round(float(np.mean(self.samples_ms)), 3), "n": len(self.samples_ms)}


def measure_interleaved(runners: Mapping[str, Callable[[], Any]], iterations: int, block: int = 3,
                        tick: Callable[[], None] | None = None) -> dict[str, LatencyStats]:
    """Time each runner `iterations` times, in rounds, so every runtime sees the same machine.

    Each round gives every runner one untimed call and then `block` timed ones: the untimed
    call absorbs the hand-over from the other runtime (its thread pool still spinning, caches
    holding the other model's weights), which otherwise taxes whichever runs second.
    """
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    while len(times[names[0]]) < iterations:
        for name in names:
            runners[name]()
            for _ in range(min(block, iterations - len(times[name]))):
                start = time.perf_counter()
                runners[name]()
                times[name].append((time.perf_counter() - start) * 1e3)
                if tick and name == names[0]:
                    tick()
    return {name: LatencyStats(tuple(t)) for name, t in times.items()}


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
    seq_len: int | None
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
            "batch_size": self.batch_size, "seq_len": self.seq_len, "threads": self.threads,
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
                      ModelIO.from_json(manifest["io"]), manifest, model_path)


def verify_model(repo: Path | str, name: str, version: int | None = None, batch_size: int = 8,
                 seq_len: int | None = 128, threads: int = 2, samples: int | None = None,
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
    session = ort_session(plan.model_path, threads, provider)
    served = None
    if triton_url:  # fail before the long steps when no server answers
        from tritonforge.serving.client import TritonSession

        served = TritonSession(triton_url, plan.name, plan.version)
    torch.set_num_threads(threads)
    stage("loading the PyTorch reference", 0)
    model = plan.family.load_version(plan.options, plan.model_path.parent)
    inputs = plan.family.sample_inputs(model, plan.options, samples, seq_len)
    count = len(next(iter(inputs.values())))
    tick = stage(f"parity on {count} real inputs", -(-count // batch_size))
    parity = parity_check(plan.family, model, plan.options, plan.io, session, inputs,
                          batch_size, tick)
    stage("quality against full precision", 0)
    quality = plan.family.quality(model, plan.options, lambda feed: run_session(session, feed))
    batch = next(batches(inputs, batch_size))
    if len(next(iter(batch.values()))) < batch_size:
        batch = plan.family.sample_inputs(model, plan.options, batch_size, seq_len)
    feed = {i.name: batch[i.name] for i in session.get_inputs()}
    baseline = plan.family.latency_baseline(model)
    runners = {"pytorch": lambda: plan.family.reference_outputs(baseline, batch, plan.io),
               "onnxruntime": lambda: session.run(None, feed)}
    triton_parity = None
    if served is not None:
        tick = stage(f"Triton at {triton_url}: parity on {count} real inputs", -(-count // batch_size))
        triton_parity = parity_check(plan.family, model, plan.options, plan.io, served, inputs,
                                     batch_size, tick)
        runners["triton"] = lambda: served.run(None, feed)
    tick = stage(f"latency, {', '.join(runners)} interleaved", iterations)
    latency = measure_interleaved(runners, iterations, tick=tick)
    return VerifyReport(plan.name, plan.version, plan.family.name,
                        plan.manifest.get("precision", ""), parity, latency, batch_size, seq_len,
                        threads, provider, triton_parity, triton_url, quality)

