"""Output kinds as registered objects: how each kind is shown by `query`, written by
`query --save` and judged against a reference answer (`soak`), on real arrays."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest
from PIL import Image as PILImage

from tritonforge.cli.serving import print_query
from tritonforge.console import console
from tritonforge.errors import TritonForgeError
from tritonforge.modalities.image import photographs
from tritonforge.outputs import (
    OutputKind,
    Part,
    QueryContext,
    Summary,
    Tolerances,
    compare_outputs,
    known_kinds,
    output_kind,
    register_kind,
    save_outputs,
    summaries,
    summary_json,
)
from tritonforge.outputs import registry as kind_registry
from tritonforge.outputs.metrics import PSNR_CEILING_DB, box3d_iou
from tritonforge.serving.client import ModelInfo, TensorInfo, query_context
from tritonforge.serving.soak import STATUS_OK, STATUS_WRONG, Outcome, SoakReport, lowest_cosine
from tritonforge.spec import TensorSpec

DETECTOR = {"boxes": "detection_boxes", "scores": "detection_scores", "labels": "detection_labels"}


@pytest.fixture
def registry(monkeypatch):
    """The kinds registered during a test are forgotten after it."""
    monkeypatch.setattr(kind_registry, "_KINDS", dict(kind_registry._KINDS))


def detections() -> dict[str, np.ndarray]:
    """Two images with three well-separated detections each, best first."""
    boxes = np.array([[[10, 10, 50, 60], [100, 20, 160, 90], [200, 200, 240, 260]],
                      [[0, 0, 30, 30], [40, 40, 90, 80], [120, 10, 180, 70]]], dtype=np.float32)
    scores = np.array([[0.9, 0.6, 0.2], [0.8, 0.7, 0.3]], dtype=np.float32)
    labels = np.array([[1, 0, 2], [2, 2, 0]], dtype=np.int64)
    return {"boxes": boxes, "scores": scores, "labels": labels}


def printed(info: ModelInfo, outputs: dict[str, np.ndarray], context: QueryContext) -> str:
    shown = summaries(info.output_kinds, outputs, context)
    with console.capture() as capture:
        print_query(info, shown, summary_json(shown, outputs))
    return capture.get()


def model(outputs: dict[str, tuple[str, str]], labels: list[str] | None = None) -> ModelInfo:
    """A served model's info: outputs {name: (Triton datatype, kind)}."""
    parameters = {"output_kinds": json.dumps({name: kind for name, (_type, kind) in outputs.items()})}
    if labels:
        parameters["labels"] = json.dumps(labels)
    return ModelInfo("m", ("1",), "onnxruntime_onnx", (TensorInfo("x", "FP32", (-1, 3)),),
                     tuple(TensorInfo(name, datatype, (-1,)) for name, (datatype, _kind) in outputs.items()),
                     8, parameters)


# -- the registry --------------------------------------------------------------------------


def test_every_kind_name_a_manifest_may_carry_is_registered():
    assert {"embedding", "class_scores", "class_probabilities", "detection_boxes", "detection_scores",
            "detection_labels", "image", "tensor", "depth_map", "boxes_3d", "vocabulary_labels", "flag",
            "flag_score"} <= set(known_kinds())
    assert output_kind("depth_map").name == "depth_map"


def test_an_unknown_kind_is_reported_when_looked_up_with_what_to_install():
    spec = TensorSpec("heat", "float32", (4,), "heatmap")  # a declaration only needs a kind-like name
    with pytest.raises(TritonForgeError) as refused:
        summaries({"heat": spec.kind}, {"heat": np.zeros((1, 4), np.float32)}, QueryContext())
    message = str(refused.value)
    assert message.startswith("output 'heat' has kind 'heatmap', which nothing installed registers")
    assert "depth_map" in message and "install the package of the family that exported the model" in message


def test_a_kind_name_must_be_a_lowercase_identifier():
    with pytest.raises(TritonForgeError, match="kind 'Depth Map': a kind is a lowercase identifier"):
        TensorSpec("depth", "float32", (1, 4, 4), "Depth Map")


