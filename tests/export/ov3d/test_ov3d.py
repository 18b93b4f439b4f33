"""The ov3d family: a (briefly trained) open-vocabulary detector exported and checked against
PyTorch with vocabularies of any size through ONNX Runtime and OpenVINO; INT8 with its heads in
float; the Triton config that takes whole requests; point files and class names as the
modality's raw inputs; the family's commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.errors import TritonForgeError
from tritonforge.export.ov3d import Ov3dOptions
from tritonforge.export.ov3d.modality import CLASSES, POINTS, CloudItem, npy_bytes
from tritonforge.export.ov3d.points import read_points
from tritonforge.export.ov3d.sampling import prepare
from tritonforge.export.ov3d.scenes import room
from tritonforge.export.ov3d.text import embed_names
from tritonforge.family import get_family
from tritonforge.serving.repository import ModelRepository
from tritonforge.spec import BOXES_3D, VOCABULARY_LABELS

runner = CliRunner()
VOCABULARIES = (("lamp",), ("chair", "table", "stool"), ("chair", "table", "sofa", "bed", "bookshelf",
                                                         "cabinet", "lamp", "trash can", "plant", "stool"))


def loaded(checkpoint):
    family = get_family("ov3d")
    options = Ov3dOptions(checkpoint=str(checkpoint), eval_rooms=4)
    model = family.load(options)
    return family, options, model, family.io(model, options)


def assert_same_detections(reference, graph, classes):
    np.testing.assert_allclose(graph["scores"], reference["scores"], atol=1e-4)
    np.testing.assert_allclose(graph["boxes_3d"], reference["boxes_3d"], atol=1e-3)
    np.testing.assert_array_equal(graph["labels"], reference["labels"])
    assert graph["labels"].min() >= 0 and graph["labels"].max() < classes


def test_the_export_matches_pytorch_with_any_vocabulary_size(ov3d_repo, ov3d_checkpoint):
    from tritonforge.runtime import ort_session, run_session

    saved = ModelRepository(ov3d_repo).read_manifest("ov3d")
    assert saved["parity"]["passed"] and saved["io"]["request_inputs"] == ["class_embeddings"]
    kinds = {o["name"]: o.get("kind") for o in saved["io"]["outputs"]}
    assert kinds["boxes_3d"] == BOXES_3D and kinds["labels"] == VOCABULARY_LABELS
    family, options, model, io = loaded(ov3d_checkpoint)
    session = ort_session(ov3d_repo / "ov3d" / "1" / "model.onnx")
    clouds = [CloudItem(npy_bytes(room("test", i).points), ()) for i in range(3)]
    for names in VOCABULARIES:  # one graph, three vocabularies: the classes are request data
        feed = io.preprocessing.encode([CloudItem(c.data, names) for c in clouds], io, None)
        assert feed["class_embeddings"].shape == (len(names), 384) and feed["points"].shape == (3, 512, 3)
        reference = family.reference_outputs(model, feed, io)
        assert_same_detections(reference, run_session(session, feed), len(names))


def test_openvino_runs_the_same_graph(ov3d_repo, ov3d_checkpoint):
    import openvino as ov

    family, _options, model, io = loaded(ov3d_checkpoint)
    compiled = ov.Core().compile_model(str(ov3d_repo / "ov3d" / "1" / "model.onnx"), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    for names in VOCABULARIES[:2]:
        feed = io.preprocessing.encode([CloudItem(npy_bytes(room("test", 5).points), names)], io, None)
        result = compiled(feed)
        graph = {name: result[compiled.output(name)] for name in io.output_names}
        assert_same_detections(family.reference_outputs(model, feed, io), graph, len(names))


def test_the_triton_config_takes_whole_requests(ov3d_repo):
    """The vocabulary belongs to the request: no batcher (it would merge requests with different
    names), every tensor's full shape declared."""
    config = (ov3d_repo / "ov3d" / "config.pbtxt").read_text()
    assert "max_batch_size" not in config and "dynamic_batching" not in config
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    parsed = text_format.Parse(config, mc.ModelConfig())
    dims = {t.name: list(t.dims) for t in (*parsed.input, *parsed.output)}
    assert dims["points"] == [-1, -1, 3] and dims["class_embeddings"] == [-1, 384]  # any cloud, any names
    assert dims["groups"] == [-1, 64, 32] and dims["boxes_3d"] == [-1, 16, 7] and dims["labels"] == [-1, 16]
    warmup = {name: list(i.dims) for name, i in parsed.model_warmup[0].inputs.items()}
    assert warmup["points"][0] == 1 and warmup["class_embeddings"][1] == 384


