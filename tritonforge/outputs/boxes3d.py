"""The built-in kind of 3-D boxes (point-cloud detectors): centre, size and yaw per box."""

from __future__ import annotations

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.outputs.kind import OutputKind, Part, QueryContext, Summary, Table, Tolerances
from tritonforge.outputs.metrics import box3d_iou, matched_ious
from tritonforge.outputs.registry import register_kind
from tritonforge.spec import BOXES_3D, Check, Parity


def boxes_of(values: np.ndarray, label: str) -> np.ndarray:
    if values.ndim != 3 or values.shape[2] != 7:
        raise TritonForgeError(f"3-D boxes {label!r} are {values.dtype} {list(values.shape)}, not [N, K, 7] "
                               "(centre x, y, z, size l, w, h, yaw): declare them as a tensor")
    return values


@register_kind
class Boxes3D(OutputKind):
    """[batch, k, 7] boxes: centre x, y, z, size l, w, h (l along the heading), yaw about the
    vertical z axis. Boxes without volume are padding, not shown. Judged by the 3-D IoU of
    each reference box with the candidate box matched to it."""

    name = BOXES_3D

    def summarize(self, part: Part, context: QueryContext) -> Summary:
        found = [[{"centre": [float(v) for v in box[:3]], "size": [float(v) for v in box[3:6]],
                   "yaw": float(box[6])} for box in sample if np.all(box[3:6] > 0)]
                 for sample in boxes_of(part.value, part.label)]
        rows = []
        for label, boxes in zip(context.row_names(len(found)), found, strict=True):
            if not boxes:
                rows.append((label, "(none)", "", ""))
            for position, box in enumerate(boxes):
                rows.append((label if position == 0 else "", ", ".join(f"{v:.2f}" for v in box["centre"]),
                             ", ".join(f"{v:.2f}" for v in box["size"]), f"{box['yaw']:.3f}"))
        return Summary("boxes_3d", part.label, found, (Table(
            f"{part.label}: 3-D boxes", ("input", "centre (x, y, z)", "size (l, w, h)", "yaw (rad)"),
            tuple(rows)),))

    def agreement(self, reference: Part, candidate: Part, tolerances: Tolerances) -> Parity:
        want, got = boxes_of(reference.value, reference.label), boxes_of(candidate.value, candidate.label)
        matched = np.concatenate([matched_ious(box3d_iou(a, b)) for a, b in zip(want, got, strict=True)]
                                 or [np.ones(0)])
        return Parity((Check("matched_iou_3d_min", float(matched.min()) if matched.size else 1.0,
                             tolerances.min_iou, True),),
                      {"matched_iou_3d_mean": float(matched.mean()) if matched.size else 1.0})
