"""The Image modality without a server: encoded bytes -> [N, C, H, W] float32 on the client, with
the very function the `_image_decode` step runs, and each bad image refused with a message."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from crafted_images import png_header
from PIL import Image as PILImage

from tritonforge.errors import TritonForgeError
from tritonforge.modalities import Image, modality_from_json
from tritonforge.modalities.image import photographs
from tritonforge.modalities.steps.image_decode import Decoding
from tritonforge.spec import CLASS_SCORES, ModelIO, TensorSpec
from tritonforge.triton_config import ServingOptions

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CHINA = next(p for p in photographs() if p.name == "china.jpg")  # 640 x 427 RGB JPEG
RGB_UNIT = Image(height=20, width=20)  # mean 0, std 1: pixels / 255


def encoded(image: PILImage.Image, fmt: str = "PNG", **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def by_hand(image: PILImage.Image, size: tuple[int, int], mean, std) -> np.ndarray:
    """Pillow's bilinear resize to (width, height), then numpy: / 255, - mean, / std per channel."""
    pixels = np.asarray(image.resize(size, PILImage.Resampling.BILINEAR), np.float32) / 255
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return (pixels - np.float32(mean)[:, None, None]) / np.float32(std)[:, None, None]


def pixels(record: Image, data: bytes) -> np.ndarray:
    return record.encode([data], None, None)[record.input][0]


def test_a_photograph_is_decoded_to_the_declared_shape_as_by_hand():
    record = Image(height=24, width=40, mean=MEAN, std=STD)
    batch = record.encode([CHINA.read_bytes()] * 2, None, None)["pixel_values"]
    assert batch.shape == (2, 3, 24, 40) and batch.dtype == np.float32
    expected = by_hand(PILImage.open(CHINA).convert("RGB"), (40, 24), MEAN, STD)
    np.testing.assert_allclose(batch[0], expected, atol=1e-5)
    np.testing.assert_array_equal(batch[0], batch[1])


def test_grayscale_is_repeated_into_three_channels():
    gray = PILImage.open(CHINA).convert("L")
    decoded = pixels(RGB_UNIT, encoded(gray))
    assert decoded.shape == (3, 20, 20)
    np.testing.assert_array_equal(decoded[0], decoded[1])
    np.testing.assert_array_equal(decoded[0], decoded[2])
    np.testing.assert_allclose(decoded[0], by_hand(gray, (20, 20), (0,), (1,))[0], atol=1e-6)


def test_a_one_channel_model_gets_grayscale():
    record = Image(height=20, width=20, channels=1, mean=(0.5,), std=(0.25,))
    decoded = pixels(record, CHINA.read_bytes())
    assert decoded.shape == (1, 20, 20)
    expected = by_hand(PILImage.open(CHINA).convert("L"), (20, 20), (0.5,), (0.25,))
    np.testing.assert_allclose(decoded, expected, atol=1e-5)


def test_transparent_pixels_take_the_fill_colour():
    """RGBA: left half opaque red, right half fully transparent green (alpha composited onto fill)."""
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[:, :10] = (255, 0, 0, 255)
    rgba[:, 10:] = (0, 255, 0, 0)
    decoded = pixels(Image(height=20, width=20, fill=114), encoded(PILImage.fromarray(rgba, "RGBA")))
    np.testing.assert_allclose(decoded[:, :, :10], np.array([1.0, 0, 0])[:, None, None] * np.ones((20, 10)))
    np.testing.assert_allclose(decoded[:, :, 10:], np.full((3, 20, 10), 114 / 255), rtol=1e-6)


