"""The `toy_image` family (tests/toy_family, registered from the tests, no shared module edited)
through the whole path: `tritonforge export toy_image` (the command generated from its options),
a real tritonserver, `verify --triton`, `query --image`, `query --npy` and `bench`. Image bytes go
in through the `toy_image_image` ensemble (python-backend decode, then the ONNX model) and
PyTorch's logits come out; bad images are refused per request, with the client's message, and
the server stays ready."""

from __future__ import annotations

import io
import json
import queue
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from crafted_images import png_header
from PIL import Image as PILImage
from toy_family import IMAGENET_MEAN, IMAGENET_STD, ToyImageFamily, ToyImageOptions
from tritonclient.utils import InferenceServerException
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.errors import TritonForgeError
from tritonforge.modalities import Image, Tensors, read_io
from tritonforge.serving.client import infer_inputs
from tritonforge.serving.local import LocalTriton
from tritonforge.serving.repository import ModelRepository

ENSEMBLE = "toy_image_image"
runner = CliRunner()
ANY_PORTS = {"http_port": 0, "grpc_port": 0, "metrics_port": 0}  # LocalTriton picks free ones
OPTIONS = ToyImageOptions()


@pytest.fixture(scope="module")
def toy():
    """The family, its PyTorch reference and its Image record."""
    family = ToyImageFamily()
    model = family.load(OPTIONS)
    return family, model, family.io(model, OPTIONS).preprocessing


