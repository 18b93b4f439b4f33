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


def downscale(hr: np.ndarray, scale: int, channels_last: bool = False) -> np.ndarray:
    """Bicubic downscale of uint8 images [..., 3, H, W] (or [..., H, W, 3] with `channels_last`)
    by `scale`. H and W must be multiples of the scale (see `crop_to_scale`)."""
    images = hr if channels_last else np.moveaxis(hr, -3, -1)
    height, width = images.shape[-3:-1]
    if height % scale or width % scale:
        raise TritonForgeError(f"x{scale} does not divide {width}x{height}: crop the HR image first "
                               "(crop_to_scale)")
    size = (width // scale, height // scale)
    flat = images.reshape(-1, *images.shape[-3:])
    lr = np.stack([np.asarray(PILImage.fromarray(np.ascontiguousarray(image)).resize(size, PILImage.BICUBIC))
                   for image in flat]).reshape(*images.shape[:-3], height // scale, width // scale, 3)
    return np.ascontiguousarray(lr if channels_last else np.moveaxis(lr, -1, -3))


def scale_crop(height: int, width: int, scale: int) -> tuple[int, int, str]:
    """The size that an HR image of `height` x `width` is cropped to (at the bottom and right) so
    that `scale` divides it, and a note saying what was cropped ("" when nothing was). Refuses a
    size that the crop would leave empty."""
    if scale < 1:
        raise TritonForgeError(f"the scale must be a positive integer, got {scale}")
    keep_h, keep_w = height - height % scale, width - width % scale
    if keep_h == 0 or keep_w == 0:
        raise TritonForgeError(f"{width}x{height} images are smaller than the scale x{scale}: cropping "
                               f"to a multiple of {scale} leaves nothing; use larger images")
    if (keep_h, keep_w) == (height, width):
        return height, width, ""
    return keep_h, keep_w, (f"x{scale} does not divide {width}x{height}: cropped to {keep_w}x{keep_h} "
                            f"(dropped {width - keep_w} column(s) on the right, {height - keep_h} "
                            "row(s) at the bottom)")


def crop_to_scale(hr: np.ndarray, scale: int) -> tuple[np.ndarray, tuple[int, int]]:
    """`hr` [..., H, W] cropped at the bottom and right to multiples of `scale`, and how many
    rows and columns were cropped; a warning says so when any were."""
    height, width = hr.shape[-2:]
    keep_h, keep_w, note = scale_crop(height, width, scale)
    if note:
        warnings.warn(f"the HR image: {note}", stacklevel=2)
    return hr[..., :keep_h, :keep_w], (height - keep_h, width - keep_w)


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
