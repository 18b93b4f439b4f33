"""Quantized BERT encoders: calibration text, the PyTorch reference, QDQ export, quality vs FP.

The PyTorch reference of a quantized export is the fake-quantized SlottedBert (Outlier
Suppression's placement), pooled like the FP encoder: a `FakeQuantEncoder`. It is saved beside model.onnx as
`reference.pt` (int8 weights and scales, float norms/biases, activation ranges) so that
`verify` compares against exactly the model that was exported, without calibrating again.
"""

from __future__ import annotations

import copy
import dataclasses
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
from tritonforge.outputs.metrics import nearest_neighbour_agreement, row_cosines
from tritonforge.quant.calibrate import (
    CalibrationResult,
    QuantRecipe,
    Stage,
    calibrate,
    load_calibration,
    save_calibration,
)
from tritonforge.quant.mixed import BitPlan, pooled_outputs, search_bits
from tritonforge.quant.qdq import dequantize_weights, qdq_module

REFERENCE_FILE = "reference.pt"
CALIBRATION_LENGTH = 128  # tokens per calibration text, as in the paper
CALIBRATION_BATCH = 32
SENSITIVITY_TEXTS = 32  # held-back texts each quantizer's cost is measured on (--bits auto)


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


HELD_BACK_FRACTION = 4  # --bits auto checks its plan on every 4th calibration text, never fitted on
MIN_AUTO_TEXTS = 8


def calibrate_mixed(fp: SentenceEncoder, recipe: QuantRecipe, calib_path: str | None, calib_size: int,
                    allow_fewer: bool, max_drop: float, stage: Stage | None = None) -> FakeQuantEncoder:
    """--bits auto: each quantizer's width (8, 6 or 4) chosen within `max_drop` of the pooled
    embedding's cosine to FP (`tritonforge.quant.mixed.search_bits`), then `recipe` at those widths.
    Three of every four calibration texts fit the model; the fourth checks the plan."""
    from tritonforge.export.bert import tokenize

    require_encoder(fp)
    texts, calibration = calibration_texts(calib_path, calib_size, allow_fewer)
    if len(texts) < MIN_AUTO_TEXTS:
        raise TritonForgeError(
            f"--bits auto needs at least {MIN_AUTO_TEXTS} calibration texts (it holds every "
            f"{HELD_BACK_FRACTION}th back to check its choice); it got {len(texts)}: give --calib a "
            "file with more text, or choose --bits 8, 6 or 4")
    tokens = tokenize(fp.tokenizer, texts, CALIBRATION_LENGTH)
    held = np.arange(len(texts)) % HELD_BACK_FRACTION == HELD_BACK_FRACTION - 1
    fit = {k: v[~held] for k, v in tokens.items()}
    check = {k: v[held] for k, v in tokens.items()}
    sensitivity = {k: v[:SENSITIVITY_TEXTS] for k, v in check.items()}
    fp_copy = slotted_copy(fp)

    def calibrate_with(plan: BitPlan | None) -> CalibrationResult:
        if plan is None:  # the coarse 8-bit model that each quantizer's cost is measured on
            coarse = dataclasses.replace(recipe, lsq_epochs=0, reconstruct=False)
            return calibrate(slotted_copy(fp), coarse, fit, CALIBRATION_BATCH, stage)
        widths = {"weights": plan.weights, "activations": plan.activations}
        return calibrate(slotted_copy(fp), recipe, fit, CALIBRATION_BATCH, stage, widths=widths)

    result, plan = search_bits(calibrate_with, sensitivity, check,
                               lambda inputs: pooled_outputs(fp_copy, inputs), max_drop, stage)
    model = FakeQuantEncoder(result, fp, calibration)
    model.plan = plan
    return model


def recipe_record(model: FakeQuantEncoder) -> dict[str, Any]:
    """What the manifest records of the calibration beyond the recipe itself."""
    result = model.quantized
    plan = getattr(model, "plan", None)
    return {**({"widths": plan.to_json()} if plan is not None else {}),
            "calibration": model.calibration,
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
