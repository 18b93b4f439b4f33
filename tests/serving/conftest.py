"""One real tritonserver for the serving tests: a tiny BERT encoder, a tiny classifier, a tiny
W6A6 (QDQ) encoder, a tiny BF16 encoder and the real MiniLM FP32, each with its `_text`
ensemble, and every model's `_nobatch` twin. The classifier targets ONNX Runtime, the others
OpenVINO (the default where it is installed), so the wrapper's two runtimes are both served."""

from __future__ import annotations

from pathlib import Path

import pytest

from tritonforge.export.bert import BertOptions
from tritonforge.export.pipeline import export_model
from tritonforge.serving.local import LocalTriton

MINILM_MODELS = ("bert_fp32", "bert_fp32_tokenizer", "bert_fp32_text")


ANY_PORTS = {"http_port": 0, "grpc_port": 0, "metrics_port": 0}  # LocalTriton picks free ones


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory, tiny_bert) -> Path:
    """The tiny encoder exported as `tiny` (with `tiny_text`), alone in its repository."""
    repo = tmp_path_factory.mktemp("tiny_repo")
    export_model("bert", BertOptions(model=str(tiny_bert), graph="plain"), repo, name="tiny")
    return repo


@pytest.fixture(scope="session")
def served_repo(tmp_path_factory, tiny_bert, tiny_repo, tiny_classifier, minilm_repo) -> Path:
    repo = tmp_path_factory.mktemp("served_repo")
    for name in ("tiny", "tiny_tokenizer", "tiny_text"):
        (repo / name).symlink_to(tiny_repo / name)
    export_model("bert", BertOptions(model=str(tiny_classifier), graph="plain", target="onnxruntime"), repo,
                 name="tiny_cls")
    export_model("bert", BertOptions(model=str(tiny_bert), bits=16, target="openvino"), repo,
                 name="tiny_bf16")
    export_model("bert", BertOptions(model=str(tiny_bert), bits=6, calib_size=16, lsq_epochs=0), repo,
                 name="tiny_w6a6")
    for name in MINILM_MODELS:  # the MiniLM export shared with the other tests, read-only
        (repo / name).symlink_to(minilm_repo / name)
    return repo


@pytest.fixture(scope="session")
def triton(served_repo, tmp_path_factory):
    log = tmp_path_factory.mktemp("triton_log") / "triton.log"
    with LocalTriton(served_repo, log_file=log, nobatch_twins=True, **ANY_PORTS) as server:
        yield server


@pytest.fixture
def client(triton):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    yield client
    client.close()
