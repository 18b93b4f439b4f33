"""`tritonforge quality bert`: what each quantization recipe costs and buys, side by side.

Every variant is exported to ONNX and run in ONNX Runtime on the shipped evaluation sentences
(never used for calibration): sentence-embedding cosine and top-1 nearest-neighbour agreement
against the FP32 PyTorch model, and latency measured interleaved in one run. The naive
baseline is ONNX Runtime's `quantize_dynamic` (INT8 weights per channel, activations
quantized on the fly), the first thing users reach for.

Every graph runs on each target asked for (ONNX Runtime, OpenVINO; OpenVINO adds its BF16 on
CPUs that have it), its quality measured on that runtime, and is timed at the batch shape
(8 x 128) and at the common serving request (1 x 32), each in its own interleaved rounds.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonforge.batching import batches
from tritonforge.errors import TritonForgeError
from tritonforge.export.bert.nncf_baseline import NNCF_TEXTS, nncf_int8, nncf_missing
from tritonforge.export.bert.outlier_suppression import (
    CALIBRATION_LENGTH,
    calibration_texts,
    quality_vs_fp,
    sentence_embeddings,
)
from tritonforge.family import get_family, option
from tritonforge.quant.calibrate import METHODS, QuantRecipe
from tritonforge.quant.mixed import check_max_drop
from tritonforge.runtime import TARGETS, check_target, cpu_has_bf16, open_session, run_session
from tritonforge.timing import measure_interleaved
from tritonforge.verify.recipe_table import QualityRow, parse_list

Stage = Callable[[str, int], Callable[[], None]]
FLOAT_OPS_BF16 = ", bf16 float ops"  # a quantized graph run with OpenVINO's bf16 hint


@dataclass(frozen=True)
class BertQualityOptions:
    """`tritonforge quality bert`: which recipes to put side by side."""

    model: str | None = option(None, help="Hugging Face BERT encoder directory. Default: the embedded "
                                          "all-MiniLM-L6-v2.")
    bits: str = option("8,6,4", help="Comma-separated: 8,6,4 (4 = W4A8).")
    methods: str = option("os,os+,minmax,percentile", help="Comma-separated: os,os+,minmax,percentile.")
    max_drops: str = option("0.005", help="Comma-separated --bits auto budgets to add to the table and "
                                          "its Pareto front (average bits vs quality); none: skip.")
    calib: str | None = option(None, help="Calibration text file (one per line).")
    calib_size: int = option(256, help="Calibration texts.")
    lsq_epochs: int = option(3, help="LSQ+ epochs of os / os+.")
    targets: str = option("auto", help="Comma-separated runtimes to run every graph on: onnxruntime, "
                                       "openvino; auto: those installed here.")
    threads: int = option(2, help="Threads for every runtime.")
    iterations: int = option(12, help="Timed runs per variant and shape.")
    nncf: bool = option(True, help="Add NNCF's INT8 (Intel's transformer recipe, 300 texts) as a baseline "
                                   "on OpenVINO; left out with a note when nncf is not installed "
                                   "(pip install 'tritonforge[nncf]').")


def quality_table(options: BertQualityOptions, stage: Stage | None = None) -> list[QualityRow]:
    """`quality_report` for the options of `tritonforge quality bert`."""
    try:
        bits = [int(b) for b in parse_list(options.bits, "--bits")]
    except ValueError:
        raise TritonForgeError(
            f"--bits {options.bits!r} must be comma-separated integers, e.g. 8,6,4") from None
    text = options.max_drops.strip().lower()
    drops = [] if text == "none" else parse_list(options.max_drops, "--max-drops")
    try:
        budgets = [check_max_drop(float(d)) for d in drops]
    except ValueError:
        raise TritonForgeError(f"--max-drops {options.max_drops!r} must be comma-separated numbers in "
                               "(0, 1), e.g. 0.002,0.005, or none") from None
    return quality_report(options.model, bits, parse_list(options.methods, "--methods"), options.calib,
                          options.calib_size, options.lsq_epochs, options.threads, options.iterations,
                          targets=quality_targets(options.targets), max_drops=budgets, nncf=options.nncf,
                          stage=stage)


def quality_targets(text: str) -> list[str]:
    """The CPU runtimes to compare: those named (each checked), or every one installed."""
    if text == "auto":
        return [t for t in ("onnxruntime", "openvino") if check_target(t, "fp32") is None]
    targets = parse_list(text, "--targets")
    for target in targets:
        if target == "tensorrt" or target not in TARGETS:
            raise TritonForgeError(f"--targets: {target!r} is not a CPU runtime: choose onnxruntime, "
                                   "openvino or auto")
        problem = check_target(target, "fp32")
        if problem:
            raise TritonForgeError(problem)
    return targets


def quality_report(model: str | None = None, bits: Sequence[int] = (8, 6, 4),
                   methods: Sequence[str] = ("os", "os+", "minmax", "percentile"),
                   calib: str | None = None, calib_size: int = 256, lsq_epochs: int = 3,
                   threads: int = 2, iterations: int = 12, batch_size: int = 8,
                   targets: Sequence[str] = ("onnxruntime",), max_drops: Sequence[float] = (),
                   nncf: bool = False, stage: Stage | None = None) -> list[QualityRow]:
    """Quality, file size and latency (batch 8 x 128 and 1 x 32) of FP32, BF16, `quantize_dynamic`
    INT8, NNCF's INT8 (with `nncf`, on OpenVINO) and every method x bits, on each of `targets`.
    On OpenVINO a quantized graph runs with the float-op precision its export would serve it
    with (`BertOptions.float_ops`); NNCF's runs with each hint this CPU has."""
    import torch

    from tritonforge.export.bert import BertOptions, tokenize

    for method in methods:
        if method not in METHODS:
            raise TritonForgeError(f"--methods: {method!r} is unknown: choose from {', '.join(METHODS)}")
    for b in bits:
        QuantRecipe(wbits=b, abits=b)  # refuses widths outside 2..8 before any work
    stage = stage or (lambda _description, _total: (lambda: None))
    torch.set_num_threads(threads)
    family = get_family("bert")
    fp_options = BertOptions(model=model, graph="plain", target="onnxruntime")
    stage("FP32 reference embeddings", 0)
    fp_model = family.load(fp_options)
    io = family.io(fp_model, fp_options)
    inputs = family.sample_inputs(fp_model, fp_options, None, {"seq_len": 128})
    fp = sentence_embeddings(lambda batch: family.reference_outputs(fp_model, batch, io), inputs)
    rows = [QualityRow("fp32 (PyTorch eager)", "pytorch", quality_metrics(fp, fp),
                       details={"precision": "fp32", "method": None})]
    sessions: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tritonforge-quality-") as scratch:
        folder = Path(scratch)

        def measure(name: str, precision: str, method: str | None, path: Path, alphas=None,
                    on: Sequence[str] = targets, run_precision: str = "fp32",
                    bits: float | None = None, recipe: BertOptions | None = None) -> None:
            for target in on:
                run = run_precision
                if recipe is not None and dataclasses.replace(recipe, target=target).float_ops == "bf16":
                    run = "bf16"
                session = open_session(path, target, threads, run)
                embeddings = sentence_embeddings(lambda batch, s=session: run_session(s, batch), inputs)
                label = f"{name}{FLOAT_OPS_BF16 if run == 'bf16' and precision != 'bf16' else ''} ({target})"
                rows.append(QualityRow(label, target, quality_metrics(fp, embeddings), details={
                    "precision": precision, "method": method, "float_ops": run,
                    "onnx_mb": round(model_bytes(path) / 1e6, 1), "alphas": alphas,
                    **({"average_bits": round(bits, 3)} if bits is not None else {})}))
                sessions[label] = session

        stage("exporting FP32 and quantize_dynamic INT8", 0)
        fp_path = folder / "fp32.onnx"
        family.export(fp_model, fp_path, fp_options)
        measure("fp32", "fp32", None, fp_path)
        if "openvino" in targets and cpu_has_bf16():
            measure("bf16", "bf16", None, fp_path, on=["openvino"], run_precision="bf16")
        dynamic_path = folder / "dynamic.onnx"
        quantize_dynamic_int8(fp_path, dynamic_path)
        measure("quantize_dynamic int8", "w8a8 (dynamic)", "ort-dynamic", dynamic_path, on=["onnxruntime"])
        if nncf and "openvino" in targets:
            problem = nncf_missing()
            if problem:
                stage(problem, 0)
            else:
                stage("NNCF INT8 (transformer recipe): calibrating", 0)
                texts, _ = calibration_texts(calib, NNCF_TEXTS, allow_fewer=True)
                nncf_path = nncf_int8(fp_path, tokenize(fp_model.tokenizer, texts, CALIBRATION_LENGTH),
                                      folder / "nncf_int8.xml")
                for hint in ("fp32", *(["bf16"] if cpu_has_bf16() else [])):
                    measure("nncf int8", "w8a8 (nncf)", "nncf", nncf_path, on=["openvino"],
                            run_precision=hint)
        for b in bits:
            for method in methods:
                options = BertOptions(model=model, bits=b, method=method, calib=calib,
                                      calib_size=calib_size, lsq_epochs=lsq_epochs, target="onnxruntime")
                label = f"{options.precision} {method}"
                stage(f"{label}: calibrating", 0)
                quantized = family.load(options)
                stage(f"{label}: exporting", 0)
                path = folder / f"{options.precision}_{method}.onnx"
                family.export(quantized, path, options)
                measure(label, options.precision, method, path, quantized.quantized.alphas or None,
                        bits=average_bits(quantized.quantized), recipe=options)
                del quantized
        for budget in max_drops:
            options = BertOptions(model=model, bits="auto", max_drop=budget, calib=calib,
                                  calib_size=calib_size, lsq_epochs=lsq_epochs, target="onnxruntime")
            label = f"auto {budget:g}"
            stage(f"{label}: choosing widths and calibrating", 0)
            quantized = family.load(options, stage)
            path = folder / f"auto_{budget:g}.onnx"
            family.export(quantized, path, options)
            measure(label, "mixed", options.method, path, bits=quantized.plan.average_bits, recipe=options)
            del quantized
        shapes = {"8x128": next(batches(inputs, batch_size)),
                  "1x32": family.sample_inputs(fp_model, fp_options, 1, {"seq_len": 32})}
        latency = {}
        for shape, batch in shapes.items():
            tick = stage(f"latency at {shape}, interleaved", iterations)
            runners = {"fp32 (PyTorch eager)": lambda b=batch: family.reference_outputs(fp_model, b, io)}
            runners.update({name: (lambda s=session, b=batch: run_session(s, b))
                            for name, session in sessions.items()})
            latency[shape] = measure_interleaved(runners, iterations, tick=tick)
    for row in rows:
        row.latency_p50_ms = round(latency["8x128"][row.variant].percentile(50), 2)
        row.serving_p50_ms = round(latency["1x32"][row.variant].percentile(50), 2)
    return rows


def model_bytes(path: Path) -> int:
    """The model's size on disk: an ONNX file, or OpenVINO IR's .xml and its .bin."""
    weights = path.with_suffix(".bin")
    return path.stat().st_size + (weights.stat().st_size if path.suffix == ".xml" and weights.exists() else 0)


def average_bits(result) -> float:
    """The mean width over quantizers, each counted once (as `--bits auto` reports it)."""
    widths = [w.bits for w in result.weights.values()] + [q.bits for q in result.quantizers.values()]
    return sum(widths) / len(widths)


def quantize_dynamic_int8(source: Path, target: Path) -> Path:
    """ONNX Runtime's dynamic quantization: INT8 weights per channel, activations on the fly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), per_channel=True, weight_type=QuantType.QInt8)
    return target


def quality_metrics(fp: np.ndarray, embeddings: np.ndarray) -> dict[str, float]:
    """The table's columns: mean and worst embedding cosine, nearest-neighbour agreement."""
    scores = quality_vs_fp(fp, embeddings)
    return {key: scores[key] for key in ("cosine_vs_fp", "min_cosine_vs_fp", "nn_agreement_vs_fp")}
