"""An `sr` export served by the local Triton: `query --image lr.png --save sr.png` writes the
PyTorch model's upscaled image, pixel for pixel (within the FP32 bar of one grey level)."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image as PILImage
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.export.sr import SRFamily, SROptions
from tritonforge.export.sr.data import photograph_pixels
from tritonforge.pipeline.export import export_model
from tritonforge.serving.local import LocalTriton

ANY_PORTS = {"http_port": 0, "grpc_port": 0, "metrics_port": 0}


def test_query_save_writes_the_pytorch_models_upscaled_image(tmp_path):
    repo = tmp_path / "repo"
    options = SROptions(arch="fsrcnn", scale=3)
    result = export_model("sr", options, repo)
    lr = photograph_pixels()[2][40:77, 60:113]  # 37 x 53: sizes the scale does not divide
    PILImage.fromarray(lr).save(tmp_path / "lr.png")
    with LocalTriton(repo, log_file=tmp_path / "triton.log", **ANY_PORTS) as server:
        query = ["query", result.name, "--url", server.grpc_url, "--repo", str(repo)]
        output = CliRunner().invoke(app, [*query, "--image", str(tmp_path / "lr.png"),
                                          "--save", str(tmp_path / "sr.png")], terminal_width=200)
        assert output.exit_code == 0, output.output
        assert f"image written to {tmp_path / 'sr.png'}" in output.output.replace("\n", "")
        refused = CliRunner().invoke(app, [*query, "--npy", str(tmp_path / "lr.png")], terminal_width=200)
        assert refused.exit_code != 0 and "takes image_pixels input (--image), not --npy" in refused.output
    served = np.asarray(PILImage.open(tmp_path / "sr.png"))
    model = SRFamily().load(options)
    with torch.inference_mode():
        expected = model(torch.from_numpy(lr.transpose(2, 0, 1)[None].copy()))[0].numpy().transpose(1, 2, 0)
    assert served.shape == (111, 159, 3) and served.dtype == np.uint8
    assert np.abs(served.astype(int) - expected.astype(int)).max() <= 1


def test_bench_sends_photograph_frames_of_the_asked_size(tmp_path):
    repo = tmp_path / "repo"
    result = export_model("sr", SROptions(arch="fsrcnn", scale=2), repo)
    with LocalTriton(repo, log_file=tmp_path / "triton.log", **ANY_PORTS) as server:
        bench = ["bench", result.name, "--url", server.grpc_url, "--repo", str(repo)]
        load = ["--frame-size", "640x360", "--concurrency", "1,2", "--requests", "12",
                "--json", str(tmp_path / "b.json")]
        output = CliRunner().invoke(app, [*bench, *load], terminal_width=200)
        assert output.exit_code == 0, output.output
        refused = CliRunner().invoke(app, [*bench, "--frame-size", "640by360"], terminal_width=200)
        assert refused.exit_code == 2 and "--frame-size '640by360' is not WIDTHxHEIGHT" in refused.output
    levels = json.loads((tmp_path / "b.json").read_text())["levels"]
    assert [(level["concurrency"], level["errors"]) for level in levels] == [(1, 0), (2, 0)]
    assert all(level["ok"] >= 12 for level in levels)
