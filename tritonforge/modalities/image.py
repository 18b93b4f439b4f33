"""Image: encoded image bytes (PNG, JPEG, ...) -> decoded, resized, normalised [C, H, W] float tensor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tritonforge.modalities.base import Modality


@dataclass(frozen=True)
class Image(Modality):
    kind: ClassVar[str] = "image"
    suffix: ClassVar[str] = "_image"
    raw_input: ClassVar[str] = "IMAGE"
    query_option: ClassVar[str] = "image"
    shape_defaults: ClassVar[dict[str, int | None]] = {"image_size": None}

    height: int
    width: int
    input: str = "pixel_values"
    channels: int = 3  # 3: RGB, 1: grayscale
    resize: str = "stretch"  # "stretch" to height x width, or "letterbox" (keep aspect, pad)
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    scale: float = 1.0 / 255.0  # pixel values (0-255) are multiplied by this before mean/std
    fill: int = 114  # letterbox padding value, 0-255
    max_pixels: int = 40_000_000  # width x height of the encoded image
    max_bytes: int = 20 * 1024 * 1024
