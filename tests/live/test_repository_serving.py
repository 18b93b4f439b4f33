"""What `export` writes for serving (the `_text` ensemble) and the shadow that `serve` serves."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from transformers import AutoTokenizer
from tritonclient.grpc import model_config_pb2 as mc

from tritonforge.data import sentences
from tritonforge.errors import TritonForgeError
from tritonforge.export.bert import BertOptions
from tritonforge.modalities.steps.text_tokenizer import bucket_lengths, encode, load_tokenizer
from tritonforge.modalities.text import TEXT_TOKENIZER_MODEL
from tritonforge.pipeline.export import export_model
from tritonforge.serving.client import exported_version
from tritonforge.serving.local import NOBATCH_SUFFIX, write_shadow_repository
from tritonforge.serving.python_models import ONNX_RUNTIME_MODEL
from tritonforge.serving.repository import ModelRepository
from tritonforge.triton_config import ServingOptions, parse_config


def test_export_writes_the_text_ensemble_and_its_tokenizer_step(tiny_repo):
    repository = ModelRepository(tiny_repo)
    assert repository.models() == ["tiny", "tiny_text", "tiny_tokenizer"]
    tokenizer = repository.read_config("tiny_tokenizer")
    assert tokenizer.backend == "python" and tokenizer.max_batch_size == 32
    assert [(i.name, i.data_type, list(i.dims)) for i in tokenizer.input] == [("TEXT", mc.TYPE_STRING, [1])]
    assert tokenizer.parameters["max_length"].string_value == "512"
    version = tiny_repo / "tiny_tokenizer" / "1"
    assert (version / "model.py").read_text() == TEXT_TOKENIZER_MODEL.read_text()
    assert (version / "tokenizer.json").read_bytes() == (
        tiny_repo / "tiny" / "1" / "tokenizer" / "tokenizer.json").read_bytes()
    ensemble = repository.read_config("tiny_text")
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 32
    steps = [(s.model_name, dict(s.input_map), dict(s.output_map)) for s in ensemble.ensemble_scheduling.step]
    tokens = {n: n for n in ("input_ids", "attention_mask", "token_type_ids")}
    outputs = {n: n for n in ("last_hidden_state", "sentence_embedding")}
    assert steps == [("tiny_tokenizer", {"TEXT": "TEXT"}, tokens), ("tiny", tokens, outputs)]
    assert [o.name for o in ensemble.output] == [o.name for o in repository.read_config("tiny").output]
    manifest = repository.read_manifest("tiny_text")
    assert manifest["companion_of"] == {"name": "tiny", "version": 1}


def test_a_new_export_versions_the_ensemble_with_the_model(tmp_path, tiny_bert):
    for _ in range(2):
        export_model("bert", BertOptions(model=str(tiny_bert), graph="plain"), tmp_path, name="m")
    repository = ModelRepository(tmp_path)
    assert [repository.versions(n) for n in ("m", "m_tokenizer", "m_text")] == [[1, 2]] * 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_classifier_configs_carry_their_labels(tmp_path, tiny_classifier):
    export_model("bert", BertOptions(model=str(tiny_classifier), graph="plain"), tmp_path, name="cls")
    repository = ModelRepository(tmp_path)
    for name in ("cls", "cls_text"):
        labels = repository.read_config(name).parameters["labels"].string_value
        assert json.loads(labels) == ["negative", "neutral", "positive"]


def test_ensemble_tokenizer_matches_the_hugging_face_tokenizer(tiny_repo, tiny_bert):
    texts = sentences(32)
    tokenizer = load_tokenizer(str(tiny_repo / "tiny_tokenizer" / "1" / "tokenizer.json"), 512)
    ours = encode(tokenizer, texts, bucket_lengths(512), pad_token_id=0)
    hf = AutoTokenizer.from_pretrained(str(tiny_bert))(texts, padding="max_length", truncation=True,
                                                       max_length=ours["input_ids"].shape[1],
                                                       return_tensors="np", return_token_type_ids=True)
    assert ours["input_ids"].shape[1] in (16, 32, 64)
    for name in ours:
        np.testing.assert_array_equal(ours[name], hf[name])


def test_length_buckets_stop_at_max_length():
    assert bucket_lengths(256) == (16, 32, 64, 128, 256)
    assert bucket_lengths(100) == (16, 32, 64, 100)


def test_client_tokenizer_refuses_empty_text_and_pads_to_seq_len(tiny_repo):
    folder, io = exported_version(tiny_repo, "tiny")
    with pytest.raises(TritonForgeError, match=r"--text\[1\] is an empty string"):
        io.preprocessing.encode(["fine", " "], io, folder)
    fixed = io.preprocessing.encode(["short", " ".join(sentences(5))], io, folder, {"seq_len": 24})
    assert fixed["input_ids"].shape == (2, 24) and fixed["attention_mask"][1].all()


def test_shadow_serves_onnx_models_with_the_python_backend_and_the_same_config(tmp_path, tiny_bert):
    serving = ServingOptions(max_batch_size=8, gpu=True)
    export_model("bert", BertOptions(model=str(tiny_bert), graph="fused", gpu=True), tmp_path / "repo",
                 name="m", serving=serving)
    names = write_shadow_repository(tmp_path / "repo", tmp_path / "shadow", threads=3)
    assert names == ["m", "m_text", "m_tokenizer"]
    original = parse_config((tmp_path / "repo" / "m" / "config.pbtxt").read_text())
    shadow = parse_config((tmp_path / "shadow" / "m" / "config.pbtxt").read_text())
    assert original.backend == "onnxruntime" and shadow.backend == "python"
    assert (shadow.input, shadow.output, shadow.max_batch_size, shadow.dynamic_batching,
            shadow.model_warmup) == (original.input, original.output, 8, original.dynamic_batching,
                                     original.model_warmup)
    assert original.optimization.execution_accelerators.gpu_execution_accelerator
    assert not shadow.HasField("optimization")
    assert [g.kind for g in shadow.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert shadow.parameters["intra_op_threads"].string_value == "3"
    assert shadow.parameters["max_sequence_length"].string_value == "512"
    version = tmp_path / "shadow" / "m" / "1"
    assert (version / "model.py").read_text() == ONNX_RUNTIME_MODEL.read_text()
    assert (version / "model.onnx").resolve() == (tmp_path / "repo" / "m" / "1" / "model.onnx").resolve()
    for name in ("m_text", "m_tokenizer"):  # unchanged
        assert (tmp_path / "shadow" / name / "config.pbtxt").read_text() == (
            tmp_path / "repo" / name / "config.pbtxt").read_text()


def test_nobatch_twins_drop_dynamic_batching_and_ensembles_use_twin_steps(tiny_repo, tmp_path):
    names = write_shadow_repository(tiny_repo, tmp_path / "shadow", nobatch_twins=True)
    models = ("tiny", "tiny_text", "tiny_tokenizer")
    assert names == sorted(n + s for n in models for s in ("", NOBATCH_SUFFIX))
    twin = parse_config((tmp_path / "shadow" / "tiny_nobatch" / "config.pbtxt").read_text())
    assert twin.name == "tiny_nobatch" and not twin.HasField("dynamic_batching") and twin.backend == "python"
    ensemble = parse_config((tmp_path / "shadow" / "tiny_text_nobatch" / "config.pbtxt").read_text())
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == ["tiny_tokenizer_nobatch",
                                                                        "tiny_nobatch"]


def test_serve_refuses_a_manifest_from_a_newer_tritonforge(tmp_path, tiny_repo):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo, symlinks=False)
    manifest_path = repo / "tiny" / "1" / "tritonforge.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "manifest_version": 99, "tritonforge_version": "9.9"}))
    with pytest.raises(TritonForgeError, match="manifest version 99 .*tritonforge 9.9.*upgrade tritonforge"):
        write_shadow_repository(repo, tmp_path / "shadow")
