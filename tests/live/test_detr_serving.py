"""Detectors served by a real tritonserver: a photograph's bytes in through `<name>_image`
(decode and letterbox in the python backend), boxes in the photograph's pixels out, equal to
PyTorch's; `query --image --save`, `verify --triton` and `bench` on real photographs."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from crafted_images import png_header
from PIL import Image as PILImage
from tritonclient.utils import InferenceServerException
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.serving.client import infer, model_info, summarize
from tritonforge.serving.local import LocalTriton

runner = CliRunner()


@pytest.fixture(scope="module")
def detr_server(detr_repo, tmp_path_factory):
    log = tmp_path_factory.mktemp("detr_log") / "triton.log"
    with LocalTriton(detr_repo, log_file=log, http_port=0, grpc_port=0, metrics_port=0) as server:
        yield server


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from tritonforge.modalities.image import photographs

    return photographs()[0]  # china.jpg, 640 x 427


def test_image_bytes_give_the_detections_pytorch_gives(detr_server, detr_repo, photo):
    from tritonforge.family import get_family
    from tritonforge.modalities import read_io
    from tritonforge.serving.repository import ModelRepository

    client = grpcclient.InferenceServerClient(detr_server.grpc_url)
    for name in ("detr_fp32", "deformable_fp32", "mttrans_fp32"):
        manifest = ModelRepository(detr_repo).read_manifest(name)
        family = get_family("detr")
        options = family.options_from_json(manifest["recipe"])
        model, io_ = family.load(options), read_io(manifest["io"])
        feed = io_.preprocessing.encode([photo.read_bytes()], io_, None)
        reference = family.reference_outputs(model, feed, io_)
        served = infer(client, f"{name}_image", io_.preprocessing.request([photo.read_bytes()]))
        assert served["labels"].dtype == np.int64
        assert family.compare(reference, served, options).passed


def test_query_prints_detections_and_draws_them(detr_server, photo, tmp_path):
    drawn, answer = tmp_path / "annotated.png", tmp_path / "answer.json"
    result = runner.invoke(app, ["query", "deformable_fp32_image", "--url", detr_server.grpc_url,
                                 "--image", str(photo), "--min-score", "0", "--save", str(drawn),
                                 "--json", str(answer)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "detections scoring at least 0.0" in result.output and "china.jpg" in result.output
    with PILImage.open(drawn) as image:
        assert image.size == (640, 427)
    written = json.loads(answer.read_text())
    assert written["outputs"]["labels"]["kind"] == "detection_labels"
    assert all(isinstance(v, int) for v in written["outputs"]["labels"]["values"][0])
    assert len(written["summary"]["detections"][0]) == 20
    refused = runner.invoke(app, ["query", "detr_fp32", "--url", detr_server.grpc_url, "--text", "x"])
    assert refused.exit_code == 2 and "takes image input (--image), not --text" in refused.output


def test_verify_through_triton_and_bench_with_photographs(detr_server, detr_repo, tmp_path):
    report = tmp_path / "verify.json"
    result = runner.invoke(app, ["verify", "detr_fp32", "--repo", str(detr_repo), "--samples", "6",
                                 "--iterations", "2", "--triton", detr_server.grpc_url,
                                 "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["triton"]["parity"]["passed"]
    result = runner.invoke(app, ["bench", "deformable_fp32_image", "--url", detr_server.grpc_url,
                                 "--concurrency", "1,4", "--requests", "12",
                                 "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    levels = json.loads((tmp_path / "b.json").read_text())["levels"]
    assert [(r["requests"], r["errors"]) for r in levels] == [(12, 0), (12, 0)]


def png_bytes(image: PILImage.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


BAD = {
    "not an image": (lambda photo: b"GIF89a not really", "is not an image Pillow can read"),
    "truncated PNG": (lambda photo: png_bytes(PILImage.open(photo))[:20_000], "truncated or corrupt"),
    "0x0": (lambda photo: png_header(0, 0), "declares 0x0 pixels"),
    "above the pixel limit": (lambda photo: png_header(50_000, 1_000),
                              "above this model's limit of 40,000,000"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_images_get_invalid_argument_and_the_server_stays_ready(detr_server, photo, case):
    client = grpcclient.InferenceServerClient(detr_server.grpc_url)
    make, problem = BAD[case]
    with pytest.raises(InferenceServerException) as refused:
        client.infer("detr_fp32_image", [_image_input(make(photo))])
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert problem in refused.value.message()
    assert client.is_server_ready() and client.is_model_ready("detr_fp32_image")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_grayscale_rgba_and_palette_photographs_are_converted(detr_server, photo, mode):
    client = grpcclient.InferenceServerClient(detr_server.grpc_url)
    info = model_info(client, "detr_fp32_image", detr_server.grpc_url)
    converted = png_bytes(PILImage.open(photo).convert(mode))
    outputs = infer(client, "detr_fp32_image", info.modality().request([converted]))
    assert len(summarize(info, outputs, 0.0)["detections"][0]) == 20


def _image_input(data: bytes):
    tensor = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[data]], dtype=object))
    return tensor