def test_int8_quantizes_encoder_and_decoder_and_keeps_the_heads_float(tmp_path, ov3d_checkpoint):
    import onnx

    from tritonforge.pipeline.export import export_model

    options = Ov3dOptions(checkpoint=str(ov3d_checkpoint), bits=8, eval_rooms=4, calibration_rooms=8)
    export_model("ov3d", options, tmp_path)
    saved = ModelRepository(tmp_path).read_manifest("ov3d_int8")
    assert saved["parity"]["passed"] and [g["metric"] for g in saved["gates"]] == ["seen_map25_drop"]
    graph = onnx.load(str(tmp_path / "ov3d_int8" / "1" / "model.onnx")).graph
    quantized = {node.input[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    assert quantized and saved["quantization"]["quantize_linear_nodes"] > 0
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            reads_int8 = any(name in dequantized for name in node.input)
            in_heads = node.name.startswith(("/centre_head", "/size_head", "/angle_head", "/embedding_head",
                                             "/position"))
            assert reads_int8 == (not in_heads and node.name != "/MatMul"), node.name


def test_point_files_and_names_become_the_inputs(tmp_path, ov3d_checkpoint):
    result = runner.invoke(app, ["ov3d", "rooms", "--count", "2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    described = json.loads((tmp_path / "room_0001.json").read_text())
    assert described["objects"] and {"class", "seen", "box"} <= set(described["objects"][0])
    points = read_points((tmp_path / "room_0001.ply").read_bytes())
    np.testing.assert_allclose(points, room("test", 1).points, atol=1e-6)
    _family, _options, _model, io = loaded(ov3d_checkpoint)
    modality = io.preprocessing
    given = {POINTS: [str(tmp_path / "room_0000.ply"), str(tmp_path / "room_0001.ply")],
             CLASSES: ["chair, table", "lamp"]}
    raw = modality.read_inputs(given)
    assert [item.vocabulary for item in raw] == [("chair", "table", "lamp")] * 2
    feed = modality.encode(raw, io, None)
    ready = prepare(points, modality.sampling(), 0)
    np.testing.assert_array_equal(feed["groups"][1], ready.groups)
    np.testing.assert_array_equal(feed["class_embeddings"], embed_names(["chair", "table", "lamp"]))
    request = modality.request(raw)
    assert request[CLASSES].shape == (2, 3) and request[POINTS].shape == (2, 1)
    more = modality.encode(raw[:1], io, None, {"num_points": 1024})  # --num-points: any number of points
    assert more["points"].shape == (1, 1024, 3) and more["groups"].shape == (1, 64, 32)
    with pytest.raises(TritonForgeError, match="below the detector's 64 centres"):
        modality.encode(raw[:1], io, None, {"num_points": 32})


@pytest.mark.parametrize(("given", "message"), [
    ({POINTS: ["missing.ply"], CLASSES: ["chair"]}, "does not exist"),
    ({POINTS: ["x.ply"]}, "takes points"),
    ({POINTS: ["x.ply"], CLASSES: ["chair,,lamp"]}, "class name 1 is empty"),
])
def test_bad_requests_say_what_to_send(given, message, ov3d_checkpoint):
    _family, _options, _model, io = loaded(ov3d_checkpoint)
    with pytest.raises(TritonForgeError, match=message):
        io.preprocessing.read_inputs(given)
    mixed = [CloudItem(b"", ("chair",)), CloudItem(b"", ("lamp",))]
    with pytest.raises(TritonForgeError, match="different vocabularies"):
        io.preprocessing.encode(mixed, io, None)


def test_eval_reports_seen_and_unseen_map_with_the_vocabulary_given(tmp_path, ov3d_checkpoint):
    result = runner.invoke(app, ["ov3d", "eval", str(ov3d_checkpoint), "--vocab", "chair,table,lamp",
                                 "--rooms", "4", "--json", str(tmp_path / "ap.json")], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "seen mAP@0.25" in result.output and "AP@0.25 per class" in result.output
    saved = json.loads((tmp_path / "ap.json").read_text())["ov3d"]
    assert list(saved["per_class"]) == ["chair", "table", "lamp"]
    assert 0 <= saved["seen"]["0.25"] <= 1
    result = runner.invoke(app, ["ov3d", "eval", str(ov3d_checkpoint), "--vocab", "piano"])
    assert result.exit_code == 2 and "cannot evaluate 'piano'" in result.output
    # Another name for a room class is scored against that class's boxes.
    result = runner.invoke(app, ["ov3d", "eval", str(ov3d_checkpoint), "--vocab", "chair,couch=sofa",
                                 "--rooms", "4", "--json", str(tmp_path / "alias.json")])
    assert result.exit_code == 0, result.output
    assert list(json.loads((tmp_path / "alias.json").read_text())["ov3d"]["per_class"]) == ["chair", "couch"]
    result = runner.invoke(app, ["ov3d", "eval", str(ov3d_checkpoint), "--vocab", "sofa,couch=sofa"])
    assert result.exit_code == 2 and "names sofa more than once" in result.output
    result = runner.invoke(app, ["export", "ov3d", "--checkpoint", str(tmp_path / "ap.json")])
    assert result.exit_code == 2 and "not a PyTorch checkpoint" in result.output


def test_the_study_trains_every_row_once_and_reuses_them(tmp_path):
    command = ["ov3d", "study", "--seeds", "0", "--rooms", "4", "--epochs", "1", "--eval-rooms", "2",
               "--work", str(tmp_path / "work"), "--json", str(tmp_path / "study.json")]
    result = runner.invoke(app, command, terminal_width=200)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "study.json").read_text())
    assert list(saved) == ["seen-only", "open, no contrast", "open, plain InfoNCE", "open, debiased contrast"]
    assert sorted(p.name for p in (tmp_path / "work").glob("*.pt")) == [
        "debiased_seed0.pt", "open_seed0.pt", "plain_seed0.pt", "seen_seed0.pt"]
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "work").glob("*.pt")}
    again = runner.invoke(app, command, terminal_width=200)
    assert again.exit_code == 0 and "every class named; mean ± std over seeds" in again.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing trained twice
    assert json.loads((tmp_path / "study.json").read_text()) == saved
