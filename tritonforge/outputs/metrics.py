"""How far two answers are: the metrics the output kinds judge by, and the families' parity too
(each family picks its own and its tolerances)."""

from __future__ import annotations

import numpy as np


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows (last axis is the vector)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.sum(a * b, axis=-1) / np.maximum(norms, 1e-12)


def per_sample(values: np.ndarray) -> np.ndarray:
    """[batch, everything else flattened] (a scalar: one sample of one value)."""
    return values.reshape(len(values) if values.ndim else 1, -1)


def sample_cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Each sample's cosine, the sample flattened to one vector: 1.0 for two all-zero samples
    (equal, though they have no direction), 0.0 where either holds a non-finite value."""
    a, b = per_sample(reference), per_sample(candidate)
    cosines = row_cosines(a, b)
    both_zero = ~np.any(a, axis=1) & ~np.any(b, axis=1)
    return np.nan_to_num(np.where(both_zero, 1.0, cosines), nan=0.0, posinf=0.0, neginf=0.0)


def equal_samples(reference: np.ndarray, candidate: np.ndarray) -> float:
    """The share of samples whose values are all equal."""
    a, b = per_sample(reference), per_sample(candidate)
    return float(np.mean(np.all(a == b, axis=1))) if len(a) else 1.0


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(-1) == b.argmax(-1)))


def nearest_neighbour_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """How often each row's nearest other row (by cosine) is the same under both embeddings:
    whether a quantized encoder still retrieves what the FP one retrieves."""

    def nearest(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        similarity = x @ x.T
        np.fill_diagonal(similarity, -np.inf)
        return similarity.argmax(axis=1)

    return float(np.mean(nearest(reference) == nearest(candidate)))


PSNR_CEILING_DB = 100.0  # equal images: a finite value, above any bar a real difference meets


def psnr_db(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Each sample's PSNR in dB against the reference, the peak being the dtype's largest value
    for integer pixels and 1.0 for float ones; at most PSNR_CEILING_DB."""
    peak = float(np.iinfo(reference.dtype).max) if np.issubdtype(reference.dtype, np.integer) else 1.0
    error = per_sample(candidate).astype(np.float64) - per_sample(reference).astype(np.float64)
    mse = np.mean(error ** 2, axis=1)
    with np.errstate(divide="ignore"):
        psnr = 10.0 * np.log10(peak ** 2 / mse)
    return np.nan_to_num(np.minimum(psnr, PSNR_CEILING_DB), nan=0.0)