@pytest.mark.parametrize("mode", ["P", "CMYK", "LA"])
def test_palette_cmyk_and_gray_alpha_images_become_rgb(mode):
    source = PILImage.open(CHINA).convert(mode)
    data = encoded(source, "JPEG" if mode == "CMYK" else "PNG")
    reference = PILImage.open(io.BytesIO(data)).convert("RGBA" if mode == "LA" else "RGB")
    decoded = pixels(RGB_UNIT, data)
    assert decoded.shape == (3, 20, 20)
    np.testing.assert_allclose(decoded, by_hand(reference.convert("RGB"), (20, 20), (0, 0, 0), (1, 1, 1)),
                               atol=1e-6)


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    levels = np.repeat(np.linspace(0, 65535, 20).astype(np.uint16)[None], 20, axis=0)
    decoded = pixels(Image(height=20, width=20, resize="letterbox"), encoded(PILImage.fromarray(levels)))
    np.testing.assert_allclose(decoded[0, 0], np.rint(levels[0] / 257) / 255, atol=1e-6)


def test_floating_point_pixels_are_refused_rather_than_clipped():
    data = encoded(PILImage.fromarray(np.linspace(0, 1, 400, dtype=np.float32).reshape(20, 20)), "TIFF")
    with pytest.raises(TritonForgeError, match=r"^IMAGE\[0\] has 32-bit floating-point pixels \(mode F\)"):
        RGB_UNIT.encode([data], None, None)


def test_letterbox_keeps_the_aspect_ratio_and_pads_with_the_fill_value():
    record = Image(height=32, width=32, resize="letterbox", fill=114, mean=MEAN, std=STD)
    fill = ((np.float32(114 / 255) - np.float32(MEAN)) / np.float32(STD))[:, None, None]
    wide = pixels(record, CHINA.read_bytes())  # 640 x 427 -> 32 x 21, centred: rows 5..25
    np.testing.assert_allclose(wide[:, :5], np.broadcast_to(fill, (3, 5, 32)), atol=1e-6)
    np.testing.assert_allclose(wide[:, 26:], np.broadcast_to(fill, (3, 6, 32)), atol=1e-6)
    np.testing.assert_allclose(wide[:, 5:26], by_hand(PILImage.open(CHINA), (32, 21), MEAN, STD), atol=1e-5)
    tall = pixels(record, encoded(PILImage.new("RGB", (10, 40), (255, 255, 255))))  # -> 8 x 32: cols 12..19
    white = ((np.float32(1.0) - np.float32(MEAN)) / np.float32(STD))[:, None, None]
    np.testing.assert_allclose(tall[:, :, :12], np.broadcast_to(fill, (3, 32, 12)), atol=1e-6)
    np.testing.assert_allclose(tall[:, :, 12:20], np.broadcast_to(white, (3, 32, 8)), atol=1e-6)
    np.testing.assert_allclose(tall[:, :, 20:], np.broadcast_to(fill, (3, 32, 12)), atol=1e-6)


def test_exif_orientation_is_applied():
    """Orientation 6: the stored pixels must be turned 90 degrees clockwise to be upright."""
    stored = PILImage.open(CHINA).convert("RGB").resize((60, 40))
    exif = PILImage.Exif()
    exif[0x0112] = 6
    record = Image(height=30, width=20)
    upright = pixels(record, encoded(stored.transpose(PILImage.Transpose.ROTATE_270)))
    np.testing.assert_array_equal(pixels(record, encoded(stored, exif=exif)), upright)


# -- bad images: the client's TritonForgeError is the message the server's step sends ----------


def refusal(record: Image, data: bytes) -> str:
    with pytest.raises(TritonForgeError) as caught:
        record.encode([data], None, None)
    return str(caught.value)


def test_bytes_that_are_not_an_image_are_refused():
    message = refusal(RGB_UNIT, Path(__file__).read_bytes())
    assert message.startswith("IMAGE[0] is not an image Pillow can read")
    assert "its first bytes are b'\"\"\"The Image mod'" in message  # what was sent instead
    assert message.endswith("send the bytes of an image file (PNG, JPEG, BMP, GIF, TIFF or WebP)")


