"""Targets for every family (`TargetOptions`): detr, sr, snn and dask export, verify and serve on
OpenVINO in FP32, BF16 and INT8 with bars of their own; `auto`, `--fallback` and the "no BF16"
switch behave as for bert; `tritonforge speed <family>` tables every variant side by side."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.errors import TritonForgeError
from tritonforge.export.bert import BertOptions
from tritonforge.export.dask import (
    BF16_PARITY_FLOOR,
    OPENVINO_QUANT_PARITY_FLOOR,
    QUANT_PARITY_FLOOR,
    DaskOptions,
)
from tritonforge.export.detr import REDUCED, DetrOptions
from tritonforge.export.snn import BF16_SPIKE_RATE_ABS, SnnOptions
from tritonforge.export.sr import BF16_MAX_ABS_DIFF, BF16_PSNR_DIFF, SROptions
from tritonforge.pipeline.export import export_model
from tritonforge.pipeline.verify import verify_model
from tritonforge.quant.static import OPENVINO_CONCAT, OPENVINO_REDUCTION, openvino_float_nodes, static_qdq
from tritonforge.runtime import NO_BF16_ENV, cpu_has_bf16, open_session, run_session
from tritonforge.serving.repository import ModelRepository
from tritonforge.targets import TargetOptions

TINY_DETR = {"size": "tiny", "image_size": 128, "top_k": 20}  # as tests/export/detr/test_detr.py exports
OPTIONS = {"bert": BertOptions, "detr": DetrOptions, "sr": SROptions, "snn": SnnOptions, "dask": DaskOptions}


def checks(manifest) -> dict[str, dict]:
    return {c["metric"]: c for c in manifest["parity"]["details"]["checks"]}


def served_on_openvino(repo, name: str, bf16: bool) -> None:
    config = ModelRepository(repo).read_config(name)
    assert config.backend == "openvino" and config.default_model_filename == "model.onnx"
    assert ("HINT_BF16" in config.parameters) is bf16


# -- the shared options ---------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(OPTIONS))
def test_every_family_takes_target_fallback_and_threads_on_its_export_command(family):
    assert issubclass(OPTIONS[family], TargetOptions)
    names = {f.name for f in dataclasses.fields(OPTIONS[family])}
    assert {"target", "fallback", "fallback_reason", "threads"} <= names
    text = CliRunner().invoke(app, ["export", family, "--help"], terminal_width=200).output
    assert "--target" in text and "--fallback" in text


def test_the_new_families_keep_onnx_runtime_by_default_and_bert_keeps_auto():
    # Today's commands export what they exported before targets existed.
    assert DetrOptions(**TINY_DETR).target == "onnxruntime" and SROptions().target == "onnxruntime"
    assert DaskOptions().target == "onnxruntime" and SnnOptions().target == "onnxruntime"
    assert BertOptions().target == "openvino"  # auto, made concrete: OpenVINO is installed here
    assert SROptions(target="auto").target == "openvino"  # auto means the same for every family


def test_detr_gpu_still_means_tensorrt_and_refuses_another_target():
    options = DetrOptions(gpu=True, **TINY_DETR)
    assert options.target == "tensorrt" and options.gpu
    with pytest.raises(TritonForgeError, match="--gpu serves with TensorRT; it does not combine with "
                                               "--target openvino"):
        DetrOptions(gpu=True, target="openvino", **TINY_DETR)


@pytest.mark.parametrize("options", [SnnOptions, DaskOptions])
def test_bits_16_is_bf16_on_openvino_only_for_families_without_an_fp16_graph(options):
    with pytest.raises(TritonForgeError, match=r"--bits 16 computes in FP16 on onnxruntime, which these "
                                               r"models are not exported in: use --target openvino"):
        options(bits=16, target="onnxruntime")


def test_sixteen_bits_for_openvino_is_bf16(bf16):
    assert SROptions(arch="fsrcnn").for_target("openvino", 16).precision == "bf16"


def test_for_target_is_the_recipe_export_would_make_for_another_target_and_width():
    assert SROptions(arch="fsrcnn").for_target("onnxruntime", 16).precision == "fp16"
    detr = DetrOptions(gpu=True, **TINY_DETR).for_target("openvino", 8)
    assert (detr.target, detr.gpu, detr.precision) == ("openvino", False, "int8")
    # A float width leaves bert's quantization options out, where the recipe would refuse them.
    bert = BertOptions(bits=8, calib_size=16, lsq_epochs=0).for_target("onnxruntime", 32)
    assert (bert.precision, bert.calib_size, bert.lsq_epochs) == ("fp32", 256, 3)


# -- the "no BF16" switch -------------------------------------------------------------------


@pytest.fixture
def no_bf16_env(monkeypatch):
    monkeypatch.setenv(NO_BF16_ENV, "1")


def test_the_no_bf16_switch_makes_this_cpu_one_without_bf16(no_bf16_env):
    assert not cpu_has_bf16()
    message = r"no native bfloat16 \(AVX512_BF16 or AMX\).*--bits 32.*or pass --fallback"
    with pytest.raises(TritonForgeError, match=message):
        SROptions(bits=16, target="openvino")
    assert SROptions(bits=32, target="openvino").precision == "fp32"  # FP32 needs no BF16
    fallen = SROptions(bits=16, target="openvino", fallback=True)
    assert (fallen.target, fallen.precision) == ("onnxruntime", "fp16")
    assert "no native bfloat16" in fallen.fallback_reason
    # No FP16 graph to fall back to: refused with both reasons, never exported as something else.
    with pytest.raises(TritonForgeError, match=r"no native bfloat16.*; --bits 16 computes in FP16 on "
                                               r"onnxruntime.*or export --bits 32"):
        SnnOptions(bits=16, target="openvino", fallback=True)


def test_the_switch_falls_back_in_the_manifest(no_bf16_env, tmp_path):
    result = export_model("sr", SROptions(bits=16, target="openvino", fallback=True), tmp_path)
    recipe = result.manifest["recipe"]
    assert result.name == "sr_espcn_x2_fp16" and recipe["target"] == "onnxruntime"
    assert "no native bfloat16" in recipe["fallback_reason"]


# -- OpenVINO FP32 on each family's tiny model ---------------------------------------------------


@pytest.mark.parametrize("arch", ["detr", "deformable"])
def test_detr_exports_and_verifies_on_openvino_to_the_fp32_bars(tmp_path, arch):
    result = export_model("detr", DetrOptions(arch=arch, target="openvino", **TINY_DETR), tmp_path)
    manifest = result.manifest
    assert result.name == f"{arch}_fp32" and manifest["serving"]["target"] == "openvino"
    assert manifest["parity"]["passed"] and checks(manifest)["logits_max_abs_diff"]["tolerance"] == 1e-4
    served_on_openvino(tmp_path, result.name, bf16=False)
    report = verify_model(tmp_path, result.name, samples=6, iterations=1, batch_size=3)
    assert report.runtime == "openvino" and report.parity.passed


def test_sr_exports_and_verifies_on_openvino(tmp_path):
    result = export_model("sr", SROptions(target="openvino"), tmp_path)
    assert result.manifest["parity"]["passed"] and result.manifest["precision"] == "fp32"
    served_on_openvino(tmp_path, "sr_espcn_x2_fp32", bf16=False)
    assert verify_model(tmp_path, "sr_espcn_x2_fp32", samples=8, iterations=1).runtime == "openvino"


def test_snn_exports_and_verifies_on_openvino(tmp_path, snn_checkpoint):
    result = export_model("snn", SnnOptions(checkpoint=str(snn_checkpoint), target="openvino"), tmp_path)
    manifest = result.manifest
    assert result.name == "snn_digits" and manifest["parity"]["passed"]
    assert checks(manifest)["top1_agreement"]["value"] == 1.0
    assert manifest["quality"]["accuracy"] >= 0.94
    served_on_openvino(tmp_path, "snn_digits", bf16=False)
    assert verify_model(tmp_path, "snn_digits", samples=16, iterations=1).parity.passed


def test_a_streaming_snn_runs_its_steps_on_openvino(tmp_path, snn_checkpoint):
    options = SnnOptions(checkpoint=str(snn_checkpoint), streaming=True, target="openvino")
    result = export_model("snn", options, tmp_path)
    assert result.manifest["parity"]["passed"] and result.manifest["serving"]["target"] == "openvino"


@pytest.mark.slow
def test_dask_exports_and_verifies_on_openvino(tmp_path, dask_checkpoint):
    options = DaskOptions(checkpoint=str(dask_checkpoint), max_length=64, target="openvino")
    result = export_model("dask", options, tmp_path)
    assert result.name == "dask_fp32" and result.manifest["parity"]["passed"]
    assert checks(result.manifest)["label_agreement"]["value"] == 1.0
    served_on_openvino(tmp_path, "dask_fp32", bf16=False)
    assert verify_model(tmp_path, "dask_fp32", samples=16, iterations=1).runtime == "openvino"


# -- INT8 QDQ graphs on OpenVINO ---------------------------------------------------------------


@pytest.mark.parametrize("arch", ["deformable", "mttrans"])
def test_detr_int8_for_openvino_keeps_what_its_plugin_cannot_compile_in_float(tmp_path, arch):
    result = export_model("detr", DetrOptions(arch=arch, bits=8, target="openvino", **TINY_DETR), tmp_path)
    kept = result.manifest["quantization"]["openvino_float_nodes"]
    assert kept and set(kept.values()) == {OPENVINO_CONCAT}
    assert result.manifest["parity"]["passed"]
    # The ONNX Runtime graph is the one exported before targets existed: nothing more in float.
    onnxruntime = export_model("detr", DetrOptions(arch=arch, bits=8, **TINY_DETR), tmp_path / "ort")
    assert "openvino_float_nodes" not in onnxruntime.manifest["quantization"]


def test_snn_int8_on_openvino_gets_every_row_of_a_batch_right(tmp_path, snn_checkpoint):
    result = export_model("snn", SnnOptions(checkpoint=str(snn_checkpoint), bits=8, target="openvino"),
                          tmp_path)
    assert result.name == "snn_digits_int8" and result.manifest["parity"]["passed"]
    assert set(result.manifest["quantization"]["openvino_float_nodes"].values()) == {OPENVINO_REDUCTION}
    assert result.manifest["quality"]["accuracy"] >= 0.94


@pytest.mark.slow
def test_dask_w8a8_on_openvino_is_judged_to_its_own_floor(tmp_path, dask_checkpoint):
    options = DaskOptions(checkpoint=str(dask_checkpoint), max_length=64, bits=8, calib_size=32,
                          lsq_epochs=0, target="openvino")
    result = export_model("dask", options, tmp_path)
    found = checks(result.manifest)["label_agreement"]
    assert result.name == "dask_w8a8" and found["passed"]
    assert found["tolerance"] == OPENVINO_QUANT_PARITY_FLOOR < QUANT_PARITY_FLOOR
    served_on_openvino(tmp_path, "dask_w8a8", bf16=False)


class TimeFoldedHead(torch.nn.Module):
    """A Linear over time folded into the batch, averaged over time: a spiking network's head."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(16, 10)

    def forward(self, x):
        batch, steps = x.shape[:2]
        return self.linear(x.flatten(0, 1)).reshape(batch, steps, -1).mean(1)


