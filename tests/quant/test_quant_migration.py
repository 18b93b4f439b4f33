"""Gamma Migration is an exact FP rewrite of post-LN BERT (Outlier Suppression, Sec. 4.1)."""

from __future__ import annotations

import copy

import pytest
import torch

from tritonforge.data import sentences
from tritonforge.encoders.slotted_bert import SlottedBert
from tritonforge.export.bert import tokenize
from tritonforge.export.bert.model import SentenceEncoder, embedded_model_dir, load_bert
from tritonforge.outputs.metrics import row_cosines
from tritonforge.quant.migration import gamma_migrate


@pytest.fixture(scope="module")
def minilm():
    model = load_bert(embedded_model_dir())
    feed = {k: torch.from_numpy(v) for k, v in tokenize(model.tokenizer, sentences(48), 128).items()}
    return model, feed


def encode(bert, feed):
    with torch.no_grad():
        return SentenceEncoder(bert, "mean", True)(**feed)


def test_written_out_bert_computes_what_hugging_face_computes(minilm):
    model, feed = minilm
    hidden, _ = encode(model.bert, feed)
    ours, _ = encode(SlottedBert(copy.deepcopy(model.bert)).eval(), feed)
    real = feed["attention_mask"].bool()
    assert (ours - hidden)[real].abs().max().item() <= 1e-5


def test_gamma_migration_keeps_minilm_outputs(minilm):
    model, feed = minilm
    hidden, embedding = encode(model.bert, feed)
    migrated = gamma_migrate(SlottedBert(copy.deepcopy(model.bert)).eval())
    hidden2, embedding2 = encode(migrated, feed)
    real = feed["attention_mask"].bool()
    assert (hidden2 - hidden)[real].abs().max().item() <= 1e-4
    assert row_cosines(embedding.numpy(), embedding2.numpy()).min() >= 0.99999


def test_migrated_norms_are_non_scaling_except_the_last(minilm):
    model, _ = minilm
    original = SlottedBert(copy.deepcopy(model.bert))
    migrated = gamma_migrate(SlottedBert(copy.deepcopy(model.bert)))
    sites, originals = migrated.norm_sites(), original.norm_sites()
    for (norm, _, shortcut, _), (before, *_) in zip(sites[:-1], originals[:-1], strict=True):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        torch.testing.assert_close(norm.bias * before.weight, before.bias)
        torch.testing.assert_close(shortcut.shortcut_scale, before.weight)
    assert torch.equal(sites[-1].norm.weight, originals[-1].norm.weight)


def test_near_zero_gamma_is_guarded(tiny_bert):
    model = load_bert(tiny_bert)
    with torch.no_grad():
        model.bert.embeddings.LayerNorm.weight[3] = 0.0
        model.bert.encoder.layer[0].attention.output.LayerNorm.weight[5] = -1e-9
    feed = {k: torch.from_numpy(v) for k, v in tokenize(model.tokenizer, sentences(8), 32).items()}
    hidden, _ = encode(model.bert, feed)
    migrated = gamma_migrate(SlottedBert(copy.deepcopy(model.bert)).eval())
    hidden2, _ = encode(migrated, feed)
    assert torch.isfinite(hidden2).all()
    assert (hidden2 - hidden).abs().max().item() <= 1e-3
