"""Quantized BERT encoders: calibration text, the PyTorch reference, QDQ export, quality vs FP.

The PyTorch reference of a quantized export is the fake-quantized SlottedBert (Outlier
Suppression's placement), pooled like the FP encoder: a `FakeQuantEncoder`. It is saved beside model.onnx as
`reference.pt` (int8 weights and scales, float norms/biases, activation ranges) so that
`verify` compares against exactly the model that was exported, without calibrating again.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tritonforge.batching import batches
from tritonforge.data import CALIBRATION, read_lines
from tritonforge.encoders.slotted_bert import SlottedBert
from tritonforge.errors import TritonForgeError
from tritonforge.export.bert.model import SentenceEncoder, SequenceClassifier
from tritonforge.quant.calibrate import (
    CalibrationResult,
    QuantRecipe,
    Stage,
    calibrate,
    load_calibration,
    save_calibration,
)
from tritonforge.quant.qdq import dequantize_weights, qdq_module
from tritonforge.verify.metrics import nearest_neighbour_agreement, row_cosines

REFERENCE_FILE = "reference.pt"
CALIBRATION_LENGTH = 128  # tokens per calibration text, as in the paper
CALIBRATION_BATCH = 32


def calibration_texts(path: str | None, size: int, allow_fewer: bool) -> tuple[list[str], dict[str, Any]]:
    """The first `size` texts of the calibration file (one per line) and what to record of them."""
    file = Path(path).expanduser() if path else CALIBRATION
    if not file.exists():
        raise TritonForgeError(f"--calib {file} does not exist: give a text file with one sentence per line")
    if file.is_dir():
        raise TritonForgeError(f"--calib {file} is a directory: give a text file with one sentence per line")
    texts = read_lines(file)
    if not texts:
        raise TritonForgeError(f"--calib {file} has no text (empty or blank lines only): "
                               "give a file with one sentence per line")
    if size < 1:
        raise TritonForgeError(f"--calib-size {size} must be at least 1 (the paper uses 256)")
    if len(texts) < size:
        if not allow_fewer:
            raise TritonForgeError(
                f"--calib {file} has {len(texts)} texts, fewer than --calib-size {size}: add text, "
                f"lower --calib-size, or pass --allow-fewer to calibrate on {len(texts)}")
        size = len(texts)
    texts = texts[:size]
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    return texts, {"file": None if path is None else str(file.resolve()), "shipped": path is None,
                   "texts": len(texts), "sha256": digest, "length": CALIBRATION_LENGTH}


class FakeQuantEncoder(SentenceEncoder):
    """The fake-quantized PyTorch reference of a quantized export, pooled like `fp`:
    `quantized` is the calibrated SlottedBert, `calibration` the record of its texts."""

    def __init__(self, quantized: CalibrationResult, fp: SentenceEncoder, calibration: Mapping[str, Any]):
        super().__init__(quantized.model, fp.pooling, fp.normalize)
        self.quantized, self.calibration = quantized, dict(calibration)
        self.fp = [fp]  # a list, so the FP model is not registered as a submodule
        self.tokenizer, self.model_dir = fp.tokenizer, fp.model_dir


def require_encoder(model) -> None:
    if isinstance(model, SequenceClassifier):
        raise TritonForgeError(
            "quantizing a BertForSequenceClassification checkpoint is not supported yet: "
            "--bits 8/6/4 quantize BERT sentence encoders; export classifiers with --bits 32 or 16")


def slotted_copy(fp: SentenceEncoder) -> SlottedBert:
    """`fp`'s BERT written out with activation slots, on a copy of its weights."""
    return SlottedBert(copy.deepcopy(fp.bert)).eval()


def calibrate_encoder(fp: SentenceEncoder, recipe: QuantRecipe, calib_path: str | None, calib_size: int,
                      allow_fewer: bool, stage: Stage | None = None) -> FakeQuantEncoder:
    """Quantize a copy of `fp` with `recipe`, calibrated on the texts of `calib_path`."""
    from tritonforge.export.bert import tokenize

    require_encoder(fp)
    texts, calibration = calibration_texts(calib_path, calib_size, allow_fewer)
    tokens = tokenize(fp.tokenizer, texts, CALIBRATION_LENGTH)
    quantized = calibrate(slotted_copy(fp), recipe, tokens, CALIBRATION_BATCH, stage)
    return FakeQuantEncoder(quantized, fp, calibration)


def recipe_record(model: FakeQuantEncoder) -> dict[str, Any]:
    """What the manifest records of the calibration beyond the recipe itself."""
    result = model.quantized
    return {"calibration": model.calibration,
            "calibration_output_mse": result.calibration_error,
            "alphas": {k: round(v, 4) for k, v in result.alphas.items()},
            "thresholds": {k: round(v, 4) for k, v in result.thresholds.items()}}


# -- the reference, saved and loaded --------------------------------------------------------


def save_reference(model: FakeQuantEncoder, folder: Path) -> None:
    save_calibration(model.quantized, model.calibration, folder / REFERENCE_FILE)


def load_reference(fp: SentenceEncoder, recipe: QuantRecipe, folder: Path) -> FakeQuantEncoder:
    """Rebuild the exported quantized reference from `reference.pt` (loaded weights_only)."""
    require_encoder(fp)
    result, calibration = load_calibration(slotted_copy(fp), recipe, folder / REFERENCE_FILE)
    return FakeQuantEncoder(result, fp, calibration)


# -- ONNX ------------------------------------------------------------------------------------


def trace_qdq(model: FakeQuantEncoder, path: Path, trace: Callable[[torch.nn.Module, Path], None]) -> None:
    """Trace the quantized encoder into a QDQ graph with int8 weights at `path`."""
    result = model.quantized
    traced = SentenceEncoder(qdq_module(result.model, result.quantizers), model.pooling, model.normalize)
    trace(traced.eval(), path)
    dequantize_weights(path, result.weights)


# -- quality vs FP ------------------------------------------------------------------------------


def sentence_embeddings(run: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]],
                        inputs: Mapping[str, np.ndarray], batch_size: int = 32) -> np.ndarray:
    """`run` (PyTorch or a session) over `inputs` batch by batch: the sentence embeddings."""
    return np.concatenate([run(batch)["sentence_embedding"] for batch in batches(inputs, batch_size)])


def quality_vs_fp(fp_embeddings: np.ndarray, embeddings: np.ndarray) -> dict[str, float]:
    """Sentence-embedding cosine to FP and top-1 nearest-neighbour agreement with FP."""
    cosines = row_cosines(fp_embeddings, embeddings)
    return {"cosine_vs_fp": float(cosines.mean()), "min_cosine_vs_fp": float(cosines.min()),
            "nn_agreement_vs_fp": nearest_neighbour_agreement(fp_embeddings, embeddings),
            "samples": int(len(cosines))}