def test_openvino_computes_a_quantized_time_folded_head_wrongly_unless_it_stays_float(tmp_path):
    """The OpenVINO 2026.4 failure `openvino_float_nodes` works around, on a two-layer graph: a
    quantized Linear reshaped into a mean gives each row of a batch wrong values."""
    torch.manual_seed(0)
    x = torch.rand(8, 4, 16)
    torch.onnx.export(TimeFoldedHead().eval(), (x,), str(tmp_path / "fp32.onnx"), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                      opset_version=17, dynamo=False)
    feeds = [{"x": np.random.default_rng(i).random((8, 4, 16), np.float32)} for i in range(4)]
    kept = openvino_float_nodes(tmp_path / "fp32.onnx")
    assert list(kept.values()) == [OPENVINO_REDUCTION]
    feed = {"x": x.numpy()}
    for name, keep in (("all_int8.onnx", {}), ("for_openvino.onnx", kept)):
        static_qdq(tmp_path / "fp32.onnx", tmp_path / name, feeds, keep)
    gap = {name: np.abs(run_session(open_session(tmp_path / name, "onnxruntime"), feed)["y"]
                        - run_session(open_session(tmp_path / name, "openvino"), feed)["y"]).max()
           for name in ("all_int8.onnx", "for_openvino.onnx")}
    assert gap["for_openvino.onnx"] < 1e-5 < 0.1 < gap["all_int8.onnx"]


