"""`bench --perf-analyzer`: Triton's perf_analyzer driven with bench's real inputs.

The input-data JSON and the missing or failing binary are checked everywhere; the runs against
the real tritonserver need perf_analyzer, which `make test` installs (`make perf-analyzer`); they
skip with the reason only where that installation failed.
How closely the two tools' figures agree is a measurement (README), not asserted here."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.data import sentences
from tritonforge.errors import TritonForgeError
from tritonforge.export.bert import tokenize
from tritonforge.export.bert.model import embedded_model_dir
from tritonforge.modalities.base import raw_bytes_array
from tritonforge.serving.client import ModelInfo, TensorInfo, bench_payloads, connect, model_info
from tritonforge.serving.perf_analyzer import (
    find_perf_analyzer,
    input_data,
    requests_from_input_data,
    run_perf_analyzer,
    run_until_stable,
)

runner = CliRunner()
TEXT_ENSEMBLE = ModelInfo("text_ensemble", ("1",), "ensemble", (TensorInfo("TEXT", "BYTES", (-1, 1)),),
                          (TensorInfo("sentence_embedding", "FP32", (-1, 384)),), max_batch_size=32)
TOKEN_INPUTS = tuple(TensorInfo(name, "INT64", (-1, -1)) for name in ("input_ids", "attention_mask",
                                                                     "token_type_ids"))
TOKEN_MODEL = ModelInfo("token_model", ("1",), "python", TOKEN_INPUTS,
                        (TensorInfo("sentence_embedding", "FP32", (-1, 384)),), max_batch_size=32)


def missing() -> str:
    """Why perf_analyzer cannot run here (`make test` installs it; where that failed, the
    error says why), or '' when it can."""
    try:
        find_perf_analyzer()
    except TritonForgeError as exc:
        return str(exc)
    return ""


MISSING = missing()
needs_perf_analyzer = pytest.mark.skipif(bool(MISSING), reason=MISSING or "installed")


def token_payloads(texts: list[str]) -> list[dict[str, np.ndarray]]:
    """One request per sentence, each as long as its own tokens (lengths differ)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    return [tokenize(tokenizer, [text], None) for text in texts]


def assert_same_requests(actual: list[dict[str, np.ndarray]], expected: list[dict[str, np.ndarray]]) -> None:
    assert len(actual) == len(expected)
    for got, sent in zip(actual, expected, strict=True):
        assert sorted(got) == sorted(sent)
        for name in sent:
            assert got[name].shape == sent[name].shape and got[name].dtype == sent[name].dtype
            assert got[name].tolist() == sent[name].tolist()


# -- the input-data JSON -------------------------------------------------------------------


def test_a_text_ensemble_gets_one_entry_per_sentence_as_a_string_with_its_shape():
    texts = [*sentences(3), "Café, naïve, 東京: not ASCII"]
    payloads = [{"TEXT": raw_bytes_array([text.encode("utf-8")])} for text in texts]
    data = input_data(TEXT_ENSEMBLE, payloads)
    assert data == {"data": [{"TEXT": {"content": [text], "shape": [1]}} for text in texts]}
    assert_same_requests(requests_from_input_data(TEXT_ENSEMBLE, json.loads(json.dumps(data))), payloads)


def test_bytes_that_are_not_utf8_travel_as_base64_of_length_prefixed_strings():
    payloads = [{"TEXT": raw_bytes_array([b"\xff\xd8\xff\xe0 a JPEG header"])}]
    data = input_data(TEXT_ENSEMBLE, payloads)
    [entry] = data["data"]
    assert set(entry["TEXT"]["content"]) == {"b64"} and entry["TEXT"]["shape"] == [1]
    assert_same_requests(requests_from_input_data(TEXT_ENSEMBLE, data), payloads)


def test_a_token_model_gets_flat_token_ids_with_each_request_own_length():
    texts = sentences(4)
    payloads = token_payloads(texts)
    data = input_data(TOKEN_MODEL, payloads)
    lengths = [len(p["input_ids"][0]) for p in payloads]
    assert len(set(lengths)) > 1  # real sentences: variable shapes, which perf_analyzer takes per entry
    for entry, payload, length in zip(data["data"], payloads, lengths, strict=True):
        assert sorted(entry) == ["attention_mask", "input_ids", "token_type_ids"]
        assert entry["input_ids"] == {"content": payload["input_ids"][0].tolist(), "shape": [length]}
        assert entry["attention_mask"]["content"] == [1] * length
    assert_same_requests(requests_from_input_data(TOKEN_MODEL, json.loads(json.dumps(data))), payloads)


def test_a_model_without_batching_keeps_the_whole_shape():
    unbatched = ModelInfo("token_model", ("1",), "python", TOKEN_INPUTS, (), max_batch_size=0)
    payloads = token_payloads(sentences(1))
    [entry] = input_data(unbatched, payloads)["data"]
    assert entry["input_ids"]["shape"] == [1, len(payloads[0]["input_ids"][0])]


def test_a_batched_payload_is_refused_with_its_shape():
    payloads = [{"TEXT": raw_bytes_array([b"one", b"two"])}]
    with pytest.raises(TritonForgeError, match=r"shape \[2, 1\].*batch-1"):
        input_data(TEXT_ENSEMBLE, payloads)


# -- a missing or failing binary -------------------------------------------------------------


def test_a_missing_binary_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(TritonForgeError, match="make perf-analyzer"):
        find_perf_analyzer()
    result = runner.invoke(app, ["bench", "tiny_text", "--perf-analyzer", "--url", "127.0.0.1:1"])
    assert result.exit_code == 2 and "make perf-analyzer" in result.output


