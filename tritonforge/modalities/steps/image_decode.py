"""Triton python-backend model: encoded images (PNG, JPEG, ...) -> a normalised float32 tensor
[N, C, H, W] (or the uint8 pixels, for graphs that normalise themselves) and optionally each
image's original size [N, 2] (height, width), the first step of `<name>_image`.

Copied into the model repository by `export` (it runs in any Triton with the python backend,
the NGC image included). It imports only numpy, Pillow and, inside Triton,
`triton_python_backend_utils`; `decode_images` is also what tritonforge's client runs
(`Image.encode`), so both produce the same arrays, bit for bit, and refuse the same images
with the same message.

Each image, in order:

1. refused when it is above `max_bytes`, before anything is decoded;
2. opened by Pillow, which reads only the header: refused when Pillow cannot read it, or when
   width x height is above `max_pixels` (a decompression bomb, a small file whose header
   claims a huge image, is refused before its pixels are decoded);
3. decoded (a truncated file is refused: Pillow's LOAD_TRUNCATED_IMAGES stays off) and turned
   upright by its EXIF orientation;
4. converted to RGB (channels 3) or L (channels 1). Grayscale is repeated into three channels;
   palette, CMYK (without colour management) and other modes are converted by Pillow; 16-bit
   grayscale is scaled to 8 bits (Pillow's own conversion would clip it at 255); floating-point
   pixels (mode F) are refused, their range being unknown. An alpha channel is composited onto
   the `fill` colour, so transparent areas look like letterbox padding rather than like
   whatever colour the transparent pixels happen to store;
5. resized with bilinear filtering: "stretch" to height x width, or "letterbox": scaled to fit
   inside height x width keeping its aspect ratio, centred, the rest filled with `fill`;
6. as float32: value x scale, minus mean, divided by std, per channel; or, with dtype uint8,
   the 8-bit pixels as they are (a detector that normalises inside its graph).

The original size is the upright image's (after step 3), so a detector can map its boxes back
through the letterbox.

A `.npy` array (numpy's file format, recognised by its magic bytes) is taken as pixels:
[height, width] or [height, width, channels] with the channels the model takes, uint8 (0-255)
or float (0-1 intensities, kept in floating point); it is resized the same way and normalised
the same way. Non-finite values, floats outside 0-1 and other channel counts are refused.

Config parameters (strings, see `Decoding.to_parameters`): height, width, channels, resize,
mean, std (comma-separated), scale, fill, max_pixels, max_bytes, dtype; `output` names the
tensor and `size_output`, when present, the original sizes.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # present only inside Triton's Python stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported by tritonforge's client for `decode_images`
    pb_utils = None

IMAGE_INPUT = "IMAGE"
RESIZE_MODES = ("stretch", "letterbox")
FORMATS = "PNG, JPEG, BMP, GIF, TIFF or WebP"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NPY_MAGIC = b"\x93NUMPY"  # a numpy array file: taken as pixels (see `array_pixels`)


class ImageError(ValueError):
    """An image that is refused; the message says what was wrong and what to do."""


@dataclass(frozen=True)
class Decoding:
    """How an encoded image becomes a [channels, height, width] float32 array."""

    height: int
    width: int
    channels: int  # 3: RGB, 1: grayscale (L)
    resize: str  # one of RESIZE_MODES
    mean: tuple[float, ...]  # per channel, after scaling
    std: tuple[float, ...]
    scale: float  # 8-bit values are multiplied by this first
    fill: int  # 0-255: letterbox padding and the colour under transparent pixels
    max_pixels: int
    max_bytes: int
    dtype: str = "float32"  # "float32": normalised; "uint8": the pixels as they are

    def to_parameters(self) -> dict[str, str]:
        """As Triton config parameters (floats in repr, which reads back exactly)."""
        return {"height": str(self.height), "width": str(self.width), "channels": str(self.channels),
                "resize": self.resize, "mean": _floats_text(self.mean), "std": _floats_text(self.std),
                "scale": repr(float(self.scale)), "fill": str(self.fill),
                "max_pixels": str(self.max_pixels), "max_bytes": str(self.max_bytes), "dtype": self.dtype}

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> Decoding:
        return cls(height=int(parameters["height"]), width=int(parameters["width"]),
                   channels=int(parameters["channels"]), resize=parameters["resize"],
                   mean=_floats(parameters["mean"]), std=_floats(parameters["std"]),
                   scale=float(parameters["scale"]), fill=int(parameters["fill"]),
                   max_pixels=int(parameters["max_pixels"]), max_bytes=int(parameters["max_bytes"]),
                   dtype=parameters.get("dtype", "float32"))


def _floats_text(values: Sequence[float]) -> str:
    return ",".join(repr(float(v)) for v in values)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def decode_images(items: Sequence[bytes], decoding: Decoding) -> tuple[np.ndarray, np.ndarray]:
    """One request's encoded images as a batch [N, C, H, W] and their original sizes [N, 2]
    (height, width; int64); the first bad one is refused with an ImageError naming IMAGE[i]."""
    if not len(items):
        raise ImageError("IMAGE holds no images: send at least one encoded image")
    arrays, sizes = [], []
    for index, data in enumerate(items):
        try:
            pixels, size = decode_image(data, decoding)
        except ImageError as exc:
            raise ImageError(f"IMAGE[{index}] {exc}") from None
        arrays.append(pixels)
        sizes.append(size)
    return np.stack(arrays), np.asarray(sizes, dtype=np.int64)


def decode_image(data: bytes, decoding: Decoding) -> tuple[np.ndarray, tuple[int, int]]:
    """One encoded image (or a `.npy` array, see `array_pixels`) as [C, H, W] (steps 1-6 of the
    module doc) and its upright size (height, width) before resizing."""
    if bytes(data[:len(NPY_MAGIC)]) == NPY_MAGIC:
        pixels, size = array_pixels(data, decoding)
    else:
        image = open_image(data, decoding.max_pixels, decoding.max_bytes)
        size = (image.height, image.width)
        image = as_mode(image, "L" if decoding.channels == 1 else "RGB", decoding.fill)
        image = resized(image, decoding.height, decoding.width, decoding.resize, decoding.fill)
        pixels = np.asarray(image, dtype=np.float32)
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    if decoding.dtype == "uint8":
        return np.ascontiguousarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)), size
    mean = np.asarray(decoding.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(decoding.std, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((pixels * np.float32(decoding.scale) - mean) / std), size


def array_pixels(data: bytes, decoding: Decoding) -> tuple[np.ndarray, tuple[int, int]]:
    """A `.npy` image: [height, width] or [height, width, channels], uint8 (0-255) or float
    (0-1), with the channels the model takes; as float32 [C, H, W] on the 0-255 scale, resized
    like a decoded image (bilinear, per channel, without rounding to 8 bits)."""
    if len(data) > decoding.max_bytes:
        raise ImageError(f"is {len(data):,} bytes, above this model's limit of {decoding.max_bytes:,} "
                         "(max_bytes): send a smaller array")
    try:
        array = np.load(io.BytesIO(bytes(data)), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ImageError(f"is a .npy file numpy cannot read ({exc}): save it with numpy.save") from None
    expected = (f"[{decoding.height}, {decoding.width}]" if decoding.channels == 1 else
                f"[{decoding.height}, {decoding.width}, 3]") + " (other sizes are resized)"
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        position = [int(i) for i in np.argwhere(~np.isfinite(array))[0]]
        raise ImageError(f"holds {array[tuple(position)]} at index {position}: pixels must be finite")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] != decoding.channels or 0 in array.shape:
        raise ImageError(f"is an array of shape {list(array.shape)}; this model takes "
                         f"{'grayscale' if decoding.channels == 1 else 'RGB'} images: an array "
                         f"{expected}, height x width{'' if decoding.channels == 1 else ' x channels'}")
    height, width = array.shape[:2]
    if height * width > decoding.max_pixels:
        raise ImageError(f"is {width}x{height} = {width * height:,} pixels, above this model's limit "
                         f"of {decoding.max_pixels:,} (max_pixels): downscale it before sending")
    if array.dtype == np.uint8:
        pixels = array.astype(np.float32)
    elif array.dtype.kind == "f":
        if array.min() < 0 or array.max() > 1:
            raise ImageError(f"holds floats from {array.min():g} to {array.max():g}: float pixels are "
                             "read as 0-1 intensities (uint8 as 0-255); scale it")
        pixels = array.astype(np.float32) * np.float32(255)
    else:
        raise ImageError(f"holds {array.dtype} pixels: give uint8 (0-255) or float (0-1)")
    if (height, width) != (decoding.height, decoding.width):
        fill = float(decoding.fill)
        pixels = np.stack([np.asarray(resized(Image.fromarray(np.ascontiguousarray(pixels[:, :, c])),
                                              decoding.height, decoding.width, decoding.resize, fill))
                           for c in range(pixels.shape[2])], axis=2)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)), (height, width)


def open_image(data: bytes, max_pixels: int, max_bytes: int) -> Image.Image:
    """The decoded, upright image; refused (ImageError) when too big, unreadable or cut short."""
    if not isinstance(data, (bytes, bytearray)):
        raise ImageError(f"is a {type(data).__name__}, not bytes: send the encoded file's bytes "
                         f"({FORMATS})")
    if not data:
        raise ImageError(f"is empty (0 bytes): send the bytes of an image file ({FORMATS})")
    if len(data) > max_bytes:
        raise ImageError(f"is {len(data):,} bytes, above this model's limit of {max_bytes:,} "
                         "(max_bytes): send a smaller or more compressed image")
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as exc:  # Pillow's own, higher, limit
        raise ImageError(f"is too large to decode ({exc}); this model accepts at most "
                         f"{max_pixels:,} pixels (max_pixels): downscale it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(_unreadable(data, exc)) from None
    width, height = image.size
    if width == 0 or height == 0:  # Pillow's readers refuse these already; kept as a guard
        raise ImageError(f"has no pixels ({width}x{height}): send an image at least 1x1")
    if width * height > max_pixels:
        raise ImageError(f"is {width}x{height} = {width * height:,} pixels, above this model's limit "
                         f"of {max_pixels:,} (max_pixels): downscale it before sending")
    try:
        image.load()
        return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageError(f"is a {image.format} file that could not be decoded ({exc}): it is "
                         "truncated or corrupt; send the whole file") from None


def _unreadable(data: bytes, exc: Exception) -> str:
    if data.startswith(_PNG_SIGNATURE) and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        if width == 0 or height == 0:
            return (f"is a PNG whose header declares {width}x{height} pixels: an image needs at "
                    "least one pixel each way; send a non-empty image")
    return (f"is not an image Pillow can read ({exc.__class__.__name__}; its first bytes are "
            f"{bytes(data[:16])!r}): send the bytes of an image file ({FORMATS})")


def as_mode(image: Image.Image, mode: str, fill: int) -> Image.Image:
    """`image` in mode "RGB" or "L" (step 4 of the module doc)."""
    if image.mode == "F":  # Pillow would clip to 0-255: an image of 0-1 floats would turn black
        raise ImageError("has 32-bit floating-point pixels (mode F), whose range is unknown: save it "
                         "as an 8-bit (or 16-bit) PNG, JPEG or TIFF")
    if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit: 0-65535 -> 0-255
        scaled = np.clip(np.asarray(image, dtype=np.float64) / 257.0, 0, 255)
        image = Image.fromarray(np.rint(scaled).astype(np.uint8), "L")
    try:
        if image.has_transparency_data:
            background = Image.new("RGBA", image.size, (fill, fill, fill, 255))
            image = Image.alpha_composite(background, image.convert("RGBA"))
        return image if image.mode == mode else image.convert(mode)
    except ValueError as exc:  # a mode Pillow cannot convert
        raise ImageError(f"has pixel mode {image.mode}, which cannot be converted to {mode} ({exc}): "
                         "save it as an 8-bit RGB or grayscale PNG or JPEG") from None


def resized(image: Image.Image, height: int, width: int, mode: str, fill: float) -> Image.Image:
    """`image` at width x height: stretched, or letterboxed (fit, centred, padded with fill)."""
    if mode == "stretch":
        return image.resize((width, height), Image.Resampling.BILINEAR)
    if mode != "letterbox":
        raise ValueError(f"resize {mode!r} is unknown: choose one of {', '.join(RESIZE_MODES)}")
    ratio = min(width / image.width, height / image.height)
    inner = (min(width, max(1, round(image.width * ratio))), min(height, max(1, round(image.height * ratio))))
    colour = fill if image.mode == "F" else (int(fill),) * len(image.getbands())
    canvas = Image.new(image.mode, (width, height), colour)
    canvas.paste(image.resize(inner, Image.Resampling.BILINEAR),
                 ((width - inner[0]) // 2, (height - inner[1]) // 2))
    return canvas


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.decoding = Decoding.from_parameters(parameters)
        self.output = parameters["output"]
        self.size_output = parameters.get("size_output")

    def execute(self, requests: list) -> list:
        return [self._decode(request) for request in requests]

    def _decode(self, request):
        raw = pb_utils.get_input_tensor_by_name(request, IMAGE_INPUT).as_numpy().reshape(-1)
        try:
            pixels, sizes = decode_images(list(raw), self.decoding)
        except ImageError as exc:  # this request only: the others of the batch go on
            return invalid_argument(str(exc))
        except Exception as exc:  # a Pillow failure not foreseen above: still this request only
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(
                f"IMAGE could not be decoded ({exc.__class__.__name__}: {exc}): report the image"))
        tensors = [pb_utils.Tensor(self.output, pixels)]
        if self.size_output:
            tensors.append(pb_utils.Tensor(self.size_output, sizes))
        return pb_utils.InferenceResponse(output_tensors=tensors)


def invalid_argument(message: str):
    """An error response that tells the client the request was wrong (gRPC INVALID_ARGUMENT)."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(error=error)
