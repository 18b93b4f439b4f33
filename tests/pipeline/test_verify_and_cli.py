"""`verify`, `ls` and the CLI's error messages, through typer's CliRunner."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.errors import TritonForgeError
from tritonforge.export.bert import BertOptions
from tritonforge.pipeline.export import export_model
from tritonforge.pipeline.verify import verify_model
from tritonforge.serving.repository import sha256_file

runner = CliRunner()


@pytest.fixture
def tiny_repo(tmp_path, tiny_bert):
    export_model("bert", BertOptions(model=str(tiny_bert), graph="plain"), tmp_path, name="tiny")
    return tmp_path


def test_cli_export_verify_ls_round_trip(tmp_path, tiny_bert):
    result = runner.invoke(app, ["export", "bert", "--model", str(tiny_bert), "--repo", str(tmp_path),
                                 "--graph", "plain", "--max-batch", "16"])
    assert result.exit_code == 0, result.output
    assert "bert_fp32" in result.output
    report_path = tmp_path / "report.json"
    result = runner.invoke(app, ["verify", "bert_fp32", "--repo", str(tmp_path), "--samples", "16",
                                 "--iterations", "3", "--json", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["model"] == "bert_fp32" and report["family"] == "bert"
    assert set(report["parity"]) >= {"metric", "value", "tolerance", "passed", "details"}
    assert report["parity"]["passed"] is True
    # The export's target runs the graph (OpenVINO, the default where it is installed), timed at
    # batch 8 x 128 and on the serving request, one sentence of 32 tokens.
    assert report["runtime"] == "openvino"
    assert set(report["latency_ms"]) == {"pytorch", "openvino"}
    assert all(set(v) >= {"p50", "p95", "p99"} for v in report["latency_ms"].values())
    assert report["latency_ms"]["openvino"]["n"] == 3
    request = report["serving_request"]
    assert (request["batch_size"], request["seq_len"]) == (1, 32)
    assert set(request["latency_ms"]) == {"pytorch", "openvino"} and request["speedup_vs_pytorch"] > 0
    assert report["batch_size"] == 8 and report["threads"] == 2
    result = runner.invoke(app, ["ls", "--repo", str(tmp_path)])
    assert result.exit_code == 0 and "bert_fp32" in result.output and "fp32" in result.output


def test_missing_model_directory_is_named(tmp_path):
    result = runner.invoke(app, ["export", "bert", "--model", str(tmp_path / "nope"),
                                 "--repo", str(tmp_path)])
    assert result.exit_code == 2
    assert "does not exist" in result.output and "nope" in result.output


def test_non_bert_checkpoint_names_the_supported_architectures(tmp_path):
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps(
        {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    result = runner.invoke(app, ["export", "bert", "--model", str(tmp_path / "gpt"),
                                 "--repo", str(tmp_path)])
    assert result.exit_code == 2
    assert "gpt2" in result.output and "BertForSequenceClassification" in result.output


def test_bits_outside_the_float_choices_are_refused(tmp_path):
    result = runner.invoke(app, ["export", "bert", "--bits", "12", "--repo", str(tmp_path)])
    assert result.exit_code == 2 and "--bits 12" in result.output


def test_name_with_path_parts_is_refused_by_the_cli(tmp_path, tiny_bert):
    result = runner.invoke(app, ["export", "bert", "--model", str(tiny_bert), "--name", "../evil",
                                 "--repo", str(tmp_path)])
    assert result.exit_code == 2 and "not allowed" in result.output
    assert list(tmp_path.iterdir()) == []


def test_unknown_model_lists_what_is_there(tiny_repo):
    with pytest.raises(TritonForgeError, match=r"no model named 'bert_w6a6'.*models there: tiny"):
        verify_model(tiny_repo, "bert_w6a6")


def test_damaged_model_file_is_detected_by_its_hash(tiny_repo):
    path = tiny_repo / "tiny" / "1" / "model.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = runner.invoke(app, ["verify", "tiny", "--repo", str(tiny_repo)])
    assert result.exit_code == 2
    assert "does not match the sha256" in result.output


def test_unloadable_model_file_is_reported(tiny_repo):
    path = tiny_repo / "tiny" / "1" / "model.onnx"
    path.write_bytes(b"this is not a protobuf")
    manifest_path = tiny_repo / "tiny" / "1" / "tritonforge.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["onnx"]["sha256"] = sha256_file(path)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(TritonForgeError, match="(ONNX Runtime|OpenVINO) cannot load .*export the model"):
        verify_model(tiny_repo, "tiny")


def test_verify_exits_non_zero_when_parity_fails(tiny_repo):
    # A graph that loads fine but computes something else: one weight matrix scaled by 3.
    path = tiny_repo / "tiny" / "1" / "model.onnx"
    model = onnx.load(str(path))
    weight = next(i for i in model.graph.initializer if numpy_helper.to_array(i).ndim == 2
                  and numpy_helper.to_array(i).shape[0] == 32)
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(3), weight.name))
    onnx.save(model, str(path))
    manifest_path = tiny_repo / "tiny" / "1" / "tritonforge.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["onnx"]["sha256"] = sha256_file(path)
    manifest_path.write_text(json.dumps(manifest))
    result = runner.invoke(app, ["verify", "tiny", "--repo", str(tiny_repo), "--samples", "16",
                                 "--iterations", "1"])
    assert result.exit_code == 1
    assert "parity FAILED" in result.output
