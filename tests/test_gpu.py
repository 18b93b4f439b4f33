"""GPU parity and latency (CUDA and TensorRT execution providers, FP16): `make gpu-check`.

Skipped cleanly where ONNX Runtime cannot use a CUDA GPU.
"""

from __future__ import annotations

import pytest

from tritonforge.errors import TritonForgeError
from tritonforge.export.bert import BertOptions
from tritonforge.export.detr import DetrOptions
from tritonforge.pipeline.export import export_model
from tritonforge.pipeline.verify import verify_model
from tritonforge.runtime import ort_session

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("gpu_repo")
    fp32 = export_model("bert", BertOptions(), repo)
    try:
        ort_session(fp32.folder / "model.onnx", provider="cuda")
    except TritonForgeError as exc:
        pytest.skip(f"no usable CUDA GPU: {exc}")
    export_model("bert", BertOptions(bits=16, gpu=True), repo)
    for arch in ("detr", "deformable"):  # R50-size random detectors at 640 x 640
        for bits in (32, 16):
            export_model("detr", DetrOptions(arch=arch, bits=bits, gpu=True), repo)
    return repo


@pytest.mark.parametrize("name,provider", [
    ("bert_fp32", "cuda"), ("bert_fp16", "cuda"), ("bert_fp32", "tensorrt"), ("bert_fp16", "tensorrt"),
    ("detr_fp32", "cuda"), ("detr_fp16", "cuda"), ("deformable_fp32", "cuda"), ("deformable_fp16", "cuda"),
    ("detr_fp16", "tensorrt"), ("deformable_fp16", "tensorrt")])
def test_gpu_parity_and_latency(gpu_repo, name, provider):
    report = verify_model(gpu_repo, name, provider=provider, iterations=20)
    print(name, provider, report.to_json())
    assert report.parity.passed