def abs_rel(reference: np.ndarray, candidate: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each sample's mean |candidate - reference| / reference over the pixels `valid` marks
    (the depth-estimation metric; a sample with no valid pixel scores 0)."""
    a, b, mask = per_sample(reference), per_sample(candidate), per_sample(valid)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(mask, np.abs(b.astype(np.float64) - a) / np.where(mask, a, 1.0), 0.0)
    return relative.sum(axis=1) / np.maximum(mask.sum(axis=1), 1)


# -- boxes ---------------------------------------------------------------------------------


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every xyxy box in `a` [N, 4] with every one in `b` [M, 4]: [N, M]."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    return _overlap_ratio(inter, area_a[:, None] + area_b[None, :] - inter)


def _overlap_ratio(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """inter / union; two empty boxes (no union) count as the same box."""
    return np.where(union > 0, inter / np.maximum(union, 1e-12), (inter == 0) * 1.0)


def match_detections(ref_boxes: np.ndarray, ref_scores: np.ndarray, ref_labels: np.ndarray,
                     boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Pair one image's detections with the reference's (Hungarian matching on IoU, same label
    and close score preferred), since near-tied scores may come out of top-k in another order.
    Returns the matched pairs' IoU, score difference and label agreement, and the reference
    indices of the pairs."""
    from scipy.optimize import linear_sum_assignment

    iou = box_iou(ref_boxes, boxes)
    cost = -iou + (ref_labels[:, None] != labels[None, :]) + np.abs(ref_scores[:, None] - scores[None, :])
    rows, cols = linear_sum_assignment(cost)
    return {"iou": iou[rows, cols], "score_diff": np.abs(ref_scores[rows] - scores[cols]),
            "same_label": ref_labels[rows] == labels[cols], "reference": rows}


def bev_corners(boxes: np.ndarray) -> np.ndarray:
    """The ground-plane rectangles of 3-D boxes [N, 7] (x, y, z, l, w, h, yaw): corners [N, 4, 2],
    counter-clockwise; l runs along the heading, yaw turns it from +x towards +y."""
    half_l, half_w = boxes[:, 3] / 2, boxes[:, 4] / 2
    local = np.stack([np.stack([half_l, half_w], -1), np.stack([-half_l, half_w], -1),
                      np.stack([-half_l, -half_w], -1), np.stack([half_l, -half_w], -1)], axis=1)
    cos, sin = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    x = local[..., 0] * cos - local[..., 1] * sin + boxes[:, None, 0]
    y = local[..., 0] * sin + local[..., 1] * cos + boxes[:, None, 1]
    return np.stack([x, y], axis=-1)


def convex_intersection_area(subject: np.ndarray, clip: np.ndarray) -> float:
    """Area shared by two convex counter-clockwise polygons [P, 2] (Sutherland-Hodgman: `subject`
    cut by each edge of `clip` in turn, then the shoelace formula)."""
    polygon = list(subject)
    for start, end in zip(clip, np.roll(clip, -1, axis=0), strict=True):
        edge = end - start
        side = [edge[0] * (p[1] - start[1]) - edge[1] * (p[0] - start[0]) for p in polygon]  # >= 0: inside
        kept = []
        for index, point in enumerate(polygon):
            previous, before = polygon[index - 1], side[index - 1]
            if (side[index] >= 0) != (before >= 0):  # the edge crosses the line: keep the crossing
                kept.append(previous + before / (before - side[index]) * (point - previous))
            if side[index] >= 0:
                kept.append(point)
        polygon = kept
        if len(polygon) < 3:
            return 0.0
    points = np.asarray(polygon)
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def box3d_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3-D IoU of every box in `a` [N, 7] with every one in `b` [M, 7] (centre x, y, z, size
    l, w, h, yaw about the vertical z axis): the rotated rectangles' overlap in the ground
    plane times the overlap of their heights, over the union of the volumes: [N, M]."""
    a, b = a.astype(np.float64).reshape(-1, 7), b.astype(np.float64).reshape(-1, 7)
    corners_a, corners_b = bev_corners(a), bev_corners(b)
    low = np.maximum(a[:, None, 2] - a[:, None, 5] / 2, b[None, :, 2] - b[None, :, 5] / 2)
    high = np.minimum(a[:, None, 2] + a[:, None, 5] / 2, b[None, :, 2] + b[None, :, 5] / 2)
    height = np.clip(high - low, 0, None)
    # Rectangles whose circumscribed circles are apart cannot meet: only the others are clipped.
    radius_a, radius_b = np.hypot(a[:, 3], a[:, 4]) / 2, np.hypot(b[:, 3], b[:, 4]) / 2
    apart = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
    ground = np.zeros((len(a), len(b)))
    solid_a, solid_b = (a[:, 3] > 0) & (a[:, 4] > 0), (b[:, 3] > 0) & (b[:, 4] > 0)
    near = ((apart < radius_a[:, None] + radius_b[None, :]) & (height > 0)
            & solid_a[:, None] & solid_b[None, :])
    for i, j in zip(*np.nonzero(near), strict=True):
        ground[i, j] = convex_intersection_area(corners_a[i], corners_b[j])
    inter = ground * height
    volume_a = np.prod(np.clip(a[:, 3:6], 0, None), axis=1)
    volume_b = np.prod(np.clip(b[:, 3:6], 0, None), axis=1)
    return _overlap_ratio(inter, volume_a[:, None] + volume_b[None, :] - inter)


def matched_ious(iou: np.ndarray) -> np.ndarray:
    """The IoU of each pair when the boxes [N, M] are paired one to one to make the total IoU
    largest (Hungarian matching); unpaired boxes (N != M) count 0."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-iou)
    return np.concatenate([iou[rows, cols], np.zeros(abs(iou.shape[0] - iou.shape[1]))])
