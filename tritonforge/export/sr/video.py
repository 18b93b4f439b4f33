"""Video in and out for the `sr` family: frames, chunks, LR frames, and the demo clip.

A video is a list of uint8 RGB frames [H, W, 3] and its frame rate. It comes from a folder of
PNG/JPEG frames (sorted by name; the folder has no frame rate, so `fps` gives it, default 30) or
from a video file decoded by imageio's FFMPEG plugin, which runs the ffmpeg binary that
`imageio-ffmpeg` ships (nothing from the system). It goes out the same two ways.

EMT tunes one model per chunk (5 s by default, 150 frames at 30 fps). The HR frames are the
source; the LR frames are their bicubic downscale (PIL bicubic on uint8, as SR papers prepare LR).
An HR size the scale does not divide is cropped at the bottom/right to the nearest multiple.

No real video ships offline, so `demo_clip` films the bundled photographs: one shot per photo,
a crop window panning and slowly zooming across it, hard cuts between photos.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from tritonforge.errors import TritonForgeError
from tritonforge.export.sr.data import downscale, scale_crop
from tritonforge.modalities.image import photographs

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v")
DEFAULT_FPS = 30.0
DEFAULT_CHUNK_SECONDS = 5.0
# 384x216: 16:9 and divisible by 12, so x2, x3 and x4 all divide it (LR 192x108, 128x72, 96x54)
# and it is even, as H.264's yuv420p needs. LR at x2 is taller than the paper's 72-pixel LR
# patch (HR 144), and 83k HR pixels a frame keep ESPCN x2 tuning on two CPU cores in minutes.
# No bundled photograph is much larger than 2x this, so the windows are real pixels, not
# upsampled ones (see `_shot_windows`).
DEMO_SIZE = (384, 216)  # width, height
# The demo camera: pans at most 0.15 window widths a second, zooms at most 5% a second.
PAN_SPEED, ZOOM_SPEED = 0.15, 0.05
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


@dataclass(frozen=True)
class Chunk:
    """Frames [start_s, end_s) of a video; `index` counts from 1, as Triton's model versions do."""

    index: int
    start_s: float
    end_s: float
    frames: np.ndarray  # HR, uint8 [N, H, W, 3], cropped to a multiple of the scale

    def lr(self, scale: int) -> np.ndarray:
        """The LR frames: bicubic downscale of the HR frames by `scale`, uint8 [N, H/s, W/s, 3]."""
        return downscale(self.frames, scale, channels_last=True)

    def describe(self) -> str:
        return f"chunk {self.index} ({self.start_s:.2f}-{self.end_s:.2f} s)"


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
    height, width = _same_size(frames, f"the frames for {path}", [f"frame {i}" for i in range(len(frames))])
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


# ---------------------------------------------------------------------------------- chunks


def split_chunks(video: Video, seconds: float = DEFAULT_CHUNK_SECONDS,
                 scale: int = 1) -> tuple[list[Chunk], str]:
    """Chunks of `seconds` each (the last may be shorter), HR cropped so `scale` divides it.

    Frame i (shown at i / fps) belongs to chunk floor(i / fps / seconds) + 1. Returns the chunks
    and a note saying what was cropped ("" when nothing was), for the CLI to print.
    """
    if not seconds > 0:
        raise TritonForgeError(f"chunk length must be positive, got {seconds} s")
    if not video.frames:
        raise TritonForgeError(f"{video.source or 'the video'} has no frames")
    groups: dict[int, list[int]] = {}
    for i in range(len(video.frames)):
        # the small epsilon keeps frame 150 at 30 fps in chunk 2, not lost to 4.999999... s
        groups.setdefault(int(math.floor(i / video.fps / seconds + 1e-9)), []).append(i)
    chunks, note = [], ""
    for k, (slot, indices) in enumerate(sorted(groups.items()), 1):
        start = float(slot * seconds)
        end = float(min((slot + 1) * seconds, len(video.frames) / video.fps))
        frames = [video.frames[i] for i in indices]
        names = [video.names[i] if video.names else f"frame {i}" for i in indices]
        _same_size(frames, f"chunk {k} ({start:.2f}-{end:.2f} s) of {video.source or 'the video'}", names)
        cropped, note = crop_to_scale(np.stack(frames), scale)
        chunks.append(Chunk(k, start, end, cropped))
    return chunks, note


def crop_to_scale(frames: np.ndarray, scale: int) -> tuple[np.ndarray, str]:
    """HR frames [N, H, W, 3] cropped at the bottom/right so `scale` divides H and W, and a note
    saying what was cropped ("" if nothing). Refuses frames smaller than the scale."""
    keep_h, keep_w, note = scale_crop(*frames.shape[1:3], scale)
    return frames[:, :keep_h, :keep_w], note


def check_patch(chunk: Chunk, patch: int, scale: int) -> None:
    """Refuse a chunk whose LR frames are smaller than the LR patch (HR patch `patch` / `scale`,
    as in the paper's 144 HR / 72 LR at x2)."""
    check_patch_size(chunk.frames.shape[1], chunk.frames.shape[2], patch, scale, chunk.describe())


