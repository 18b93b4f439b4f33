"""The `sr` family's video: chunks, LR frames, and the demo clip (reading and writing videos
is `tritonforge.data.video`).

EMT tunes one model per chunk (5 s by default, 150 frames at 30 fps). The HR frames are the
source; the LR frames are their bicubic downscale (PIL bicubic on uint8, as SR papers prepare LR).
An HR size the scale does not divide is cropped at the bottom/right to the nearest multiple.

No real video ships offline, so `demo_clip` films the bundled photographs: one shot per photo,
a crop window panning and slowly zooming across it, hard cuts between photos.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage

from tritonforge.data.video import DEFAULT_FPS, Video, same_size
from tritonforge.errors import TritonForgeError
from tritonforge.export.sr.data import downscale, scale_crop
from tritonforge.modalities.image import photographs

DEFAULT_CHUNK_SECONDS = 5.0
# 384x216: 16:9 and divisible by 12, so x2, x3 and x4 all divide it (LR 192x108, 128x72, 96x54)
# and it is even, as H.264's yuv420p needs. LR at x2 is taller than the paper's 72-pixel LR
# patch (HR 144), and 83k HR pixels a frame keep ESPCN x2 tuning on two CPU cores in minutes.
# No bundled photograph is much larger than 2x this, so the windows are real pixels, not
# upsampled ones (see `_shot_windows`).
DEMO_SIZE = (384, 216)  # width, height
# The demo camera: pans at most 0.15 window widths a second, zooms at most 5% a second.
PAN_SPEED, ZOOM_SPEED = 0.15, 0.05


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


# ---------------------------------------------------------------------------------- writing


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
        same_size(frames, f"chunk {k} ({start:.2f}-{end:.2f} s) of {video.source or 'the video'}", names)
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
