"""`bench --perf-analyzer`: every level measured again by Triton's own load generator.

perf_analyzer (C++, from the tritonclient 2.50 wheel: `make perf-analyzer`) is driven with the
same real inputs `bench` sends, written as its `--input-data` JSON, over gRPC at the same
concurrency. Levels are interleaved (ours, then perf_analyzer's, at each level) so both see
the same server state and background load, and perf_analyzer measures about as many
requests as our run completed (three count windows of a third each). Throughput and
p50/p95/p99 of both tools are then set side by side, with their ratio.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.serving.bench import LevelResult, run_bench
from tritonforge.serving.client import BYTES_DATATYPE, ModelInfo
from tritonforge.serving.endpoint import Endpoint

BINARY = "perf_analyzer"
INSTALL_HINT = ("install it with `make perf-analyzer` (the binary of the tritonclient 2.50 wheel, "
                "Debian's libb64-0d and the CUDA runtime wheel's libcudart.so.12, into the venv), "
                "or put a perf_analyzer on PATH")
# What `make test` writes into the venv when it could not install perf_analyzer: the end of the
# installation's output, so the tests that need the binary skip with the reason.
FAILED_RECORD = "perf_analyzer.failed"
AGREEMENT = 0.15  # the two tools agree when throughput and p50 differ by at most this fraction
PERCENTILES = (50, 95, 99)


def find_perf_analyzer() -> Path:
    """perf_analyzer on PATH, else the wrapper `make perf-analyzer` writes beside this
    interpreter (the venv's bin, which need not be on PATH)."""
    found = shutil.which(BINARY)
    if found:
        return Path(found)
    beside = Path(sys.executable).parent / BINARY
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    failed = beside.parent.parent / FAILED_RECORD
    why = (f" (`make perf-analyzer` failed here: {' '.join(failed.read_text().split())[-300:]})"
           if failed.is_file() else "")
    raise TritonForgeError(f"perf_analyzer is neither on PATH nor in {beside.parent}{why}: {INSTALL_HINT}")


def connection_arguments(url: Endpoint | str) -> list[str]:
    """perf_analyzer's options for reaching `url` over gRPC: the address and its TLS files.
    Headers are refused: perf_analyzer sends its -H headers over HTTP only (its --help: "ignored
    for GRPC requests"), so a server that needs them would refuse every request it sends."""
    endpoint = Endpoint.of(url)
    if endpoint.headers:
        raise TritonForgeError(
            f"--perf-analyzer cannot send headers ({', '.join(sorted(endpoint.headers))}) over gRPC: "
            "perf_analyzer ignores -H for gRPC requests. Bench this server without --perf-analyzer, "
            "or cross-check against one that needs no headers")
    arguments = ["-u", endpoint.address]
    if endpoint.ssl:
        arguments += ["--ssl-grpc-use-ssl", "true"]
        for option, path in (("--ssl-grpc-root-certifications-file", endpoint.root_certificates),
                             ("--ssl-grpc-private-key-file", endpoint.private_key),
                             ("--ssl-grpc-certificate-chain-file", endpoint.certificate_chain)):
            if path is not None:
                arguments += [option, str(path)]
    return arguments


# -- inputs --------------------------------------------------------------------------------


def _content(array: np.ndarray) -> list[Any] | dict[str, str]:
    """A tensor's row-major content as perf_analyzer reads it: numbers as numbers, UTF-8
    strings as strings, other bytes as base64 of Triton's serialized strings (each element
    prefixed by its 4-byte length, as perf_analyzer's input_data.md asks)."""
    flat = array.reshape(-1)
    if array.dtype != object:
        return flat.tolist()
    items = [item if isinstance(item, bytes) else str(item).encode("utf-8") for item in flat]
    try:
        return [item.decode("utf-8") for item in items]
    except UnicodeDecodeError:
        from tritonclient.utils import serialize_byte_tensor

        packed = serialize_byte_tensor(np.array(items, dtype=object))
        return {"b64": base64.b64encode(packed.item()).decode("ascii")}


def input_data(info: ModelInfo, payloads: Sequence[Mapping[str, np.ndarray]]) -> dict[str, Any]:
    """perf_analyzer's `--input-data` JSON for these requests, one data entry per request, in
    order (it sends them round-robin). Each tensor carries its shape, so variable lengths
    (sentences tokenized to different buckets) go as they are; a batching model's shape
    leaves out the batch axis, which perf_analyzer adds (`-b 1`)."""
    if not payloads:
        raise TritonForgeError(f"no requests to give perf_analyzer for model {info.name!r}")
    declared = {i.name: i for i in info.inputs}
    entries = []
    for index, payload in enumerate(payloads):
        if set(payload) != set(declared):
            raise TritonForgeError(f"request {index} has inputs {sorted(payload)}, but model "
                                   f"{info.name!r} takes {sorted(declared)}")
        entry = {}
        for name, array in payload.items():
            array = np.asarray(array)
            if info.max_batch_size:
                if array.ndim == 0 or array.shape[0] != 1:
                    raise TritonForgeError(f"request {index} input {name!r} has shape {list(array.shape)}: "
                                           "perf_analyzer is given one batch-1 request per entry")
                shape = array.shape[1:]
            else:
                shape = array.shape
            entry[name] = {"content": _content(array), "shape": list(shape)}
        entries.append(entry)
    return {"data": entries}


def requests_from_input_data(info: ModelInfo, data: Mapping[str, Any]) -> list[dict[str, np.ndarray]]:
    """The requests an `input_data` JSON describes, as arrays with the batch axis back: what
    perf_analyzer will send (the inverse of `input_data`)."""
    from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

    declared = {i.name: i for i in info.inputs}
    requests = []
    for entry in data["data"]:
        arrays = {}
        for name, tensor in entry.items():
            shape = ([1] if info.max_batch_size else []) + list(tensor["shape"])
            content, datatype = tensor["content"], declared[name].datatype
            if datatype != BYTES_DATATYPE:
                arrays[name] = np.array(content, dtype=triton_to_np_dtype(datatype)).reshape(shape)
                continue
            items = (deserialize_bytes_tensor(base64.b64decode(content["b64"])) if isinstance(content, dict)
                     else [item.encode("utf-8") for item in content])
            arrays[name] = np.array(list(items), dtype=object).reshape(shape)
        requests.append(arrays)
    return requests


# -- running -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnalyzerLevel:
    """perf_analyzer's figures for one model at one concurrency level."""

    model: str
    concurrency: int
    requests: int  # what its client counted
    server_inferences: int  # what the server's statistics counted during its measurement
    throughput: float  # requests/s
    latency_ms: Mapping[int, float]  # {50: p50, 95: p95, 99: p99}

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "concurrency": self.concurrency, "requests": self.requests,
                "server_inferences": self.server_inferences, "throughput_rps": round(self.throughput, 2),
                "latency_ms": {f"p{q}": round(self.latency_ms[q], 3) for q in PERCENTILES}}


