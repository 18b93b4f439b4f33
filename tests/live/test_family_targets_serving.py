"""detr, sr and snn exports for OpenVINO served by the local Triton (the python-backend wrapper
runs OpenVINO as Triton's openvino backend would): each answers within its precision's bar of
the PyTorch reference, through gRPC."""

from __future__ import annotations

import pytest

from tritonforge.export.detr import DetrOptions
from tritonforge.export.snn import SnnOptions
from tritonforge.export.sr import SROptions
from tritonforge.pipeline.export import export_model
from tritonforge.pipeline.verify import verify_model
from tritonforge.serving.local import LocalTriton

ANY_PORTS = {"http_port": 0, "grpc_port": 0, "metrics_port": 0}


@pytest.fixture(scope="module")
def openvino_repo(tmp_path_factory, snn_checkpoint):
    repo = tmp_path_factory.mktemp("openvino_repo")
    export_model("sr", SROptions(target="openvino"), repo)  # sr_espcn_x2_fp32
    # DETR's `boxes` output is also `/Min_1_output_0` to OpenVINO: the wrapper finds it by name.
    export_model("detr", DetrOptions(arch="detr", size="tiny", image_size=128, top_k=20, target="openvino"),
                 repo)  # detr_fp32
    export_model("snn", SnnOptions(checkpoint=str(snn_checkpoint), bits=8, target="openvino"),
                 repo)  # snn_digits_int8
    return repo


@pytest.fixture(scope="module")
def openvino_server(openvino_repo, tmp_path_factory):
    log = tmp_path_factory.mktemp("triton_log") / "triton.log"
    with LocalTriton(openvino_repo, log_file=log, **ANY_PORTS) as server:
        yield server


@pytest.mark.parametrize("name", ["sr_espcn_x2_fp32", "detr_fp32", "snn_digits_int8"])
def test_openvino_exports_pass_parity_through_triton(openvino_repo, openvino_server, name):
    report = verify_model(openvino_repo, name, samples=8, iterations=1, triton_url=openvino_server.grpc_url)
    assert report.runtime == "openvino" and report.parity.passed and report.triton_parity.passed
