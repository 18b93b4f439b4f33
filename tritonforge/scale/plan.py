"""`tritonforge plan`: replicas and a per-replica concurrency target from a measured bench curve.

`tritonforge bench --json` measures one server (one replica) at several concurrency levels:
throughput and p99 latency at each. Replicas behind a load balancer are independent, so a
fleet of N replicas each kept at concurrency c serves about N times the throughput measured
at c, at the p99 measured at c. The plan therefore takes:

1. the highest measured concurrency whose p99 is within the target and that had no errors:
   the per-replica concurrency target (KServe's `scaleTarget` with `scaleMetric: concurrency`
   keeps each replica at about that many requests in flight);
2. the throughput measured there, less a headroom (default 20 %, `--headroom`): the
   autoscaler reacts after load rises, a replica's neighbours on a node take some of its CPU,
   and a bench on one quiet host is the best case;
3. replicas = ceil(target requests/s / usable throughput per replica).

No interpolation between levels: only measured points are trusted. Measure the levels you
care about (`bench --concurrency 1,2,4,8,16,32`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tritonforge.errors import TritonForgeError
from tritonforge.files import write_text_atomic

PLAN_VERSION = 1
DEFAULT_HEADROOM = 0.2


@dataclass(frozen=True)
class MeasuredLevel:
    """One bench level: what `LevelResult.to_json` wrote."""

    concurrency: int
    throughput_rps: float
    p99_ms: float
    errors: int

    @property
    def usable(self) -> bool:
        """Measured at all and without errors (a level that failed requests says nothing
        about the latency of answered ones)."""
        return self.errors == 0 and self.throughput_rps > 0 and math.isfinite(self.p99_ms)


@dataclass(frozen=True)
class Plan:
    model: str
    bench: str
    target_rps: float
    p99_ms: float
    headroom: float
    concurrency: int  # per replica: KServe's scaleTarget
    measured_rps: float  # one replica at that concurrency
    measured_p99_ms: float
    usable_rps: float  # measured_rps * (1 - headroom)
    replicas: int

    def arithmetic(self) -> list[str]:
        """The calculation, one line a step, with the numbers used."""
        return [
            f"per-replica concurrency: the highest measured level with p99 <= {self.p99_ms:g} ms and "
            f"no errors = {self.concurrency} (p99 {self.measured_p99_ms:g} ms)",
            f"per-replica throughput at concurrency {self.concurrency}: {self.measured_rps:g} req/s measured",
            f"usable per replica: {self.measured_rps:g} x (1 - headroom {self.headroom:g}) = "
            f"{self.usable_rps:.6g} req/s",
            f"replicas: ceil({self.target_rps:g} / {self.usable_rps:.6g}) = "
            f"ceil({self.target_rps / self.usable_rps:.6g}) = {self.replicas}",
            f"fleet: {self.replicas} x {self.usable_rps:.6g} = {self.replicas * self.usable_rps:.6g} req/s "
            f"usable (>= {self.target_rps:g}), {self.replicas * self.measured_rps:.6g} req/s measured "
            f"capacity; at most {self.replicas * self.concurrency} requests in flight",
        ]

    def to_json(self) -> dict[str, Any]:
        return {"plan_version": PLAN_VERSION, **asdict(self), "arithmetic": self.arithmetic()}


def read_json(option: str, path: Path, command: str, written_by: str) -> Any:
    """The JSON file that `option` names; a missing or unreadable one says which command writes it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise TritonForgeError(f"{option} {path} does not exist: write one with `{command}`") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TritonForgeError(f"{option} {path} is not JSON ({exc}): give the file that "
                               f"`{written_by}` wrote") from exc


def read_bench(path: Path) -> dict[str, Any]:
    report = read_json("--bench", path, "tritonforge bench MODEL --json BENCH.json",
                       "tritonforge bench --json")
    if not isinstance(report, dict) or not isinstance(report.get("levels"), list) or not report["levels"]:
        raise TritonForgeError(f"--bench {path} has no 'levels': give the file that "
                               "`tritonforge bench --json` wrote")
    return report


