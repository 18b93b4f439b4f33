"""The detector's graph, its loss, suppression and the AP that judges it."""

import math

import numpy as np
import pytest
import torch

from tritonforge.errors import TritonForgeError
from tritonforge.export.ov3d.data import prepare, room_set
from tritonforge.export.ov3d.metrics import average_precision, detection_ap
from tritonforge.export.ov3d.model import Detector, DetectorConfig
from tritonforge.export.ov3d.postprocess import suppress
from tritonforge.export.ov3d.scenes import in_box, room
from tritonforge.export.ov3d.train import augment

TINY = DetectorConfig(num_points=512, centres=64, queries=16, width=32, heads=2, encoder_layers=1,
                      decoder_layers=2, embedding=24)


def inputs(rooms, index):
    return tuple(torch.from_numpy(getattr(rooms, name)[index])
                 for name in ("points", "centres", "groups", "queries"))


def test_the_vocabulary_is_data_permuting_it_permutes_the_labels():
    torch.manual_seed(0)
    detector = Detector(TINY).eval()
    rooms = room_set("test", 2, TINY)
    vocabulary = torch.randn(5, TINY.embedding)
    order = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        boxes, scores, labels, embeddings = detector(*inputs(rooms, [0, 1]), vocabulary)
        boxes2, scores2, labels2, _ = detector(*inputs(rooms, [0, 1]), vocabulary[order])
        _b, _s, labels3, _e = detector(*inputs(rooms, [0, 1]), vocabulary[:2])
    torch.testing.assert_close(boxes, boxes2)
    torch.testing.assert_close(scores, scores2)
    assert torch.equal(order[labels2], labels)  # the same class, at its new place
    assert labels3.max() <= 1 and boxes.shape == (2, TINY.queries, 7)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(2, TINY.queries))
    assert (boxes[..., 6] >= 0).all() and (boxes[..., 6] < math.pi).all()


def test_prepare_refuses_too_few_points_and_indices_survive_turning():
    scene = room("test", 1)
    with pytest.raises(TritonForgeError, match="send at least 512 points"):
        prepare(scene.points[:100], TINY)
    ready = prepare(scene.points, TINY)
    turned, _boxes = augment(torch.from_numpy(ready.points)[None], [torch.from_numpy(scene.boxes)],
                             np.random.default_rng(3))
    again = prepare(turned[0].numpy(), TINY)
    np.testing.assert_array_equal(again.centres, ready.centres)
    np.testing.assert_array_equal(again.queries, ready.queries)


def test_augment_keeps_every_object_inside_its_turned_box():
    scene = room("train", 2)
    points = torch.from_numpy(scene.points)[None]
    turned, (boxes,) = augment(points, [torch.from_numpy(scene.boxes)], np.random.default_rng(5))
    for k, box in enumerate(boxes.numpy()):
        assert in_box(turned[0].numpy()[scene.instance == k], box, 0.03).all()


def test_suppression_is_per_label_and_keeps_the_best():
    boxes = np.array([[0, 0, 0.5, 1, 1, 1, 0], [0.1, 0, 0.5, 1, 1, 1, 0.1], [0.1, 0, 0.5, 1, 1, 1, 0],
                      [3, 3, 0.5, 1, 1, 1, 0]], np.float32)
    kept = suppress(boxes, np.array([0.6, 0.9, 0.8, 0.01]), np.array([0, 0, 1, 0]))
    np.testing.assert_array_equal(kept, [1, 2])  # 0 overlaps the better 1; 3 scores too low


def test_average_precision_counts_misses_and_duplicates():
    truth = {0: np.array([[0, 0, 0.5, 1, 1, 1, 0]], np.float32)}
    hit, miss = truth[0][0], np.array([5, 5, 0.5, 1, 1, 1, 0], np.float32)
    assert average_precision([(0.9, 0, hit)], truth, 0.25) == pytest.approx(1.0)
    assert average_precision([(0.9, 0, miss), (0.8, 0, hit)], truth, 0.25) == pytest.approx(0.5)
    assert average_precision([(0.9, 0, hit), (0.8, 0, hit)], truth, 0.25) == pytest.approx(1.0)
    assert average_precision([(0.9, 0, miss)], truth, 0.25) == 0.0
    ap = detection_ap([(truth[0], np.array([0.7]), np.array([1]))], [(truth[0], np.array([1]))], classes=3)
    assert np.isnan(ap[0.25][0]) and ap[0.25][1] == pytest.approx(1.0)


def test_inside_assignment_gives_every_box_a_query():
    from tritonforge.export.ov3d.train import Targets, assign_inside

    boxes = torch.tensor([[0.0, 0.0, 0.5, 2.0, 0.4, 1.0, math.pi / 2], [5.0, 5.0, 0.2, 0.2, 0.2, 0.4, 0.0]])
    queries = torch.tensor([[[0.0, 0.9, 0.5], [0.9, 0.0, 0.5], [4.0, 4.0, 0.2], [9.0, 9.0, 0.0]]])
    (rows, cols), = assign_inside(queries, Targets([boxes], [torch.tensor([0, 1])]))
    # Query 0 lies along the turned box's length; query 1 beside it, outside; the small box has
    # no query inside and takes its nearest (query 2); query 3 is background.
    assert dict(zip(rows.tolist(), cols.tolist(), strict=True)) == {0: 0, 2: 1}


def test_pseudo_boxes_find_most_unseen_objects_from_geometry_alone():
    from tritonforge.export.ov3d.pseudo import fit_box, pseudo_boxes
    from tritonforge.export.ov3d.scenes import CLASSES, SEEN
    from tritonforge.outputs.metrics import box3d_iou

    found = total = 0
    for index in range(8):
        scene = room("train", index)
        seen = np.array([CLASSES[label] in SEEN for label in scene.labels])
        boxes = pseudo_boxes(scene.points, scene.boxes[seen])  # the unseen boxes are never given
        unseen = scene.boxes[~seen]
        total += len(unseen)
        if len(unseen) and len(boxes):
            found += int((box3d_iou(unseen, boxes).max(1) >= 0.25).sum())
    assert total >= 10 and found / total >= 0.5  # 0.68 over 60 rooms
    # A box fitted to a turned board's surface recovers its turn and size.
    board = np.random.default_rng(0).uniform([-1, -0.2, 0], [1, 0.2, 0.5], (2000, 3))
    c, s = np.cos(0.5), np.sin(0.5)
    fitted = fit_box(board @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]]))
    np.testing.assert_allclose(fitted[[3, 4, 5, 6]], [2.0, 0.4, 0.5, 0.5], atol=0.03)
