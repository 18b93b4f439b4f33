"""The spike camera: an integrate-and-fire simulator and SpikeCV's `.dat` stream format.

Every pixel of a spike camera integrates light on its own and fires a binary spike when its
accumulator reaches a threshold; the threshold is then subtracted (the rest carries over), so
a bright pixel fires often and a dark one seldom: luminance is the firing rate. Real cameras
read 250 x 400 pixels at 20-40 kHz. Here, per pixel and step:

    A <- A + gain * L + dark + noise * N(0, 1)       (A never below 0)
    spike = A >= threshold;  A <- A - threshold * spike

with A starting at a random phase in [0, threshold) so the pixels do not fire in lock step.
One spike per step at most (the camera reads each pixel once per step).

`.dat` (the layout SpikeCV reads): the frames one after another, each H x W bits packed into
H * W / 8 bytes, least significant bit first, the rows flipped vertically (the sensor reads
bottom-up). A file carries no header: the reader needs the resolution, and a size that is not
a whole number of frames is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tritonforge.errors import TritonForgeError

CAMERA_SHAPE = (250, 400)  # a real spike camera's resolution (rows, columns)


@dataclass(frozen=True)
class Camera:
    """A simulated spike camera: what `simulate` and `scenes` take, and what `adapt` changes
    between the source and the target camera."""

    gain: float = 0.5  # accumulated per step at luminance 1 (so it fires every 2nd step)
    threshold: float = 1.0
    dark: float = 0.01  # dark current per step: a black pixel still fires now and then
    noise: float = 0.02  # std of the per-step accumulation noise

    def __post_init__(self):
        if not self.gain > 0 or not self.threshold > 0:
            raise TritonForgeError(f"a spike camera needs gain > 0 and threshold > 0 (got gain {self.gain}, "
                                   f"threshold {self.threshold})")
        if self.dark < 0 or self.noise < 0:
            raise TritonForgeError(f"dark current and noise are at least 0 (got dark {self.dark}, "
                                   f"noise {self.noise})")
        if self.gain + self.dark > self.threshold:
            raise TritonForgeError(f"gain {self.gain} + dark {self.dark} exceeds the threshold "
                                   f"{self.threshold}: bright pixels would saturate (one spike per step at "
                                   "most); lower --gain")

    def to_json(self) -> dict[str, float]:
        return {"gain": self.gain, "threshold": self.threshold, "dark": self.dark, "noise": self.noise}


def simulate(luminance: np.ndarray, camera: Camera = Camera(), seed: int = 0) -> np.ndarray:
    """Binary spike frames [T, H, W] (uint8 0/1) for luminance [T, H, W] in 0-1 (one image per
    step: a video; repeat a still image for a static scene)."""
    frames = np.asarray(luminance, dtype=np.float64)
    if frames.ndim != 3:
        raise TritonForgeError(f"luminance must be [steps, height, width], not {list(frames.shape)}")
    if not np.isfinite(frames).all():
        raise TritonForgeError("the luminance holds NaN or infinity: give finite pixel values")
    rng = np.random.default_rng(seed)
    accumulator = rng.uniform(0.0, camera.threshold, frames.shape[1:])
    spikes = np.empty(frames.shape, np.uint8)
    drive = camera.gain * np.clip(frames, 0.0, 1.0) + camera.dark
    for step, light in enumerate(drive):
        accumulator += light
        if camera.noise:
            accumulator += camera.noise * rng.standard_normal(accumulator.shape)
        np.maximum(accumulator, 0.0, out=accumulator)
        fired = accumulator >= camera.threshold
        accumulator -= camera.threshold * fired
        spikes[step] = fired
    return spikes


def reconstruct(spikes: np.ndarray, camera: Camera = Camera()) -> np.ndarray:
    """Luminance [H, W] in 0-1 from the firing rate of spike frames [T, H, W]: rate x threshold
    is what the pixel gained per step, less the dark current, over the gain."""
    rate = np.asarray(spikes, np.float64).mean(axis=0)
    return np.clip((rate * camera.threshold - camera.dark) / camera.gain, 0.0, 1.0)


def psnr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """PSNR in dB of an estimate of 0-1 luminance."""
    mse = float(np.mean((np.asarray(reference, np.float64) - estimate) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


# -- bit-packed frames ---------------------------------------------------------------------


def frame_bytes(height: int, width: int) -> int:
    """Bytes of one packed frame."""
    if height < 1 or width < 1 or (height * width) % 8:
        raise TritonForgeError(f"a {height} x {width} spike frame does not pack into whole bytes: "
                               "height x width must be a multiple of 8")
    return height * width // 8


def pack(spikes: np.ndarray) -> np.ndarray:
    """Spike frames [..., H, W] (0/1) as `.dat` packs them: [..., H * W / 8] uint8, rows flipped,
    least significant bit first."""
    spikes = np.asarray(spikes)
    height, width = spikes.shape[-2:]
    frame_bytes(height, width)
    flipped = np.flip(spikes, axis=-2).reshape(*spikes.shape[:-2], height * width)
    return np.packbits(flipped.astype(bool), axis=-1, bitorder="little")


def unpack(packed: np.ndarray, height: int, width: int) -> np.ndarray:
    """The inverse of `pack`: [..., H * W / 8] uint8 -> [..., H, W] uint8 0/1."""
    packed = np.asarray(packed, np.uint8)
    size = frame_bytes(height, width)
    if packed.shape[-1] != size:
        raise TritonForgeError(f"a packed {height} x {width} frame is {size} bytes, not {packed.shape[-1]}")
    bits = np.unpackbits(packed, axis=-1, bitorder="little").reshape(*packed.shape[:-1], height, width)
    return np.ascontiguousarray(np.flip(bits, axis=-2))


def frames_in(payload: bytes | np.ndarray, height: int, width: int, source: str = "the stream") -> np.ndarray:
    """A `.dat` payload as packed frames [T, H * W / 8] uint8 (no copy of the bytes); a size
    that is not a whole number of frames is refused with the numbers that would fit."""
    data = np.frombuffer(payload, np.uint8) if isinstance(payload, (bytes, bytearray, memoryview)) \
        else np.asarray(payload, np.uint8).reshape(-1)
    size = frame_bytes(height, width)
    if data.size == 0 or data.size % size:
        raise TritonForgeError(
            f"{source} holds {data.size} bytes, not a whole number of {height} x {width} frames "
            f"({size} bytes each; {data.size // size} whole frames and {data.size % size} bytes over): "
            "check the resolution it was recorded at")
    return data.reshape(-1, size)


def write_dat(path: Path, spikes: np.ndarray) -> Path:
    """Write spike frames [T, H, W] (0/1) as a `.dat` file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pack(spikes).tobytes())
    return path


def read_dat(path: Path, height: int, width: int) -> np.ndarray:
    """Spike frames [T, H, W] (uint8 0/1) of a `.dat` file recorded at height x width."""
    path = Path(path)
    if not path.is_file():
        raise TritonForgeError(f"{path} does not exist: give a .dat spike stream")
    return unpack(frames_in(path.read_bytes(), height, width, str(path)), height, width)
