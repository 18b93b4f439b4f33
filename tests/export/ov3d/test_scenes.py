"""Procedural rooms (exact boxes, a sensor's occlusion) and the numpy sampler the graph relies on."""

import numpy as np
import pytest

from tritonforge.errors import TritonForgeError
from tritonforge.export.ov3d.sampling import ball_query, farthest_points
from tritonforge.export.ov3d.scenes import CLASSES, MIN_POINTS, NOISE, SEEN, UNSEEN, _visible, in_box, room


def test_every_object_lies_in_its_box_and_is_seen_enough():
    for index in range(6):
        scene = room("train", index)
        assert len(scene.boxes) == len(scene.labels) >= 1
        assert set(np.unique(scene.instance)) <= {-1, *range(len(scene.boxes))}
        for k, box in enumerate(scene.boxes):
            own = scene.points[scene.instance == k]
            assert len(own) >= MIN_POINTS
            assert in_box(own, box, 5 * NOISE).all()
            assert np.all(box[3:6] > 0) and box[2] > 0  # standing on the floor at z = 0
        assert scene.tags == {CLASSES[i] for i in scene.labels}


def test_rooms_are_deterministic_and_splits_disjoint():
    a, b = room("train", 3), room("train", 3)
    np.testing.assert_array_equal(a.points, b.points)
    assert not np.array_equal(room("test", 3).boxes, a.boxes)
    assert set(SEEN).isdisjoint(UNSEEN)
    with pytest.raises(TritonForgeError, match="choose one of train, test"):
        room("val", 0)


def test_the_sensor_does_not_see_behind_an_object():
    grid = np.stack(np.meshgrid(np.linspace(-1, 1, 41), np.linspace(-1, 1, 41)), -1).reshape(-1, 2)
    wall = np.column_stack([np.full(len(grid), 5.0), grid])  # a wall at x = 5 facing the eye at 0
    board = np.column_stack([np.full(len(grid), 2.5), grid / 4])  # dense: every direction it covers
    seen = _visible(np.concatenate([wall, board]), np.zeros(3))
    shadowed = np.all(np.abs(grid) < 0.4, axis=1)  # well inside its shadow (±0.5 m on the wall)
    assert seen[len(wall):].all()
    assert not seen[:len(wall)][shadowed].any()
    assert seen[:len(wall)][np.any(np.abs(grid) > 0.75, axis=1)].all()  # clear of it by a cell or more


def test_farthest_points_picks_the_farthest_each_time():
    line = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0], [10, 0, 0]], np.float32)
    np.testing.assert_array_equal(farthest_points(line, 3), [0, 4, 3])
    with pytest.raises(TritonForgeError, match="send at least 6 points"):
        farthest_points(line, 6)


def test_ball_query_keeps_the_first_neighbours_in_index_order():
    points = np.random.default_rng(1).uniform(0, 2, (500, 3)).astype(np.float32)
    centres = farthest_points(points, 20)
    groups = ball_query(points, points[centres], 0.3, 8)
    for row, centre in enumerate(centres):
        near = np.flatnonzero(np.sum((points - points[centre]) ** 2, axis=1) < 0.09)[:8]
        np.testing.assert_array_equal(groups[row, :len(near)], near)
        assert np.all(groups[row, len(near):] == near[0])