# -- BF16 (skipped on a CPU without it) ---------------------------------------------------------


def test_detr_bf16_on_openvino_is_the_fp32_file_judged_to_bf16_bars(tmp_path, bf16):
    result = export_model("detr", DetrOptions(arch="deformable", bits=16, target="openvino", **TINY_DETR),
                          tmp_path)
    manifest = result.manifest
    assert result.name == "deformable_bf16" and manifest["precision"] == "bf16"
    assert checks(manifest)["logits_cosine_min"]["tolerance"] == REDUCED["bf16"][0]
    assert 0.999 <= manifest["quality"]["logits_cosine_min"] < 1.0  # it really computed in BF16
    graph = onnx.load(str(result.folder / "model.onnx"), load_external_data=False).graph
    assert all(i.data_type != onnx.TensorProto.FLOAT16 for i in graph.initializer)
    served_on_openvino(tmp_path, result.name, bf16=True)
    assert verify_model(tmp_path, result.name, samples=6, iterations=1, batch_size=3).parity.passed


def test_sr_bf16_stays_within_its_grey_levels_and_psnr(tmp_path, bf16):
    result = export_model("sr", SROptions(bits=16, target="openvino"), tmp_path)
    found = checks(result.manifest)
    assert result.name == "sr_espcn_x2_bf16" and result.manifest["parity"]["passed"]
    assert (found["max_abs_diff"]["tolerance"], found["psnr_diff_db"]["tolerance"]) == (BF16_MAX_ABS_DIFF,
                                                                                        BF16_PSNR_DIFF)
    assert "psnr_bf16_db" in result.manifest["quality"]
    served_on_openvino(tmp_path, result.name, bf16=True)


