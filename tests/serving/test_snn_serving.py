"""The spiking digits classifier served by a real tritonserver: a digit PNG in through
`snn_digits_image`, PyTorch's logits out; verify --triton over the whole test split."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image as PILImage

from tritonforge.export.base import get_family
from tritonforge.export.snn import SnnOptions
from tritonforge.export.snn.train import digits
from tritonforge.serving.client import infer, model_info
from tritonforge.serving.local import LocalTriton
from tritonforge.verify.runner import verify_model


@pytest.fixture(scope="module")
def snn_server(snn_repo, tmp_path_factory):
    log = tmp_path_factory.mktemp("snn_log") / "triton.log"
    with LocalTriton(snn_repo, log_file=log, http_port=0, grpc_port=0, metrics_port=0) as server:
        yield server


def digit_png(image: np.ndarray) -> bytes:
    """A test digit (0-1) as the 8-bit PNG a client would send."""
    buffer = io.BytesIO()
    PILImage.fromarray(np.rint(image[0] * 255).astype(np.uint8), "L").save(buffer, "PNG")
    return buffer.getvalue()


def test_digit_pngs_through_the_image_ensemble_give_pytorchs_answers(snn_server, snn_checkpoint):
    images, labels = digits("test")
    family = get_family("snn")
    options = SnnOptions(checkpoint=str(snn_checkpoint))
    model = family.load(options)
    io_ = family.io(model, options)
    client = grpcclient.InferenceServerClient(snn_server.grpc_url)
    info = model_info(client, "snn_digits_image", snn_server.grpc_url)
    pngs = [digit_png(image) for image in images[:24]]
    served = infer(client, "snn_digits_image", info.modality().request(pngs))
    decoded = io_.preprocessing.encode(pngs, io_, None)
    reference = family.reference_outputs(model, decoded, io_)
    assert (served["logits"].argmax(1) == reference["logits"].argmax(1)).mean() >= 0.995
    np.testing.assert_allclose(served["spike_rates"], reference["spike_rates"], atol=1e-3)
    assert (served["logits"].argmax(1) == labels[:24]).mean() >= 0.9


def test_verify_through_triton_on_the_test_digits(snn_server, snn_repo):
    report = verify_model(snn_repo, "snn_digits", iterations=2, triton_url=snn_server.grpc_url)
    assert report.parity.passed and report.triton_parity.passed
    assert report.triton_parity.details["samples"] == 360
