"""`emt compare`: EMT per chunk against bicubic, the meta-learned model untuned and the same
network trained from scratch on the chunk with 5x the tuning steps; and the speed of each
network's ONNX graphs (FP32 and INT8) against PyTorch eager on one 640x360 LR frame.

All PSNR figures are on the held-out frames of each chunk (every 5th, never trained on), RGB,
rounded output, border scale + 6 cropped (EMT's metric).
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tritonforge.export.sr.delivery import MetaRecipe, TuneRecipe, bicubic_psnr
from tritonforge.export.sr.emt import (
    frames_psnr,
    frames_to_tensor,
    fresh_network,
    heldout_split,
    meta_train,
    train_on_chunk,
    tune_chunk,
)
from tritonforge.export.sr.video import Chunk

SPEED_FRAME = (640, 360)  # width, height of the LR frame timed
SCRATCH_FACTOR = 5  # the scratch baseline trains this many times EMT's tuning steps


@dataclass(frozen=True)
class ChunkQuality:
    """One chunk under one network: held-out PSNR (dB) of each way of upscaling it."""

    arch: str
    chunk: int
    bicubic_db: float
    meta_db: float
    emt_db: float
    scratch_db: float
    scratch_steps: int
    delta_bytes: int
    full_bytes: int


@dataclass(frozen=True)
class Speed:
    """Median latency (ms) of one LR frame through PyTorch eager and through ONNX Runtime, the
    FP32 graph and the INT8 one (the default INT8 recipe)."""

    arch: str
    frame: str
    pytorch_ms: float
    onnxruntime_ms: float
    int8_ms: float

    @property
    def speedup(self) -> float:
        """ONNX Runtime FP32 against PyTorch eager."""
        return self.pytorch_ms / self.onnxruntime_ms

    @property
    def int8_speedup(self) -> float:
        """ONNX Runtime INT8 against ONNX Runtime FP32."""
        return self.onnxruntime_ms / self.int8_ms


def label(arch: str, blocks: int | None) -> str:
    return f"{arch}{blocks}" if blocks is not None else arch


def compare_arch(chunks: Sequence[Chunk], arch: str, blocks: int | None, scale: int,
                 meta_recipe: MetaRecipe | None = None, recipe: TuneRecipe | None = None,
                 scratch_factor: int = SCRATCH_FACTOR, stage: Callable[[str], None] | None = None
                 ) -> list[ChunkQuality]:
    """Meta-train `arch` on the chunks, tune them in turn (EMT), and train a fresh network on each
    chunk alone for `scratch_factor` times EMT's steps (the reference's random initialisation)."""
    stage = stage or (lambda _message: None)
    meta_recipe, recipe = meta_recipe or MetaRecipe(), recipe or TuneRecipe()
    name = label(arch, blocks)
    stage(f"{name}: meta-training ({meta_recipe.steps} steps)")
    meta = meta_train(arch, chunks, scale, blocks=blocks, **dataclasses.asdict(meta_recipe))
    steps = scratch_factor * (recipe.full_steps + recipe.masked_steps)
    rows, start = [], meta
    for chunk in chunks:
        _train, held = heldout_split(len(chunk.frames))
        lr, hr = chunk.lr(scale)[held], chunk.frames[held]
        stage(f"{name}: tuning {chunk.describe()}")
        fraction = recipe.first_fraction if chunk.index == 1 else recipe.later_fraction
        tuned = tune_chunk(start, chunk, scale, fraction, **recipe.tuning())
        stage(f"{name}: training {chunk.describe()} from scratch ({steps} steps)")
        scratch = fresh_network(arch, scale, "random", blocks, recipe.seed)
        _network, scratch_db = train_on_chunk(scratch, chunk, scale, steps, recipe.lr, recipe.patch,
                                              recipe.batch, recipe.seed)
        rows.append(ChunkQuality(
            name, chunk.index, bicubic_psnr(lr, hr, scale),
            frames_psnr(meta, frames_to_tensor(lr), frames_to_tensor(hr), scale), tuned.report.psnr_after,
            scratch_db, steps, tuned.report.delta_bytes, tuned.report.full_bytes))
        start = tuned.network
    return rows


def measure_speed(arch: str, blocks: int | None, scale: int, frame: tuple[int, int] = SPEED_FRAME,
                  threads: int = 2, iterations: int = 20) -> Speed:
    """One uint8 LR frame of `frame` (width, height) through PyTorch eager and the exported FP32
    and INT8 graphs on ONNX Runtime's CPU provider, `threads` threads each, timed interleaved."""
    from tritonforge.export.sr import PRECISIONS, SRFamily, SROptions
    from tritonforge.runtime import ort_session
    from tritonforge.timing import measure_interleaved

    family = SRFamily()
    model = family.reference(fresh_network(arch, scale, "bicubic", blocks), {}, scale, "bicubic start")
    width, height = frame
    pixels = np.random.default_rng(0).integers(0, 256, (1, 3, height, width), dtype=np.uint8)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            runs = {}
            for bits in (32, 8):
                precision = PRECISIONS[bits]
                path = Path(tmp) / f"{precision}.onnx"
                family.export(model, path, SROptions(arch=arch, scale=scale, blocks=blocks, bits=bits))
                runs[precision] = functools.partial(ort_session(path, threads).run, None, {"lr": pixels})
            tensor = torch.from_numpy(pixels)

            def eager() -> Any:
                with torch.inference_mode():
                    return model(tensor)

            stats = measure_interleaved({"pytorch": eager, **runs}, iterations)
    finally:
        torch.set_num_threads(previous)
    return Speed(label(arch, blocks), f"{width}x{height}", stats["pytorch"].percentile(50),
                 stats["fp32"].percentile(50), stats["int8"].percentile(50))


def plot_comparison(rows: Sequence[ChunkQuality], path: Path) -> Path:
    """Per architecture, held-out PSNR per chunk of bicubic, meta, EMT and scratch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tritonforge.figures import save_figure

    archs = list(dict.fromkeys(r.arch for r in rows))
    figure, axes = plt.subplots(1, len(archs), figsize=(4.2 * len(archs), 3.8), squeeze=False)
    for axis, arch in zip(axes[0], archs, strict=True):
        mine = [r for r in rows if r.arch == arch]
        index = [r.chunk for r in mine]
        for field, style, name in (("bicubic_db", "s--", "bicubic"), ("meta_db", "^:", "meta, untuned"),
                                   ("scratch_db", "x-.", f"scratch ({mine[0].scratch_steps} steps)"),
                                   ("emt_db", "o-", "EMT")):
            axis.plot(index, [getattr(r, field) for r in mine], style, label=name)
        axis.set(title=arch, xlabel="chunk", ylabel="held-out PSNR (dB)", xticks=index)
        axis.legend(fontsize=8)
    return save_figure(figure, path)
