"""`query`, `verify --triton` and `bench` against the real tritonserver."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.data import sentences
from tritonforge.modalities.base import raw_bytes_array
from tritonforge.pipeline.verify import verify_model
from tritonforge.serving.bench import run_bench
from tritonforge.serving.client import bench_payloads, connect, model_info
from tritonforge.serving.repository import ModelRepository

runner = CliRunner()


def test_query_text_ensemble_prints_shape_norm_and_similarity(triton):
    result = runner.invoke(app, ["query", "bert_fp32_text", "--url", triton.grpc_url,
                                 "--text", "A man is eating food.",
                                 "--text", "A man is eating a piece of bread.",
                                 "--text", "The stock market fell today."], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "[3, 384]" in result.output and "cosine similarity" in result.output
    rows = [line for line in result.output.splitlines() if "#1 A man is eating a piece" in line]
    cells = [c.strip() for c in rows[0].split("│") if c.strip()]
    norm, to_food, to_bread, to_market = map(float, cells[1:5])
    assert norm == pytest.approx(1.0, abs=1e-3)  # MiniLM normalises its embeddings
    assert to_bread == pytest.approx(1.0, abs=1e-3) and to_food > 0.5 > to_market


def test_query_token_model_tokenizes_with_the_repository(triton, served_repo):
    result = runner.invoke(app, ["query", "tiny", "--url", triton.grpc_url, "--repo", str(served_repo),
                                 "--text", "hello", "--text", "world"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "[2, 32]" in result.output  # sentence_embedding of the 32-wide tiny encoder


def test_query_classifier_prints_labels_with_probabilities(triton):
    result = runner.invoke(app, ["query", "tiny_cls_text", "--url", triton.grpc_url, "--text", "great"],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert all(label in result.output for label in ("negative", "neutral", "positive"))


def test_query_input_json_sends_the_named_arrays(triton, tmp_path):
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"input_ids": [[101, 7592, 102]], "attention_mask": [[1, 1, 1]],
                                   "token_type_ids": [[0, 0, 0]]}))
    result = runner.invoke(app, ["query", "tiny", "--url", triton.grpc_url, "--input-json", str(request)],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "[1, 3, 32]" in result.output and "[1, 32]" in result.output


def test_query_errors_name_the_problem(triton, tmp_path):
    unknown = runner.invoke(app, ["query", "nope", "--url", triton.grpc_url, "--text", "x"])
    assert unknown.exit_code == 2 and "nope" in unknown.output and "unknown model" in unknown.output
    empty = runner.invoke(app, ["query", "bert_fp32_text", "--url", triton.grpc_url, "--text", ""])
    assert empty.exit_code == 2 and "empty string" in empty.output
    (tmp_path / "bad.json").write_text(json.dumps({"ids": [[1]]}))
    wrong = runner.invoke(app, ["query", "tiny", "--url", triton.grpc_url, "--input-json",
                                str(tmp_path / "bad.json")])
    assert wrong.exit_code == 2 and "'ids'" in wrong.output and "input_ids" in wrong.output


def test_nothing_listening_is_named_with_what_to_do():
    from tritonforge.serving.local import free_port

    result = runner.invoke(app, ["query", "tiny", "--url", f"127.0.0.1:{free_port()}", "--text", "x"])
    assert result.exit_code == 3  # server or network trouble, not bad input
    assert "no Triton server answers" in result.output and "tritonforge serve" in result.output


def test_verify_with_triton_checks_parity_and_times_three_runtimes(triton, served_repo, tmp_path):
    report_path = tmp_path / "verify.json"
    result = runner.invoke(app, ["verify", "tiny", "--repo", str(served_repo), "--samples", "16",
                                 "--iterations", "3", "--triton", triton.grpc_url,
                                 "--json", str(report_path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    # The export's target (OpenVINO here) runs locally and, through the wrapper, in Triton.
    assert set(report["latency_ms"]) == {"pytorch", "openvino", "triton"}
    assert report["latency_ms"]["triton"]["n"] == 3
    assert set(report["serving_request"]["latency_ms"]) == {"pytorch", "openvino", "triton"}
    assert report["triton"]["url"] == triton.grpc_url and report["triton"]["parity"]["passed"] is True
    assert report["triton"]["parity"]["value"] >= 0.99999


def test_verify_minilm_through_triton_meets_the_cosine_bar(triton, served_repo):
    report = verify_model(served_repo, "bert_fp32", samples=32, iterations=1, triton_url=triton.grpc_url)
    checks = {c.metric: c.value for c in report.triton_parity.checks}
    assert report.triton_parity.passed and checks["cosine"] >= 0.9999


def test_a_quantized_model_served_by_triton_matches_its_quantized_reference(triton, served_repo):
    report = verify_model(served_repo, "tiny_w6a6", samples=32, iterations=1, triton_url=triton.grpc_url)
    assert report.precision == "w6a6" and report.triton_parity.passed
    assert report.triton_parity.primary.value >= 0.999


def test_bench_runs_with_and_without_dynamic_batching_without_errors(triton):
    client = connect(triton.grpc_url)
    info = model_info(client, "tiny_text", triton.grpc_url)
    kind, payloads = bench_payloads(info, None)
    assert kind == "text" and len(payloads) == len(sentences())
    payloads = payloads[:40]
    results = run_bench(triton.grpc_url, [("tiny_text", "dynamic"), ("tiny_text_nobatch", "none")],
                        payloads, [1, 8], requests=120)
    assert [(r.model, r.concurrency) for r in results] == [
        ("tiny_text", 1), ("tiny_text", 8), ("tiny_text_nobatch", 1), ("tiny_text_nobatch", 8)]
    for result in results:
        assert (result.ok, result.errors) == (120, 0)
        assert len(result.latencies_ms) == 120 and result.throughput > 0


def test_bench_cli_writes_json_and_plot(triton, tmp_path):
    result = runner.invoke(app, ["bench", "tiny_text", "--url", triton.grpc_url, "--concurrency", "1,4",
                                 "--requests", "40", "--json", str(tmp_path / "bench.json"),
                                 "--plot", str(tmp_path / "bench.png")], terminal_width=200)
    assert result.exit_code == 0, result.output
    levels = json.loads((tmp_path / "bench.json").read_text())["levels"]
    assert [(r["model"], r["batching"], r["concurrency"], r["requests"], r["errors"]) for r in levels] == [
        ("tiny_text", "dynamic", 1, 40, 0), ("tiny_text", "dynamic", 4, 40, 0),
        ("tiny_text_nobatch", "none", 1, 40, 0), ("tiny_text_nobatch", "none", 4, 40, 0)]
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_compares_targets_on_the_same_payloads(triton, tmp_path, bf16):
    # The tiny encoder for OpenVINO FP32 against its BF16 and W6A6 exports, through Triton.
    result = runner.invoke(app, ["bench", "tiny_text", "--url", triton.grpc_url, "--concurrency", "1,4",
                                 "--requests", "30", "--compare", "tiny_bf16_text,tiny_w6a6_text",
                                 "--json", str(tmp_path / "bench.json")], terminal_width=200)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "bench.json").read_text())
    assert {(r["model"], r["concurrency"]) for r in report["levels"] if r["errors"] == 0} >= {
        ("tiny_bf16_text", 1), ("tiny_bf16_text", 4), ("tiny_w6a6_text", 4)}
    rows = {(r["model"], r["concurrency"]): r for r in report["comparison"]}
    assert set(rows) == {(m, c) for m in ("tiny_bf16_text", "tiny_w6a6_text") for c in (1, 4)}
    for (_model, level), row in rows.items():
        base = next(r for r in report["levels"] if (r["model"], r["concurrency"]) == ("tiny_text", level))
        assert row["p50_ratio"] == pytest.approx(row["p50_ms"] / base["latency_ms"]["p50"], rel=0.01)
    assert "against tiny_text" in result.output


def test_bench_compare_refuses_a_model_with_other_inputs(triton):
    result = runner.invoke(app, ["bench", "tiny_text", "--url", triton.grpc_url, "--compare", "tiny",
                                 "--requests", "5"], terminal_width=200)
    assert result.exit_code == 2 and "differ from tiny_text's" in result.output


def test_bench_counts_errors_instead_of_stopping(triton):
    # every other request is an empty string
    payloads = [{"TEXT": raw_bytes_array([b"fine"])}, {"TEXT": raw_bytes_array([b""])}]
    [result] = run_bench(triton.grpc_url, [("tiny_text", "dynamic")], payloads, [2], requests=20)
    assert (result.ok, result.errors) == (10, 10)
    assert "empty string" in result.first_error


@pytest.mark.parametrize("levels", ["0", "1,x", ""])
def test_bad_concurrency_levels_are_refused(triton, levels):
    result = runner.invoke(app, ["bench", "tiny_text", "--url", triton.grpc_url, "--concurrency", levels])
    assert result.exit_code == 2 and "--concurrency" in result.output


def test_verify_triton_names_a_missing_server_and_a_version_it_does_not_serve(triton, served_repo):
    from tritonforge.errors import TritonForgeError
    from tritonforge.serving.client import TritonSession
    from tritonforge.serving.local import free_port

    with pytest.raises(TritonForgeError, match="no Triton server answers"):
        verify_model(served_repo, "tiny", samples=4, iterations=1, triton_url=f"127.0.0.1:{free_port()}")
    with pytest.raises(TritonForgeError, match=r"serves 'tiny' versions \['1'\], not 2"):
        TritonSession(triton.grpc_url, "tiny", 2)


@pytest.mark.parametrize("name, target, precision", [
    ("tiny", "openvino", "fp32"), ("tiny_bf16", "openvino", "bf16"), ("tiny_cls", "onnxruntime", "fp32"),
    ("tiny_w6a6", "openvino", "w6a6")])
def test_every_local_target_passes_parity_through_triton(triton, served_repo, name, target, precision,
                                                        request):
    # Each target that serves locally (OpenVINO in FP32, BF16 and INT8 QDQ; ONNX Runtime) answers
    # through Triton within its precision's tolerance of the PyTorch reference.
    if precision == "bf16":
        request.getfixturevalue("bf16")  # skips on a CPU without BF16
    manifest = ModelRepository(served_repo).read_manifest(name)
    assert (manifest["serving"]["target"], manifest["precision"]) == (target, precision)
    report = verify_model(served_repo, name, samples=32, iterations=1, triton_url=triton.grpc_url)
    assert report.runtime == target and report.parity.passed and report.triton_parity.passed
