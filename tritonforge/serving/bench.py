"""`bench`: asynchronous gRPC load (tritonclient.grpc.aio) at several concurrency levels.

Each level keeps `concurrency` requests in flight until `requests` have completed (or
`duration_s` has passed), one real sentence per request, and reports throughput, latency
percentiles and errors. When the server also serves `<name>_nobatch` (`tritonforge serve
--nobatch-twins`), the same levels run against it, so dynamic batching is measured beside
its absence on the same server.

A streaming model (sequence batcher) is benched with whole sequences instead: at each level,
that many sequences stream at once, each sending its next frame when the previous one is
answered; latency is per frame, throughput in frames per second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.figures import save_figure
from tritonforge.serving.client import DEFAULT_URL, connect, infer_inputs, new_sequence_ids, stream_sequences
from tritonforge.serving.endpoint import Endpoint

WARMUP_REQUESTS = 8
BATCHING_LABELS = {"dynamic": "dynamic batching", "none": "no batching",
                   "sequence": "sequence batching, per frame"}


@dataclass(frozen=True)
class LevelResult:
    """One model at one concurrency level."""

    model: str
    batching: str  # "dynamic" or "none"
    concurrency: int
    ok: int
    errors: int
    seconds: float
    latencies_ms: tuple[float, ...]
    first_error: str = ""

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "batching": self.batching, "concurrency": self.concurrency,
                "requests": self.ok + self.errors, "ok": self.ok, "errors": self.errors,
                "seconds": round(self.seconds, 3), "throughput_rps": round(self.throughput, 2),
                "latency_ms": {f"p{q}": round(self.percentile(q), 3) for q in (50, 95, 99)},
                "first_error": self.first_error}


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise TritonForgeError(f"--concurrency {text!r} must be integers separated by commas, "
                               "e.g. 1,4,16,32") from exc
    if not levels or min(levels) < 1:
        raise TritonForgeError(f"--concurrency {text!r} needs levels of at least 1, e.g. 1,4,16,32")
    return levels


async def _run_level(endpoint: Endpoint, model: str, payloads: Sequence[Mapping[str, np.ndarray]],
                     concurrency: int, requests: int | None, duration_s: float | None,
                     tick: Callable[[], None]) -> tuple[int, int, float, list[float], str]:
    import tritonclient.grpc.aio as aioclient

    client = endpoint.aio_client()
    headers = endpoint.call_headers
    prepared = [infer_inputs(p, aioclient) for p in payloads]
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    try:
        for index in range(WARMUP_REQUESTS):  # not measured; a bad payload is counted below
            try:
                await client.infer(model, prepared[index % len(prepared)], headers=headers)
            except Exception:
                pass

        async def worker(deadline: float | None) -> None:
            nonlocal issued
            while (requests is None or issued < requests) and (
                    deadline is None or time.perf_counter() < deadline):
                inputs = prepared[issued % len(prepared)]
                issued += 1
                start = time.perf_counter()
                try:
                    await client.infer(model, inputs, headers=headers)
                    latencies.append((time.perf_counter() - start) * 1e3)
                except Exception as exc:  # counted and reported, the run goes on
                    errors.append(str(exc).splitlines()[0][:300])
                tick()

        start = time.perf_counter()
        deadline = start + duration_s if duration_s else None
        await asyncio.gather(*(worker(deadline) for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    finally:
        await client.close()
    return len(latencies), len(errors), seconds, latencies, errors[0] if errors else ""


def run_bench(url: Endpoint | str, models: Sequence[tuple[str, str]],
              payloads: Sequence[Mapping[str, np.ndarray]], levels: Sequence[int],
              requests: int | None = 2000, duration_s: float | None = None,
              stage: Callable[[str, int], Callable[[], None]] | None = None) -> list[LevelResult]:
    """Every (model, batching label) at every level, in order; `stage(description, total)`
    announces each run and returns a tick function called per request."""
    if (requests is None) == (duration_s is None):
        raise TritonForgeError("give either --requests or --duration")
    if requests is not None and requests < 1:
        raise TritonForgeError(f"--requests {requests} must be at least 1")
    stage = stage or (lambda _description, _total: (lambda: None))
    results = []
    for model, batching in models:
        for level in levels:
            tick = stage(f"{model} concurrency {level}", requests or 0)
            ok, errors, seconds, latencies, first_error = asyncio.run(
                _run_level(Endpoint.of(url), model, payloads, level, requests, duration_s, tick))
            results.append(LevelResult(model, batching, level, ok, errors, seconds, tuple(latencies),
                                       first_error))
    return results


def run_stream_bench(url: Endpoint | str, model: str, sequences: Sequence[Mapping[str, np.ndarray]],
                     levels: Sequence[int], frames: int = 2000,
                     stage: Callable[[str, int], Callable[[], None]] | None = None) -> list[LevelResult]:
    """At each level, rounds of `level` sequences streamed at once (the saved samples, in
    turn) until `frames` frames were answered; a refused round counts its frames as errors."""
    if frames < 1:
        raise TritonForgeError(f"--requests {frames} must be at least 1 (frames per level)")
    if not sequences:
        raise TritonForgeError("no sequences to stream: export the model again (samples.npz)")
    stage = stage or (lambda _description, _total: (lambda: None))
    client = connect(url)
    results = []
    try:
        for level in levels:
            tick = stage(f"{model}: {level} sequences at once", frames)
            latencies: list[float] = []
            errors, first_error, seconds, taken = 0, "", 0.0, 0
            while len(latencies) + errors < frames:
                chosen = [sequences[(taken + i) % len(sequences)] for i in range(level)]
                taken += level
                try:
                    result = stream_sequences(client, model, dict(zip(new_sequence_ids(level), chosen,
                                                                      strict=True)), url)
                except TritonForgeError as exc:
                    errors += sum(len(next(iter(c.values()))) for c in chosen)
                    first_error = first_error or str(exc)[:300]
                    continue
                latencies += [s * 1e3 for s in result.latencies_s]
                seconds += result.wall_s
                for _ in result.latencies_s:
                    tick()
            results.append(LevelResult(model, "sequence", level, len(latencies), errors, seconds,
                                       tuple(latencies), first_error))
    finally:
        client.close()
    return results


def plot_latency_throughput(results: Sequence[LevelResult], path: Path, title: str) -> Path:
    """p50 (line) and p95 (dashed) latency against throughput, one colour per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for index, model in enumerate(dict.fromkeys(r.model for r in results)):
        rows = [r for r in results if r.model == model]
        colour = f"C{index}"
        label = f"{model} ({BATCHING_LABELS.get(rows[0].batching, rows[0].batching)})"
        throughput = [r.throughput for r in rows]
        axes.plot(throughput, [r.percentile(50) for r in rows], "o-", color=colour, label=f"{label} p50")
        axes.plot(throughput, [r.percentile(95) for r in rows], "x--", color=colour, alpha=0.6,
                  label=f"{label} p95")
        for row in rows:
            axes.annotate(f"c={row.concurrency}", (row.throughput, row.percentile(50)),
                          textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set_xlabel("throughput (requests/s)")
    axes.set_ylabel("latency (ms)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return save_figure(figure, path)


def bench_report(url: Endpoint | str, results: Sequence[LevelResult]) -> dict[str, Any]:
    return {"url": str(url or DEFAULT_URL), "levels": [r.to_json() for r in results]}


def compare_models(results: Sequence[LevelResult], baseline: str) -> list[dict[str, Any]]:
    """`bench --compare`: each other dynamically batched model's throughput and p50 at each
    level, as ratios to `baseline`'s at the same level (same payloads, same run)."""
    base = {r.concurrency: r for r in results if r.model == baseline}
    rows = []
    for r in results:
        if r.model == baseline or r.batching != "dynamic" or r.concurrency not in base:
            continue
        reference = base[r.concurrency]
        rows.append({"model": r.model, "baseline": baseline, "concurrency": r.concurrency,
                     "throughput": round(r.throughput, 2), "p50_ms": round(r.percentile(50), 3),
                     "throughput_ratio": round(r.throughput / reference.throughput, 3)
                     if reference.throughput else None,
                     "p50_ratio": round(r.percentile(50) / reference.percentile(50), 3)})
    return rows
