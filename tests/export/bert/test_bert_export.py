"""Exporting BERT checkpoints: graph validity, parity with PyTorch, manifest and config."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tritonforge.data import sentences
from tritonforge.export.bert import BertOptions, tokenize
from tritonforge.export.bert.model import embedded_model_dir, load_bert
from tritonforge.pipeline.export import export_model
from tritonforge.pipeline.verify import verify_model
from tritonforge.runtime import ort_session, run_session
from tritonforge.serving.repository import ModelRepository
from tritonforge.triton_config import config_text, onnx_io_matches_config, onnx_io_signature, parse_config


@pytest.mark.slow
def test_minilm_fp32_matches_pytorch_within_declared_bars(minilm_repo):
    report = verify_model(minilm_repo, "bert_fp32", samples=96, iterations=2)
    checks = {c.metric: c.value for c in report.parity.checks}
    assert report.parity.passed
    assert checks["cosine"] >= 0.99999
    assert checks["max_abs_diff"] <= 1e-4
    assert report.parity.details["samples"] == 96


@pytest.mark.slow
def test_minilm_sentence_embedding_is_what_sentence_transformers_computes(minilm_repo):
    from sentence_transformers import SentenceTransformer

    texts = sentences(16)
    expected = SentenceTransformer(str(embedded_model_dir()), device="cpu").encode(texts)
    tokenizer = load_bert(embedded_model_dir()).tokenizer
    session = ort_session(minilm_repo / "bert_fp32" / "1" / "model.onnx")
    got = run_session(session, tokenize(tokenizer, texts, None))["sentence_embedding"]
    assert got.shape == (16, 384)
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.slow
def test_minilm_graph_passes_checker_with_opset_17_or_newer(minilm_repo):
    path = minilm_repo / "bert_fp32" / "1" / "model.onnx"
    onnx.checker.check_model(str(path))
    model = onnx.load(str(path), load_external_data=False)
    assert {o.domain: o.version for o in model.opset_import}.get("", 0) >= 17


@pytest.mark.slow
def test_config_round_trips_and_names_the_onnx_inputs_and_outputs(minilm_repo):
    repository = ModelRepository(minilm_repo)
    text = (minilm_repo / "bert_fp32" / "config.pbtxt").read_text()
    config = parse_config(text)
    assert config_text(config) == text
    # The default target is the fastest this machine runs: OpenVINO (installed by make setup),
    # served by Triton's openvino backend from the same model.onnx.
    assert config.backend == "openvino" and config.default_model_filename == "model.onnx"
    assert config.max_batch_size > 0
    inputs, outputs = onnx_io_signature(minilm_repo / "bert_fp32" / "1" / "model.onnx")
    assert onnx_io_matches_config(inputs, outputs, repository.read_config("bert_fp32")) == []
    assert [i.name for i in config.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert {o.name: list(o.dims) for o in config.output} == {
        "last_hidden_state": [-1, 384], "sentence_embedding": [384]}


@pytest.mark.slow
def test_manifest_records_recipe_io_hash_and_parity(minilm_repo):
    manifest = json.loads((minilm_repo / "bert_fp32" / "1" / "tritonforge.json").read_text())
    assert manifest["family"] == "bert" and manifest["version"] == 1
    assert manifest["source"]["embedded"] == "all-MiniLM-L6-v2"
    assert manifest["recipe"]["bits"] == 32
    assert manifest["io"]["preprocessing"]["max_length"] == 256
    assert manifest["io"]["preprocessing"]["kind"] == "text" and manifest["manifest_version"] == 2
    assert manifest["source"]["normalize"] is True
    assert [o.get("kind") for o in manifest["io"]["outputs"]] == [None, "embedding"]
    assert len(manifest["onnx"]["sha256"]) == 64 and manifest["onnx"]["opset"] >= 17
    assert manifest["parity"]["passed"] is True
    assert (minilm_repo / "bert_fp32" / "1" / "tokenizer" / "tokenizer.json").is_file()


def test_config_mismatch_is_reported(tiny_bert, tmp_path):
    result = export_model("bert", BertOptions(model=str(tiny_bert), graph="plain"), tmp_path)
    config = ModelRepository(tmp_path).read_config(result.name)
    config.output[0].dims[1] = 7
    inputs, outputs = onnx_io_signature(result.folder / "model.onnx")
    assert onnx_io_matches_config(inputs, outputs, config) == [
        "output last_hidden_state: onnx dims [-1, 32] vs config [-1, 7]"]


def test_classifier_exports_logits_and_labels(tiny_classifier, tmp_path):
    result = export_model("bert", BertOptions(model=str(tiny_classifier), graph="plain"), tmp_path,
                          name="sentiment")
    assert [o["name"] for o in result.manifest["io"]["outputs"]] == ["logits"]
    assert result.manifest["io"]["outputs"][0]["dims"] == [3]
    assert result.manifest["io"]["labels"] == ["negative", "neutral", "positive"]
    assert result.manifest["io"]["outputs"][0]["kind"] == "class_scores"
    report = verify_model(tmp_path, "sentiment", samples=64, iterations=2)
    assert report.parity.passed
    assert report.parity.primary.metric == "top1_agreement"
    assert report.parity.primary.value == 1.0


def test_fp16_export_keeps_fp32_interface_and_stays_close(tiny_bert, tmp_path):
    result = export_model("bert", BertOptions(model=str(tiny_bert), bits=16, target="onnxruntime"), tmp_path)
    assert result.name == "bert_fp16" and result.manifest["precision"] == "fp16"
    model = onnx.load(str(result.folder / "model.onnx"))
    kinds = {init.data_type for init in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in kinds
    assert {o.type.tensor_type.elem_type for o in model.graph.output} == {onnx.TensorProto.FLOAT}
    report = verify_model(tmp_path, "bert_fp16", samples=32, iterations=2)
    assert report.parity.passed and report.parity.primary.value >= 0.999


def test_gpu_export_asks_triton_for_tensorrt_on_gpu_instances(tiny_bert, tmp_path):
    from tritonforge.triton_config import ServingOptions

    export_model("bert", BertOptions(model=str(tiny_bert), bits=16, gpu=True), tmp_path,
                 serving=ServingOptions(gpu=True, fp16=True))
    config = ModelRepository(tmp_path).read_config("bert_fp16")
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"


def test_auto_graph_records_both_candidates_timings(tiny_bert, tmp_path):
    result = export_model("bert", BertOptions(model=str(tiny_bert), target="onnxruntime"), tmp_path)
    timings = result.manifest["onnx"]["candidates_ms"]
    assert set(timings) == {"plain", "fused"}
    # The manifest rounds to 0.01 ms, so on a tiny model the two may tie: the chosen one is the
    # fastest, or as fast as the other once rounded.
    assert timings[result.manifest["onnx"]["graph"]] == min(timings.values())


@pytest.mark.parametrize("bits", [32, 16])
def test_gpu_export_honours_an_explicit_plain_graph(tiny_bert, tmp_path, bits):
    result = export_model("bert", BertOptions(model=str(tiny_bert), bits=bits, gpu=True, graph="plain"),
                          tmp_path)
    assert result.manifest["onnx"]["graph"] == "plain"
    ops = {node.op_type for node in onnx.load(str(result.folder / "model.onnx")).graph.node}
    assert "Attention" not in ops and "MatMul" in ops
