"""Detection average precision in 3-D (VOC-style, all points) at IoU thresholds of turned boxes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tritonforge.outputs.metrics import box3d_iou

THRESHOLDS = (0.25, 0.5)


def average_precision(found: Sequence[tuple[float, int, np.ndarray]], truth: dict[int, np.ndarray],
                      threshold: float) -> float:
    """AP of one class: `found` (score, room, box [7]) against `truth` {room: boxes [K, 7]}.
    Each true box is claimed by the best-scoring detection above `threshold` IoU with it; later
    ones count as false positives. NaN when the class has no true box."""
    total = sum(len(boxes) for boxes in truth.values())
    if not total:
        return float("nan")
    claimed = {room: np.zeros(len(boxes), bool) for room, boxes in truth.items()}
    hits = []
    for _score, room, box in sorted(found, key=lambda item: -item[0]):
        boxes = truth.get(room)
        if boxes is None or not len(boxes):
            hits.append(False)
            continue
        overlap = box3d_iou(box[None], boxes)[0]
        best = int(np.argmax(overlap))
        hit = overlap[best] >= threshold and not claimed[room][best]
        if hit:
            claimed[room][best] = True
        hits.append(bool(hit))
    if not hits:
        return 0.0
    true_positives = np.cumsum(hits)
    recall = true_positives / total
    precision = true_positives / np.arange(1, len(hits) + 1)
    # The area under the precision envelope (precision made non-increasing), over all recall steps.
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * envelope))


def detection_ap(predicted: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                 truth: Sequence[tuple[np.ndarray, np.ndarray]], classes: int,
                 thresholds: Sequence[float] = THRESHOLDS) -> dict[float, np.ndarray]:
    """{threshold: [classes] AP}: `predicted` per room (boxes [K, 7], scores [K], labels [K]),
    `truth` per room (boxes, labels), labels in range(classes)."""
    result = {}
    for threshold in thresholds:
        per_class = np.full(classes, np.nan)
        for label in range(classes):
            found = [(float(s), room, b) for room, (boxes, scores, labels) in enumerate(predicted)
                     for b, s, lab in zip(boxes, scores, labels, strict=True) if lab == label]
            wanted = {room: boxes[labels == label] for room, (boxes, labels) in enumerate(truth)}
            per_class[label] = average_precision(found, wanted, threshold)
        result[threshold] = per_class
    return result
