"""The `detr` family on test-sized random detectors: DETR and Deformable DETR exported with
letterbox, normalisation and top-k in the graph, checked against PyTorch on real photographs."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from tritonforge.errors import TritonForgeError
from tritonforge.export.detr import DetrOptions
from tritonforge.export.detr.model import letterbox_to_original
from tritonforge.family import get_family
from tritonforge.modalities import Image, read_io
from tritonforge.pipeline.export import export_model
from tritonforge.pipeline.verify import verify_model
from tritonforge.runtime import ort_session
from tritonforge.serving.repository import ModelRepository

TINY = {"size": "tiny", "image_size": 128, "top_k": 20}  # as the `detr_repo` fixture exports


@pytest.mark.parametrize("name, arch", [("detr_fp32", "detr"), ("deformable_fp32", "deformable")])
def test_export_matches_pytorch_on_photographs_and_records_the_image_contract(detr_repo, name, arch):
    from tritonforge.serving.repository import ModelRepository

    manifest = ModelRepository(detr_repo).read_manifest(name)
    assert manifest["parity"]["passed"] and manifest["recipe"]["arch"] == arch
    checks = {c["metric"]: c["value"] for c in manifest["parity"]["details"]["checks"]}
    assert checks["logits_max_abs_diff"] <= 1e-4 and checks["matched_box_iou_min"] >= 0.99
    assert checks["label_agreement"] == 1.0
    io_ = read_io(manifest["io"])
    assert io_.preprocessing == Image(height=128, width=128, input="image", resize="letterbox", dtype="uint8",
                                      size_input="orig_size")
    assert [(o.name, o.kind, o.dtype) for o in io_.outputs[:3]] == [
        ("boxes", "detection_boxes", "float32"), ("scores", "detection_scores", "float32"),
        ("labels", "detection_labels", "int64")]
    assert "random" in manifest["source"]["weights"] and manifest["onnx"]["image_size"] == 128


def test_deformable_attention_exports_through_grid_sample(detr_repo):
    import onnx

    graph = onnx.load(str(detr_repo / "deformable_fp32" / "1" / "model.onnx")).graph
    assert sum(node.op_type == "GridSample" for node in graph.node) > 0


def test_verify_reruns_parity_on_every_photograph(detr_repo):
    report = verify_model(detr_repo, "deformable_fp32", samples=6, iterations=2, batch_size=3)
    assert report.parity.passed and report.shape == {"image_size": None}
    with pytest.raises(TritonForgeError, match="this export takes 128x128 images"):
        verify_model(detr_repo, "detr_fp32", samples=2, iterations=1, shape={"image_size": 256})


def test_boxes_come_back_in_the_photographs_own_pixels(detr_repo):
    """A box drawn on the original lands, after the client's letterbox and the graph's inverse
    mapping, where it was: the same geometry on both sides of the wire."""
    record = Image(height=128, width=128, input="image", resize="letterbox", dtype="uint8",
                   size_input="orig_size", fill=0)
    for width, height in ((640, 427), (300, 500), (128, 128)):
        canvas = PILImage.new("RGB", (width, height), (0, 0, 0))
        canvas.paste((255, 255, 255), (width // 4, height // 4, width // 2, height // 2))
        data = io.BytesIO()
        canvas.save(data, "PNG")
        arrays = record.encode([data.getvalue()], None, None)
        ys, xs = np.nonzero(arrays["image"][0, 0] > 127)
        letterboxed = torch.tensor([[[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]], dtype=torch.float32)
        mapped = letterbox_to_original(letterboxed, torch.from_numpy(arrays["orig_size"]), 128, 128)[0, 0]
        expected = torch.tensor([width // 4, height // 4, width // 2, height // 2], dtype=torch.float32)
        scale = max(width, height) / 128  # one letterboxed pixel, in original pixels
        assert torch.allclose(mapped, expected, atol=1.01 * scale), (width, height, mapped, expected)


def test_the_graph_takes_a_batch_of_photographs_of_different_sizes(detr_repo):
    family = get_family("detr")
    options = DetrOptions(arch="detr", **TINY)
    model = family.load(options)
    feed = family.sample_inputs(model, options, 3)  # china and flower 640x427, grace_hopper 512x600
    assert {tuple(size) for size in feed["orig_size"].tolist()} == {(427, 640), (600, 512)}
    session = ort_session(detr_repo / "detr_fp32" / "1" / "model.onnx")
    boxes, scores, labels = session.run(["boxes", "scores", "labels"], feed)
    assert boxes.shape == (3, 20, 4) and labels.dtype == np.int64
    assert (np.diff(scores, axis=1) <= 0).all()  # best first
    heights, widths = feed["orig_size"][:, 0], feed["orig_size"][:, 1]
    assert (boxes[..., 2] <= widths[:, None] + 1e-3).all()
    assert (boxes[..., 3] <= heights[:, None] + 1e-3).all()


def test_bad_options_and_a_model_of_another_architecture_are_refused(tmp_path):
    with pytest.raises(TritonForgeError, match="--arch 'yolo' is unknown: choose one of detr, deformable"):
        DetrOptions(arch="yolo")
    detector = get_family("detr").load(DetrOptions(arch="detr", **TINY)).detector
    detector.save_pretrained(str(tmp_path / "detr_dir"))
    with pytest.raises(TritonForgeError, match="holds a 'detr' model, not 'deformable_detr'"):
        get_family("detr").load(DetrOptions(arch="deformable", model=str(tmp_path / "detr_dir"), **TINY))
    with pytest.raises(TritonForgeError, match="no config.json"):
        get_family("detr").load(DetrOptions(model=str(tmp_path), **TINY))


def test_a_saved_detector_directory_exports_with_its_own_weights(tmp_path):
    family = get_family("detr")
    options = DetrOptions(arch="deformable", **TINY, seed=3)
    family.load(options).detector.save_pretrained(str(tmp_path / "mine"))
    result = export_model("detr", DetrOptions(arch="deformable", model=str(tmp_path / "mine"), **TINY),
                          tmp_path / "repo")
    assert result.manifest["parity"]["passed"] and result.manifest["source"]["weights"] == "from --model"


@pytest.mark.parametrize("arch", ["detr", "deformable"])
def test_int8_keeps_the_fragile_parts_in_float_and_stays_close_to_fp32(tmp_path, arch):
    import onnx

    result = export_model("detr", DetrOptions(arch=arch, bits=8, **TINY), tmp_path)
    assert result.name == f"{arch}_int8" and result.manifest["precision"] == "int8"
    parity = {c["metric"]: c["value"] for c in result.manifest["parity"]["details"]["checks"]}
    assert parity["logits_cosine_min"] >= 0.99 and parity["box_recall_at_iou_0.5"] >= 0.9
    record = result.manifest["quantization"]
    graph = onnx.load(str(result.folder / "model.onnx")).graph
    by_name = {node.name: node for node in graph.node}
    assert record["quantize_linear_nodes"] == sum(n.op_type == "QuantizeLinear" for n in graph.node) > 0
    assert set(record["float_op_types"]) == {"LayerNormalization", "Softmax", "Add"}
    kept = record["float_nodes"]["names"]
    assert any("bbox_embed" in name or "bbox_predictor" in name for name in kept)
    assert any("sampling_offsets" in name for name in kept) == (arch == "deformable")
    for name in kept:  # still a float MatMul, fed by no DequantizeLinear
        producers = {n.output[0]: n for n in graph.node if n.output}
        assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear"
                   for i in by_name[name].input)
    # quantized MatMuls read quantized inputs and give float outputs; Convs keep theirs quantized
    readers = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    quantized = [n for n in graph.node if n.op_type in ("MatMul", "Conv") and n.name not in kept]
    matmuls = [n for n in quantized if n.op_type == "MatMul"]
    assert matmuls and not [n.name for n in matmuls if "QuantizeLinear" in readers.get(n.output[0], [])]
    assert list(record["float_outputs"]) == ["MatMul"]
    assert any("QuantizeLinear" in readers.get(n.output[0], []) for n in quantized if n.op_type == "Conv")
    with pytest.raises(TritonForgeError, match="--bits 4 is not offered for detectors: choose 32, 16 or 8"):
        DetrOptions(bits=4)


@pytest.mark.parametrize("arch", ["detr", "mttrans"])
def test_fp16_keeps_float32_io_and_stays_close_to_fp32(tmp_path, arch):
    import onnx

    result = export_model("detr", DetrOptions(arch=arch, bits=16, **TINY), tmp_path)
    assert result.name == f"{arch}_fp16" and result.manifest["precision"] == "fp16"
    parity = {c["metric"]: c["value"] for c in result.manifest["parity"]["details"]["checks"]}
    assert parity["logits_cosine_min"] >= 0.999 and parity["box_recall_at_iou_0.5"] >= 0.95
    graph = onnx.load(str(result.folder / "model.onnx")).graph
    inputs = [i.type.tensor_type.elem_type for i in graph.input]
    assert inputs == [onnx.TensorProto.UINT8, onnx.TensorProto.INT64]
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    config = ModelRepository(tmp_path).read_config(result.name)
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator  # no --gpu asked


def test_quality_detr_tables_pytorch_fp32_and_int8_side_by_side(tmp_path):
    from typer.testing import CliRunner

    from tritonforge.cli import app
    from tritonforge.verify.recipe_table import QualityRow, speedups

    result = CliRunner().invoke(app, ["quality", "detr", "--archs", "detr,mttrans", "--size", "tiny",
                                      "--image-size", "128", "--iterations", "2",
                                      "--json", str(tmp_path / "q.json")])
    assert result.exit_code == 0, result.output
    listed = json.loads((tmp_path / "q.json").read_text())
    rows = {row["variant"]: row for row in listed}
    assert set(rows) == {f"{arch} {variant}" for arch in ("detr", "mttrans")
                         for variant in ("fp32 (PyTorch eager)", "fp32", "int8")}
    for arch in ("detr", "mttrans"):
        assert rows[f"{arch} fp32"]["logits_cosine_min"] > 0.99999
        assert rows[f"{arch} int8"]["logits_cosine_min"] >= 0.99
    assert all(row["latency_p50_ms"] > 0 for row in listed)
    # each architecture is timed against its own PyTorch model, not the first architecture's
    assert [row["group"] for row in listed] == ["detr"] * 3 + ["mttrans"] * 3
    ratios = speedups([QualityRow(r["variant"], r["runtime"], {}, r["latency_p50_ms"], group=r["group"])
                       for r in listed])
    mttrans_eager, mttrans_ort = rows["mttrans fp32 (PyTorch eager)"], rows["mttrans fp32"]
    assert ratios[0] == ratios[3] == 1.0
    assert ratios[4] == mttrans_eager["latency_p50_ms"] / mttrans_ort["latency_p50_ms"]


def test_mttrans_keeps_its_domain_tokens_in_the_exported_graph(tmp_path):
    """The extra encoder feature level and decoder query are in the graph: the tokens' values
    are initializers, and every encoder layer samples L + 1 levels."""
    import onnx
    from onnx import numpy_helper

    result = export_model("detr", DetrOptions(arch="mttrans", **TINY), tmp_path)
    assert result.name == "mttrans_fp32" and result.manifest["parity"]["passed"]
    assert result.manifest["source"]["domain_tokens"] == ["domain_enc", "domain_dec"]
    detector = get_family("detr").load(DetrOptions(arch="mttrans", **TINY)).detector
    config = detector.config
    graph = onnx.load(str(result.folder / "model.onnx")).graph
    initializers = [numpy_helper.to_array(i) for i in graph.initializer]

    def in_graph(vector: np.ndarray) -> bool:
        return any(a.size == vector.size and np.array_equal(a.ravel(), vector) for a in initializers)

    for token in (detector.model.domain_enc.weight, detector.model.domain_dec.weight):
        weight = token.detach().numpy()[0]  # [position | content]: the tracer may keep the halves apart
        assert in_graph(weight) or all(in_graph(half) for half in np.split(weight, 2))
    offsets = config.encoder_attention_heads * (config.num_feature_levels + 1) * config.encoder_n_points * 2
    assert any(a.shape == (config.d_model, offsets) for a in initializers)  # sampling_offsets, L + 1 levels


def test_an_original_mttrans_checkpoint_exports_with_every_key_accounted_for(tmp_path):
    from test_detr_checkpoints import TRAINING_ONLY_EXTRAS, to_original

    detector = get_family("detr").load(DetrOptions(arch="mttrans", **TINY, seed=5)).detector
    checkpoint = {"model": {**to_original(detector.state_dict()), **TRAINING_ONLY_EXTRAS},
                  "args": {"nheads": detector.config.encoder_attention_heads}}
    torch.save(checkpoint, tmp_path / "mttrans.pth")
    result = export_model("detr", DetrOptions(arch="mttrans", model=str(tmp_path / "mttrans.pth"), **TINY),
                          tmp_path / "repo")
    assert result.manifest["parity"]["passed"] and result.manifest["source"]["weights"] == "from --model"
    report = result.manifest["source"]["checkpoint"]
    assert report[0].endswith("0 unknown") and "dropped" in report[0]
    with pytest.raises(TritonForgeError, match="has MTTrans domain tokens: pass --arch mttrans"):
        get_family("detr").load(DetrOptions(arch="deformable", model=str(tmp_path / "mttrans.pth"), **TINY))
