"""Video in and out: a list of uint8 RGB frames [H, W, 3] and a frame rate.

A video comes from a folder of PNG/JPEG frames (sorted by name; the folder has no frame rate,
so `fps` gives it, default 30) or from a video file decoded by imageio's FFMPEG plugin, which
runs the ffmpeg binary that `imageio-ffmpeg` ships (nothing from the system). It goes out the
same two ways. Shared by the families that read videos (`sr` tunes a model per chunk,
`spikedepth` records one with a simulated spike camera).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from tritonforge.errors import TritonForgeError

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v")
DEFAULT_FPS = 30.0
# Constant-quality H.264: CRF 17 is visually lossless; the round trip keeps PSNR well above 30 dB.
MP4_CRF = "17"


@dataclass(frozen=True)
class Video:
    """Frames (uint8 RGB [H, W, 3], in order) at `fps` frames per second; `source` names them."""

    frames: list[np.ndarray]
    fps: float
    source: str = ""
    names: tuple[str, ...] = ()  # a folder's file names, one per frame, for messages

    @property
    def seconds(self) -> float:
        return len(self.frames) / self.fps

    def write(self, path: str | Path) -> Path:
        return write_video(self.frames, path, self.fps)


# ---------------------------------------------------------------------------------- reading


def read_video(path: str | Path, fps: float | None = None) -> Video:
    """A folder of PNG/JPEG frames (sorted by name) or a video file. `fps` is the folder's frame
    rate (default 30); for a file it overrides the rate the file declares."""
    path = Path(path)
    if fps is not None and not fps > 0:
        raise TritonForgeError(f"--fps must be positive, got {fps}")
    if path.is_dir():
        return _read_folder(path, DEFAULT_FPS if fps is None else fps)
    if path.is_file():
        return _read_file(path, fps)
    raise TritonForgeError(f"no video at {path}: give a video file ({', '.join(VIDEO_SUFFIXES)}) "
                           f"or a folder of frames ({', '.join(FRAME_SUFFIXES)})")


def _read_folder(folder: Path, fps: float) -> Video:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES)
    if not files:
        raise TritonForgeError(f"{folder} holds no frames: put PNG or JPEG files in it "
                               f"(read in order of their names), or give a video file")
    frames = []
    for file in files:
        try:
            with PILImage.open(file) as image:
                frames.append(np.asarray(image.convert("RGB")))
        except Exception as exc:  # PIL raises several types; the person needs the file and why
            raise TritonForgeError(f"cannot decode frame {file}: {exc}; "
                                   f"replace it or remove it from {folder}") from None
    return Video(frames, float(fps), str(folder), tuple(file.name for file in files))


def _read_file(path: Path, fps: float | None) -> Video:
    import imageio.v2 as imageio  # imported here: only video files need it (and its ffmpeg)

    try:
        reader = imageio.get_reader(path, format="FFMPEG")
        try:
            meta = reader.get_meta_data()
            frames = [np.ascontiguousarray(frame[..., :3], dtype=np.uint8) for frame in reader]
        finally:
            reader.close()
    except Exception as exc:  # ffmpeg's reason is the last line of imageio's message
        raise TritonForgeError(f"cannot decode video {path}: {_ffmpeg_reason(exc)}; give a video "
                               f"ffmpeg can read (e.g. H.264 .mp4) or a folder of frames") from None
    if not frames:
        raise TritonForgeError(f"video {path} decodes to no frames: give a video with frames")
    rate = fps if fps is not None else meta.get("fps")
    if not rate or not math.isfinite(rate) or rate <= 0:
        raise TritonForgeError(f"video {path} declares no frame rate ({meta.get('fps')!r}): pass --fps")
    return Video(frames, float(rate), str(path))


def _ffmpeg_reason(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reasons = [line for line in lines if "error" in line.lower() or "invalid" in line.lower()]
    return (reasons or lines or [type(exc).__name__])[-1]


# ---------------------------------------------------------------------------------- writing


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: float) -> Path:
    """An .mp4 (H.264, CRF 17) when `path` has a video suffix, else a folder of PNGs
    (frame_000001.png, ...). Returns the path."""
    path = Path(path)
    if not len(frames):
        raise TritonForgeError(f"no frames to write to {path}")
    height, width = same_size(frames, f"the frames for {path}", [f"frame {i}" for i in range(len(frames))])
    if path.suffix.lower() in VIDEO_SUFFIXES:
        if height % 2 or width % 2:
            raise TritonForgeError(f"cannot write {width}x{height} frames to {path}: H.264 (yuv420p) "
                                   f"needs an even width and height; crop the frames or write a folder")
        import imageio.v2 as imageio

        path.parent.mkdir(parents=True, exist_ok=True)
        # macro_block_size=1: keep the size (imageio would otherwise resize to a multiple of 16)
        writer = imageio.get_writer(path, format="FFMPEG", fps=fps, codec="libx264", quality=None,
                                    macro_block_size=1, output_params=["-crf", MP4_CRF],
                                    ffmpeg_log_level="error")
        try:
            for frame in frames:
                writer.append_data(np.ascontiguousarray(frame, dtype=np.uint8))
        finally:
            writer.close()
        return path
    path.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames, 1):
        PILImage.fromarray(np.asarray(frame, dtype=np.uint8)).save(path / f"frame_{i:06d}.png")
    return path


def same_size(frames: Sequence[np.ndarray], what: str, names: Sequence[str]) -> tuple[int, int]:
    """(height, width) of the first frame; refuses the first frame of another size, naming it
    (frames count from 0)."""
    height, width = frames[0].shape[:2]
    for name, frame in zip(names, frames, strict=True):
        if frame.shape[:2] != (height, width):
            raise TritonForgeError(f"{what}: {name} is {frame.shape[1]}x{frame.shape[0]}, but {names[0]} "
                                   f"is {width}x{height}; every frame must have one size "
                                   f"(resize or drop the odd frames)")
    return height, width