def test_a_users_kind_is_added_and_a_later_registration_overrides_a_built_in(registry):
    @register_kind
    class Peak(OutputKind):
        name = "heatmap"

        def summarize(self, part, context):
            row, column = np.unravel_index(part.value[0].argmax(), part.value[0].shape)
            return Summary("peaks", part.label, [int(row), int(column)],
                           lines=(f"peak at ({row}, {column})",))

    @register_kind
    class Unsaved(OutputKind):
        name = "image"

    heat = np.zeros((1, 3, 5), np.float32)
    heat[0, 2, 4] = 1.0
    (shown,) = summaries({"heat": "heatmap"}, {"heat": heat}, QueryContext())
    assert shown.lines == ("peak at (2, 4)",)
    assert summary_json([shown], {"heat": heat})["peaks"] == {"heat": [2, 4]}
    assert isinstance(output_kind("image"), Unsaved)
    assert summaries({"sr": "image"}, {"sr": np.zeros((1, 3, 2, 2), np.uint8)}, QueryContext()) == []


# -- the kinds query has always printed ----------------------------------------------------


def test_query_prints_embeddings_class_labels_and_tensor_statistics():
    info = model({"logits": ("FP32", "class_scores"), "sentence_embedding": ("FP32", "embedding"),
                  "tokens": ("INT64", "tensor")}, labels=["negative", "positive"])
    outputs = {"logits": np.array([[0.0, np.log(3.0)], [2.0, 2.0]], np.float32),
               "sentence_embedding": np.array([[3.0, 4.0], [4.0, 3.0]], np.float32),
               "tokens": np.array([[101, 7], [101, 9]], np.int64)}
    context = query_context(info, rows=["good", "meh"])
    shown = summaries(info.output_kinds, outputs, context)
    assert [table.title for item in shown for table in item.tables] == [
        "logits: most probable labels", "sentence_embedding: L2 norm and cosine similarity"]
    assert shown[0].tables[0].rows == (("good", "positive", "0.7500"), ("", "negative", "0.2500"),
                                       ("meh", "negative", "0.5000"), ("", "positive", "0.5000"))
    assert shown[1].tables[0].rows[0] == ("good", "5.0000", "1.0000", "0.9600")
    text = printed(info, outputs, context)
    assert "│ good  │ 5.0000 │ 1.0000 │ 0.9600 │" in text
    assert text.rstrip().endswith("tokens: int64 [2, 2], min 7, max 101, mean 54.5")  # lines after tables
    summary = summary_json(shown, outputs)
    assert summary["labels"]["logits"][0] == [("positive", pytest.approx(0.75)),
                                              ("negative", pytest.approx(0.25))]
    assert summary["embeddings"]["sentence_embedding"]["norms"] == [5.0, 5.0]
    assert summary["tensors"]["tokens"] == {"min": 7, "max": 101, "mean": 54.5}


def test_probabilities_are_shown_instead_of_the_logits_they_come_from():
    kinds = {"logits": "class_scores", "probabilities": "class_probabilities"}
    outputs = {"logits": np.array([[0.0, 1.0]], np.float32),
               "probabilities": np.array([[0.2, 0.8]], np.float32)}
    summary = summary_json(summaries(kinds, outputs, QueryContext(kinds=kinds)), outputs)
    assert list(summary["labels"]) == ["probabilities"]
    assert summary["labels"]["probabilities"][0][0] == ("class 1", pytest.approx(0.8))


def test_detections_are_read_together_and_printed_above_the_lowest_score():
    info = model({"boxes": ("FP32", "detection_boxes"), "scores": ("FP32", "detection_scores"),
                  "labels": ("INT64", "detection_labels")}, labels=["cat", "dog", "bird"])
    text = printed(info, detections(), query_context(info, min_score=0.5, rows=["a.jpg", "b.jpg"]))
    assert "detections scoring at least 0.5" in text
    found = summary_json(summaries(info.output_kinds, detections(), query_context(info)), detections())
    assert found["detections"][0] == [
        {"label": "dog", "label_id": 1, "score": pytest.approx(0.9), "box": [10.0, 10.0, 50.0, 60.0]},
        {"label": "cat", "label_id": 0, "score": pytest.approx(0.6), "box": [100.0, 20.0, 160.0, 90.0]}]
    assert [item["label"] for item in found["detections"][1]] == ["bird", "bird"]


