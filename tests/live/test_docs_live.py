"""The client and metrics examples of docs/ against the live test server: the curl lines and
request body of docs/clients.md, its gRPC snippet, and the metric names docs/metrics.md tells
readers to watch. The examples name `bert_fp32_text` on the default ports; here they run
against the tiny encoder's `tiny_text` (same inputs and outputs, 32 wide) on the test server's
ports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"


def block(page: str, info: str) -> str:
    """The body of the fenced block of docs/`page` whose info string is `info`."""
    text = (DOCS / page).read_text()
    match = re.search(rf"^```{re.escape(info)}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert match, f"docs/{page} has no ```{info} block"
    return match.group(1)


def on_test_server(text: str, triton) -> str:
    return (text.replace("bert_fp32_text", "tiny_text")
            .replace("localhost:8000", triton.http_url.removeprefix("http://"))
            .replace("localhost:8002", f"{triton.host}:{triton.metrics_port}")
            .replace("127.0.0.1:8001", triton.grpc_url))


def run_bash(script: str, cwd: Path) -> str:
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def curl():
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")


def test_the_curl_examples_answer_as_clients_md_says(triton, tmp_path, curl):
    request = json.loads(block("clients.md", "json request.json"))
    assert request["inputs"][0]["name"] == "TEXT" and request["inputs"][0]["shape"] == [2, 1]
    (tmp_path / "request.json").write_text(json.dumps(request))
    out = run_bash(on_test_server(block("clients.md", "bash http"), triton), tmp_path)
    assert out.startswith("200\n")  # /v2/health/ready
    assert '"name":"tiny_text"' in out and '"inputs":[{"name":"TEXT"' in out  # metadata
    assert '"parameters":' in out and '"preprocessing"' in out  # the config speaks for the model
    answer = json.loads(out[out.rindex('{"model_name"'):])
    [output] = answer["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("sentence_embedding", "FP32", [2, 32])


def test_the_grpc_example_of_clients_md_runs(triton, tmp_path):
    script = tmp_path / "grpc_example.py"
    script.write_text(on_test_server(block("clients.md", "python grpc"), triton))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("[") >= 3  # the 2 x 2 matrix of cosines


def test_every_metric_metrics_md_names_is_on_the_metrics_port(triton):
    named = set(re.findall(r"`(nv_[a-z_]+)`", (DOCS / "metrics.md").read_text()))
    assert {"nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
            "nv_inference_exec_count", "nv_inference_queue_duration_us",
            "nv_inference_compute_infer_duration_us"} <= named
    with urllib.request.urlopen(triton.metrics_url, timeout=10) as response:
        exposed = set(re.findall(r"^(nv_[a-z_]+)", response.read().decode(), re.MULTILINE))
    local = {name for name in named if not name.startswith("nv_gpu_")}  # no GPU metrics here
    assert local <= exposed, f"not on the metrics port: {sorted(local - exposed)}"


def test_the_metrics_curl_line_of_metrics_md_works(triton, tmp_path, curl):
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    texts = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
    texts.set_data_from_numpy(np.array([[b"A man is eating food."]], dtype=object))
    client.infer("tiny_text", [texts])  # at least one success of `tiny` to count
    client.close()
    script = block("metrics.md", "bash")
    out = run_bash(on_test_server(script, triton), tmp_path)
    assert re.search(r'^nv_inference_request_success\{model="tiny",version="1"\} \d+', out, re.MULTILINE)
    assert re.search(r"^nv_inference_exec_count\{", out, re.MULTILINE)
