"""The DASK classifier behind a real tritonserver: raw text in through `dask_fp32_text`, whose
python step injects the knowledge; the same labels and logits as PyTorch, `truncated` when
text or knowledge was cut, an empty text refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.export.dask import DaskOptions
from tritonforge.export.dask.loading import load_classifier
from tritonforge.pipeline.verify import verify_model
from tritonforge.serving.client import infer, model_info
from tritonforge.serving.local import LocalTriton

runner = CliRunner()
TEXTS = ["The flight was great, thank you!", "worst airline ever, rude staff and a delayed flight",
         "my new iphone is awesome", "self driving cars are scary"]


@pytest.fixture(scope="module")
def dask_server(dask_repo, tmp_path_factory):
    log = tmp_path_factory.mktemp("dask_log") / "triton.log"
    with LocalTriton(dask_repo, log_file=log, http_port=0, grpc_port=0, metrics_port=0) as server:
        yield server


def test_text_through_the_injection_ensemble_gives_pytorchs_logits(dask_server, dask_checkpoint):
    client = grpcclient.InferenceServerClient(dask_server.grpc_url)
    info = model_info(client, "dask_fp32_text", dask_server.grpc_url)
    served = infer(client, "dask_fp32_text", info.modality().request(TEXTS))
    model = load_classifier(DaskOptions(checkpoint=str(dask_checkpoint), max_length=64))
    import torch

    arrays = model.injector.inject(TEXTS).arrays(("input_ids", "position_ids", "visible_matrix"))
    with torch.inference_mode():
        logits, probabilities = model(**{k: torch.from_numpy(v) for k, v in arrays.items()})
    np.testing.assert_allclose(served["logits"], logits.numpy(), atol=1e-4)
    assert (served["logits"].argmax(1) == logits.numpy().argmax(1)).all()
    np.testing.assert_allclose(served["probabilities"].sum(1), 1.0, atol=1e-6)
    assert served["truncated"].tolist() == [[False]] * 4


def test_query_prints_labels_and_flags_a_text_cut_at_max_length(dask_server, tmp_path):
    long_text = " ".join(["the service was good but the food was bad"] * 20)  # far past 64 tokens
    result = runner.invoke(app, ["query", "dask_fp32_text", "--url", dask_server.grpc_url, "--text",
                                 TEXTS[0], "--text", long_text, "--json", str(tmp_path / "q.json")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "q.json").read_text())
    assert saved["outputs"]["truncated"]["values"] == [[False], [True]]
    probabilities = np.array(saved["outputs"]["probabilities"]["values"])
    ranked = saved["summary"]["labels"]["probabilities"][0]
    assert ranked[0][1] == pytest.approx(probabilities[0].max())  # not softmaxed a second time
    assert "logits" not in saved["summary"]["labels"]
    result = runner.invoke(app, ["query", "dask_fp32_text", "--url", dask_server.grpc_url, "--text", " "])
    assert result.exit_code == 2 and "--text[0] is an empty string" in result.output


def test_an_empty_text_sent_directly_is_refused_by_the_injection_step(dask_server):
    client = grpcclient.InferenceServerClient(dask_server.grpc_url)
    from tritonforge.errors import TritonForgeError

    with pytest.raises(TritonForgeError, match=r"TEXT\[0\]"):
        infer(client, "dask_fp32_text", {"TEXT": np.array([[b"   "]], dtype=object)})


def test_verify_through_triton_on_labelled_tweets(dask_server, dask_repo):
    report = verify_model(dask_repo, "dask_fp32", iterations=2, samples=64, triton_url=dask_server.grpc_url)
    assert report.parity.passed and report.triton_parity.passed
    assert report.triton_parity.details["samples"] == 64


def test_bench_sends_real_sentences_through_the_injection_ensemble(dask_server, tmp_path):
    result = runner.invoke(app, ["bench", "dask_fp32_text", "--url", dask_server.grpc_url, "--concurrency",
                                 "1,4", "--requests", "16", "--json", str(tmp_path / "bench.json")])
    assert result.exit_code == 0, result.output
    levels = json.loads((tmp_path / "bench.json").read_text())["levels"]
    assert [(r["concurrency"], r["ok"], r["errors"]) for r in levels] == [(1, 16, 0), (4, 16, 0)]
