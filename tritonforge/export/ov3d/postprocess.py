"""Class-aware 3-D non-maximum suppression, numpy only (the python step beside the graph runs
this file alone, as the client does).

As in 3DETR, suppression compares the boxes' axis-aligned hulls (a turned box's extent in x
and y), which is cheap and errs towards keeping boxes; evaluation uses the exact turned IoU.
"""

from __future__ import annotations

import numpy as np

NMS_IOU = 0.25
MIN_SCORE = 0.05


def hulls(boxes: np.ndarray) -> np.ndarray:
    """[K, 7] boxes -> [K, 6] axis-aligned min x, y, z and max x, y, z."""
    c, s = np.abs(np.cos(boxes[:, 6])), np.abs(np.sin(boxes[:, 6]))
    half = np.stack([(c * boxes[:, 3] + s * boxes[:, 4]) / 2, (s * boxes[:, 3] + c * boxes[:, 4]) / 2,
                     boxes[:, 5] / 2], axis=1)
    return np.concatenate([boxes[:, :3] - half, boxes[:, :3] + half], axis=1)


def hull_iou(one: np.ndarray, others: np.ndarray) -> np.ndarray:
    overlap = np.clip(np.minimum(one[3:], others[:, 3:]) - np.maximum(one[:3], others[:, :3]), 0, None)
    inter = overlap.prod(axis=1)
    volume = lambda h: np.prod(h[..., 3:] - h[..., :3], axis=-1)  # noqa: E731
    return inter / np.maximum(volume(one) + volume(others) - inter, 1e-9)


def suppress(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float = NMS_IOU,
             min_score: float = MIN_SCORE) -> np.ndarray:
    """Indices of the boxes kept, best first: per label, a box is dropped when a better one of the
    same label overlaps it by more than `iou`; boxes under `min_score` never count."""
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] >= min_score]
    box_hulls = hulls(boxes)
    kept: list[int] = []
    for index in order:
        rivals = [k for k in kept if labels[k] == labels[index]]
        if rivals and hull_iou(box_hulls[index], box_hulls[rivals]).max() > iou:
            continue
        kept.append(int(index))
    return np.asarray(kept, np.int64)


def suppress_each(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray
                  ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`suppress` on every sample of a batch ([S, Q, 7], [S, Q], [S, Q]): per sample the kept
    (boxes, scores, labels), best first."""
    found = []
    for b, s, lab in zip(boxes, scores, labels, strict=True):
        keep = suppress(b, s, lab)
        found.append((b[keep], s[keep], lab[keep]))
    return found
