"""DASK's classifier quantized with Outlier Suppression (`--bits 8|6`).

The encoder is the bert family's written-out `SlottedBert` (Gamma Migration and Token-Wise
Clipping apply unchanged), fed DASK's soft positions and its visible matrix as the additive
attention bias; the observers read the real tokens off the visible matrix's diagonal (every
real token sees itself, padding sees nothing). Calibration texts are injected source-domain
reviews, exactly as served. The head stays in float. The fake-quantized reference is saved
beside model.onnx (`reference.pt`) so `verify` compares with the model that was exported.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tritonforge.encoders.slotted_bert import SlottedBert
from tritonforge.export.dask.model import MASK_BIAS, KnowledgeClassifier, inject_inputs
from tritonforge.quant.calibrate import (
    CalibrationResult,
    QuantRecipe,
    calibrate,
    load_calibration,
    save_calibration,
)
from tritonforge.quant.qdq import dequantize_weights, qdq_module

REFERENCE_FILE = "reference.pt"
CALIBRATION_BATCH = 32


def real_tokens(visible_matrix: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: the real tokens (each sees itself; padding sees nothing)."""
    return torch.diagonal(visible_matrix, dim1=1, dim2=2) > 0


class KnowledgeSlottedBert(SlottedBert):
    """SlottedBert as the quant core calls it, on DASK's inputs."""

    def output(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.encode(batch["input_ids"], batch["position_ids"], batch["visible_matrix"])

    def real_positions(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return real_tokens(batch["visible_matrix"])

    def encode(self, input_ids, position_ids, visible_matrix) -> torch.Tensor:
        bias = (1.0 - visible_matrix.to(torch.float32)).unsqueeze(1) * MASK_BIAS
        real = real_tokens(visible_matrix)
        return self(input_ids, real.to(torch.int64), torch.zeros_like(input_ids), position_ids,
                    bias).last_hidden_state


class QuantKnowledgeClassifier(nn.Module):
    """The fake-quantized encoder, pooled and classified like `fp` (whose head stays float)."""

    def __init__(self, encoder: nn.Module, fp: KnowledgeClassifier, quantized: CalibrationResult | None,
                 calibration: Mapping[str, Any]):
        super().__init__()
        self.encoder, self.pooling = encoder, fp.pooling
        self.classifier = copy.deepcopy(fp.classifier)
        self.quantized, self.calibration = quantized, dict(calibration)
        self.fp = [fp]  # a list: not a submodule
        self.injector, self.tokenizer, self.table = fp.injector, fp.tokenizer, fp.table
        self.record = fp.record

    def forward(self, input_ids, position_ids, visible_matrix):
        hidden = self.encoder.encode(input_ids, position_ids, visible_matrix)
        logits = self.classifier(self.fp[0].pool(hidden))
        return logits, logits.softmax(-1)


def slotted_copy(fp: KnowledgeClassifier) -> KnowledgeSlottedBert:
    return KnowledgeSlottedBert(copy.deepcopy(fp.bert)).eval()


def quantize_classifier(fp: KnowledgeClassifier, recipe: QuantRecipe, texts: list[str],
                        record: Mapping[str, Any], stage=None) -> QuantKnowledgeClassifier:
    result = calibrate(slotted_copy(fp), recipe, inject_inputs(fp.injector, texts), CALIBRATION_BATCH, stage)
    return QuantKnowledgeClassifier(result.model, fp, result, record)


def save_reference(model: QuantKnowledgeClassifier, folder: Path) -> None:
    save_calibration(model.quantized, model.calibration, folder / REFERENCE_FILE)


def load_reference(fp: KnowledgeClassifier, recipe: QuantRecipe, folder: Path) -> QuantKnowledgeClassifier:
    result, record = load_calibration(slotted_copy(fp), recipe, folder / REFERENCE_FILE)
    return QuantKnowledgeClassifier(result.model, fp, result, record)


def trace_qdq(model: QuantKnowledgeClassifier, path: Path, trace) -> None:
    """The QDQ graph (int8 weights, Q/DQ at every activation slot), head in float."""
    result = model.quantized
    traced = QuantKnowledgeClassifier(qdq_module(result.model, result.quantizers), model.fp[0], None, {})
    trace(traced.eval(), path)
    dequantize_weights(path, result.weights)

