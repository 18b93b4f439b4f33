"""Through gRPC, on the real tritonserver: parity with PyTorch, metadata, bad requests."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from tritonforge.data import sentences
from tritonforge.export.bert import BertOptions, tokenize
from tritonforge.family import get_family
from tritonforge.modalities import Text
from tritonforge.modalities.base import raw_bytes_array
from tritonforge.outputs.metrics import row_cosines
from tritonforge.serving.client import infer, infer_inputs, model_info, summarize

TOKENS = ("input_ids", "attention_mask", "token_type_ids")


@pytest.fixture(scope="module")
def minilm():
    family = get_family("bert")
    return family, family.load(BertOptions())


def strings(texts: list[str]):
    """Raw strings as the TEXT input of a `_text` ensemble (one per row)."""
    return raw_bytes_array([t.encode("utf-8") for t in texts])


def minilm_reference(minilm, texts: list[str], seq_len: int | None = None) -> np.ndarray:
    family, model = minilm
    inputs = tokenize(model.tokenizer, texts, seq_len)
    return family.reference_outputs(model, inputs, family.io(model, BertOptions()))["sentence_embedding"]


def test_every_model_and_twin_is_loaded_and_ready(triton, client):
    names = {m.name for m in triton.models if m.state == "READY"}
    for base in ("tiny", "tiny_cls", "tiny_w6a6", "bert_fp32"):
        for suffix in ("", "_tokenizer", "_text"):
            assert {base + suffix, base + suffix + "_nobatch"} <= names
    assert client.is_server_ready()


def test_minilm_metadata_is_what_the_repository_declares(client, triton):
    onnx = model_info(client, "bert_fp32", triton.grpc_url)
    assert [(i.name, i.datatype, i.shape) for i in onnx.inputs] == [(n, "INT64", (-1, -1)) for n in TOKENS]
    assert [(o.name, o.datatype, o.shape) for o in onnx.outputs] == [
        ("last_hidden_state", "FP32", (-1, -1, 384)), ("sentence_embedding", "FP32", (-1, 384))]
    assert onnx.max_batch_size == 32 and onnx.versions == ("1",)
    text = model_info(client, "bert_fp32_text", triton.grpc_url)
    assert text.platform == "ensemble" and text.takes_raw(text.modality())
    assert not onnx.takes_raw(onnx.modality())
    assert isinstance(onnx.modality(), Text) and onnx.modality().max_length == 256
    assert onnx.output_kinds == {"last_hidden_state": "tensor", "sentence_embedding": "embedding"}
    assert [(i.name, i.datatype, i.shape) for i in text.inputs] == [("TEXT", "BYTES", (-1, 1))]
    assert [o.name for o in text.outputs] == ["last_hidden_state", "sentence_embedding"]


def test_minilm_token_model_matches_pytorch(client, minilm):
    texts = sentences(24)
    family, model = minilm
    tokens = tokenize(model.tokenizer, texts, None)
    served = infer(client, "bert_fp32", tokens)["sentence_embedding"]
    cosines = row_cosines(served, minilm_reference(minilm, texts))
    assert served.shape == (24, 384)
    assert cosines.min() >= 0.9999


def test_minilm_text_ensemble_matches_pytorch_on_raw_strings(client, minilm):
    texts = sentences(24)[8:] + ["Short one.", "Ünïcödé text, with punctuation: fine!"]
    served = infer(client, "bert_fp32_text", {"TEXT": strings(texts)})
    cosines = row_cosines(served["sentence_embedding"], minilm_reference(minilm, texts))
    assert cosines.min() >= 0.9999
    assert served["last_hidden_state"].shape[1] in (16, 32, 64, 128, 256)  # a length bucket


def test_text_longer_than_max_length_is_truncated_like_sentence_transformers(client, minilm):
    text = " ".join(sentences(40))  # far beyond MiniLM's 256 tokens
    served = infer(client, "bert_fp32_text", {"TEXT": strings([text])})
    assert served["last_hidden_state"].shape[1] == 256
    expected = minilm_reference(minilm, [text], 256)  # the HF tokenizer truncates at 256
    assert row_cosines(served["sentence_embedding"], expected).min() >= 0.9999


def test_classifier_labels_come_from_the_served_config(client, triton):
    info = model_info(client, "tiny_cls_text", triton.grpc_url)
    assert info.labels == ["negative", "neutral", "positive"]
    outputs = infer(client, "tiny_cls_text", {"TEXT": strings(["great film", "awful film"])})
    ranked = summarize(info, outputs)["labels"]["logits"]
    assert [len(row) for row in ranked] == [3, 3]
    for row in ranked:
        assert {label for label, _p in row} == {"negative", "neutral", "positive"}
        assert sum(p for _label, p in row) == pytest.approx(1.0, abs=1e-5)


def ones(batch: int, length: int, dtype=np.int64) -> np.ndarray:
    return np.ones((batch, length), dtype=dtype)


GOOD = {name: ones(1, 8) for name in TOKENS}
BAD_REQUESTS = {
    "wrong dtype": ("bert_fp32", {**GOOD, "input_ids": ones(1, 8, np.float32)},
                    ["input_ids", "FP32", "INT64"]),
    "wrong rank": ("bert_fp32", {**GOOD, "input_ids": np.ones((1, 8, 2), np.int64)},
                   ["unexpected shape", "input_ids", "[1,8,2]"]),
    "inputs of different lengths": ("bert_fp32", {**GOOD, "input_ids": ones(1, 9)},
                                    ["input_ids [1, 9]", "attention_mask [1, 8]"]),
    "longer than max positions": ("bert_fp32", {name: ones(1, 513) for name in TOKENS},
                                  ["513 positions", "at most 256"]),
    "empty string": ("bert_fp32_text", {"TEXT": strings(["fine", ""])}, ["TEXT[1]", "empty string"]),
    "whitespace only": ("bert_fp32_text", {"TEXT": strings(["   "])}, ["TEXT[0]", "empty string"]),
    "text as numbers": ("bert_fp32_text", {"TEXT": ones(1, 1)}, ["TEXT", "INT64", "BYTES"]),
    "batch above max_batch_size": ("bert_fp32", {name: ones(33, 8) for name in TOKENS},
                                   ["batch-size must be <= 32"]),
    "unknown model": ("no_such_model", GOOD, ["unknown model", "no_such_model"]),
    "unknown input name": ("bert_fp32", {"input_ids": GOOD["input_ids"], "token_type_ids": ones(1, 8),
                                         "mask": ones(1, 8)}, ["unexpected inference input 'mask'"]),
    "extra input": ("bert_fp32", {**GOOD, "mask": ones(1, 8)}, ["expected 3 inputs but got 4", "'mask'"]),
    # refused before ONNX Runtime runs, with the limit the manifest declares
    "token id outside the vocabulary": ("bert_fp32", {**GOOD, "input_ids": np.full((1, 8), 99999)},
                                        ["input 'input_ids' holds 99999", "vocab_size 30522"]),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_an_error_naming_the_problem_and_the_server_stays_ready(client, case):
    model, arrays, expected = BAD_REQUESTS[case]
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, infer_inputs(arrays))
    for fragment in expected:
        assert fragment in caught.value.message()
    assert client.is_server_live() and client.is_server_ready()
    assert infer(client, "bert_fp32", GOOD)["sentence_embedding"].shape == (1, 384)
