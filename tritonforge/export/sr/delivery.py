"""EMT delivery: each chunk's tuned model published as a version of one Triton model, and the
client that plays a video through them.

`publish_video` tunes chunk k (EMT: `emt.tune_chunk`, chunk 1 from the meta-learned model,
chunk k from chunk k-1's) and exports it as **version k** of one model whose config keeps every
version loaded. Each version folder holds, beside `model.onnx`:

- `weights.pt`: the chunk's FP32 weights (what `verify` rebuilds the reference from);
- `delta.npz`: the weights that changed from the previous chunk's model (from the meta-learned
  model for chunk 1), as flat indices and values (`emt.WeightDelta`): what a server ships;
- version 1 only: `meta.pt`, the meta-learned starting point, so meta + deltas rebuild all;
- the manifest's `emt` section: the chunk's time range, the mask fraction, held-out PSNR
  before and after tuning, and the bytes of the full model and of the delta.

`play_video` upscales each chunk's LR frames through Triton with that chunk's version and
judges them against the HR frames, bicubic upscaling and the meta-learned model untuned.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage
from torch import nn

from tritonforge.data.video import Video, read_video, write_video
from tritonforge.errors import TritonForgeError
from tritonforge.export.sr import SRFamily, SROptions, SRReference
from tritonforge.export.sr.data import psnr
from tritonforge.export.sr.emt import (
    FIRST_FRACTION,
    HARD_FRACTION,
    LATER_FRACTION,
    TunedChunk,
    check_fraction,
    frames_to_tensor,
    heldout_split,
    tune_chunk,
    upscale,
)
from tritonforge.export.sr.model import architecture, load_checkpoint, save_checkpoint
from tritonforge.export.sr.video import DEFAULT_CHUNK_SECONDS, Chunk, split_chunks
from tritonforge.family import ExportInfo

SECTION = "emt"  # the manifest section of a chunk's version
DELTA_FILE = "delta.npz"
META_FILE = "meta.pt"
PLAY_BATCH = 8  # LR frames per request


@dataclass(frozen=True)
class MetaRecipe:
    """How the starting point is meta-learned (`emt.meta_train`'s options); recorded in its
    checkpoint. The defaults are the best measured on the demo clip (ESPCN x2, README): the
    bicubic start, and Adam at 1e-3 decayed along a cosine over 4000 steps (the reference's
    constant 1e-3 drifts after ~1000 steps here: held-out PSNR fell 2 dB from 1000 to 3000)."""

    steps: int = 4000
    outer_lr: float = 1e-3
    inner_steps: int = 2
    inner_lr: float = 5e-6
    task_frames: int = 50
    tasks_per_step: int = 1
    patch: int = 96
    batch: int = 8
    init: str = "bicubic"
    seed: int = 0
    schedule: str = "cosine"


@dataclass(frozen=True)
class TuneRecipe:
    """How each chunk is tuned (`emt.tune_chunk`'s options); recorded in every version. The
    paper's recipe, except Adam at 3e-4 rather than 1e-4 (measured best from the default meta
    model; 1e-3 overshoots it)."""

    first_fraction: float = FIRST_FRACTION
    later_fraction: float = LATER_FRACTION
    full_steps: int = 50
    masked_steps: int = 190
    lr: float = 3e-4
    patch: int = 96
    batch: int = 8
    pool: int = 256
    hard_fraction: float = HARD_FRACTION
    seed: int = 0
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS

    def __post_init__(self):
        check_fraction(self.first_fraction, "--first-fraction")
        check_fraction(self.later_fraction, "--later-fraction")
        check_fraction(self.hard_fraction, "--hard-fraction")
        if self.lr <= 0 or self.batch < 1 or self.pool < 1 or self.chunk_seconds <= 0:
            raise TritonForgeError(f"--lr {self.lr}, --batch {self.batch}, --pool {self.pool} and "
                                   f"--chunk-seconds {self.chunk_seconds} must be positive")

    def tuning(self) -> dict[str, Any]:
        """`tune_chunk`'s keyword arguments."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("first_fraction", "later_fraction", "chunk_seconds")}


class ChunkFamily(SRFamily):
    """The `sr` family exporting one tuned chunk: its network as the reference, its delta and
    (for chunk 1) the meta-learned model as side files, its report as the manifest's `emt`."""

    def __init__(self, tuned: TunedChunk, start: nn.Module, section: dict[str, Any], first: bool):
        self.tuned, self.start, self.section, self.first = tuned, start, section, first

    def load(self, options: SROptions, stage=None) -> SRReference:
        return self.reference(copy.deepcopy(self.tuned.network), {}, options.scale,
                              f"EMT-tuned on chunk {self.tuned.report.index} of {self.section['video']}")

    def write_side_files(self, model: SRReference, version_dir: Path) -> None:
        super().write_side_files(model, version_dir)
        (version_dir / DELTA_FILE).write_bytes(self.tuned.delta.to_bytes())
        if self.first:
            arch, blocks = architecture(self.start)
            save_checkpoint(self.start, version_dir / META_FILE, arch, model.scale, blocks)

    def export(self, model: SRReference, path: Path, options: SROptions) -> ExportInfo:
        info = super().export(model, path, options)
        return dataclasses.replace(info, sections={**info.sections, SECTION: self.section})


def read_chunks(video: str | Path, scale: int, seconds: float,
                fps: float | None = None) -> tuple[list[Chunk], str, Video]:
    """The video's chunks (HR cropped to the scale), the crop note ("" if none), the video."""
    clip = read_video(video, fps)
    chunks, note = split_chunks(clip, seconds, scale)
    return chunks, note, clip


def publish_video(video: str | Path, name: str, repo: Path | str, meta: nn.Module, scale: int,
                  recipe: TuneRecipe | None = None, bits: int = 32, force: bool = False,
                  fps: float | None = None, stage: Callable[[str], None] | None = None,
                  done: Callable[[Any], None] | None = None, *,
                  export_model: Callable[..., Any]) -> list[Any]:
    """Tune every chunk of `video` from `meta` and publish chunk k as version k of `name`.

    Refuses a name that already has versions unless `force` (then versions 1..n are replaced;
    versions beyond the video's chunks are refused, as a player would take them for its own).
    Each chunk is published by `export_model` (`tritonforge.pipeline.export.export_model`,
    passed in: the pipeline sits above the families); `done(result)` is called with each
    chunk's `ExportResult` as it is published."""
    from tritonforge.serving.repository import ModelRepository
    from tritonforge.triton_config import ServingOptions

    stage = stage or (lambda _message: None)
    recipe = recipe or TuneRecipe()
    chunks, _note, clip = read_chunks(video, scale, recipe.chunk_seconds, fps)
    existing = ModelRepository(repo).versions(name)
    if existing and not force:
        raise TritonForgeError(f"{name} already has versions {existing} in {repo}: tuning would replace "
                               "served chunk models; choose another --name, or pass --force")
    beyond = [v for v in existing if v > len(chunks)]
    if beyond:
        raise TritonForgeError(f"{name} has versions {beyond} beyond this video's {len(chunks)} chunks: a "
                               "player would take them for chunks of this video; use another --name")
    arch, blocks = architecture(meta)
    options = SROptions(arch=arch, scale=scale, blocks=blocks, bits=bits)
    serving = ServingOptions(version_policy="all", max_batch_size=PLAY_BATCH)
    results, start = [], meta
    for chunk in chunks:
        stage(f"tuning {chunk.describe()}")
        fraction = recipe.first_fraction if chunk.index == 1 else recipe.later_fraction
        tuned = tune_chunk(start, chunk, scale, fraction, **recipe.tuning())
        report = tuned.report
        section = {**dataclasses.asdict(report), "video": clip.source, "frames": len(chunk.frames),
                   "delta_file": DELTA_FILE, "delta_from": META_FILE if chunk.index == 1 else chunk.index - 1,
                   "recipe": dataclasses.asdict(recipe)}
        stage(f"exporting {chunk.describe()} as version {chunk.index}")
        result = export_model(ChunkFamily(tuned, start, section, chunk.index == 1), options, repo, name,
                              serving, version=chunk.index, force=force, stage=stage)
        results.append(result)
        if done:
            done(result)
        start = tuned.network
    return results


# ---------------------------------------------------------------------------------- playing


@dataclass(frozen=True)
class PlayedChunk:
    """One chunk as played: the version that served it, PSNR over all its frames (dB) of the
    served output, bicubic upscaling and the meta-learned model, and the bytes shipped for it."""

    index: int
    start_s: float
    end_s: float
    version: int
    frames: int
    psnr_db: float
    heldout_psnr_db: float  # every 5th frame: never trained on
    bicubic_db: float
    meta_db: float | None  # None when the repository has no meta-learned model
    full_bytes: int
    delta_bytes: int


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """PIL bicubic upscaling of uint8 frames [N, h, w, 3]."""
    return np.stack([np.asarray(PILImage.fromarray(frame).resize(
        (frame.shape[1] * scale, frame.shape[0] * scale), PILImage.BICUBIC)) for frame in lr])


def bicubic_psnr(lr: np.ndarray, hr: np.ndarray, scale: int) -> float:
    """PSNR (EMT's metric) of PIL bicubic upscaling of LR frames [N, h, w, 3] against HR."""
    return psnr(bicubic_upscale(lr, scale).transpose(0, 3, 1, 2), hr.transpose(0, 3, 1, 2), scale)


def chunk_versions(repo: Path | str, name: str) -> dict[int, dict[str, Any]]:
    """Each version of `name` in `repo` that was published by `publish_video`: its manifest."""
    from tritonforge.serving.repository import ModelRepository

    repository = ModelRepository(repo)
    repository.check_exported(name)
    manifests = {v: repository.read_manifest(name, v) for v in repository.versions(name)}
    chunks = {v: m for v, m in manifests.items() if SECTION in m}
    if not chunks:
        raise TritonForgeError(f"{name} in {repo} has no EMT chunk versions (no '{SECTION}' section in "
                               "its manifests): publish a video with `tritonforge emt tune VIDEO --name "
                               f"{name}`")
    return chunks


def play_video(video: str | Path, name: str, url: Any, repo: Path | str, out: Path | None = None,
               fps: float | None = None, progress: Callable[[int, int], None] | None = None
               ) -> list[PlayedChunk]:
    """Upscale every chunk of `video` through the server at `url` with version k of `name` for
    chunk k, write the SR frames to `out` (a video file or a folder; None: nowhere), and judge
    each chunk against its HR frames. `progress(done, total)` counts frames."""
    from tritonforge.serving.client import connect, infer, model_info
    from tritonforge.serving.endpoint import Endpoint

    manifests = chunk_versions(repo, name)
    first = manifests[min(manifests)]
    scale, seconds = int(first["recipe"]["scale"]), float(first[SECTION]["recipe"]["chunk_seconds"])
    chunks, _note, clip = read_chunks(video, scale, seconds, fps)
    endpoint = Endpoint.of(url)
    client = connect(endpoint)
    served = sorted(int(v) for v in model_info(client, name, endpoint).versions)
    missing = [c for c in chunks if c.index not in served]
    if missing:
        raise TritonForgeError(
            f"{name} at {endpoint} has no version for {', '.join(c.describe() for c in missing)}: it "
            f"serves the models of chunks {served}. Play the video these chunks were tuned on, or "
            f"tune this one with `tritonforge emt tune VIDEO --name {name}`")
    meta = _meta_model(repo, name, manifests)
    total, done, played, sr_frames = sum(len(c.frames) for c in chunks), 0, [], []
    for chunk in chunks:
        lr = chunk.lr(scale)
        outputs = []
        for start in range(0, len(lr), PLAY_BATCH):
            batch = np.ascontiguousarray(lr[start:start + PLAY_BATCH].transpose(0, 3, 1, 2))
            outputs.append(infer(client, name, {"lr": batch}, str(chunk.index), endpoint)["sr"])
            done += len(batch)
            if progress:
                progress(done, total)
        sr = np.concatenate(outputs).transpose(0, 2, 3, 1)
        if out is not None:
            sr_frames.extend(sr)
        played.append(_judge(chunk, lr, scale, sr, meta, manifests.get(chunk.index, {})))
    if out is not None:
        write_video(sr_frames, out, clip.fps)
    return played


def _meta_model(repo: Path | str, name: str, manifests: dict[int, dict[str, Any]]) -> nn.Module | None:
    path = Path(repo) / name / str(min(manifests)) / META_FILE
    return load_checkpoint(path)[0] if path.is_file() else None


def _judge(chunk: Chunk, lr: np.ndarray, scale: int, sr: np.ndarray, meta: nn.Module | None,
           manifest: dict[str, Any]) -> PlayedChunk:
    """The chunk's figures from its LR frames `lr` and the served output `sr` (both [N, h, w, 3])."""
    hr = chunk.frames
    _train, held = heldout_split(len(hr))

    def db(frames: np.ndarray, index: Sequence[int] | slice = slice(None)) -> float:
        return psnr(frames[index].transpose(0, 3, 1, 2), hr[index].transpose(0, 3, 1, 2), scale)

    meta_db = None
    if meta is not None:
        meta_db = db(upscale(meta, frames_to_tensor(lr)).numpy().transpose(0, 2, 3, 1))
    section = manifest.get(SECTION, {})
    return PlayedChunk(chunk.index, chunk.start_s, chunk.end_s, chunk.index, len(hr), db(sr), db(sr, held),
                       bicubic_psnr(lr, hr, scale), meta_db, int(section.get("full_bytes", 0)),
                       int(section.get("delta_bytes", 0)))


def plot_played(played: Sequence[PlayedChunk], path: Path, title: str) -> Path:
    """PSNR per chunk (served, bicubic, meta) and bytes shipped per chunk (delta vs full)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tritonforge.figures import save_figure

    index = [p.index for p in played]
    figure, (quality, size) = plt.subplots(1, 2, figsize=(11, 4))
    quality.plot(index, [p.psnr_db for p in played], "o-", label="EMT (served version k)")
    quality.plot(index, [p.bicubic_db for p in played], "s--", label="bicubic")
    if all(p.meta_db is not None for p in played):
        quality.plot(index, [p.meta_db for p in played], "^:", label="meta-learned, untuned")
    quality.set(xlabel="chunk", ylabel="PSNR vs HR (dB)", xticks=index, title="quality per chunk")
    quality.legend()
    width = 0.38
    size.bar([i - width / 2 for i in index], [p.full_bytes / 1024 for p in played], width, label="full model")
    size.bar([i + width / 2 for i in index], [p.delta_bytes / 1024 for p in played], width, label="delta")
    size.set(xlabel="chunk", ylabel="KiB shipped", xticks=index, title="bytes per chunk")
    size.legend()
    figure.suptitle(title)
    return save_figure(figure, path)
