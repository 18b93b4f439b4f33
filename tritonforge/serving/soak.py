"""`soak`: sustained load where every answer is checked.

N requests at concurrency C over asynchronous gRPC, alternating between an export's tensor model
(inputs encoded here, as `query --repo` does) and its raw-input ensemble (`<name>_text`, ...)
when the server has one, each request one real input (sentences of mixed lengths, photographs)
in turn. Every response is compared with ONNX Runtime on the same export, run here on the same
encoded input, each output by its kind's agreement (`tritonforge.outputs`): detections by the
IoU of matched boxes and their labels, images by PSNR, class scores by top-1 agreement and
cosine, embeddings and other float tensors by cosine (at least `min_cosine`), integer tensors
by equality. An answer is right when every output agrees.

Which reference: a tensor-model response names the version that answered, and is compared with
that version's model.onnx (read from the repository on first sight, so versions published
during the soak are checked too). An ensemble response names the ensemble's version, but its
steps run the latest loaded version of the model, which may be older or newer for a moment
while a new version goes live; it is right when it agrees with any version in the repository.
The version of each answer is kept, so a report says when responses switched to a new one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.figures import save_figure
from tritonforge.modalities import manifest_io
from tritonforge.outputs import COSINE_MIN, Tolerances, compare_outputs
from tritonforge.serving.client import ModelInfo, infer_inputs, model_info, model_ready
from tritonforge.serving.endpoint import Endpoint
from tritonforge.serving.repository import ModelRepository
from tritonforge.spec import Parity
from tritonforge.triton_config import MODEL_FILE

STATUS_OK, STATUS_ERROR, STATUS_WRONG = "ok", "error", "wrong"


@dataclass(frozen=True)
class SoakInput:
    label: str
    tensors: dict[str, np.ndarray]  # the tensor model's request
    raw: dict[str, np.ndarray] | None  # the ensemble's request (None: no ensemble)


@dataclass(frozen=True)
class Outcome:
    """One request: when it was sent (seconds from the start), to which model, how it ended."""

    start_s: float
    latency_ms: float
    model: str
    status: str
    version: str = ""
    cosine: float = float("nan")  # the lowest over the outputs judged by cosine (NaN: none is)
    error: str = ""
    agreements: Mapping[str, Parity] = field(default_factory=dict)  # by output (a group: its name)

    def to_json(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.__dict__.items() if k != "agreements"},
                "agreements": {name: parity.to_json() for name, parity in self.agreements.items()}}

    def describe(self) -> str:
        """What went wrong: the error, or the outputs that disagreed and by how much."""
        if self.error:
            return self.error
        return "; ".join(f"{name}: {parity.describe()}" for name, parity in self.agreements.items()
                         if not parity.passed) or "no version in the repository to compare with"


class References:
    """ONNX Runtime's answers per version of the export, computed on first use."""

    def __init__(self, repo: Path | str, name: str, inputs: Sequence[SoakInput], outputs: Sequence[str],
                 threads: int = 1):
        self.repository, self.name = ModelRepository(repo), name
        self.inputs, self.outputs, self.threads = inputs, list(outputs), threads
        self._answers: dict[int, list[dict[str, np.ndarray]]] = {}

    def answers(self, version: int) -> list[dict[str, np.ndarray]]:
        if version not in self._answers:
            from tritonforge.runtime import ort_session, run_session

            _number, folder = self.repository.resolve(self.name, version)
            session = ort_session(folder / MODEL_FILE, threads=self.threads)
            self._answers[version] = [
                {k: v for k, v in run_session(session, item.tensors).items() if k in self.outputs}
                for item in self.inputs]
        return self._answers[version]

    @property
    def known(self) -> set[int]:
        return set(self._answers)

    def versions(self) -> list[int]:
        return self.repository.versions(self.name)


def lowest_cosine(judged: Mapping[str, Parity]) -> float:
    """The lowest cosine over the outputs judged by cosine (NaN when none is)."""
    cosines = [c.value for parity in judged.values() for c in parity.checks if c.metric.endswith(COSINE_MIN)]
    return min(cosines) if cosines else float("nan")