@pytest.fixture(scope="module")
def toy_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("toy_image_repo")
    result = runner.invoke(app, ["export", "toy_image", "--repo", str(repo)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "exported" in result.output and "max_abs_diff" in result.output
    log = tmp_path_factory.mktemp("toy_image_log") / "triton.log"
    with LocalTriton(repo, log_file=log, **ANY_PORTS) as server:
        yield server


@pytest.fixture
def toy_client(toy_server):
    client = grpcclient.InferenceServerClient(toy_server.grpc_url)
    yield client
    client.close()


def served_logits(client, record, raw: list[bytes]) -> np.ndarray:
    result = client.infer(ENSEMBLE, infer_inputs(record.request(raw)))
    return result.as_numpy("logits")


def pytorch_logits(toy, raw: list[bytes]) -> np.ndarray:
    _family, model, record = toy
    with torch.inference_mode():
        return model(torch.from_numpy(record.encode(raw, None, None)["pixel_values"])).numpy()


def png(image: PILImage.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_the_exported_models_are_ready(toy_server):
    assert {(m.name, m.state) for m in toy_server.models} == {
        ("toy_image", "READY"), ("toy_image_image_decode", "READY"), (ENSEMBLE, "READY")}


def test_the_manifest_records_the_image_record_and_the_parity_on_photographs(toy_server):
    manifest = ModelRepository(toy_server.repo).read_manifest("toy_image")
    record = read_io(manifest["io"]).preprocessing
    assert record == Image(height=32, width=32, resize="letterbox", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert record.limits() == {"max_pixels": 40_000_000, "max_bytes": 20 * 1024 * 1024}
    assert manifest["parity"]["passed"] and manifest["parity"]["metric"] == "max_abs_diff"
    assert "random" in manifest["source"]["weights"]


def test_photograph_bytes_give_pytorchs_logits(toy, toy_client):
    record = toy[2]
    photos = record.sample_raw(4)  # china.jpg, flower.jpg, grace_hopper.jpg, astronaut.png
    logits = served_logits(toy_client, record, photos)
    assert logits.shape == (4, OPTIONS.classes) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, pytorch_logits(toy, photos), atol=1e-5, rtol=0)
    np.testing.assert_allclose(served_logits(toy_client, record, photos[1:2]), logits[1:2], atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_grayscale_and_rgba_images_are_accepted(toy, toy_client, mode):
    record = toy[2]
    image = PILImage.open(io.BytesIO(record.sample_raw(1)[0])).convert(mode)
    if mode == "RGBA":
        image.putalpha(PILImage.linear_gradient("L").resize(image.size))  # transparent to opaque
    data = png(image)
    np.testing.assert_allclose(served_logits(toy_client, record, [data]), pytorch_logits(toy, [data]),
                               atol=1e-5, rtol=0)


def half_a_jpeg(record) -> bytes:
    data = bytes(record.sample_raw(1)[0])
    return data[:len(data) // 2]


BAD_IMAGES = {
    "not an image": (lambda record: b"name,score\nalice,3\n", "is not an image Pillow can read"),
    "truncated": (half_a_jpeg, "it is truncated or corrupt; send the whole file"),
    "0x0": (lambda record: png_header(0, 0), "is a PNG whose header declares 0x0 pixels"),
    "too many pixels": (lambda record: png_header(50_000, 1_000),
                        "is 50000x1000 = 50,000,000 pixels, above this model's limit of 40,000,000"),
    "too many bytes": (lambda record: bytes(record.max_bytes + 1),
                       f"is {20 * 1024 * 1024 + 1:,} bytes, above this model's limit of"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_a_bad_image_is_refused_with_the_clients_message_and_the_server_stays_ready(toy, toy_client, case):
    record = toy[2]
    make, problem = BAD_IMAGES[case]
    data = make(record)
    with pytest.raises(TritonForgeError) as on_client:
        record.encode([data], None, None)
    with pytest.raises(InferenceServerException) as on_server:
        served_logits(toy_client, record, [data])
    assert problem in str(on_client.value)
    assert str(on_client.value) in on_server.value.message()  # Triton prefixes the ensemble's name
    assert on_server.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert toy_client.is_server_ready() and toy_client.is_model_ready(ENSEMBLE)
    photo = record.sample_raw(1)
    np.testing.assert_allclose(served_logits(toy_client, record, photo), pytorch_logits(toy, photo),
                               atol=1e-5, rtol=0)


def test_a_bad_image_fails_its_own_request_only(toy, toy_client):
    """Requests in flight together (the decode step takes whatever is queued in one call)."""
    record = toy[2]
    photo = record.sample_raw(1)
    answers: queue.Queue = queue.Queue()
    payloads = [photo] * 4 + [[b"not an image"]] + [photo] * 4
    for index, raw in enumerate(payloads):
        toy_client.async_infer(ENSEMBLE, infer_inputs(record.request(raw)), request_id=str(index),
                               callback=lambda result, error: answers.put((result, error)))
    results = [answers.get(timeout=30) for _ in payloads]
    failed = [error for _result, error in results if error is not None]
    assert len(failed) == 1 and "IMAGE[0] is not an image" in failed[0].message()
    expected = pytorch_logits(toy, photo)
    for result, _error in (r for r in results if r[1] is None):
        np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-5, rtol=0)


def test_verify_checks_the_served_model_on_photographs_and_times_three_runtimes(toy_server, tmp_path):
    report = tmp_path / "verify.json"
    result = runner.invoke(app, ["verify", "toy_image", "--repo", str(toy_server.repo), "--iterations",
                                 "3", "--triton", toy_server.grpc_url, "--json", str(report)])
    assert result.exit_code == 0, result.output
    written = json.loads(report.read_text())
    assert written["parity"]["passed"] and written["triton"]["parity"]["passed"]
    assert written["shape"] == {"image_size": None} and written["parity"]["metric"] == "max_abs_diff"
    assert set(written["latency_ms"]) == {"pytorch", "onnxruntime", "triton"}
    refused = runner.invoke(app, ["verify", "toy_image", "--repo", str(toy_server.repo), "--seq-len", "16"])
    assert refused.exit_code == 2
    assert "--seq-len does not apply to a model that takes image input" in refused.output


def test_query_image_prints_labels_and_writes_json(toy, toy_server, tmp_path):
    record = toy[2]
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(bytes(record.sample_raw(1)[0]))
    out = tmp_path / "answer.json"
    result = runner.invoke(app, ["query", ENSEMBLE, "--url", toy_server.grpc_url, "--image", str(photo),
                                 "--json", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "most probable labels" in result.output and "photo.jpg" in result.output
    answer = json.loads(out.read_text())
    assert answer["outputs"]["logits"]["kind"] == "class_scores"
    expected = pytorch_logits(toy, [photo.read_bytes()])
    np.testing.assert_allclose(answer["outputs"]["logits"]["values"], expected, atol=1e-5)
    assert answer["summary"]["labels"]["logits"][0][0][0].startswith("class_")
    wrong = runner.invoke(app, ["query", ENSEMBLE, "--url", toy_server.grpc_url, "--text", "a photo"])
    assert wrong.exit_code == 2 and "takes image input (--image), not --text" in wrong.output


def test_query_the_tensor_model_with_an_npy_file_and_with_an_image_through_the_repository(
        toy, toy_server, tmp_path):
    record = toy[2]
    photo = bytes(record.sample_raw(1)[0])
    pixels = record.encode([photo], None, None)["pixel_values"]
    np.save(tmp_path / "pixels.npy", pixels[0])
    result = runner.invoke(app, ["query", "toy_image", "--url", toy_server.grpc_url, "--npy",
                                 str(tmp_path / "pixels.npy"), "--json", str(tmp_path / "a.json")])
    assert result.exit_code == 2 and "takes image input (--image), not --npy" in result.output
    result = runner.invoke(app, ["query", "toy_image", "--url", toy_server.grpc_url, "--input-json",
                                 str(_json_file(tmp_path, {"pixel_values": pixels.tolist()})),
                                 "--json", str(tmp_path / "a.json")])
    assert result.exit_code == 0, result.output
    expected = pytorch_logits(toy, [photo])
    np.testing.assert_allclose(json.loads((tmp_path / "a.json").read_text())["outputs"]["logits"]["values"],
                               expected, atol=1e-5)
    (tmp_path / "photo.jpg").write_bytes(photo)
    result = runner.invoke(app, ["query", "toy_image", "--url", toy_server.grpc_url, "--image",
                                 str(tmp_path / "photo.jpg"), "--repo", str(toy_server.repo),
                                 "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(json.loads((tmp_path / "b.json").read_text())["outputs"]["logits"]["values"],
                               expected, atol=1e-5)


def _json_file(folder, data) -> Path:
    path = folder / "request.json"
    path.write_text(json.dumps(data))
    return path


def test_bench_sends_real_photographs_without_errors(toy_server, tmp_path):
    result = runner.invoke(app, ["bench", ENSEMBLE, "--url", toy_server.grpc_url, "--concurrency", "1,4",
                                 "--requests", "24", "--json", str(tmp_path / "bench.json")])
    assert result.exit_code == 0, result.output
    levels = json.loads((tmp_path / "bench.json").read_text())["levels"]
    assert [(r["concurrency"], r["requests"], r["errors"]) for r in levels] == [(1, 24, 0), (4, 24, 0)]


@pytest.mark.parametrize("shape, dtype", [((1, 3, 16, 16), np.float32), ((1, 3, 32, 32), np.float64)])
def test_a_wrong_tensor_is_refused_by_the_client_and_by_triton(toy, toy_client, tmp_path, shape, dtype):
    """What `query --npy` checks on the client, Triton checks again from the config."""
    _family, model, record = toy
    io = _family.io(model, OPTIONS)
    wrong = np.zeros(shape, dtype)
    np.save(tmp_path / "wrong.npy", wrong)
    with pytest.raises(TritonForgeError, match="wrong.npy (has shape|holds float64)"):
        Tensors().encode(Tensors().read_raw([str(tmp_path / "wrong.npy")]), io, None)
    with pytest.raises(InferenceServerException) as on_server:
        toy_client.infer("toy_image", infer_inputs({"pixel_values": wrong}))
    assert on_server.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "pixel_values" in on_server.value.message()
    assert toy_client.is_server_ready() and toy_client.is_model_ready("toy_image")