def test_save_draws_detections_on_the_photograph_sent_and_says_why_not_without_one(tmp_path):
    photo = photographs()[0]
    outputs = {name: values[:1] for name, values in detections().items()}
    context = QueryContext(model="detr", kinds=DETECTOR, raw=[photo.read_bytes()], min_score=0.5)
    (written,) = save_outputs(DETECTOR, outputs, tmp_path / "drawn.png", context)
    assert written.path == tmp_path / "drawn.png" and written.message == f"detections drawn on {written.path}"
    with PILImage.open(photo) as original, PILImage.open(written.path) as drawn:
        assert drawn.size == original.size
        assert drawn.convert("RGB").getpixel((30, 10)) == (0xE6, 0x19, 0x4B)  # the first box's top edge
    with pytest.raises(TritonForgeError, match="model 'detr' has no image output or other output --save "
                                               "can write \\(detections: detections are drawn on the photo"):
        save_outputs(DETECTOR, outputs, tmp_path / "x.png", QueryContext(model="detr"))


# -- depth maps ----------------------------------------------------------------------------


def test_depth_summary_is_the_smallest_median_and_largest_valid_depth():
    depth = np.array([[[[1.0, 2.0, 4.0], [8.0, np.nan, 0.0]]]], np.float32)  # [1, 1, 2, 3]
    (shown,) = summaries({"depth": "depth_map"}, {"depth": depth}, QueryContext(rows=["left.npy"]))
    assert shown.data == [{"min": 1.0, "median": 3.0, "max": 8.0, "invalid_pixels": 2}]
    assert shown.tables[0].rows == (("left.npy", "1", "3", "8", "2"),)


def test_depth_save_writes_a_colour_png_with_the_colormaps_ends_at_min_and_max_and_the_raw_npy(tmp_path):
    depth = np.linspace(0.5, 20.0, 48, dtype=np.float32).reshape(1, 6, 8)  # [N, H, W]
    depth[0, 5, 7] = np.inf
    depth[0, 0, 1] = -1.0
    written = save_outputs({"depth": "depth_map"}, {"depth": depth}, tmp_path / "depth.png", QueryContext())
    assert [w.path.name for w in written] == ["depth.png", "depth.npy"]
    assert written[0].message == f"depth map written to {tmp_path / 'depth.png'}"
    colours = np.asarray(PILImage.open(tmp_path / "depth.png"))
    magma = matplotlib.colormaps["magma"]
    assert colours.shape == (6, 8, 3) and colours.dtype == np.uint8
    assert tuple(colours[0, 0]) == magma(0.0, bytes=True)[:3]  # 0.5, the smallest depth
    assert tuple(colours[5, 6]) == magma(1.0, bytes=True)[:3]  # the largest finite depth
    assert tuple(colours[5, 7]) == (0, 0, 0) and tuple(colours[0, 1]) == (0, 0, 0)  # no depth: black
    np.testing.assert_array_equal(np.load(tmp_path / "depth.npy"), depth[0])


def test_depth_agreement_is_the_mean_relative_error_over_the_reference_depths():
    reference = np.array([[[1.0, 2.0], [4.0, np.nan]]], np.float32)
    candidate = np.array([[[1.1, 2.0], [4.0, 3.0]]], np.float32)
    judged = compare_outputs({"depth": "depth_map"}, {"depth": reference}, {"depth": candidate})["depth"]
    assert judged.primary.metric == "depth_abs_rel_max"
    assert judged.primary.value == pytest.approx(0.1 / 3, rel=1e-5) and not judged.passed
    assert judged.details["pixels_whose_validity_differs"] == 1
    assert compare_outputs({"depth": "depth_map"}, {"depth": reference}, {"depth": reference})["depth"].passed


# -- 3-D boxes -----------------------------------------------------------------------------


def test_3d_iou_of_boxes_computed_by_hand():
    cube = np.array([[0, 0, 0, 2, 2, 2, 0]], np.float64)
    others = np.array([[1, 0, 0, 2, 2, 2, 0],  # half of it along x: 4 / (8 + 8 - 4)
                       [0, 0, 1, 2, 2, 2, 0],  # half of it in height: 4 / 12
                       [0, 0, 0, 2, 2, 2, np.pi / 4],  # turned 45 degrees: an octagon of 8*sqrt(2) - 8
                       [0, 0, 0, 2, 2, 2, np.pi / 2],  # a square turned a quarter is the same square
                       [3, 3, 0, 2, 2, 2, 0.3],  # apart
                       [0, 0, 0, 4, 1, 1, 0]])  # 1 x 2 x 1 inside: 2 / (8 + 4 - 2)
    octagon = 8 * np.sqrt(2) - 8
    np.testing.assert_allclose(box3d_iou(cube, others)[0],
                               [1 / 3, 1 / 3, 2 * octagon / (16 - 2 * octagon), 1.0, 0.0, 0.2], atol=1e-12)