def test_a_truncated_jpeg_is_refused():
    data = CHINA.read_bytes()
    message = refusal(RGB_UNIT, data[:len(data) // 2])
    assert message.startswith("IMAGE[0] is a JPEG file that could not be decoded (image file is truncated")
    assert message.endswith("it is truncated or corrupt; send the whole file")


def test_a_png_declaring_zero_pixels_is_refused():
    """Pillow cannot write a 0x0 image and refuses to open one ("cannot identify image file"),
    so the header is crafted and the message comes from reading it."""
    assert refusal(RGB_UNIT, png_header(0, 0)) == (
        "IMAGE[0] is a PNG whose header declares 0x0 pixels: an image needs at least one pixel "
        "each way; send a non-empty image")
    assert "declares 0x7 pixels" in refusal(RGB_UNIT, png_header(0, 7))


def test_an_image_above_max_pixels_is_refused():
    message = refusal(Image(height=20, width=20, max_pixels=100_000), CHINA.read_bytes())
    assert message == ("IMAGE[0] is 640x427 = 273,280 pixels, above this model's limit of 100,000 "
                       "(max_pixels): downscale it before sending")


def test_a_decompression_bomb_is_refused_from_its_header():
    """The header claims 50 million pixels and no pixel data follows: refused for its size, so
    nothing was decoded (decoding would have found it truncated)."""
    assert "is 50000x1000 = 50,000,000 pixels, above this model's limit of 40,000,000" in \
        refusal(RGB_UNIT, png_header(50_000, 1_000))
    assert "is too large to decode (Image size (10000000000 pixels) exceeds limit" in \
        refusal(RGB_UNIT, png_header(100_000, 100_000))  # above Pillow's own limit too


def test_an_image_above_max_bytes_is_refused_before_decoding():
    data = CHINA.read_bytes()
    message = refusal(Image(height=20, width=20, max_bytes=10_000), data)
    assert message == (f"IMAGE[0] is {len(data):,} bytes, above this model's limit of 10,000 "
                       "(max_bytes): send a smaller or more compressed image")


def test_empty_bytes_and_the_index_of_the_bad_image_are_named():
    assert refusal(RGB_UNIT, b"").startswith("IMAGE[0] is empty (0 bytes)")
    with pytest.raises(TritonForgeError, match=r"^IMAGE\[1\] is not an image"):
        RGB_UNIT.encode([CHINA.read_bytes(), b"GIF89a, or not"], None, None)


def test_read_raw_reads_files_and_names_a_missing_or_oversized_one(tmp_path):
    [item] = RGB_UNIT.read_raw([str(CHINA)])
    assert item == CHINA.read_bytes() and RGB_UNIT.describe_raw(item, 0) == "#0 china.jpg (640x427)"
    assert RGB_UNIT.describe_raw(bytes(item), 3) == "#3 (640x427)"
    with pytest.raises(TritonForgeError, match=r"--image .*missing.png does not exist: give the path"):
        RGB_UNIT.read_raw([str(tmp_path / "missing.png")])
    with pytest.raises(TritonForgeError, match=rf"china.jpg is {CHINA.stat().st_size:,} bytes, above this "
                                               r"model's limit of 1,000 \(max_bytes\)"):
        Image(height=20, width=20, max_bytes=1_000).read_raw([str(CHINA)])


def test_request_sends_one_encoded_image_per_row():
    raw = RGB_UNIT.read_raw([str(CHINA)]) * 2
    array = RGB_UNIT.request(raw)["IMAGE"]
    assert array.shape == (2, 1) and array.dtype == object and type(array[0, 0]) is bytes


def test_sample_raw_gives_the_bundled_photographs_in_turn():
    every = [item.name for item in RGB_UNIT.sample_raw()]
    assert every == ["china.jpg", "flower.jpg", "grace_hopper.jpg", "astronaut.png", "coffee.png",
                     "chelsea.png", "rocket.jpg", "motorcycle_left.png"]
    raw = RGB_UNIT.sample_raw(10)
    assert [item.name for item in raw] == every + every[:2]
    assert RGB_UNIT.encode(raw, None, None)["pixel_values"].shape == (10, 3, 20, 20)


def test_image_size_asks_encode_for_another_square_size():
    assert RGB_UNIT.resolve_shape() == {"image_size": None}
    batch = RGB_UNIT.encode([CHINA.read_bytes()], None, None, {"image_size": 12})["pixel_values"]
    assert batch.shape == (1, 3, 12, 12)


# -- the record ----------------------------------------------------------------------------


def test_the_record_round_trips_through_the_manifest():
    record = Image(height=24, width=32, channels=1, resize="letterbox", mean=(0.5,), std=(0.25,), fill=0,
                   max_pixels=1_000_000, max_bytes=100_000)
    data = json.loads(json.dumps(record.to_json()))
    assert data["kind"] == "image" and data["version"] == 1 and data["mean"] == [0.5]
    assert Image.from_json(data) == record and modality_from_json(data) == record
    assert record.limits() == {"max_pixels": 1_000_000, "max_bytes": 100_000}


def test_a_newer_record_is_refused_with_its_version():
    data = {**RGB_UNIT.to_json(), "version": 2}
    with pytest.raises(TritonForgeError, match=r"'image' pre-processing record has version 2, newer than "
                                               r"this tritonforge reads \(1\): upgrade tritonforge"):
        Image.from_json(data)


def test_inconsistent_settings_are_refused():
    with pytest.raises(TritonForgeError, match=r"mean \[0.0, 0.0, 0.0\] and std \[1.0, 1.0, 1.0\] need "
                                               r"one value per channel \(1\)"):
        Image(height=8, width=8, channels=1)
    with pytest.raises(TritonForgeError, match=r"resize 'crop' is unknown \(choose stretch, letterbox\)"):
        Image(height=8, width=8, resize="crop")


def test_the_server_step_gets_exactly_the_clients_settings():
    record = Image(height=24, width=40, mean=MEAN, std=STD, resize="letterbox", fill=7)
    io = ModelIO((TensorSpec("pixel_values", "float32", (3, 24, 40)),),
                 (TensorSpec("logits", "float32", (2,), CLASS_SCORES),), record)
    step, ensemble = record.companions("toy", io, ServingOptions())
    assert (step.name, ensemble.name) == ("toy_image_decode", "toy_image")
    parameters = {k: v.string_value for k, v in step.config.parameters.items()}
    assert parameters.pop("output") == "pixel_values"
    assert Decoding.from_parameters(parameters) == record.decoding()
    assert [i.name for i in ensemble.config.input] == ["IMAGE"]
    wrong = ModelIO((TensorSpec("pixel_values", "float32", (3, 32, 32)),), io.outputs, record)
    with pytest.raises(TritonForgeError, match=r"feeds \[\('pixel_values', 'float32', \[3, 24, 40\]\)\]"):
        record.companions("toy", wrong, ServingOptions())


def test_a_detector_gets_the_letterboxed_uint8_pixels_and_the_original_size():
    """dtype uint8 leaves normalisation to the graph; size_input carries (height, width)."""
    record = Image(height=64, width=64, resize="letterbox", dtype="uint8", size_input="orig_size", fill=0)
    photo = record.sample_raw(1)[0]
    with PILImage.open(io.BytesIO(photo)) as original:
        width, height = original.size
    arrays = record.encode([photo], None, None)
    assert arrays["pixel_values"].dtype == np.uint8 and arrays["pixel_values"].shape == (1, 3, 64, 64)
    assert arrays["orig_size"].tolist() == [[height, width]] and arrays["orig_size"].dtype == np.int64
    inner = round(height * 64 / width)  # china.jpg is wider than tall: padding above and below
    top = (64 - inner) // 2
    assert (arrays["pixel_values"][0, :, :top] == 0).all() and arrays["pixel_values"][0, :, top + 1].any()
    io_ = ModelIO((TensorSpec("pixel_values", "uint8", (3, 64, 64)), TensorSpec("orig_size", "int64", (2,))),
                  (TensorSpec("scores", "float32", (5,)),), record)
    step, _ensemble = record.companions("det", io_, ServingOptions())
    assert [(o.name, o.dims) for o in step.config.output] == [("pixel_values", [3, 64, 64]),
                                                               ("orig_size", [2])]
    assert step.config.parameters["size_output"].string_value == "orig_size"