def check_patch_size(hr_height: int, hr_width: int, patch: int, scale: int, where: str) -> None:
    """Refuse an HR `patch` that `scale` does not divide, or LR frames (HR frames of `hr_height`
    x `hr_width` downscaled) smaller than the LR patch; `where` names the frames."""
    if patch % scale:
        raise TritonForgeError(f"the HR patch {patch} is not a multiple of the scale x{scale}: "
                               f"use a patch size divisible by {scale}")
    height, width = hr_height // scale, hr_width // scale
    lr_patch = patch // scale
    if height < lr_patch or width < lr_patch:
        raise TritonForgeError(f"{where}: LR frames are {width}x{height} at x{scale}, "
                               f"smaller than the {lr_patch}x{lr_patch} LR patch (HR patch {patch}); "
                               f"use a smaller --patch (at most {min(height, width) * scale}) "
                               f"or larger frames")


def _same_size(frames: Sequence[np.ndarray], what: str, names: Sequence[str]) -> tuple[int, int]:
    """(height, width) of the first frame; refuses the first frame of another size, naming it
    (frames count from 0)."""
    height, width = frames[0].shape[:2]
    for name, frame in zip(names, frames, strict=True):
        if frame.shape[:2] != (height, width):
            raise TritonForgeError(f"{what}: {name} is {frame.shape[1]}x{frame.shape[0]}, but {names[0]} "
                                   f"is {width}x{height}; every frame must have one size "
                                   f"(resize or drop the odd frames)")
    return height, width


# ---------------------------------------------------------------------------------- demo clip


def demo_clip(size: tuple[int, int] = DEMO_SIZE, fps: float = DEFAULT_FPS, shot_seconds: float = 5.0,
              shots: int = 4, seed: int = 0) -> Video:
    """A clip of real content: `shots` shots of `shot_seconds` each, one bundled photograph per
    shot (no photo twice in a row), a window panning and slowly zooming across it, hard cuts.

    With `shot_seconds` equal to the chunk length, each chunk is one shot: its own content.
    Deterministic for a given seed (and the set of installed photographs).
    """
    width, height = size
    if width < 2 or height < 2 or shots < 1 or not shot_seconds > 0 or not fps > 0:
        raise TritonForgeError(f"demo clip needs size >= 2x2, shots >= 1, shot_seconds > 0 and "
                               f"fps > 0, got size {width}x{height}, shots {shots}, "
                               f"shot_seconds {shot_seconds}, fps {fps}")
    rng = np.random.default_rng(seed)
    paths = photographs()
    order: list[int] = []
    while len(order) < shots:  # shuffled passes over the photos, never the same photo across a cut
        batch = [int(i) for i in rng.permutation(len(paths))]
        if order and len(paths) > 1 and batch[0] == order[-1]:
            batch.append(batch.pop(0))
        order.extend(batch)
    n = max(1, round(shot_seconds * fps))
    frames: list[np.ndarray] = []
    for shot in range(shots):
        with PILImage.open(paths[order[shot]]) as image:
            photo = image.convert("RGB")
        for box in _shot_windows(photo.size, size, n, n / fps, rng):
            frames.append(np.asarray(photo.resize(size, PILImage.LANCZOS, box=box)))
    return Video(frames, float(fps), f"demo clip {width}x{height} seed {seed}")


def _shot_windows(photo: tuple[int, int], size: tuple[int, int], n: int, seconds: float,
                  rng: np.random.Generator) -> list[tuple[float, float, float, float]]:
    """n crop boxes (left, top, right, bottom) of the output's aspect, moving smoothly from one
    random window to another over `seconds`: a slow camera, panning at most PAN_SPEED window
    widths a second and zooming at most ZOOM_SPEED a second (25% in all)."""
    pw, ph = photo
    aspect = size[0] / size[1]
    largest = min(pw, ph * aspect)  # widest window of the output's aspect inside the photo
    # windows no narrower than the output (real pixels, not upsampled) unless the photo is smaller
    smallest = min(largest, max(size[0], 0.6 * largest))
    w0 = rng.uniform(smallest, largest)
    zoom = min(1.25, 1 + ZOOM_SPEED * seconds)
    w1 = float(np.clip(w0 * rng.uniform(1 / zoom, zoom), smallest, largest))
    h0, h1 = w0 / aspect, w1 / aspect
    x0, y0 = rng.uniform(w0 / 2, pw - w0 / 2), rng.uniform(h0 / 2, ph - h0 / 2)
    angle, reach = rng.uniform(0, 2 * math.pi), rng.uniform(0.5, 1) * PAN_SPEED * seconds * w0
    # clamped into the photo for the end window: the pan stops at the photo's edge
    x1 = min(max(x0 + reach * math.cos(angle), w1 / 2), pw - w1 / 2)
    y1 = min(max(y0 + reach * math.sin(angle), h1 / 2), ph - h1 / 2)
    boxes = []
    for i in range(n):
        t = 0.5 - 0.5 * math.cos(math.pi * i / max(1, n - 1))  # ease in and out: no jerk at the ends
        w = w0 + (w1 - w0) * t
        x, y = x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
        h = w / aspect
        left = min(max(x - w / 2, 0.0), pw - w)
        top = min(max(y - h / 2, 0.0), ph - h)
        boxes.append((left, top, left + w, top + h))
    return boxes