def test_3d_boxes_are_listed_and_judged_by_matched_iou():
    boxes = np.array([[[0, 0, 0, 2, 2, 2, 0], [10, 0, 0, 4, 2, 1.5, 1.0], [0, 0, 0, 0, 0, 0, 0]]],
                     np.float32)  # the last box is padding
    (shown,) = summaries({"boxes": "boxes_3d"}, {"boxes": boxes}, QueryContext())
    assert [box["centre"] for box in shown.data[0]] == [[0, 0, 0], [10, 0, 0]]
    assert shown.tables[0].rows[1] == ("", "10.00, 0.00, 0.00", "4.00, 2.00, 1.50", "1.000")
    turned = boxes.copy()
    turned[0, 0, 6] = np.pi / 4
    swapped = boxes[:, [1, 0, 2]]  # the same boxes in another order
    kinds = {"boxes": "boxes_3d"}
    same = compare_outputs(kinds, {"boxes": boxes}, {"boxes": swapped})["boxes"]
    assert same.primary.value == pytest.approx(1.0) and same.passed
    judged = compare_outputs(kinds, {"boxes": boxes}, {"boxes": turned})["boxes"]
    assert judged.primary.value == pytest.approx(1 / np.sqrt(2), rel=1e-6) and not judged.passed


# -- vocabulary labels and flags -----------------------------------------------------------


def test_vocabulary_labels_are_printed_as_the_names_sent_with_the_request():
    info = model({"classes": ("INT64", "vocabulary_labels")})
    request = {"points": np.zeros((2, 16, 3), np.float32),
               "vocabulary": np.array([b"chair", b"table", b"lamp"], dtype=object)}
    classes = np.array([[2, 0, -1], [1, -1, -1]], np.int64)  # -1: padding
    text = printed(info, {"classes": classes}, query_context(info, inputs=request, rows=["room", "hall"]))
    assert "│ room  │ lamp, chair │" in text and "│ hall  │ table       │" in text
    (shown,) = summaries(info.output_kinds, {"classes": classes}, query_context(info, inputs=request))
    assert shown.data == [["lamp", "chair"], ["table"]]
    with pytest.raises(TritonForgeError, match="send the class names as an input of strings"):
        summaries(info.output_kinds, {"classes": classes},
                  query_context(info, inputs={"points": request["points"]}))
    other = compare_outputs(info.output_kinds, {"classes": classes}, {"classes": classes[:, [1, 0, 2]]})
    assert other["classes"].primary.value == pytest.approx(2 / 6)


def test_flags_print_the_verdict_with_its_score_and_agree_when_equal():
    kinds = {"flagged": "flag", "screen_score": "flag_score"}
    answer = {"flagged": np.array([True, False]), "screen_score": np.array([0.93, 0.12], np.float32)}
    (shown,) = summaries(kinds, answer, QueryContext(rows=["a.png", "b.png"]))
    assert shown.tables[0].rows == (("a.png", "flagged (score 0.93)"), ("b.png", "clear (score 0.12)"))
    flipped = {"flagged": np.array([True, True]), "screen_score": np.array([0.93, 0.52], np.float32)}
    judged = compare_outputs(kinds, answer, flipped)["flags"]
    assert judged.primary.metric == "flag_agreement" and judged.primary.value == 0.5 and not judged.passed
    assert judged.details["score_max_abs_diff"] == pytest.approx(0.4)


# -- agreement -----------------------------------------------------------------------------


