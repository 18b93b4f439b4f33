"""Pseudo boxes for objects no seen-class box explains, found from the cloud's geometry.

OV-3DETIC localises novel objects with the point cloud and names them with the image side.
Here the geometry part: drop the floor (points near the lowest height) and the walls (points
near the cloud's outer extent in x or y), drop what the room's seen-class boxes hold, cluster
the rest by distance (DBSCAN), merge clusters stacked above one another (a thin lamp pole's
sparse points split a lamp into base, pole and shade), and fit each cluster of a plausible size
an upright box turned to its points' principal direction. The boxes carry no class: training
learns which of the room's class tags (its image-level label) each one is.
"""

from __future__ import annotations

import numpy as np

from tritonforge.export.ov3d.scenes import in_box

FLOOR = 0.06  # metres above the lowest point: floor
WALL = 0.1  # metres inside the cloud's outer extent in x or y: wall
GROW = 0.05  # metres a seen box is grown by before its points are dropped
EPS, MIN_SAMPLES, MIN_CLUSTER = 0.12, 8, 30
STACK = 0.02  # metres: footprints this close count as stacked
SIZE_RANGE = (0.1, 2.5)  # metres: the longest side of a plausible object


def leftover(points: np.ndarray, seen_boxes: np.ndarray) -> np.ndarray:
    """Indices of the points that are neither floor, wall nor inside a seen box."""
    low, high = points.min(0), points.max(0)
    keep = points[:, 2] > low[2] + FLOOR
    keep &= np.all((points[:, :2] > low[:2] + WALL) & (points[:, :2] < high[:2] - WALL), axis=1)
    for box in seen_boxes:
        keep &= ~in_box(points, box, GROW)
    return np.flatnonzero(keep)


def fit_box(cluster: np.ndarray) -> np.ndarray:
    """An upright box [7] around `cluster` [n, 3], its length along the points' main direction
    in the ground plane (yaw in [0, pi))."""
    xy = cluster[:, :2] - cluster[:, :2].mean(0)
    _values, vectors = np.linalg.eigh(np.cov(xy.T) + 1e-9 * np.eye(2))
    heading = vectors[:, 1]
    yaw = float(np.remainder(np.arctan2(heading[1], heading[0]), np.pi))
    c, s = np.cos(yaw), np.sin(yaw)
    along, across = xy @ np.array([c, s]), xy @ np.array([-s, c])
    low = np.array([along.min(), across.min(), cluster[:, 2].min()])
    high = np.array([along.max(), across.max(), cluster[:, 2].max()])
    middle = (low + high) / 2
    centre_xy = cluster[:, :2].mean(0) + middle[0] * np.array([c, s]) + middle[1] * np.array([-s, c])
    return np.array([*centre_xy, middle[2], *(high - low), yaw], np.float32)


def stacked(points: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """`clusters` with those whose footprints (x-y extents, grown by STACK) overlap merged:
    furniture stands on the floor, so parts above one another (a lamp's base, pole and shade,
    which a thin pole's sparse points split apart) are one object."""
    labels = [label for label in np.unique(clusters) if label >= 0]
    extents = {label: (points[clusters == label, :2].min(0) - STACK,
                       points[clusters == label, :2].max(0) + STACK) for label in labels}
    parent = {label: label for label in labels}

    def root(label):
        while parent[label] != label:
            label = parent[label]
        return label

    for position, one in enumerate(labels):
        for other in labels[position + 1:]:
            (low_a, high_a), (low_b, high_b) = extents[one], extents[other]
            if np.all(low_a <= high_b) and np.all(low_b <= high_a):
                parent[root(other)] = root(one)
    merged = clusters.copy()
    for label in labels:
        merged[clusters == label] = root(label)
    return merged


def pseudo_boxes(points: np.ndarray, seen_boxes: np.ndarray) -> np.ndarray:
    """[P, 7] boxes around the clusters of points no seen box explains."""
    from sklearn.cluster import DBSCAN

    rest = points[leftover(points, seen_boxes)]
    if len(rest) < MIN_CLUSTER:
        return np.zeros((0, 7), np.float32)
    clusters = stacked(rest, DBSCAN(eps=EPS, min_samples=MIN_SAMPLES).fit_predict(rest))
    boxes = []
    for label in np.unique(clusters[clusters >= 0]):
        member = rest[clusters == label]
        if len(member) < MIN_CLUSTER:
            continue
        box = fit_box(member)
        if SIZE_RANGE[0] <= box[3:6].max() <= SIZE_RANGE[1]:
            boxes.append(box)
    return np.stack(boxes) if boxes else np.zeros((0, 7), np.float32)
