"""ONNX Runtime's transformer optimizer fuses the exported BERT attention, and the fused graph
answers as PyTorch does, whatever the padding."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnxruntime.transformers.onnx_model_bert import BertOnnxModel

from tritonforge.data import sentences
from tritonforge.export.bert import INPUTS, BertOptions, tokenize
from tritonforge.export.bert.model import eager_attention, hf_config
from tritonforge.export.onnx import optimize_transformer, soften_mask_constants, torch_to_onnx
from tritonforge.family import get_family
from tritonforge.runtime import ort_session, run_session

COSINE_FLOOR, ABS_CEILING = 0.99999, 1e-4  # the FP32 bars of the bert family


def padded_batch(tokenizer) -> dict[str, np.ndarray]:
    """Real sentences of different lengths padded to the longest, plus an all-padding row."""
    feed = tokenize(tokenizer, sentences()[:5], None)
    empty = {name: np.zeros((1, feed[name].shape[1]), np.int64) for name in INPUTS}
    empty["input_ids"][:] = tokenizer.pad_token_id
    batch = {name: np.concatenate([feed[name], empty[name]]) for name in INPUTS}
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 2
    return batch


def left_padded(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same rows with their padding moved to the front."""
    out = {name: value.copy() for name, value in batch.items()}
    width = batch["attention_mask"].shape[1]
    for row, real in enumerate(batch["attention_mask"].sum(1)):
        for name in INPUTS:
            out[name][row] = np.roll(batch[name][row], width - int(real))
    return out


def assert_matches_pytorch(model, session, batch: dict[str, np.ndarray]) -> None:
    with torch.no_grad():
        hidden, embedding = (t.numpy() for t in model(*(torch.from_numpy(batch[n]) for n in INPUTS)))
    got = run_session(session, batch)
    real = batch["attention_mask"].astype(bool)
    assert np.isfinite(got["last_hidden_state"]).all() and np.isfinite(got["sentence_embedding"]).all()
    assert np.abs(got["last_hidden_state"][real] - hidden[real]).max() <= ABS_CEILING
    rows = real.any(1)  # the all-padding row has no sentence to compare
    ref, cand = embedding[rows], got["sentence_embedding"][rows]
    cosines = (ref * cand).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(cand, axis=1)
    assert cosines.min() >= COSINE_FLOOR


@pytest.fixture(scope="module")
def tiny(tiny_bert):
    family = get_family("bert")
    options = BertOptions(model=str(tiny_bert), graph="fused", target="onnxruntime")
    return family, options, family.load(options)


def test_fused_export_has_fused_attention_and_matches_pytorch(tiny, tmp_path):
    family, options, model = tiny
    path = tmp_path / "model.onnx"
    info = family.export(model, path, options)
    assert info.details["graph"] == "fused"
    config = hf_config(model)
    stats = BertOnnxModel(onnx.load(str(path)), int(config.num_attention_heads),
                          int(config.hidden_size)).get_fused_operator_statistics()
    assert stats["Attention"] == config.num_hidden_layers
    assert stats["SkipLayerNormalization"] == 2 * config.num_hidden_layers
    assert stats["EmbedLayerNormalization"] == 1
    assert_matches_pytorch(model, ort_session(path, threads=1), padded_batch(model.tokenizer))


def test_fused_attention_reads_the_full_mask(tiny, tmp_path):
    """Left padding: the optimizer's default 1-D mask index would keep the first n tokens."""
    family, options, model = tiny
    plain, fused = tmp_path / "plain.onnx", tmp_path / "fused.onnx"
    feed = family.sample_inputs(model, options, 8, {"seq_len": 128})
    axes = {name: {0: "batch", 1: "sequence"} for name in (*INPUTS, "last_hidden_state")}
    with eager_attention(model):
        torch_to_onnx(model, feed, plain, family.io(model, options),
                      {**axes, "sentence_embedding": {0: "batch"}}, options.opset)
    soften_mask_constants(plain)
    config = hf_config(model)
    stats = optimize_transformer(plain, fused, "bert", int(config.num_attention_heads),
                                 int(config.hidden_size))
    assert stats["Attention"] == config.num_hidden_layers
    batch = left_padded(padded_batch(model.tokenizer))
    assert_matches_pytorch(model, ort_session(fused, threads=1), batch)


def test_fused_export_matches_pytorch_with_left_padding(tiny, tmp_path):
    family, options, model = tiny
    path = tmp_path / "model.onnx"
    family.export(model, path, options)
    assert_matches_pytorch(model, ort_session(path, threads=1), left_padded(padded_batch(model.tokenizer)))
