"""Image: encoded image bytes (PNG, JPEG, ...) -> decoded, resized, normalised [C, H, W] float32.

Server side, `<name>_image_decode` (python backend, `modalities/steps/image_decode.py`) and
`<name>_image` (ensemble IMAGE -> the model's outputs): a client sends each file's bytes, one
image per row. Client side, `encode` runs the same `decode_images` on the same settings, so a
tensor model queried directly gets the same arrays and a bad image the same message.

The export size is fixed (height x width); `image_size` (`--image-size`) asks `encode` for a
square image of another size, for families whose graph takes any size.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps as PILImageOps

from tritonforge.errors import TritonForgeError
from tritonforge.modalities.base import Modality, ShapeOption, preprocessing_companions, raw_bytes_array
from tritonforge.modalities.steps.image_decode import (
    RESIZE_MODES,
    Decoding,
    ImageError,
    as_mode,
    decode_images,
    open_image,
)
from tritonforge.spec import ModelIO
from tritonforge.triton_config import CompanionModel, ServingOptions

IMAGE_DECODE_MODEL = Path(__file__).parent / "steps" / "image_decode.py"
DECODE_SUFFIX = "_image_decode"
# Real photographs that installed packages bundle: (package, path inside it). scikit-learn's
# two are Flickr photographs under CC BY 2.0 (see the README beside them); matplotlib's is the
# U.S. Navy's portrait of Grace Hopper (its other sample images are drawings); scikit-image's
# are the colour photographs it ships in the wheel (others of `skimage.data` are fetched at
# run time, or are grayscale, microscopy or synthetic, and are not used).
PHOTOGRAPHS = (("sklearn", "datasets/images/china.jpg"), ("sklearn", "datasets/images/flower.jpg"),
               ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
               ("skimage", "data/astronaut.png"), ("skimage", "data/coffee.png"),
               ("skimage", "data/chelsea.png"), ("skimage", "data/rocket.jpg"),
               ("skimage", "data/motorcycle_left.png"))


class ImageBytes(bytes):
    """An encoded image that remembers its file name (for `query`'s rows)."""

    name: str = ""

    @classmethod
    def named(cls, data: bytes, name: str) -> ImageBytes:
        item = cls(data)
        item.name = name
        return item


@dataclass(frozen=True)
class Image(Modality):
    """Encoded images in; one float32 tensor [N, channels, height, width] out."""

    kind: ClassVar[str] = "image"
    suffix: ClassVar[str] = "_image"
    raw_input: ClassVar[str] = "IMAGE"
    query_option: ClassVar[str] = "image"
    shape_options: ClassVar[tuple[ShapeOption, ...]] = (
        ShapeOption("image_size", "Images: height and width of the samples."),)

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
    # "float32": normalised here; "uint8": the letterboxed pixels, normalised inside the graph
    dtype: str = "float32"
    size_input: str | None = None  # an int64 [2] input with the original (height, width)

    def __post_init__(self):
        problems = []
        if self.height < 1 or self.width < 1:
            problems.append(f"size {self.height}x{self.width} must be at least 1x1")
        if self.channels not in (1, 3):
            problems.append(f"channels {self.channels} must be 3 (RGB) or 1 (grayscale)")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            problems.append(f"mean {list(self.mean)} and std {list(self.std)} need one value per "
                            f"channel ({self.channels})")
        if any(s == 0 for s in self.std):
            problems.append(f"std {list(self.std)} must not hold 0")
        if self.resize not in RESIZE_MODES:
            problems.append(f"resize {self.resize!r} is unknown (choose {', '.join(RESIZE_MODES)})")
        if not 0 <= self.fill <= 255:
            problems.append(f"fill {self.fill} must be a pixel value, 0-255")
        if self.dtype not in ("float32", "uint8"):
            problems.append(f"dtype {self.dtype!r} must be float32 (normalised) or uint8 (pixels)")
        if self.max_pixels < 1 or self.max_bytes < 1:
            problems.append(f"max_pixels {self.max_pixels} and max_bytes {self.max_bytes} must be "
                            "at least 1")
        if problems:
            raise TritonForgeError("image pre-processing: " + "; ".join(problems))

    def limits(self) -> dict[str, Any]:
        return {"max_pixels": self.max_pixels, "max_bytes": self.max_bytes}

    def decoding(self, image_size: int | None = None) -> Decoding:
        """The decode settings; `image_size`: a square of that size instead of height x width."""
        height, width = (image_size, image_size) if image_size else (self.height, self.width)
        return Decoding(height=height, width=width, channels=self.channels, resize=self.resize,
                        mean=tuple(self.mean), std=tuple(self.std), scale=self.scale, fill=self.fill,
                        max_pixels=self.max_pixels, max_bytes=self.max_bytes, dtype=self.dtype)

    # -- the server side ----------------------------------------------------------------------

    def companions(self, name: str, io: ModelIO, serving: ServingOptions) -> tuple[CompanionModel, ...]:
        expected = [(self.input, self.dtype, (self.channels, self.height, self.width))]
        if self.size_input:
            expected.append((self.size_input, "int64", (2,)))
        if [(s.name, s.dtype, tuple(s.dims)) for s in io.inputs] != expected:
            raise TritonForgeError(
                f"an image ensemble feeds {[(n, d, list(dims)) for n, d, dims in expected]}; the "
                f"model takes {[(s.name, s.dtype, list(s.dims)) for s in io.inputs]}")
        parameters = {**self.decoding().to_parameters(), "output": self.input,
                      **({"size_output": self.size_input} if self.size_input else {})}
        return preprocessing_companions(name, io, serving, self, DECODE_SUFFIX, IMAGE_DECODE_MODEL,
                                        parameters, {})

    # -- the client side ----------------------------------------------------------------------

    def read_raw(self, values: Sequence[str]) -> list[ImageBytes]:
        return read_image_files(values, self.max_bytes)

    def request(self, raw: Sequence[bytes]) -> dict[str, np.ndarray]:
        # plain bytes: tritonclient serialises anything else (a subclass too) through str()
        return {self.raw_input: raw_bytes_array([bytes(item) for item in raw])}

    def encode(self, raw: Sequence[bytes], io: ModelIO | None, folder: Path | None,
               shape: Mapping[str, int | None] | None = None) -> dict[str, np.ndarray]:
        try:
            pixels, sizes = decode_images(list(raw), self.decoding((shape or {}).get("image_size")))
        except ImageError as exc:
            raise TritonForgeError(str(exc)) from None
        return {self.input: pixels, **({self.size_input: sizes} if self.size_input else {})}

    def sample_raw(self, n: int | None = None, folder: Path | None = None) -> list[ImageBytes]:
        """The bundled photographs, repeated in turn to give n."""
        found = photographs()
        items = [ImageBytes.named(path.read_bytes(), path.name) for path in found]
        return items if n is None else [items[i % len(items)] for i in range(n)]

    def describe_raw(self, item: Any, index: int) -> str:
        name = getattr(item, "name", "")
        try:
            with PILImage.open(io.BytesIO(item)) as image:
                size = f"({image.width}x{image.height})"
        except Exception:  # described, not decoded: the server says what is wrong with it
            size = f"({len(item):,} bytes)"
        return " ".join(part for part in (f"#{index}", name, size) if part)


def read_image_files(values: Sequence[str], max_bytes: int) -> list[ImageBytes]:
    """`--image FILE...` as encoded images; a missing file or one above max_bytes is refused."""
    items = []
    for value in values:
        path = Path(value)
        if not path.is_file():
            problem = "is not a file" if path.exists() else "does not exist"
            raise TritonForgeError(f"--image {path} {problem}: give the path of an image file "
                                   "(PNG, JPEG, ...)")
        size = path.stat().st_size
        if size > max_bytes:  # refused before it is read
            raise TritonForgeError(f"--image {path} is {size:,} bytes, above this model's limit "
                                   f"of {max_bytes:,} (max_bytes): send a smaller image")
        items.append(ImageBytes.named(path.read_bytes(), path.name))
    return items


@dataclass(frozen=True)
class ImagePixels(Modality):
    """Encoded images in at their own size (no resize): uint8 pixels [N, 3, H, W] out, for
    fully convolutional image-to-image graphs (super-resolution) with dynamic height and width.

    The client decodes (Pillow, the same `open_image`/`as_mode` as the image companion, so the
    same images are refused with the same messages) and sends the pixels to the model itself:
    the image companion resizes to one fixed size, which an any-size graph must not. Images of
    one request must share a size; each is refused above `max_pixels`."""

    kind: ClassVar[str] = "image_pixels"
    raw_input: ClassVar[str] = "IMAGE"
    query_option: ClassVar[str] = "image"
    # `bench --frame-size WxH`: each image fitted (centre crop to the aspect, Lanczos) to one size
    shape_options: ClassVar[tuple[ShapeOption, ...]] = (ShapeOption(
        "frame_size", "image_pixels models (super-resolution): fit each photograph to WIDTHxHEIGHT "
                      "pixels, e.g. 640x360.", parse=lambda text: parse_frame_size(text),
        keys=("frame_width", "frame_height")),)

    input: str = "pixels"
    channels: int = 3
    max_pixels: int = 1920 * 1080
    max_bytes: int = 20 * 1024 * 1024

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise TritonForgeError(f"image pixels: channels {self.channels} must be 3 (RGB) or 1")
        if self.max_pixels < 1 or self.max_bytes < 1:
            raise TritonForgeError(f"image pixels: max_pixels {self.max_pixels} and max_bytes "
                                   f"{self.max_bytes} must be at least 1")

    def limits(self) -> dict[str, Any]:
        return {"max_pixels": self.max_pixels, "max_bytes": self.max_bytes}

    def read_raw(self, values: Sequence[str]) -> list[ImageBytes]:
        return read_image_files(values, self.max_bytes)

    def encode(self, raw: Sequence[bytes], io: ModelIO | None, folder: Path | None,
               shape: Mapping[str, int | None] | None = None) -> dict[str, np.ndarray]:
        if not len(raw):
            raise TritonForgeError("IMAGE holds no images: send at least one encoded image")
        shape = self.resolve_shape(shape)
        frame = (shape["frame_width"], shape["frame_height"])
        if (frame[0] is None) != (frame[1] is None):
            raise TritonForgeError("a frame size needs a width and a height: --frame-size WxH, e.g. 640x360")
        if frame[0] is not None and frame[0] * frame[1] > self.max_pixels:
            raise TritonForgeError(f"--frame-size {frame[0]}x{frame[1]} is above the model's limit of "
                                   f"{self.max_pixels:,} pixels: ask for a smaller frame")
        arrays = []
        for index, data in enumerate(raw):
            try:
                image = as_mode(open_image(bytes(data), self.max_pixels, self.max_bytes),
                                "L" if self.channels == 1 else "RGB", 0)
            except ImageError as exc:
                raise TritonForgeError(f"IMAGE[{index}] {exc}") from None
            if frame[0] is not None:
                image = PILImageOps.fit(image, frame, PILImage.LANCZOS)
            pixels = np.asarray(image, dtype=np.uint8)
            arrays.append(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))
        sizes = sorted({a.shape[1:] for a in arrays})
        if len(sizes) > 1:
            raise TritonForgeError(f"the images of one request have different sizes "
                                   f"({', '.join(f'{h}x{w}' for h, w in sizes)}): send one request "
                                   "per size")
        return {self.input: np.ascontiguousarray(np.stack(arrays))}

    def sample_raw(self, n: int | None = None, folder: Path | None = None) -> list[ImageBytes]:
        """The bundled photographs, repeated in turn to give n."""
        items = [ImageBytes.named(path.read_bytes(), path.name) for path in photographs()]
        return items if n is None else [items[i % len(items)] for i in range(n)]

    def describe_raw(self, item: Any, index: int) -> str:
        return Image.describe_raw(self, item, index)  # type: ignore[arg-type]


def parse_frame_size(text: str) -> dict[str, int]:
    """--frame-size WxH as the image_pixels shape keys."""
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit()) or int(width) < 1 or int(height) < 1:
        raise TritonForgeError(f"--frame-size {text!r} is not WIDTHxHEIGHT in pixels, e.g. 640x360")
    return {"frame_width": int(width), "frame_height": int(height)}


def photographs() -> list[Path]:
    """The real photographs bundled with the installed packages (see PHOTOGRAPHS)."""
    found = []
    for package, relative in PHOTOGRAPHS:
        spec = importlib.util.find_spec(package)  # finds the package without importing it
        if spec is not None and spec.origin is not None:
            path = Path(spec.origin).parent / relative
            if path.is_file():
                found.append(path)
    if not found:
        raise TritonForgeError("no bundled photographs found: install scikit-learn or matplotlib "
                               "(`pip install -c constraints.txt scikit-learn matplotlib`)")
    return found