def measured_levels(report: dict[str, Any], model: str | None,
                    source: str) -> tuple[str, list[MeasuredLevel]]:
    """The chosen model's levels (default: the first model in the file, the one benched)."""
    models = list(dict.fromkeys(level.get("model") for level in report["levels"]))
    chosen = model or models[0]
    if chosen not in models:
        raise TritonForgeError(f"--model {chosen!r} is not in {source}: it has {', '.join(map(str, models))}")
    levels = []
    for level in report["levels"]:
        if level.get("model") != chosen:
            continue
        try:
            levels.append(MeasuredLevel(int(level["concurrency"]), float(level["throughput_rps"]),
                                        float(level["latency_ms"]["p99"]), int(level["errors"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise TritonForgeError(f"{source}: a level of {chosen!r} lacks {exc} (concurrency, "
                                   "throughput_rps, latency_ms.p99, errors): give the file that "
                                   "`tritonforge bench --json` wrote") from exc
    return chosen, sorted(levels, key=lambda level: level.concurrency)


def plan_replicas(report: dict[str, Any], target_rps: float, p99_ms: float, model: str | None = None,
                  headroom: float = DEFAULT_HEADROOM, source: str = "the bench report") -> Plan:
    """The plan for `target_rps` at p99 <= `p99_ms` from one bench report (see the module)."""
    if not (target_rps > 0 and math.isfinite(target_rps)):
        raise TritonForgeError(f"--target-rps {target_rps} must be a number of requests/s above 0")
    if not (p99_ms > 0 and math.isfinite(p99_ms)):
        raise TritonForgeError(f"--p99-ms {p99_ms} must be a latency in ms above 0")
    if not 0 <= headroom < 1:
        raise TritonForgeError(f"--headroom {headroom} must be in [0, 1): the share of measured "
                               f"throughput kept spare (default {DEFAULT_HEADROOM})")
    chosen, levels = measured_levels(report, model, source)
    usable = [level for level in levels if level.usable]
    if not usable:
        raise TritonForgeError(f"every level of {chosen!r} in {source} had errors or no answers: "
                               "fix the server and run `tritonforge bench` again")
    meeting = [level for level in usable if level.p99_ms <= p99_ms]
    if not meeting:
        best = min(usable, key=lambda level: level.p99_ms)
        lower = (f", bench lower concurrency levels (it starts at {levels[0].concurrency}: "
                 "e.g. --concurrency 1,2)" if levels[0].concurrency > 1 else "")
        raise TritonForgeError(
            f"no measured level of {chosen!r} meets p99 <= {p99_ms:g} ms: the best p99 measured is "
            f"{best.p99_ms:g} ms, at concurrency {best.concurrency}. More replicas cannot lower the "
            f"latency of one request: allow --p99-ms {math.ceil(best.p99_ms)} or more{lower}, or "
            "make the model faster (a lower precision, a GPU export)")
    top = max(meeting, key=lambda level: level.concurrency)
    per_replica = top.throughput_rps * (1 - headroom)
    return Plan(model=chosen, bench=source, target_rps=target_rps, p99_ms=p99_ms, headroom=headroom,
                concurrency=top.concurrency, measured_rps=top.throughput_rps,
                measured_p99_ms=top.p99_ms, usable_rps=per_replica,
                replicas=math.ceil(target_rps / per_replica))


def write_plan(plan: Plan, path: Path) -> None:
    write_text_atomic(Path(path), json.dumps(plan.to_json(), indent=2) + "\n")


def read_plan(path: Path) -> Plan:
    """A PLAN.json written by `tritonforge plan`."""
    data = read_json("--plan", path, "tritonforge plan --bench BENCH.json --target-rps R --p99-ms P "
                     "-o PLAN.json", "tritonforge plan")
    if not isinstance(data, dict) or data.get("plan_version") != PLAN_VERSION:
        raise TritonForgeError(f"--plan {path} is not a tritonforge plan (version {PLAN_VERSION}): "
                               "write it again with `tritonforge plan`")
    fields = {name: data.get(name) for name in Plan.__dataclass_fields__}
    try:
        plan = Plan(**fields)
        if plan.replicas < 1 or plan.concurrency < 1:
            raise ValueError("replicas and concurrency must be at least 1")
    except (TypeError, ValueError) as exc:
        raise TritonForgeError(f"--plan {path} is damaged ({exc}): write it again with "
                               "`tritonforge plan`") from exc
    return plan
