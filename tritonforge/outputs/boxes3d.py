"""The built-in kind of 3-D boxes (point-cloud detectors): centre, size and yaw per box."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from tritonforge.errors import TritonForgeError
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

    def cannot_save(self, part: Part, context: QueryContext) -> str | None:
        return None

    def save(self, part: Part, paths: SavePaths, context: QueryContext) -> list[Written]:
        """A top-down PNG per sample: each box's footprint (a line from its centre marks the
        heading), numbered as in the printed table, over the cloud when it was sent as .npy."""
        clouds = sent_clouds(context, part.batch)
        written = []
        for index, (boxes, cloud) in enumerate(zip(boxes_of(part.value, part.label), clouds, strict=True)):
            path = paths.for_sample(part.label, index)
            written.append(Written(top_down(boxes[np.all(boxes[:, 3:6] > 0, axis=1)], cloud, path),
                                   f"top-down view of the 3-D boxes written to {path}"))
        return written

    def agreement(self, reference: Part, candidate: Part, tolerances: Tolerances) -> Parity:
        want, got = boxes_of(reference.value, reference.label), boxes_of(candidate.value, candidate.label)
        matched = np.concatenate([matched_ious(box3d_iou(a, b)) for a, b in zip(want, got, strict=True)]
                                 or [np.ones(0)])
        return Parity((Check("matched_iou_3d_min", float(matched.min()) if matched.size else 1.0,
                             tolerances.min_iou, True),),
                      {"matched_iou_3d_mean": float(matched.mean()) if matched.size else 1.0})


def sent_clouds(context: QueryContext, count: int) -> list[np.ndarray | None]:
    """Each sample's points [N, 3] when the request carried them as .npy bytes, else None."""
    for values in context.inputs.values():
        if values.dtype == object and len(values) == count and values.size == count:
            items = [bytes(v) for v in values.reshape(-1)]
            if all(item.startswith(b"\x93NUMPY") for item in items):
                return [np.load(io.BytesIO(item), allow_pickle=False)[:, :3] for item in items]
    return [None] * count


def top_down(boxes: np.ndarray, cloud: np.ndarray | None, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    from tritonforge.figures import save_figure

    figure, axes = pyplot.subplots(figsize=(6, 6))
    if cloud is not None:
        step = max(1, len(cloud) // 20000)
        axes.scatter(cloud[::step, 0], cloud[::step, 1], s=0.3, c=cloud[::step, 2], cmap="Greys", alpha=0.5)
    for number, (x, y, _z, length, width, _h, yaw) in enumerate(boxes):
        c, s = np.cos(yaw), np.sin(yaw)
        corners = np.array([[length, width], [-length, width], [-length, -width], [length, -width],
                            [length, width]]) / 2 @ np.array([[c, s], [-s, c]]) + [x, y]
        colour = f"C{number % 10}"
        axes.plot(corners[:, 0], corners[:, 1], color=colour, linewidth=1.2)
        axes.plot([x, x + c * length / 2], [y, y + s * length / 2], color=colour, linewidth=0.8)
        axes.annotate(str(number), (x, y), color=colour, fontsize=8, ha="center", va="center")
    axes.set_aspect("equal")
    axes.set_xlabel("x (m)")
    axes.set_ylabel("y (m)")
    axes.set_title(f"{len(boxes)} boxes, seen from above")
    return save_figure(figure, path)
