"""`tritonforge quality spikedepth`: one network as PyTorch, ONNX Runtime and OpenVINO in every
precision, on held-out scenes, timed interleaved in one run.

Each variant's depth is scored against the scenes' true depth (abs rel overall and per band,
delta < 1.25), so an INT8 graph's cost in accuracy reads straight off the table beside its
speed; `abs_rel_increase` is against the PyTorch FP32 row.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from tritonforge.family import get_family, option
from tritonforge.timing import measure_interleaved
from tritonforge.verify.recipe_table import QualityRow, parse_list

VARIANTS = ("onnxruntime:fp32", "openvino:fp32", "openvino:bf16", "onnxruntime:int8", "openvino:int8")


@dataclass(frozen=True)
class SpikeDepthQualityOptions:
    """`tritonforge quality spikedepth`: which network and which variants."""

    checkpoint: str | None = option(None, help="A checkpoint of `spikedepth train` (default: train the "
                                               "embedded default, minutes).")
    arch: str = option("ugdf", help="The architecture trained when no --checkpoint is given.")
    variants: str = option(",".join(VARIANTS), help="Comma-separated runtime:precision pairs.")
    scenes: int = option(100, help="Held-out scenes scored.")
    batch_size: int = option(1, help="Windows per timed request.")
    iterations: int = option(20, help="Timed runs per variant.")
    threads: int = option(2, help="Threads for every runtime.")
    calibration_scenes: int = option(512, help="INT8: training scenes the ranges are calibrated on.")


def quality_table(options: SpikeDepthQualityOptions, stage) -> list[QualityRow]:
    from tritonforge.export.spikedepth import (
        SpikeDepthOptions,
        depth_of,
        held_out,
        network,
        packed_inputs,
        pytorch_run,
    )
    from tritonforge.export.spikedepth.data import depth_metrics
    from tritonforge.runtime import open_session, run_session

    family = get_family("spikedepth")
    base = SpikeDepthOptions(arch=options.arch, checkpoint=options.checkpoint, threads=options.threads)
    stage("loading the network", 0)
    model = family.load(base)
    config = network(model).config
    scenes = held_out(config, options.scenes)
    feeds = packed_inputs(scenes, config.arch)
    one = {k: v[:options.batch_size] for k, v in feeds.items()}

    def scored(run) -> dict[str, float]:
        metrics = depth_metrics(depth_of(run, feeds), scenes.depth)
        return {key: metrics[key] for key in ("delta_1.25", "abs_rel", "near_abs_rel", "middle_abs_rel",
                                              "far_abs_rel", "rmse") if key in metrics}

    torch_run = pytorch_run(model)
    stage("PyTorch FP32 on the held-out scenes", 0)
    reference = scored(torch_run)
    rows = [QualityRow(f"{config.arch} fp32 (PyTorch eager)", "pytorch",
                       {**reference, "abs_rel_increase": 0.0})]
    runners = {rows[0].variant: lambda: torch_run(one)}
    with tempfile.TemporaryDirectory(prefix="tritonforge-spikedepth-quality-") as scratch:
        for variant in parse_list(options.variants, "--variants"):
            target, _, precision = variant.partition(":")
            bits = {"fp32": 32, "bf16": 16, "fp16": 16, "int8": 8}[precision]
            recipe = SpikeDepthOptions(arch=config.arch, checkpoint=options.checkpoint, bits=bits,
                                       target=target, threads=options.threads,
                                       calibration_scenes=options.calibration_scenes)
            stage(f"exporting {variant}", 0)
            path = Path(scratch) / f"{target}_{precision}.onnx"
            family.export(model, path, recipe)
            session = open_session(path, target, options.threads, "bf16" if precision == "bf16" else "fp32")
            metrics = scored(lambda feed, s=session: run_session(s, feed))
            metrics["abs_rel_increase"] = metrics["abs_rel"] - reference["abs_rel"]
            rows.append(QualityRow(f"{config.arch} {precision}", target, metrics,
                                   details={"precision": precision,
                                            "onnx_mb": round(path.stat().st_size / 1e6, 2)}))
            runners[rows[-1].variant + f" ({target})"] = lambda s=session: run_session(s, one)
        tick = stage("latency, interleaved", options.iterations)
        latency = measure_interleaved(runners, options.iterations, tick=tick)
    for row, key in zip(rows, runners, strict=True):
        row.latency_p50_ms = round(latency[key].percentile(50), 2)
    return rows