class UnstableMeasurement(TritonForgeError):
    """perf_analyzer found no three windows in a row that agree within its stability bound."""


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def parse_output(model: str, concurrency: int, stdout: str, csv_text: str) -> AnalyzerLevel:
    """Throughput and percentiles from its `-f` CSV (latencies in microseconds), request
    counts from its report on stdout."""
    rows = [row for row in csv.DictReader(csv_text.splitlines())
            if row.get("Concurrency", "").strip() == str(concurrency)]
    client = re.search(r"Client:\s*\n\s*Request count: (\d+)", stdout)
    server = re.search(r"Server:\s*\n\s*Inference count: (\d+)", stdout)
    if len(rows) != 1 or client is None:
        raise TritonForgeError(f"perf_analyzer's report for {model!r} at concurrency {concurrency} "
                               f"has no figures for that level; its output ended with:\n{_tail(stdout)}")
    row = rows[0]
    return AnalyzerLevel(model, concurrency, int(client.group(1)), int(server.group(1)) if server else 0,
                         float(row["Inferences/Second"]),
                         {q: float(row[f"p{q} latency"]) / 1e3 for q in PERCENTILES})


def run_perf_analyzer(url: Endpoint | str, model: str, data_path: Path, concurrency: int,
                      window_requests: int, binary: Path | None = None, export_path: Path | None = None,
                      stability_percent: float = 10.0, timeout_s: float = 900.0) -> AnalyzerLevel:
    """One level over gRPC with the inputs of `data_path`, in perf_analyzer's synchronous
    mode (one thread per request in flight) and count windows: load runs without pause
    while it measures windows of at least `window_requests` requests, until three in a row
    agree within `stability_percent` (its default, 10%); it reports those three. (Not
    `--request-count`: that stops the load after N requests but ends its window at its next
    one-second poll, so a run of a few seconds reads up to a second too long.)
    `export_path`: also write the requests it measured, with their inputs, outputs and
    timestamps (`--profile-export-file`)."""
    binary = binary or find_perf_analyzer()
    with tempfile.TemporaryDirectory(prefix="perf_analyzer-") as scratch:
        report = Path(scratch) / "report.csv"
        command = [str(binary), "-m", model, "-i", "grpc", *connection_arguments(url),
                   "--input-data", str(data_path),
                   "--concurrency-range", str(concurrency), "--measurement-mode", "count_windows",
                   "--measurement-request-count", str(window_requests),
                   "--stability-percentage", f"{stability_percent:g}", "-f", str(report)]
        if export_path is not None:
            command += ["--profile-export-file", str(export_path)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise TritonForgeError(f"perf_analyzer did not finish {model!r} at concurrency {concurrency} "
                                   f"within {timeout_s:g} s: {' '.join(command)}") from exc
        except OSError as exc:
            raise TritonForgeError(f"perf_analyzer at {binary} could not be started ({exc}): "
                                   f"{INSTALL_HINT}") from exc
        output = done.stdout + done.stderr
        if done.returncode != 0 or not report.is_file():
            unstable = "stable measurement" in output
            error = UnstableMeasurement if unstable else TritonForgeError
            hint = " (a larger --requests gives it longer windows)" if unstable else ""
            raise error(f"perf_analyzer failed (exit {done.returncode}) on {model!r} at "
                        f"concurrency {concurrency}{hint}: {' '.join(command)}\n{_tail(output)}")
        return parse_output(model, concurrency, done.stdout, report.read_text())


def cross_check(url: Endpoint | str, models: Sequence[tuple[str, ModelInfo, str]],
                payloads: Sequence[Mapping[str, np.ndarray]], levels: Sequence[int],
                requests: int | None = 2000, duration_s: float | None = None,
                stage: Callable[[str, int], Callable[[], None]] | None = None,
                binary: Path | None = None) -> tuple[list[LevelResult], list[AnalyzerLevel]]:
    """Each (model, its info, batching label) at each level: our bench, then perf_analyzer
    with the same inputs and about as many requests as ours completed."""
    connection_arguments(url)  # refused before our bench runs, not after it
    binary = binary or find_perf_analyzer()
    stage = stage or (lambda _description, _total: (lambda: None))
    ours: list[LevelResult] = []
    theirs: list[AnalyzerLevel] = []
    with tempfile.TemporaryDirectory(prefix="perf_analyzer-data-") as scratch:
        for model, info, batching in models:
            data_path = Path(scratch) / f"{model}.json"
            data_path.write_text(json.dumps(input_data(info, payloads)))
            for level in levels:
                [result] = run_bench(url, [(model, batching)], payloads, [level], requests, duration_s, stage)
                ours.append(result)
                stage(f"perf_analyzer {model} concurrency {level}", 0)
                # three windows of a third each: about as many requests as ours
                theirs.append(run_until_stable(url, model, data_path, level, max(result.ok // 3, 1), binary))
    return ours, theirs


def run_until_stable(url: Endpoint | str, model: str, data_path: Path, level: int, window_requests: int,
                  binary: Path, retries: int = 2) -> AnalyzerLevel:
    """`run_perf_analyzer`, and when its windows never agree (short windows on a busy host),
    again with windows twice as long, up to `retries` times; the last failure is raised."""
    for attempt in range(retries):
        try:
            return run_perf_analyzer(url, model, data_path, level, window_requests << attempt, binary)
        except UnstableMeasurement:
            continue
    return run_perf_analyzer(url, model, data_path, level, window_requests << retries, binary)


def comparison(ours: Sequence[LevelResult], theirs: Sequence[AnalyzerLevel],
               tolerance: float = AGREEMENT) -> list[dict[str, Any]]:
    """Per model and level: both tools' figures, perf_analyzer's over ours, and whether
    throughput and p50 agree within `tolerance`."""
    by_level = {(r.model, r.concurrency): r for r in ours}
    rows = []
    for pa in theirs:
        mine = by_level[(pa.model, pa.concurrency)]
        figures = {"throughput_rps": (mine.throughput, pa.throughput),
                   **{f"p{q}_ms": (mine.percentile(q), pa.latency_ms[q]) for q in PERCENTILES}}
        ratios = {key: b / a if a > 0 else float("nan") for key, (a, b) in figures.items()}
        rows.append({"model": pa.model, "concurrency": pa.concurrency,
                     "bench": {k: round(a, 3) for k, (a, _b) in figures.items()},
                     "perf_analyzer": {k: round(b, 3) for k, (_a, b) in figures.items()},
                     "ratio": {k: round(v, 3) for k, v in ratios.items()},
                     "agree": all(abs(ratios[k] - 1) <= tolerance for k in ("throughput_rps", "p50_ms"))})
    return rows
