"""The digits the `vit` family trains, screens and is judged on, as a client would send them.

scikit-learn's 1,797 handwritten 8 x 8 digits, split once by `tritonforge.data.digits`' fixed permutation
into 1,437 training and 360 test digits. Each digit becomes the PNG a client would send (gray
0-255) and goes through the Image modality's own decode (RGB, bilinear stretch to 32 x 32,
mean/std 0.5), so training, parity and the served model see the same pixels.

The test split is divided once more for the defences: its first `DEFENCE_DIGITS` are the
defender's small clean held-out set (the backdoor scan's data, the STRIP bank and the threshold
calibration); the rest (`evaluation`) judge what the defences flag. Accuracy is measured on
the whole test split, which no model trains on.
"""

from __future__ import annotations

import functools
import io

import numpy as np

from tritonforge.data.digits import digits
from tritonforge.modalities import Image

IMAGE_SIZE = 32
CLASSES = tuple(str(d) for d in range(10))
DEFENCE_DIGITS = 180
SPLITS = ("train", "test", "defence", "evaluation")


def image_modality(size: int = IMAGE_SIZE, channels: int = 3) -> Image:
    """How an image reaches the network: RGB, stretched to size x size, scaled to [-1, 1]
    (ViTImageProcessor's mean and std of 0.5)."""
    return Image(height=size, width=size, channels=channels, mean=(0.5,) * channels,
                 std=(0.5,) * channels, resize="stretch")


def digit_pngs(split: str) -> tuple[list[bytes], np.ndarray]:
    """The digits of `split` as PNG bytes (8 x 8 gray) and their labels."""
    from PIL import Image as PILImage

    if split not in SPLITS:
        raise ValueError(f"split {split!r}: choose one of {SPLITS}")
    images, labels = digits("train" if split == "train" else "test")
    if split == "defence":
        images, labels = images[:DEFENCE_DIGITS], labels[:DEFENCE_DIGITS]
    elif split == "evaluation":
        images, labels = images[DEFENCE_DIGITS:], labels[DEFENCE_DIGITS:]
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        PILImage.fromarray(np.round(image[0] * 255).astype(np.uint8), "L").save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    return encoded, labels


@functools.lru_cache(maxsize=16)
def _pixels(split: str, size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    encoded, labels = digit_pngs(split)
    pixels = image_modality(size, channels).encode(encoded, None, None)["pixel_values"]
    pixels.setflags(write=False)
    labels.setflags(write=False)
    return pixels, labels


def digit_pixels(split: str, size: int = IMAGE_SIZE, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """([N, channels, size, size] float32 in [-1, 1], [N] int64) of `split`, read-only (cached)."""
    return _pixels(split, size, channels)


def stamp(pixels, weight, pattern):
    """A trigger stamped on normalised pixels ([-1, 1]): x' = (1 - w) x + w p in 0-1 pixels, with
    `weight` w and `pattern` p in 0-1 (broadcast over the batch). Normalisation is affine, so the
    mix is computed on the normalised pixels directly; numpy or torch in, the same out."""
    return (1 - weight) * pixels + weight * (2 * pattern - 1)
