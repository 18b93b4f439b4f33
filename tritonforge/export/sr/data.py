"""Real low/high-resolution pairs from the bundled photographs, and PSNR as EMT measures it.

HR is a crop of a photograph; LR is its bicubic downscale by the scale (Pillow's bicubic, which
filters like MATLAB's imresize when shrinking). PSNR is RGB over all channels, on the rounded
uint8 output, with a border of scale + 6 pixels cropped (the EMT reference's evaluation).
"""

from __future__ import annotations

import warnings
from functools import cache

import numpy as np
from PIL import Image as PILImage

from tritonforge.errors import TritonForgeError
from tritonforge.modalities.image import photographs

HR_CROP = 144  # divisible by 2, 3 and 4: LR 72, 48 or 36 pixels square


@cache
def photograph_pixels() -> tuple[np.ndarray, ...]:
    """Each bundled photograph as RGB uint8 [H, W, 3]."""
    arrays = []
    for path in photographs():
        with PILImage.open(path) as image:
            arrays.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
    return tuple(arrays)


def hr_crops(n: int | None = None, size: int = HR_CROP) -> np.ndarray:
    """n HR crops [n, 3, size, size] (None: all): per photograph, a 2x2 grid of crops centred on
    the image, photographs in turn."""
    crops = []
    for row in range(2):
        for col in range(2):
            for pixels in photograph_pixels():
                height, width = pixels.shape[:2]
                top = max(0, height // 2 - size + row * size)
                left = max(0, width // 2 - size + col * size)
                crops.append(pixels[top:top + size, left:left + size].transpose(2, 0, 1))
    count = len(crops) if n is None else n
    return np.ascontiguousarray(np.stack([crops[i % len(crops)] for i in range(count)]))


def downscale(hr: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic downscale of uint8 [..., 3, H, W] by `scale`. H and W must be multiples of the
    scale (see `crop_to_scale`)."""
    height, width = hr.shape[-2:]
    if height % scale or width % scale:
        raise TritonForgeError(f"an HR image of {height}x{width} is not divisible by the scale {scale}: "
                               "crop it first (crop_to_scale)")
    flat = hr.reshape(-1, *hr.shape[-3:])
    lr = [np.asarray(PILImage.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
                     .resize((width // scale, height // scale), PILImage.BICUBIC)).transpose(2, 0, 1)
          for image in flat]
    return np.ascontiguousarray(np.stack(lr)).reshape(*hr.shape[:-2], height // scale, width // scale)


def crop_to_scale(hr: np.ndarray, scale: int) -> tuple[np.ndarray, tuple[int, int]]:
    """`hr` [..., H, W] cropped at the bottom and right to multiples of `scale`, and how many
    rows and columns were cropped; a warning says so when any were."""
    height, width = hr.shape[-2:]
    rows, cols = height % scale, width % scale
    if rows or cols:
        warnings.warn(f"the HR image is {height}x{width}, which the scale {scale} does not divide: "
                      f"cropped {rows} row(s) at the bottom and {cols} column(s) at the right, to "
                      f"{height - rows}x{width - cols}", stacklevel=2)
    return hr[..., :height - rows, :width - cols], (rows, cols)


def lr_hr_pairs(scale: int, n: int | None = None, size: int = HR_CROP) -> tuple[np.ndarray, np.ndarray]:
    """(LR [n, 3, size/s, size/s], HR [n, 3, size, size]) uint8 pairs from the photographs."""
    hr, _cropped = crop_to_scale(hr_crops(n, size), scale)
    return downscale(hr, scale), hr


def psnr(sr: np.ndarray, hr: np.ndarray, scale: int) -> float:
    """PSNR in dB of uint8 output against HR, over all pixels and RGB channels of the batch,
    with `scale + 6` pixels of border cropped on each side."""
    if sr.shape != hr.shape:
        raise TritonForgeError(f"the SR output {list(sr.shape)} and the HR image {list(hr.shape)} differ "
                               "in size: crop HR to a multiple of the scale before downscaling")
    border = scale + 6
    if min(sr.shape[-2:]) <= 2 * border:
        raise TritonForgeError(f"an image of {sr.shape[-2]}x{sr.shape[-1]} has nothing left after "
                               f"cropping the {border}-pixel border: use larger images")
    a = sr[..., border:-border, border:-border].astype(np.float64)
    b = hr[..., border:-border, border:-border].astype(np.float64)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0 ** 2 / mse))
