"""Detection AP of a detector on prepared rooms, with any vocabulary, split into seen and unseen.

The vocabulary is a list of class names from `scenes.CLASSES` (an evaluation names classes it
has boxes for): rooms' boxes of other classes are left out of the truth, and a detection's
label is an index into the vocabulary, as the served graph returns it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from tritonforge.batching import batches
from tritonforge.errors import TritonForgeError
from tritonforge.export.ov3d.data import RoomSet
from tritonforge.export.ov3d.metrics import THRESHOLDS, detection_ap
from tritonforge.export.ov3d.model import Detector
from tritonforge.export.ov3d.postprocess import suppress_each
from tritonforge.export.ov3d.sampling import PER_SAMPLE
from tritonforge.export.ov3d.scenes import CLASSES, SEEN

Found = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [K, 7], scores [K], labels [K]


Run = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]  # graph inputs -> outputs by name
OUTPUTS = ("boxes_3d", "scores", "labels", "embeddings")  # the exported graph's, in order


def pytorch_run(detector: Detector) -> Run:
    """The detector as a `run` over the graph's named inputs."""
    def run(feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            outputs = detector(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()})
        return {name: out.numpy() for name, out in zip(OUTPUTS, outputs, strict=True)}
    return run


def room_inputs(rooms: RoomSet, vocabulary: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's inputs for every room, with `vocabulary` [C, D] as the request's."""
    per_room = {key: getattr(rooms, key) for key in PER_SAMPLE}
    return {**per_room, "class_embeddings": np.asarray(vocabulary, np.float32)}


def detect(run: Run, rooms: RoomSet, vocabulary: np.ndarray, batch_size: int = 16) -> list[Found]:
    """Each room's detections by `run` after suppression; `vocabulary` [C, D] text embeddings."""
    found = []
    for feed in batches(room_inputs(rooms, vocabulary), batch_size, ("class_embeddings",)):
        out = run(feed)
        found += suppress_each(out["boxes_3d"], out["scores"], out["labels"])
    return found


def parse_vocabulary(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(names sent, room class each stands for) of "chair,couch=sofa,floor lamp=lamp": a name
    alone is a room class; NAME=CLASS sends NAME and scores it against CLASS's boxes."""
    pairs = [(name.strip(), (room_class.strip() or name.strip()))
             for name, _, room_class in (item.partition("=") for item in text.split(",")) if name.strip()]
    return tuple(name for name, _ in pairs), tuple(room_class for _, room_class in pairs)


def vocabulary_index(classes: Sequence[str]) -> np.ndarray:
    """[len(CLASSES)] each room class's position in `classes`, -1 where it is absent."""
    unknown = [name for name in classes if name not in CLASSES]
    if unknown:
        raise TritonForgeError(f"cannot evaluate {', '.join(map(repr, unknown))}: the rooms have boxes for "
                               f"{', '.join(CLASSES)} only (send another name for one as NAME=CLASS)")
    twice = sorted({name for name in classes if list(classes).count(name) > 1})
    if twice:
        raise TritonForgeError(f"the vocabulary names {', '.join(twice)} more than once: give each room "
                               "class one name")
    return np.array([list(classes).index(c) if c in classes else -1 for c in CLASSES])


def room_ap(found: Sequence[Found], rooms: RoomSet, names: Sequence[str],
            classes: Sequence[str] | None = None) -> dict:
    """{"per_class": {name: {threshold: AP}}, "seen"/"unseen": {threshold: mean AP}} of the
    vocabulary `names` sent, each scored against the boxes of its room class in `classes`
    (default: the names themselves); NaN where no room holds the class."""
    classes = list(classes or names)
    index = vocabulary_index(classes)
    truth = []
    for boxes, labels in zip(rooms.boxes, rooms.labels, strict=True):
        named = index[labels]
        truth.append((boxes[named >= 0], named[named >= 0]))
    ap = detection_ap(found, truth, len(names))
    per_class = {name: {t: float(ap[t][i]) for t in THRESHOLDS} for i, name in enumerate(names)}
    result: dict = {"per_class": per_class}
    seen = [room_class in SEEN for room_class in classes]
    splits = {"seen": [n for n, s in zip(names, seen, strict=True) if s],
              "unseen": [n for n, s in zip(names, seen, strict=True) if not s]}
    for split, members in splits.items():
        values = {t: [per_class[n][t] for n in members if not np.isnan(per_class[n][t])] for t in THRESHOLDS}
        result[split] = {t: float(np.mean(v)) if v else float("nan") for t, v in values.items()}
    return result