def test_detections_agreement_drops_when_a_box_moves_or_a_label_changes():
    reference = detections()
    same = compare_outputs(DETECTOR, reference, {k: v[:, ::-1].copy() for k, v in reference.items()})
    assert same["detections"].passed and same["detections"].primary.value == pytest.approx(1.0)
    moved = {k: v.copy() for k, v in reference.items()}
    moved["boxes"][1, 0] += [15, 0, 15, 0]  # 30 px wide, moved by half of it: IoU 15*30 / (2*900 - 450)
    judged = compare_outputs(DETECTOR, reference, moved)["detections"]
    assert judged.primary.metric == "matched_iou_min" and judged.primary.value == pytest.approx(1 / 3)
    assert not judged.passed and judged.details["kind"] == "detections"
    relabelled = {k: v.copy() for k, v in reference.items()}
    relabelled["labels"][0, 0] = 0
    judged = compare_outputs(DETECTOR, reference, relabelled)["detections"]
    assert {c.metric: c.value for c in judged.checks}["label_agreement"] == pytest.approx(5 / 6)


def test_images_agree_by_psnr():
    pixels = np.asarray(PILImage.open(photographs()[0]).convert("RGB"))[:64, :96].transpose(2, 0, 1)[None]
    pixels = np.clip(pixels, 0, 254).astype(np.uint8)
    kinds = {"sr": "image"}
    assert compare_outputs(kinds, {"sr": pixels}, {"sr": pixels})["sr"].primary.value == PSNR_CEILING_DB
    brighter = compare_outputs(kinds, {"sr": pixels}, {"sr": pixels + 1})["sr"]  # every value off by one
    assert brighter.primary.value == pytest.approx(20 * np.log10(255)) and brighter.passed
    assert not compare_outputs(kinds, {"sr": pixels}, {"sr": pixels // 2})["sr"].passed


def test_class_scores_agree_by_top1_and_cosine_and_integer_tensors_by_equality():
    logits = np.array([[0.1, 2.0, 0.3], [1.0, 0.2, 0.9]], np.float32)
    flipped = logits[:, [0, 1, 2]].copy()
    flipped[1] = [0.9, 0.2, 1.0]
    judged = compare_outputs({"logits": "class_scores"}, {"logits": logits}, {"logits": flipped})["logits"]
    assert {c.metric: c.value for c in judged.checks}["top1_agreement"] == 0.5 and not judged.passed
    ids = np.array([[1, 2], [3, 4]], np.int64)
    tensor = compare_outputs({}, {"ids": ids}, {"ids": ids + [[0, 0], [0, 1]]})["ids"]
    assert tensor.primary.metric == "equal_samples" and tensor.primary.value == 0.5
    wrong_shape = compare_outputs({}, {"ids": ids}, {"ids": ids[:1]})["ids"]
    assert wrong_shape.primary.metric == "shapes_match" and not wrong_shape.passed


def test_soak_report_keeps_min_cosine_and_adds_each_outputs_worst_agreement():
    embedding = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    kinds = {"sentence_embedding": "embedding", **DETECTOR}
    right = compare_outputs(kinds, {"sentence_embedding": embedding, **detections()},
                            {"sentence_embedding": embedding, **detections()}, Tolerances(min_cosine=0.99))
    tilted = compare_outputs(kinds, {"sentence_embedding": embedding, **detections()},
                             {"sentence_embedding": embedding + [[0.0, 0.5], [0.0, 0.0]], **detections()},
                             Tolerances(min_cosine=0.99))
    outcomes = [Outcome(0.0, 1.0, "m", STATUS_OK, "1", lowest_cosine(right), agreements=right),
                Outcome(0.1, 1.0, "m", STATUS_WRONG, "1", lowest_cosine(tilted), agreements=tilted)]
    report = SoakReport("127.0.0.1:8001", "m", 2, 1, 0.99, 1.0, outcomes)
    row = report.rows()[-1]
    assert row["min_cosine"] == round(2 / np.sqrt(5), 6)
    assert row["agreement"]["sentence_embedding"] == {"kind": "embedding", "metrics": {"cosine_min": {
        "worst": round(2 / np.sqrt(5), 6), "tolerance": 0.99, "higher_is_better": True, "failed": 1}}}
    assert row["agreement"]["detections"]["metrics"]["matched_iou_min"]["failed"] == 0
    problem = json.loads(json.dumps(report.to_json()))["problems"][0]
    assert problem["agreements"]["sentence_embedding"]["passed"] is False
    assert outcomes[1].describe().startswith("sentence_embedding: cosine_min 0.894427 >= 0.99 FAILED")


def test_a_part_reads_a_lone_output_by_its_value():
    part = Part.lone("depth", np.ones((2, 3)))
    assert part.names == {"value": "depth"} and part.batch == 2 and part.value.shape == (2, 3)
