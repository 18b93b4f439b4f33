"""Parity metrics shared by the families (each family picks its own and its tolerances)."""

from __future__ import annotations

import numpy as np


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows (last axis is the vector)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.sum(a * b, axis=-1) / np.maximum(norms, 1e-12)


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


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every xyxy box in `a` [N, 4] with every one in `b` [M, 4]: [N, M]."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
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