def test_snn_bf16_keeps_the_digits_and_its_spike_rates(tmp_path, snn_checkpoint, bf16):
    result = export_model("snn", SnnOptions(checkpoint=str(snn_checkpoint), bits=16, target="openvino"),
                          tmp_path)
    assert result.name == "snn_digits_bf16" and result.manifest["parity"]["passed"]
    assert checks(result.manifest)["spike_rate_max_abs_diff"]["tolerance"] == BF16_SPIKE_RATE_ABS
    assert result.manifest["quality"]["accuracy"] >= 0.94
    served_on_openvino(tmp_path, result.name, bf16=True)


@pytest.mark.slow
def test_dask_bf16_keeps_the_fp32_labels(tmp_path, dask_checkpoint, bf16):
    options = DaskOptions(checkpoint=str(dask_checkpoint), max_length=64, bits=16, target="openvino")
    result = export_model("dask", options, tmp_path)
    found = checks(result.manifest)["label_agreement"]
    assert result.name == "dask_bf16" and found["tolerance"] == BF16_PARITY_FLOOR and found["passed"]
    assert 0 < result.manifest["parity"]["details"]["logits_max_abs_diff"] < 0.1  # computed in BF16
    served_on_openvino(tmp_path, "dask_bf16", bf16=True)


# -- tritonforge speed ----------------------------------------------------------------------------


def test_speed_tables_every_runtime_and_precision_checked_and_interleaved(tmp_path):
    out = tmp_path / "speed.json"
    result = CliRunner().invoke(app, ["speed", "sr", "--batch-size", "2", "--iterations", "2",
                                      "--json", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    rows = {row["variant"]: row for row in report["rows"]}
    assert list(rows) == ["pytorch eager fp32", "onnxruntime fp32", "openvino fp32", "openvino bf16",
                          "onnxruntime int8", "openvino int8"]
    ran = [row for row in rows.values() if "skipped" not in row]
    assert all("p50_ms" in row and "speedup" in row for row in ran)  # timed, not judged
    assert all(row["parity"]["passed"] for row in ran if row["runtime"] != "pytorch")
    assert ("skipped" in rows["openvino bf16"]) is not cpu_has_bf16()
    assert report["machine"]["cores"] >= 1 and report["request"] == "lr 2x3x72x72"
