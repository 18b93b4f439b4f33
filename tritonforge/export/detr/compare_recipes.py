"""`tritonforge quality detr`: PyTorch FP32, ONNX Runtime FP32 and INT8, side by side.

For each architecture: the exported graphs run on every bundled photograph against the FP32
PyTorch model (logits cosine, box recall at IoU 0.5), and all variants are timed interleaved
in one run on one letterboxed photograph, so the ratios compare like with like.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tritonforge.family import get_family, option
from tritonforge.runtime import ort_session, run_session
from tritonforge.timing import measure_interleaved
from tritonforge.verify.recipe_table import QualityRow, parse_list


@dataclass(frozen=True)
class DetrQualityOptions:
    """`tritonforge quality detr`: which detectors to put side by side."""

    archs: str = option("detr,deformable", help="Comma-separated: detr,deformable.")
    size: str = option("r50", help="Random weights: r50 (ResNet-50, the papers' size) or tiny.")
    image_size: int = option(640, help="Export size (photographs are letterboxed to S x S).")
    threads: int = option(2, help="Threads for every runtime.")
    iterations: int = option(10, help="Timed runs per variant (batch 1).")


def one_by_one(session, photographs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`session`'s outputs on the photographs, run one at a time: ONNX Runtime keeps its memory
    arena at the largest request it ran, so a batch of 8 at 640 x 640 would hold gigabytes per
    session while every variant waits for the interleaved timing."""
    runs = [run_session(session, {k: v[i:i + 1] for k, v in photographs.items()})
            for i in range(len(next(iter(photographs.values()))))]
    return {name: np.concatenate([run[name] for run in runs]) for name in runs[0]}


def quality_table(options: DetrQualityOptions, stage) -> list[QualityRow]:
    from tritonforge.export.detr import DetrOptions

    family = get_family("detr")
    rows: list[QualityRow] = []
    runners = {}
    with tempfile.TemporaryDirectory(prefix="tritonforge-detr-quality-") as scratch:
        for arch in parse_list(options.archs, "--archs"):
            recipes = {bits: DetrOptions(arch=arch, size=options.size, image_size=options.image_size,
                                         bits=bits, threads=options.threads) for bits in (32, 8)}
            stage(f"{arch}: PyTorch FP32", 0)
            model = family.load(recipes[32])
            io = family.io(model, recipes[32])
            photographs = family.sample_inputs(model, recipes[32], None)
            reference = family.reference_outputs(model, photographs, io)
            one = {k: v[:1] for k, v in photographs.items()}
            rows.append(QualityRow(f"{arch} fp32 (PyTorch eager)", "pytorch",
                                   {"logits_cosine_min": 1.0, "box_recall_at_iou_0.5": 1.0}, group=arch))
            runners[rows[-1].variant] = lambda m=model, f=one, i=io: family.reference_outputs(m, f, i)
            for bits, recipe in recipes.items():
                stage(f"{arch}: exporting {'FP32' if bits == 32 else 'INT8'}", 0)
                path = Path(scratch) / f"{arch}_{bits}.onnx"
                family.export(model, path, recipe)
                session = ort_session(path, options.threads)
                parity = family.compare(reference, one_by_one(session, photographs),
                                        DetrOptions(arch=arch, bits=8))  # both judged against FP32
                metrics = {c.metric: c.value for c in parity.checks}
                rows.append(QualityRow(f"{arch} {'fp32' if bits == 32 else 'int8'}", "onnxruntime", metrics,
                                       details={"precision": "fp32" if bits == 32 else "int8",
                                                "method": None if bits == 32 else "quantize_static",
                                                "onnx_mb": round(path.stat().st_size / 1e6, 1)},
                                       group=arch))
                runners[rows[-1].variant] = lambda s=session, f=one: run_session(s, f)
        tick = stage("latency, interleaved", options.iterations)
        latency = measure_interleaved(runners, options.iterations, tick=tick)
    for row in rows:
        row.latency_p50_ms = round(latency[row.variant].percentile(50), 2)
    return rows
