"""Rooms made ready for the detector (`sampling.prepare`: a fixed number of points and the
sampler's indices), stacked for training and evaluation, with their pseudo boxes.

The sampler's indices do not change when the cloud is turned about z or mirrored, so training
augments the points and boxes after preparing them once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from tritonforge.export.ov3d.model import DetectorConfig
from tritonforge.export.ov3d.pseudo import pseudo_boxes
from tritonforge.export.ov3d.sampling import prepare
from tritonforge.export.ov3d.scenes import CLASSES, SEEN, room

SEEN_MASK = np.array([name in SEEN for name in CLASSES])


@dataclass(frozen=True)
class RoomSet:
    """Prepared rooms stacked for batching, with each room's boxes and class indices."""

    points: np.ndarray  # [S, N, 3]
    centres: np.ndarray  # [S, M]
    groups: np.ndarray  # [S, M, K]
    queries: np.ndarray  # [S, Q]
    boxes: tuple[np.ndarray, ...]  # per room [K_i, 7]
    labels: tuple[np.ndarray, ...]  # per room [K_i] indices into scenes.CLASSES
    instance: np.ndarray  # [S, N] the object each kept point lies on, -1 floor and walls
    pseudo: tuple[np.ndarray, ...]  # per room [P_i, 7] boxes around what no seen-class box explains

    def __len__(self) -> int:
        return len(self.points)

    def tags(self, index: int) -> np.ndarray:
        """The room's image-level labels: the classes present, indices into scenes.CLASSES."""
        return np.unique(self.labels[index])

    def subset(self, count: int) -> RoomSet:
        return RoomSet(*(getattr(self, f)[:count] for f in self.__dataclass_fields__))


def room_set(split: str, count: int, config: DetectorConfig, seed: int = 0) -> RoomSet:
    rooms = [_prepared_room(split, index, config, seed) for index in range(count)]
    return RoomSet(*(np.stack([r[key] for r in rooms]) for key in ("points", "centres", "groups", "queries")),
                   boxes=tuple(r["boxes"] for r in rooms), labels=tuple(r["labels"] for r in rooms),
                   instance=np.stack([r["instance"] for r in rooms]),
                   pseudo=tuple(r["pseudo"] for r in rooms))


@lru_cache(maxsize=8192)
def _prepared_room(split: str, index: int, config: DetectorConfig, seed: int) -> dict[str, np.ndarray]:
    scene = room(split, index, seed)
    ready = prepare(scene.points, config.sampling, seed=[seed, index, 7])
    return {"points": ready.points, "centres": ready.centres, "groups": ready.groups,
            "queries": ready.queries, "boxes": scene.boxes, "labels": scene.labels,
            "instance": scene.instance[ready.kept],
            # from the whole cloud: the detector's subsample is too thin for clusters of small objects
            "pseudo": pseudo_boxes(scene.points, scene.boxes[SEEN_MASK[scene.labels]])}
