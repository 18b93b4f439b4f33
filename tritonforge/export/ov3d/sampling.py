"""Farthest-point sampling and ball query in numpy: the indices the detector's graph gathers by.

`prepare` is what a client (or the python step beside the graph) does to any cloud: keep
`num_points` of it (a seeded random subset; a cloud with fewer is refused), then farthest-point
sampling for the centres, the ball query for their groups and farthest-point sampling of the
centres for the queries.

PointNet++'s sampler and grouper are CUDA extensions that do not export to ONNX, so the graph
takes their results as inputs and these functions compute them: the client calls them for a
tensor request, the python step beside the graph for a point file, so both produce the same
indices for the same points. Deterministic: FPS starts at point 0 and breaks ties by the
lowest index; the ball query keeps the first `k` points (in index order) within the radius and
pads with the first of them, as PointNet++'s `ball_query` does (a centre is always its own
neighbour, so none comes back empty).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tritonforge.errors import TritonForgeError


def farthest_points(points: np.ndarray, count: int) -> np.ndarray:
    """[count] int64 indices of `points` [N, 3]: each the point farthest from those chosen before."""
    points = np.asarray(points, np.float32)
    if count > len(points):
        raise TritonForgeError(f"farthest-point sampling wants {count} points and the cloud has "
                               f"{len(points)}: send at least {count} points")
    chosen = np.empty(count, np.int64)
    nearest = np.full(len(points), np.inf, np.float32)
    last = 0
    for step in range(count):
        chosen[step] = last
        nearest = np.minimum(nearest, np.sum((points - points[last]) ** 2, axis=1))
        last = int(np.argmax(nearest))
    return chosen


def ball_query(points: np.ndarray, centres: np.ndarray, radius: float, k: int) -> np.ndarray:
    """[M, k] int64: for each centre, the first `k` point indices within `radius`, padded with the
    first one found."""
    points, centres = np.asarray(points, np.float32), np.asarray(centres, np.float32)
    inside = np.sum((centres[:, None, :] - points[None, :, :]) ** 2, axis=2) < radius * radius
    groups = np.empty((len(centres), k), np.int64)
    for row, mask in enumerate(inside):
        found = np.flatnonzero(mask)[:k]
        if not len(found):
            raise TritonForgeError(f"no point lies within {radius} of centre {row}: centres must be points "
                                   "of the cloud")
        groups[row] = found[0]
        groups[row, :len(found)] = found
    return groups


@dataclass(frozen=True)
class Sampling:
    """How a cloud is cut down for the detector: `num_points` kept, `centres` sampled among
    them, `group` neighbours within `radius` metres of each, `queries` sampled among the centres."""

    num_points: int
    centres: int
    group: int
    radius: float
    queries: int


PER_SAMPLE = ("points", "centres", "groups", "queries")  # the graph's inputs `prepare` gives, in order


@dataclass(frozen=True)
class Prepared:
    points: np.ndarray  # [N, 3] float32
    kept: np.ndarray  # [N] int64: where each point was in the cloud given
    centres: np.ndarray  # [M] int64 into points
    groups: np.ndarray  # [M, K] int64 into points
    queries: np.ndarray  # [Q] int64 into centres


def prepare(points: np.ndarray, sampling: Sampling, seed: int | Sequence[int] = 0) -> Prepared:
    points = np.asarray(points, np.float32)
    if len(points) < sampling.num_points:
        raise TritonForgeError(f"the cloud has {len(points)} points and the detector samples "
                               f"{sampling.num_points}: send at least {sampling.num_points} points")
    keep = np.sort(np.random.default_rng(seed).choice(len(points), sampling.num_points, replace=False))
    kept = points[keep]
    centres = farthest_points(kept, sampling.centres)
    groups = ball_query(kept, kept[centres], sampling.radius, sampling.group)
    queries = farthest_points(kept[centres], sampling.queries)
    return Prepared(kept, keep, centres, groups, queries)