def agreement_rows(outcomes: Sequence[Outcome]) -> dict[str, dict[str, Any]]:
    """Per compared output (a group by its name): its kind, and for each metric its worst value
    over the answers, its bar, and how many answers missed the bar."""
    rows: dict[str, dict[str, Any]] = {}
    for outcome in outcomes:
        for name, parity in outcome.agreements.items():
            row = rows.setdefault(name, {"kind": parity.details.get("kind"), "metrics": {}})
            for check in parity.checks:
                first = {"worst": check.value, "tolerance": check.tolerance,
                         "higher_is_better": check.higher_is_better, "failed": 0}
                seen = row["metrics"].setdefault(check.metric, first)
                if np.isnan(check.value) or np.isnan(seen["worst"]):
                    seen["worst"] = float("nan")
                else:
                    seen["worst"] = (min if check.higher_is_better else max)(seen["worst"], check.value)
                seen["failed"] += not check.passed
    for row in rows.values():
        for seen in row["metrics"].values():
            seen["worst"] = round(float(seen["worst"]), 6)
    return rows


def soak_inputs(repo: Path | str, name: str, info: ModelInfo, raw_info: ModelInfo | None,
                count: int | None = None) -> tuple[list[SoakInput], list[str]]:
    """The real inputs of the export's modality (each encoded for the tensor model and, when
    there is an ensemble, packed as its raw request), and the outputs to compare: those whose
    shape does not depend on the input's length (an embedding, class scores), else all."""
    repository = ModelRepository(repo)
    manifest = repository.read_manifest(name)
    if "io" not in manifest:
        raise TritonForgeError(f"{name!r} is a companion model: soak the export it belongs to "
                               f"({manifest.get('companion_of', {}).get('name', '?')!r})")
    _version, folder = repository.resolve(name)
    io = manifest_io(manifest)
    if info.sequence:
        raise TritonForgeError(f"{name!r} is a streaming model: soak takes whole requests; use "
                               "`tritonforge bench` for streams")
    modality = io.preprocessing
    raw = modality.sample_raw(count, folder)
    if not raw:
        raise TritonForgeError(f"the {modality.kind} modality of {name!r} has no sample inputs to send")
    inputs = [SoakInput(modality.describe_raw(item, index), modality.encode([item], io, folder, None),
                        modality.request([item]) if raw_info is not None else None)
              for index, item in enumerate(raw)]
    fixed = [o.name for o in info.outputs if all(d >= 0 for d in o.shape[1:])]
    return inputs, fixed or [o.name for o in info.outputs]


@dataclass
class SoakReport:
    url: str
    name: str
    requests: int
    concurrency: int
    min_cosine: float
    seconds: float
    outcomes: list[Outcome] = field(default_factory=list)
    started_at: float = 0.0  # Unix time of the first request (outcomes count from it)

    def rows(self) -> list[dict[str, Any]]:
        """One row per model, then the total."""
        models = sorted({o.model for o in self.outcomes})
        return [self._row(model, [o for o in self.outcomes if o.model == model]) for model in models] + \
            [self._row("all", self.outcomes)]

    def _row(self, model: str, outcomes: Sequence[Outcome]) -> dict[str, Any]:
        latencies = [o.latency_ms for o in outcomes if o.status != STATUS_ERROR]
        cosines = [o.cosine for o in outcomes if o.status != STATUS_ERROR and not np.isnan(o.cosine)]

        def percentile(q: float) -> float | None:
            return round(float(np.percentile(latencies, q)), 3) if latencies else None

        versions: dict[str, dict[str, float]] = {}
        for o in outcomes:
            if o.version:
                seen = versions.setdefault(o.version, {"first_s": o.start_s, "last_s": o.start_s, "n": 0})
                seen["first_s"] = min(seen["first_s"], o.start_s)
                seen["last_s"] = max(seen["last_s"], o.start_s)
                seen["n"] += 1
        return {"model": model, "requests": len(outcomes),
                "ok": sum(o.status == STATUS_OK for o in outcomes),
                "errors": sum(o.status == STATUS_ERROR for o in outcomes),
                "wrong": sum(o.status == STATUS_WRONG for o in outcomes),
                "throughput_rps": round(len(latencies) / self.seconds, 2) if self.seconds else 0.0,
                "latency_ms": {f"p{q}": percentile(q) for q in (50, 95, 99)},
                "min_cosine": round(min(cosines), 6) if cosines else None,
                "agreement": agreement_rows(outcomes),
                "versions": {v: {k: round(x, 3) for k, x in s.items()} for v, s in sorted(versions.items())}}

    @property
    def failed(self) -> int:
        return sum(o.status != STATUS_OK for o in self.outcomes)

    def first_problems(self, limit: int = 3) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != STATUS_OK][:limit]

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "name": self.name, "started_at": round(self.started_at, 3),
                "requests": self.requests,
                "concurrency": self.concurrency, "min_cosine": self.min_cosine,
                "seconds": round(self.seconds, 3), "models": self.rows(),
                "problems": [o.to_json() for o in self.first_problems(20)]}


