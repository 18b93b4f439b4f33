"""The digits ViT served by a real tritonserver (the local python-backend wrapper around ONNX
Runtime): PNGs in through `<name>_image`, PyTorch's logits out; the STRIP guard's flag comes back
with each answer, raised for the poisoned control's triggered digits and clear for clean ones;
`query` prints the verdict, `verify --triton` and `bench` run on it."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image as PILImage
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.export.vit.data import digit_pngs
from tritonforge.family import get_family
from tritonforge.modalities import read_io
from tritonforge.pipeline.verify import verify_model
from tritonforge.serving.client import infer
from tritonforge.serving.local import LocalTriton
from tritonforge.serving.repository import ModelRepository

runner = CliRunner()
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vit_server(vit_repo, tmp_path_factory):
    log = tmp_path_factory.mktemp("vit_log") / "triton.log"
    with LocalTriton(vit_repo, log_file=log, http_port=0, grpc_port=0, metrics_port=0) as server:
        yield server


def test_digit_pngs_give_pytorchs_logits_and_the_guard_flags_triggers(vit_server, vit_repo, vit_models):
    client = grpcclient.InferenceServerClient(vit_server.grpc_url)
    pngs, labels = digit_pngs("evaluation")
    family = get_family("vit")
    for name in ("vit_fp32", "vit_fp32_strip"):
        manifest = ModelRepository(vit_repo).read_manifest(name)
        options = family.options_from_json(manifest["recipe"])
        model, io_ = family.load(options), read_io(manifest["io"])
        served = infer(client, f"{name}_image", io_.preprocessing.request(pngs[:32]))
        reference = family.reference_outputs(model, io_.preprocessing.encode(pngs[:32], io_, None), io_)
        assert np.abs(served["logits"] - reference["logits"]).max() <= 1e-4
        assert (served["logits"].argmax(1) == labels[:32]).mean() >= 0.9
    clean = infer(client, "vit_fp32_strip_image", io_.preprocessing.request(pngs[:32]))
    assert clean["backdoor_flag"].dtype == np.bool_ and clean["backdoor_flag"].mean() <= 0.1
    triggered = [path.read_bytes() for path in sorted((vit_models["patch"] / "samples").glob("*.png"))]
    answer = infer(client, "vit_fp32_strip_image", io_.preprocessing.request(triggered))
    assert answer["backdoor_flag"].all() and (answer["logits"].argmax(1) == 3).all()


def test_query_prints_the_verdict_and_verify_runs_through_triton(vit_server, vit_repo, vit_models, tmp_path):
    sample = sorted((vit_models["patch"] / "samples").glob("*.png"))[0]
    clean = tmp_path / "clean.png"
    pngs, _labels = digit_pngs("evaluation")
    PILImage.open(io.BytesIO(pngs[0])).save(clean)
    answer = tmp_path / "answer.json"
    result = runner.invoke(app, ["query", "vit_fp32_strip_image", "--url", vit_server.grpc_url,
                                 "--image", str(sample), "--image", str(clean), "--json", str(answer)],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "flagged (score" in result.output and "clear (score" in result.output
    written = json.loads(answer.read_text())
    assert written["outputs"]["backdoor_flag"]["kind"] == "flag"
    report = verify_model(vit_repo, "vit_fp32_strip", samples=32, iterations=1,
                          triton_url=vit_server.grpc_url)
    assert report.parity.passed and report.triton_parity.passed


def test_bench_compares_the_guarded_model_with_the_plain_one(vit_server, tmp_path):
    report = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "vit_fp32_strip_image", "--url", vit_server.grpc_url,
                                 "--concurrency", "1,4", "--requests", "40", "--compare", "vit_fp32_image",
                                 "--json", str(report)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "vit_fp32_image" in result.output
    assert "vit_fp32_image" in report.read_text()
