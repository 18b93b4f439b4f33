"""`tritonforge quality bert`: what each quantization recipe costs and buys, side by side.

Every variant is exported to ONNX and run in ONNX Runtime on the shipped evaluation sentences
(never used for calibration): sentence-embedding cosine and top-1 nearest-neighbour agreement
against the FP32 PyTorch model, and latency measured interleaved in one run. The naive
baseline is ONNX Runtime's `quantize_dynamic` (INT8 weights per channel, activations
quantized on the fly), the first thing users reach for.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.export.base import get_family
from tritonforge.export.bert.quantized import quality_vs_fp, sentence_embeddings
from tritonforge.quant.calibrate import METHODS
from tritonforge.quant.quantizers import check_bits
from tritonforge.runtime import ort_session, run_session
from tritonforge.verify.runner import batches, measure_interleaved

Stage = Callable[[str, int], Callable[[], None]]


@dataclass
class QualityRow:
    variant: str
    precision: str
    method: str
    runtime: str
    cosine_vs_fp: float
    min_cosine_vs_fp: float
    nn_agreement_vs_fp: float
    latency_p50_ms: float | None = None
    onnx_mb: float | None = None
    alphas: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_list(text: str, what: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise TritonForgeError(f"{what} {text!r} names nothing: give a comma-separated list")
    return items


def quality_report(model: str | None = None, bits: Sequence[int] = (8, 6, 4),
                   methods: Sequence[str] = ("os", "os+", "minmax", "percentile"),
                   calib: str | None = None, calib_size: int = 256, lsq_epochs: int = 3,
                   threads: int = 2, iterations: int = 12, batch_size: int = 8,
                   stage: Stage | None = None) -> list[QualityRow]:
    """Quality and latency of FP32, `quantize_dynamic` INT8 and every method x bits."""
    import torch

    from tritonforge.export.bert import BertOptions

    for method in methods:
        if method not in METHODS:
            raise TritonForgeError(f"--methods: {method!r} is unknown: choose from {', '.join(METHODS)}")
    for b in bits:
        check_bits(b, "--bits")
    stage = stage or (lambda _description, _total: (lambda: None))
    torch.set_num_threads(threads)
    family = get_family("bert")
    fp_options = BertOptions(model=model, graph="plain")
    stage("FP32 reference embeddings", 0)
    fp_model = family.load(fp_options)
    io = family.io(fp_model, fp_options)
    inputs = family.sample_inputs(fp_model, fp_options, None, 128)
    fp = sentence_embeddings(lambda batch: family.reference_outputs(fp_model, batch, io), inputs)
    rows = [QualityRow("fp32 (PyTorch eager)", "fp32", "-", "pytorch", 1.0, 1.0, 1.0)]
    sessions: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tritonforge-quality-") as scratch:
        folder = Path(scratch)

        def measure(name: str, precision: str, method: str, path: Path, alphas=None) -> None:
            session = ort_session(path, threads)
            scores = quality_vs_fp(fp, sentence_embeddings(lambda batch: run_session(session, batch), inputs))
            rows.append(QualityRow(name, precision, method, "onnxruntime", scores["cosine_vs_fp"],
                                   scores["min_cosine_vs_fp"], scores["nn_agreement_vs_fp"],
                                   onnx_mb=round(path.stat().st_size / 1e6, 1), alphas=alphas))
            sessions[name] = session

        stage("exporting FP32 and quantize_dynamic INT8", 0)
        fp_path = folder / "fp32.onnx"
        family.export(fp_model, fp_path, fp_options)
        measure("fp32", "fp32", "-", fp_path)
        dynamic_path = folder / "dynamic.onnx"
        quantize_dynamic_int8(fp_path, dynamic_path)
        measure("quantize_dynamic int8", "w8a8 (dynamic)", "ort-dynamic", dynamic_path)
        for b in bits:
            for method in methods:
                options = BertOptions(model=model, bits=b, method=method, calib=calib,
                                      calib_size=calib_size, lsq_epochs=lsq_epochs)
                label = f"{options.precision} {method}"
                stage(f"{label}: calibrating", 0)
                quantized = family.load(options)
                stage(f"{label}: exporting", 0)
                path = folder / f"{options.precision}_{method}.onnx"
                family.export(quantized, path, options)
                measure(label, options.precision, method, path, quantized.quantized.alphas or None)
                del quantized
        tick = stage("latency, interleaved", iterations)
        batch = next(batches(inputs, batch_size))
        runners = {"fp32 (PyTorch eager)": lambda: family.reference_outputs(fp_model, batch, io)}
        runners.update({name: (lambda s=session: run_session(s, batch))
                        for name, session in sessions.items()})
        latency = measure_interleaved(runners, iterations, tick=tick)
    for row in rows:
        row.latency_p50_ms = round(latency[row.variant].percentile(50), 2)
    return rows


def quantize_dynamic_int8(source: Path, target: Path) -> Path:
    """ONNX Runtime's dynamic quantization: INT8 weights per channel, activations on the fly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), per_channel=True, weight_type=QuantType.QInt8)
    return target


def plot_quality(rows: Sequence[QualityRow], path: Path) -> Path:
    """Cosine to FP (left) and latency (right) per variant, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row.variant for row in rows]
    colours = ["#4c72b0" if row.method in ("-", "ort-dynamic") else "#dd8452" for row in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 0.42 * len(rows) + 1.6), sharey=True)
    positions = np.arange(len(rows))
    left.barh(positions, [row.cosine_vs_fp for row in rows], color=colours)
    left.set_xlim(min(0.8, min(row.cosine_vs_fp for row in rows) - 0.01), 1.0)
    left.set_xlabel("sentence-embedding cosine vs FP32 (held-out sentences)")
    for position, row in zip(positions, rows, strict=True):
        left.text(row.cosine_vs_fp, position, f" {row.cosine_vs_fp:.4f}", va="center", fontsize=8)
    right.barh(positions, [row.latency_p50_ms or 0 for row in rows], color=colours)
    right.set_xlabel("p50 latency, ms (batch 8 x 128, interleaved)")
    left.set_yticks(positions, names)
    left.invert_yaxis()
    figure.suptitle("Quantized MiniLM: quality vs speed")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