async def _soak(endpoint: Endpoint, models: Sequence[tuple[str, bool]], inputs: Sequence[SoakInput],
                references: References, kinds: Mapping[str, str], tolerances: Tolerances, requests: int,
                concurrency: int, tick: Callable[[], None], timeout_s: float
                ) -> tuple[list[Outcome], float, float]:
    import tritonclient.grpc.aio as aioclient

    client = endpoint.aio_client()
    prepared = {raw: [infer_inputs(item.raw if raw else item.tensors, aioclient) for item in inputs]
                for _model, raw in models}
    outcomes: list[Outcome] = []
    issued = 0
    start, started_at = time.perf_counter(), time.time()

    computing = asyncio.Lock()

    async def answers(version: int) -> list[dict[str, np.ndarray]] | None:
        """A version's answers; a new version's are computed off the event loop, once. None
        when the version left the repository before they were (`prune` removed it)."""
        if version not in references.known:
            async with computing:
                if version not in references.known:
                    try:
                        await asyncio.to_thread(references.answers, version)
                    except Exception:
                        if version in references.versions():
                            raise
                        return None
        return references.answers(version)

    def agreeing(judged: Mapping[str, Parity]) -> tuple[bool, int]:
        """Right first, then the most checks passed."""
        checks = [c for parity in judged.values() for c in parity.checks]
        return all(c.passed for c in checks), sum(c.passed for c in checks)

    async def judge(raw: bool, index: int, result) -> tuple[str, str, dict[str, Parity]]:
        version = result.get_response().model_version
        got = {name: result.as_numpy(name) for name in references.outputs}
        if raw:  # the ensemble's steps run the latest loaded version of the model: the closest one
            judged = max([compare_outputs(kinds, known[index], got, tolerances)
                          for v in references.versions() if (known := await answers(v)) is not None],
                         key=agreeing, default={})
        else:
            known = await answers(int(version))
            judged = {} if known is None else compare_outputs(kinds, known[index], got, tolerances)
        right = bool(judged) and all(parity.passed for parity in judged.values())
        return (STATUS_OK if right else STATUS_WRONG), version, judged

    async def worker() -> None:
        nonlocal issued
        while issued < requests:
            number = issued
            issued += 1
            model, raw = models[number % len(models)]
            index = (number // len(models)) % len(inputs)
            sent = time.perf_counter()
            try:
                result = await client.infer(model, prepared[raw][index], client_timeout=timeout_s,
                                            headers=endpoint.call_headers)
            except Exception as exc:  # counted and reported, the soak goes on
                outcomes.append(Outcome(sent - start, (time.perf_counter() - sent) * 1e3, model,
                                        STATUS_ERROR, error=str(exc).splitlines()[0][:300]))
                tick()
                continue
            latency = (time.perf_counter() - sent) * 1e3
            # Judged aside, so the load keeps its pace while a new version's answers are computed.
            judging.append(asyncio.create_task(record(sent - start, latency, model, raw, index, result)))

    async def record(start_s: float, latency: float, model: str, raw: bool, index: int, result) -> None:
        status, version, judged = await judge(raw, index, result)
        outcomes.append(Outcome(start_s, latency, model, status, version, lowest_cosine(judged),
                                agreements=judged))
        tick()

    judging: list[asyncio.Task] = []
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await asyncio.gather(*judging)
    finally:
        await client.close()
    return outcomes, time.perf_counter() - start, started_at


def run_soak(url: Endpoint | str, repo: Path | str, name: str, requests: int = 10_000, concurrency: int = 32,
             min_cosine: float = 0.9999, count: int | None = None, raw_model: bool = True,
             stage: Callable[[str, int], Callable[[], None]] | None = None,
             timeout_s: float = 60.0) -> SoakReport:
    """Soak `name` (and its raw-input ensemble, if served and `raw_model`) on the server at `url`."""
    from tritonforge.serving.client import connect

    endpoint = Endpoint.of(url)
    if requests < 1 or concurrency < 1:
        raise TritonForgeError(f"--requests {requests} and --concurrency {concurrency} must be at least 1")
    if not 0 < min_cosine <= 1:
        raise TritonForgeError(f"--min-cosine {min_cosine} must be in (0, 1], e.g. 0.9999")
    stage = stage or (lambda _description, _total: (lambda: None))
    client = connect(endpoint)
    try:
        info = model_info(client, name, endpoint)
        modality = info.modality(repo)
        ensemble = f"{name}{modality.suffix}" if modality.suffix else None
        raw_info = (model_info(client, ensemble, endpoint)
                    if raw_model and ensemble and model_ready(client, ensemble, endpoint) else None)
    finally:
        client.close()
    tick = stage("encoding the inputs and computing ONNX Runtime's answers", 0)
    inputs, outputs = soak_inputs(repo, name, info, raw_info, count)
    references = References(repo, name, inputs, outputs)
    declared = info.output_kinds
    kinds = {output: declared[output] for output in outputs}
    if references.versions():  # the latest now, the others as their answers are seen
        references.answers(references.versions()[-1])
    models = [(name, False)] + ([(ensemble, True)] if raw_info is not None else [])
    tick = stage(f"{requests} requests to {' and '.join(m for m, _raw in models)} at concurrency "
                 f"{concurrency}", requests)
    outcomes, seconds, started_at = asyncio.run(_soak(endpoint, models, inputs, references, kinds,
                                                      Tolerances(min_cosine=min_cosine), requests,
                                                      concurrency, tick, timeout_s))
    return SoakReport(str(endpoint), name, requests, concurrency, min_cosine, seconds,
                      sorted(outcomes, key=lambda o: o.start_s), started_at)


def plot_soak(report: SoakReport, path: Path) -> Path:
    """Latency of every request over the soak (one colour per model), wrong answers and errors
    marked, and the throughput per second below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True,
                                         gridspec_kw={"height_ratios": [3, 1]})
    for index, model in enumerate(sorted({o.model for o in report.outcomes})):
        rows = [o for o in report.outcomes if o.model == model and o.status == STATUS_OK]
        top.scatter([o.start_s for o in rows], [o.latency_ms for o in rows], s=2, color=f"C{index}",
                    alpha=0.5, label=model)
    for status, marker, colour in ((STATUS_WRONG, "x", "red"), (STATUS_ERROR, "v", "black")):
        rows = [o for o in report.outcomes if o.status == status]
        if rows:
            top.scatter([o.start_s for o in rows], [o.latency_ms for o in rows], s=12, marker=marker,
                        color=colour, label=f"{status} ({len(rows)})")
    top.set_ylabel("latency (ms)")
    top.set_yscale("log")
    top.set_title(f"soak {report.name}: {len(report.outcomes)} requests at concurrency "
                  f"{report.concurrency} ({report.url})")
    top.grid(alpha=0.3)
    top.legend(fontsize=8, markerscale=3)
    seconds = int(np.ceil(report.seconds)) or 1
    counts = np.bincount([int(o.start_s) for o in report.outcomes if o.status != STATUS_ERROR],
                         minlength=seconds)
    bottom.bar(np.arange(len(counts)) + 0.5, counts, width=1.0, color="C0", alpha=0.6)
    bottom.set_xlabel("seconds since the start")
    bottom.set_ylabel("answers/s")
    bottom.grid(alpha=0.3)
    return save_figure(figure, path)