def test_a_failing_binary_is_reported_with_the_end_of_its_output(tmp_path):
    fake = tmp_path / "perf_analyzer"
    fake.write_text("#!/bin/sh\necho 'Request concurrency: 1'\n"
                    "echo 'error: failed to connect' >&2\nexit 99\n")
    fake.chmod(0o755)
    data = tmp_path / "data.json"
    data.write_text(json.dumps(input_data(TEXT_ENSEMBLE, [{"TEXT": raw_bytes_array([b"hello"])}])))
    with pytest.raises(TritonForgeError, match=r"exit 99(.|\n)*error: failed to connect"):
        run_perf_analyzer("127.0.0.1:1", "text_ensemble", data, 1, 10, binary=fake)


def test_windows_that_never_agree_are_measured_again_twice_as_long(tmp_path):
    """A fake perf_analyzer that cannot stabilise 10-request windows but reports 20-request
    ones: the level is measured again with the longer windows instead of failing the bench."""
    calls = tmp_path / "calls"
    fake = tmp_path / "perf_analyzer"
    fake.write_text(f"""#!/bin/sh
echo "$@" >> {calls}
while [ $# -gt 0 ]; do
  case "$1" in --measurement-request-count) window=$2;; -f) report=$2;; esac; shift
done
if [ "$window" -lt 20 ]; then
  echo 'Failed to obtain stable measurement within 10 measurement windows for concurrency 1.'; exit 2
fi
printf 'Concurrency,Inferences/Second,p50 latency,p95 latency,p99 latency\n' > "$report"
printf '1,50.0,2000,3000,4000\n' >> "$report"
printf 'Client: \n  Request count: 60\nServer: \n  Inference count: 60\n'
""")
    fake.chmod(0o755)
    data = tmp_path / "data.json"
    data.write_text(json.dumps(input_data(TEXT_ENSEMBLE, [{"TEXT": raw_bytes_array([b"hello"])}])))
    level = run_until_stable("127.0.0.1:1", "text_ensemble", data, 1, 10, fake)
    assert (level.requests, level.throughput, level.latency_ms[50]) == (60, 50.0, 2.0)
    windows = [line.split("--measurement-request-count ")[1].split()[0]
               for line in calls.read_text().splitlines()]
    assert windows == ["10", "20"]
    with pytest.raises(TritonForgeError, match="larger --requests"):  # never stable: the last failure
        run_until_stable("127.0.0.1:1", "text_ensemble", data, 1, 2, fake, retries=2)
    assert calls.read_text().count("--measurement-request-count") == 5


# -- against the real server -----------------------------------------------------------------


def inference_counts(client, name: str) -> tuple[int, int]:
    """(successful, failed) inference requests the server has counted for `name`."""
    [stats] = client.get_inference_statistics(name, as_json=True)["model_stats"]
    return (int(stats["inference_stats"]["success"].get("count", 0)),
            int(stats["inference_stats"]["fail"].get("count", 0)))


@needs_perf_analyzer
@pytest.mark.parametrize(("name", "repo"), [("tiny_text", False), ("tiny", True)])
def test_perf_analyzer_sends_our_requests_and_the_server_counts_them(triton, served_repo, tmp_path,
                                                                    name, repo):
    client = connect(triton.grpc_url)
    info = model_info(client, name, triton.grpc_url)
    _kind, payloads = bench_payloads(info, served_repo if repo else None)
    payloads = payloads[:8]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(input_data(info, payloads)))
    before = inference_counts(client, name)
    # stability 100%: any three windows; this test checks what it sends, not how fast
    level = run_perf_analyzer(triton.grpc_url, name, data, 2, 20, export_path=tmp_path / "export.json",
                              stability_percent=100)
    after = inference_counts(client, name)
    assert after[1] == before[1]  # no request failed
    assert after[0] - before[0] >= level.requests > 0  # it measured requests the server answered
    assert level.server_inferences > 0 and level.throughput > 0
    assert 0 < level.latency_ms[50] <= level.latency_ms[95] <= level.latency_ms[99]

    [experiment] = json.loads((tmp_path / "export.json").read_text())["experiments"]
    assert experiment["experiment"] == {"mode": "concurrency", "value": 2}
    assert len(experiment["requests"]) == level.requests
    ours = [{k: np.asarray(v).reshape(-1).tolist() if v.dtype != object else v.item().decode("utf-8")
             for k, v in payload.items()} for payload in payloads]
    sent = [request["request_inputs"] for request in experiment["requests"]]
    assert all(request in ours for request in sent)
    assert len({json.dumps(request, sort_keys=True) for request in sent}) == len(payloads)  # all of them


@needs_perf_analyzer
def test_bench_perf_analyzer_prints_and_writes_both_tools_figures_per_level(triton, tmp_path):
    result = runner.invoke(app, ["bench", "tiny_text", "--url", triton.grpc_url, "--concurrency", "1,2",
                                 "--requests", "60", "--perf-analyzer", "--json", str(tmp_path / "b.json")],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "bench and perf_analyzer (PA)" in result.output
    rows = json.loads((tmp_path / "b.json").read_text())["perf_analyzer"]
    assert [(r["model"], r["concurrency"]) for r in rows] == [
        ("tiny_text", 1), ("tiny_text", 2), ("tiny_text_nobatch", 1), ("tiny_text_nobatch", 2)]
    for row in rows:
        for tool in ("bench", "perf_analyzer"):
            assert row[tool]["throughput_rps"] > 0 and row[tool]["p50_ms"] > 0
        assert row["ratio"]["throughput_rps"] == pytest.approx(
            row["perf_analyzer"]["throughput_rps"] / row["bench"]["throughput_rps"], rel=0.01)
        assert isinstance(row["agree"], bool)
