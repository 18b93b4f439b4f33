"""Rooms made ready for the detector: a fixed number of points and the sampler's indices.

`prepare` is what a client (or the python step beside the graph) does to any cloud: keep
`num_points` of it (a seeded random subset; a cloud with fewer is refused), then farthest-point
sampling for the centres, the ball query for their groups and farthest-point sampling of the
centres for the queries. Those indices do not change when the cloud is turned about z or
mirrored, so training augments the points and boxes after preparing them once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.export.ov3d.model import DetectorConfig
from tritonforge.export.ov3d.sampling import ball_query, farthest_points
from tritonforge.export.ov3d.scenes import room


@dataclass(frozen=True)
class Prepared:
    points: np.ndarray  # [N, 3] float32
    kept: np.ndarray  # [N] int64: where each point was in the cloud given
    centres: np.ndarray  # [M] int64 into points
    groups: np.ndarray  # [M, K] int64 into points
    queries: np.ndarray  # [Q] int64 into centres


def prepare(points: np.ndarray, config: DetectorConfig, seed: int | Sequence[int] = 0) -> Prepared:
    points = np.asarray(points, np.float32)
    if len(points) < config.num_points:
        raise TritonForgeError(f"the cloud has {len(points)} points and the detector samples "
                               f"{config.num_points}: send at least {config.num_points} points")
    keep = np.sort(np.random.default_rng(seed).choice(len(points), config.num_points, replace=False))
    kept = points[keep]
    centres = farthest_points(kept, config.centres)
    groups = ball_query(kept, kept[centres], config.radius, config.group)
    queries = farthest_points(kept[centres], config.queries)
    return Prepared(kept, keep, centres, groups, queries)


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

    def __len__(self) -> int:
        return len(self.points)


def room_set(split: str, count: int, config: DetectorConfig, seed: int = 0) -> RoomSet:
    rooms = [_prepared_room(split, index, config, seed) for index in range(count)]
    return RoomSet(*(np.stack([r[key] for r in rooms]) for key in ("points", "centres", "groups", "queries")),
                   boxes=tuple(r["boxes"] for r in rooms), labels=tuple(r["labels"] for r in rooms),
                   instance=np.stack([r["instance"] for r in rooms]))


@lru_cache(maxsize=8192)
def _prepared_room(split: str, index: int, config: DetectorConfig, seed: int) -> dict[str, np.ndarray]:
    scene = room(split, index, seed)
    ready = prepare(scene.points, config, seed=[seed, index, 7])
    return {"points": ready.points, "centres": ready.centres, "groups": ready.groups,
            "queries": ready.queries, "boxes": scene.boxes, "labels": scene.labels,
            "instance": scene.instance[ready.kept]}
