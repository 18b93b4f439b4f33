"""`export bert --target`: where an artifact runs (ONNX Runtime, OpenVINO, TensorRT), BF16 as its own
precision, and what happens when this machine cannot run the target asked for."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pytest

from tritonforge.errors import TritonForgeError
from tritonforge.export.bert import TOLERANCES, BertOptions, tokenize
from tritonforge.family import get_family
from tritonforge.pipeline.export import export_model
from tritonforge.pipeline.verify import verify_model
from tritonforge.runtime import OpenVINOSession, default_target, open_session, run_session
from tritonforge.serving.repository import ModelRepository


@pytest.fixture
def no_openvino(monkeypatch):
    """This machine as one without the openvino package."""
    real_import = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)


@pytest.fixture
def no_bf16(monkeypatch):
    """OpenVINO on a CPU without AVX512_BF16 or AMX."""
    import openvino

    real = openvino.Core.get_property

    def capabilities(self, device, key, *rest):
        value = real(self, device, key, *rest)
        return [c for c in value if c != "BF16"] if key == "OPTIMIZATION_CAPABILITIES" else value

    monkeypatch.setattr(openvino.Core, "get_property", capabilities)


def test_auto_picks_openvino_here_and_the_recipe_records_the_concrete_target(bf16):
    assert default_target() == "openvino" and default_target(gpu=True) == "tensorrt"
    options = BertOptions(bits=16)
    assert (options.target, options.precision) == ("openvino", "bf16")
    assert BertOptions(bits=16, target="onnxruntime").precision == "fp16"
    assert BertOptions(bits=16, gpu=True).target == "tensorrt"


def test_bf16_export_is_its_own_precision_served_by_the_openvino_backend(tiny_bert, tmp_path, bf16):
    result = export_model("bert", BertOptions(model=str(tiny_bert), bits=16), tmp_path)
    manifest = result.manifest
    assert result.name == "bert_bf16" and manifest["precision"] == "bf16"
    assert manifest["serving"]["target"] == "openvino" and manifest["serving"]["bf16"] is True
    # Checked against BF16's own floor, never FP32's, and its quality against FP is recorded.
    assert manifest["parity"]["tolerance"] == TOLERANCES["bf16"][0] < TOLERANCES["fp32"][0]
    assert 0.999 <= manifest["quality"]["cosine_vs_fp"] < 1.0
    config = ModelRepository(tmp_path).read_config("bert_bf16")
    assert config.backend == "openvino" and config.default_model_filename == "model.onnx"
    assert config.parameters["HINT_BF16"].string_value == "YES"
    # The file stays FP32: BF16 is how OpenVINO computes it, so it runs exactly in FP32 too.
    exact = open_session(result.folder / "model.onnx", "openvino", precision="fp32")
    bf16 = open_session(result.folder / "model.onnx", "openvino", precision="bf16")
    family = get_family("bert")
    model = family.load(BertOptions(model=str(tiny_bert), bits=32, target="onnxruntime"))
    feed = tokenize(model.tokenizer, ["a short one", "and a somewhat longer sentence here"], None)
    reference = family.reference_outputs(model, feed, family.io(model, BertOptions(bits=32)))
    exact_out, bf16_out = run_session(exact, feed), run_session(bf16, feed)
    exact_gap = np.abs(exact_out["sentence_embedding"] - reference["sentence_embedding"]).max()
    bf16_gap = np.abs(bf16_out["sentence_embedding"] - reference["sentence_embedding"]).max()
    assert exact_gap < 1e-4 < bf16_gap  # the BF16 run really computed in 8 significant bits


def test_verify_runs_the_export_on_its_target_at_both_shapes(tiny_bert, tmp_path, bf16):
    export_model("bert", BertOptions(model=str(tiny_bert), bits=16), tmp_path)
    report = verify_model(tmp_path, "bert_bf16", samples=16, iterations=2)
    assert report.runtime == "openvino" and report.parity.passed
    assert report.parity.primary.tolerance == TOLERANCES["bf16"][0]
    assert dict(report.serving_request) == {"batch_size": 1, "seq_len": 32}
    assert set(report.serving_latency) == {"pytorch", "openvino"}
    assert report.quality["cosine_vs_fp"] >= 0.999


def test_missing_openvino_names_the_package_and_falls_back_only_when_asked(no_openvino):
    message = r"needs the openvino package.*pip install openvino==.*--fallback"
    with pytest.raises(TritonForgeError, match=message):
        BertOptions(target="openvino")
    assert default_target() == "onnxruntime"  # auto never picks what cannot run
    options = BertOptions(target="openvino", fallback=True)
    assert options.target == "onnxruntime" and "openvino package" in options.fallback_reason


def test_bf16_on_a_cpu_without_bf16_is_refused_with_the_hardware_named(no_bf16):
    with pytest.raises(TritonForgeError, match=r"no native bfloat16 \(AVX512_BF16 or AMX\).*--bits 32"):
        BertOptions(bits=16, target="openvino")
    assert BertOptions(bits=32, target="openvino").precision == "fp32"  # FP32 needs no BF16
    options = BertOptions(bits=16, target="openvino", fallback=True)
    assert (options.target, options.precision) == ("onnxruntime", "fp16")


def test_fallback_is_recorded_in_the_manifest(tiny_bert, tmp_path, no_openvino):
    options = BertOptions(model=str(tiny_bert), target="openvino", fallback=True)
    result = export_model("bert", options, tmp_path)
    recipe = result.manifest["recipe"]
    assert recipe["target"] == "onnxruntime" and "openvino" in recipe["fallback_reason"]
    assert result.manifest["serving"]["target"] == "onnxruntime"


@pytest.mark.parametrize("options, message", [
    ({"target": "tpu"}, "--target 'tpu' is unknown"),
    ({"target": "openvino", "graph": "fused"}, "OpenVINO cannot read"),
    ({"target": "openvino", "gpu": True}, "does not combine with --target openvino"),
])
def test_bad_target_options_are_refused(options, message):
    with pytest.raises(TritonForgeError, match=message):
        BertOptions(**options)


def test_manifests_from_before_targets_verify_on_onnx_runtime(tiny_bert, tmp_path):
    result = export_model("bert", BertOptions(model=str(tiny_bert), target="onnxruntime"), tmp_path)
    path = result.folder / "tritonforge.json"
    manifest = json.loads(path.read_text())
    for key in ("target", "fallback", "fallback_reason"):
        del manifest["recipe"][key]
    del manifest["serving"]["target"], manifest["serving"]["bf16"]
    path.write_text(json.dumps(manifest))
    options = get_family("bert").options_from_json(manifest["recipe"])
    assert options.target == "onnxruntime"
    assert verify_model(tmp_path, result.name, samples=8, iterations=1).runtime == "onnxruntime"


def test_openvino_recovers_after_a_request_it_cannot_run(tiny_bert, tmp_path):
    # OpenVINO 2026.4 keeps a failed shape inference in the compiled model; the session compiles
    # afresh, so the next good request is answered.
    result = export_model("bert", BertOptions(model=str(tiny_bert)), tmp_path)
    session = OpenVINOSession(result.folder / "model.onnx")
    good = {name: np.ones((1, 8), np.int64) for name in ("input_ids", "attention_mask", "token_type_ids")}
    bad = {**good, "input_ids": np.ones((1, 9), np.int64)}
    with pytest.raises(TritonForgeError, match=r"OpenVINO could not run the model .*'input_ids': \[1, 9\]"):
        run_session(session, bad)
    assert run_session(session, good)["sentence_embedding"].shape == (1, 32)
