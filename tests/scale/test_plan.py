"""`tritonforge plan`: replicas and per-replica concurrency from a real bench curve."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.errors import TritonForgeError
from tritonforge.scale.plan import plan_replicas, read_plan, write_plan

runner = CliRunner()


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory, tiny_bert) -> Path:
    """The real `tritonforge bench --json` against a local Triton serving the tiny encoder."""
    from tritonforge.export.bert import BertOptions
    from tritonforge.pipeline.export import export_model
    from tritonforge.serving.local import LocalTriton

    repo = tmp_path_factory.mktemp("plan_repo")
    export_model("bert", BertOptions(model=str(tiny_bert), graph="plain"), repo, name="tiny")
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    log = tmp_path_factory.mktemp("plan_triton_log") / "triton.log"
    with LocalTriton(repo, log_file=log, http_port=0, grpc_port=0, metrics_port=0) as server:
        result = runner.invoke(app, ["bench", "tiny_text", "--url", server.grpc_url, "--concurrency",
                                     "1,2,4", "--requests", "60", "--json", str(path)])
    assert result.exit_code == 0, result.output
    return path


def report(*levels: tuple[int, float, float, int], model: str = "m") -> dict:
    """A bench report of (concurrency, req/s, p99 ms, errors) levels, in to_json's shape."""
    return {"url": "127.0.0.1:8001", "levels": [
        {"model": model, "batching": "dynamic", "concurrency": c, "requests": 100, "ok": 100 - e,
         "errors": e, "seconds": 1.0, "throughput_rps": rps,
         "latency_ms": {"p50": p99 / 2, "p95": p99 * 0.9, "p99": p99}, "first_error": ""}
        for c, rps, p99, e in levels]}


def test_plan_on_a_real_bench_reproduces_the_hand_calculation(bench_json, tmp_path):
    levels = {level["concurrency"]: level for level in json.loads(bench_json.read_text())["levels"]
              if level["model"] == "tiny_text"}
    assert sorted(levels) == [1, 2, 4] and all(level["errors"] == 0 for level in levels.values())
    # By hand: allow exactly the p99 measured at concurrency 2. Concurrency 2 then qualifies;
    # 4 qualifies too only if its p99 came out no higher.
    p99 = levels[2]["latency_ms"]["p99"]
    chosen = 4 if levels[4]["latency_ms"]["p99"] <= p99 else 2
    rps = levels[chosen]["throughput_rps"]
    # A target of 3.5 replicas' usable throughput (80 % of measured, headroom 0.2) needs 4.
    target = round(3.5 * rps * 0.8, 2)
    out = tmp_path / "plan.json"
    result = runner.invoke(app, ["plan", "--bench", str(bench_json), "--target-rps", str(target),
                                 "--p99-ms", str(p99), "-o", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    plan = json.loads(out.read_text())
    assert plan["model"] == "tiny_text"
    assert plan["concurrency"] == chosen
    assert plan["measured_rps"] == rps
    assert plan["usable_rps"] == pytest.approx(rps * 0.8)
    assert plan["replicas"] == math.ceil(target / (rps * 0.8)) == 4
    assert f"ceil({target:g} / {rps * 0.8:.6g})" in result.output
    assert f"= {chosen} (p99 {levels[chosen]['latency_ms']['p99']:g} ms)" in result.output
    assert read_plan(out).replicas == 4


def test_headroom_zero_uses_the_measured_throughput():
    plan = plan_replicas(report((1, 100.0, 10.0, 0), (8, 400.0, 40.0, 0)), 1000, 50, headroom=0)
    assert (plan.concurrency, plan.usable_rps, plan.replicas) == (8, 400.0, 3)  # ceil(2.5)


def test_the_highest_concurrency_within_the_p99_wins_and_errors_disqualify():
    levels = report((1, 100.0, 10.0, 0), (4, 300.0, 20.0, 0), (8, 380.0, 19.0, 3), (16, 420.0, 60.0, 0))
    plan = plan_replicas(levels, 480, 30, headroom=0.2)
    assert plan.concurrency == 4  # 8 had errors, 16 is over 30 ms
    assert plan.replicas == math.ceil(480 / (300 * 0.8)) == 2


def test_an_unreachable_p99_names_the_best_measured(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(report((2, 100.0, 25.5, 0), (4, 150.0, 31.0, 0), (8, 160.0, 12.0, 5))))
    result = runner.invoke(app, ["plan", "--bench", str(path), "--target-rps", "100", "--p99-ms", "20",
                                 "-o", str(tmp_path / "plan.json")], terminal_width=300)
    assert result.exit_code == 2
    assert "no measured level of 'm' meets p99 <= 20 ms" in result.output
    assert "best p99 measured is 25.5 ms, at concurrency 2" in result.output  # 12 ms had errors
    assert "--p99-ms 26" in result.output and "--concurrency 1,2" in result.output
    assert not (tmp_path / "plan.json").exists()


@pytest.mark.parametrize(("arguments", "message"), [
    ({"target_rps": 0}, "--target-rps 0 must be"),
    ({"target_rps": float("nan")}, "--target-rps nan must be"),
    ({"p99_ms": -5}, "--p99-ms -5 must be"),
    ({"headroom": 1.0}, "--headroom 1.0 must be in [0, 1)"),
    ({"model": "other"}, "--model 'other' is not in"),
])
def test_bad_plan_arguments_are_refused(arguments, message):
    with pytest.raises(TritonForgeError, match=re.escape(message)):
        plan_replicas(report((1, 100.0, 10.0, 0)), **{"target_rps": 10, "p99_ms": 20, **arguments})


def test_a_bench_with_only_failed_levels_is_refused():
    with pytest.raises(TritonForgeError, match="every level of 'm' .* had errors"):
        plan_replicas(report((1, 0.0, float("nan"), 100)), 10, 20)


@pytest.mark.parametrize("content", ["not json", "{}", '{"levels": [{"model": "m"}]}'])
def test_a_file_that_is_not_a_bench_report_is_refused(tmp_path, content):
    path = tmp_path / "bench.json"
    path.write_text(content)
    result = runner.invoke(app, ["plan", "--bench", str(path), "--target-rps", "10", "--p99-ms", "5"],
                           terminal_width=300)
    assert result.exit_code == 2
    assert "tritonforge bench --json" in result.output


def test_a_damaged_plan_is_refused(tmp_path):
    path = tmp_path / "plan.json"
    write_plan(plan_replicas(report((1, 100.0, 10.0, 0)), 10, 20), path)
    data = json.loads(path.read_text())
    assert read_plan(path).replicas == 1
    data["replicas"] = 0
    path.write_text(json.dumps(data))
    with pytest.raises(TritonForgeError, match="is damaged"):
        read_plan(path)
    with pytest.raises(TritonForgeError, match="does not exist"):
        read_plan(tmp_path / "missing.json")
