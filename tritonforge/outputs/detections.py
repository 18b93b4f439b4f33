"""Built-in detection kinds: boxes, scores and labels, read together as one group."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tritonforge.outputs.kind import (
    OutputKind,
    Part,
    QueryContext,
    SavePaths,
    Summary,
    Table,
    Tolerances,
    Written,
)
from tritonforge.outputs.metrics import match_detections
from tritonforge.outputs.registry import register_kind
from tritonforge.spec import DETECTION_BOXES, DETECTION_LABELS, DETECTION_SCORES, MEAN, Check, Parity

BOXES, SCORES, LABELS = "boxes", "scores", "labels"


def found_detections(part: Part, labels: Sequence[str] | None, min_score: float
                     ) -> list[list[dict[str, Any]]]:
    """Per image: the detections scoring at least `min_score`, best first."""
    boxes, scores, ids = part.arrays[BOXES], part.arrays[SCORES], part.arrays.get(LABELS)
    rows = []
    for image in range(len(scores)):
        found = []
        for index in np.argsort(-scores[image]):
            if scores[image][index] < min_score:
                break
            label = int(ids[image][index]) if ids is not None else None
            found.append({"label": labels[label] if labels and label is not None and label < len(labels)
                          else label, "label_id": label, "score": float(scores[image][index]),
                          "box": [float(v) for v in boxes[image][index]]})
        rows.append(found)
    return rows


def draw_detections(image: bytes, found: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """The photograph with each detection's box and label drawn on it, as a PNG."""
    from PIL import Image, ImageDraw, ImageOps

    with Image.open(io.BytesIO(image)) as opened:
        canvas = ImageOps.exif_transpose(opened).convert("RGB")  # boxes are in upright pixels
    draw = ImageDraw.Draw(canvas)
    for index, item in enumerate(found):
        colour = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4")[index % 6]
        draw.rectangle(item["box"], outline=colour, width=max(1, min(canvas.size) // 200))
        x, y = item["box"][0], max(0.0, item["box"][1] - 12)
        draw.text((x + 2, y), f"{item['label']} {item['score']:.2f}", fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, "PNG")
    return path


class Detections(OutputKind):
    """[batch, k, 4] boxes (x1, y1, x2, y2 in input-image pixels), [batch, k] scores and
    [batch, k] integer labels: a table of the boxes scoring at least `--min-score`; `--save`
    draws them on the photographs sent; judged by the IoU of matched boxes and their labels."""

    group = "detections"

    def summarize(self, part: Part, context: QueryContext) -> Summary | None:
        if BOXES not in part.arrays or SCORES not in part.arrays:
            return None
        found = found_detections(part, context.labels, context.min_score)
        rows = []
        for label, detections in zip(context.row_names(len(found)), found, strict=True):
            if not detections:
                rows.append((label, "(none)", "", ""))
            for position, item in enumerate(detections):
                rows.append((label if position == 0 else "", str(item["label"]), f"{item['score']:.3f}",
                             ", ".join(f"{v:.1f}" for v in item["box"])))
        return Summary("detections", None, found, (Table(
            f"detections scoring at least {context.min_score}", ("input", "label", "score",
                                                                 "box (x1, y1, x2, y2)"), tuple(rows)),))

    def cannot_save(self, part: Part, context: QueryContext) -> str | None:
        if BOXES not in part.arrays or SCORES not in part.arrays:
            return "detections are drawn from their boxes and scores, and the model returns only " \
                   f"{', '.join(part.names.values())}"
        if not context.raw:
            return "detections are drawn on the photographs sent with --image, and this request sent none"
        return None

    def save(self, part: Part, paths: SavePaths, context: QueryContext) -> list[Written]:
        found = found_detections(part, context.labels, context.min_score)
        drawn = [draw_detections(image, detections, paths.for_sample(part.label, index))
                 for index, (image, detections) in enumerate(zip(context.raw, found, strict=False))]
        return [Written(path, f"detections drawn on {path}") for path in drawn]

    def agreement(self, reference: Part, candidate: Part, tolerances: Tolerances) -> Parity:
        """Each image's boxes matched to the reference's (near-tied scores may leave a top-k in
        another order): the lowest matched IoU and the share of matched labels that agree. A
        pair at the cut, its reference score within `score_tie` of the image's lowest, that
        misses the IoU bar is counted as a swap, not as a disagreement."""
        if BOXES not in reference.arrays or SCORES not in reference.arrays:
            return super().agreement(reference, candidate, tolerances)
        ious, same, score_diffs, swaps = [], [], [], 0
        for image in range(reference.batch):
            ref_scores = reference.arrays[SCORES][image]
            match = match_detections(*self._image(reference, image), *self._image(candidate, image))
            at_cut = ((ref_scores[match["reference"]] - ref_scores.min() <= tolerances.score_tie)
                      & (match["iou"] < tolerances.min_iou))
            swaps += int(at_cut.sum())
            ious.append(match["iou"][~at_cut])
            same.append(match["same_label"][~at_cut])
            score_diffs.append(match["score_diff"])
        iou, agree, diff = np.concatenate(ious), np.concatenate(same), np.concatenate(score_diffs)
        return Parity((Check("matched_iou_min", float(iou.min()) if iou.size else 1.0, tolerances.min_iou,
                             True),
                       Check("label_agreement", float(agree.mean()) if agree.size else 1.0, 1.0, True, MEAN)),
                      {"score_max_abs_diff": float(diff.max()) if diff.size else 0.0,
                       "swaps_at_the_cut": swaps})

    @staticmethod
    def _image(part: Part, image: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One image's boxes, scores and labels (all zero when the model returns no labels)."""
        scores = part.arrays[SCORES][image].astype(np.float64)
        labels = part.arrays.get(LABELS)
        return (part.arrays[BOXES][image], scores,
                labels[image] if labels is not None else np.zeros(len(scores), dtype=np.int64))


@register_kind
class DetectionBoxes(Detections):
    name = DETECTION_BOXES
    role = BOXES


@register_kind
class DetectionScores(Detections):
    name = DETECTION_SCORES
    role = SCORES


@register_kind
class DetectionLabels(Detections):
    name = DETECTION_LABELS
    role = LABELS
