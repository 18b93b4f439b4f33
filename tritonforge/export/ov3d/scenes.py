"""Procedural rooms as point clouds, with the exact oriented box and class name of every object.

No point-cloud data set installs offline, so the family makes its own rooms: a floor and walls,
and furniture built from primitives (boards, posts, cylinders, cones, spheres) placed without
overlap and turned about the vertical axis. Every surface is sampled at an even density; a
depth sensor at two or three places in the room keeps only what it sees (a z-buffer per view,
so furniture hides the wall behind it and its own far side), and noise jitters what is left.
Coordinates are metres, z up, the floor at z = 0. A box is (centre x, y, z, size l, w, h, yaw):
l along the object's heading, yaw about z (the `boxes_3d` kind's layout).

Classes are split: `SEEN` classes come with boxes in training, `UNSEEN` ones only as the
scene's class tags (what an image-level label says is in the room).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tritonforge.errors import TritonForgeError

SEEN = ("chair", "table", "sofa", "bed", "bookshelf", "cabinet")
UNSEEN = ("lamp", "trash can", "plant", "stool")
CLASSES = SEEN + UNSEEN
SPLITS = {"train": 0, "test": 1_000_000}
DENSITY = 900.0  # surface points per square metre before the sensors look
NOISE = 0.005  # metres, per axis
MIN_POINTS = 40  # an object the sensors see less of has no box (nothing could find it)
WALL_HEIGHT = 2.5
SHELL_DENSITY = 0.25  # floor and walls: a sensor's points thin out with distance, and rooms are mostly shell


@dataclass(frozen=True)
class Part:
    """One primitive in an object's own frame (x along its heading, z up from the floor):
    "board" a cuboid, "post" a closed cylinder, "tube" an open one, "cone" a frustum's side,
    "ball" a sphere. `size` is (l, w, h) for boards, (radius, _, h) for posts and tubes,
    (bottom radius, top radius, h) for cones, (radius, _, _) for balls; `at` its centre."""

    shape: str
    at: tuple[float, float, float]
    size: tuple[float, float, float]


@dataclass(frozen=True)
class Room:
    points: np.ndarray  # [N, 3] float32
    boxes: np.ndarray  # [K, 7] float32: centre, size (l, w, h), yaw
    labels: np.ndarray  # [K] int64 indices into CLASSES
    instance: np.ndarray  # [N] int64: the object each point lies on (index into boxes), -1 floor/walls
    extent: tuple[float, float]  # the floor's size in x and y

    @property
    def tags(self) -> frozenset[str]:
        """The class names present: the room's image-level label."""
        return frozenset(CLASSES[i] for i in self.labels)


# -- furniture -----------------------------------------------------------------------------


def _legs(length: float, width: float, height: float, thickness: float, inset: float) -> list[Part]:
    return [Part("board", (sx * (length / 2 - inset), sy * (width / 2 - inset), height / 2),
                 (thickness, thickness, height)) for sx in (-1, 1) for sy in (-1, 1)]


def _chair(rng):
    size, seat = rng.uniform(0.4, 0.55), rng.uniform(0.42, 0.5)
    back = rng.uniform(0.35, 0.5)
    return [Part("board", (0, 0, seat), (size, size, 0.05)), *_legs(size, size, seat, 0.04, 0.03),
            Part("board", (-size / 2 + 0.025, 0, seat + back / 2), (0.05, size, back))]


def _table(rng):
    length, width, height = rng.uniform(0.9, 1.8), rng.uniform(0.6, 0.9), rng.uniform(0.7, 0.78)
    return [Part("board", (0, 0, height - 0.025), (length, width, 0.05)),
            *_legs(length, width, height - 0.05, 0.06, 0.06)]


def _sofa(rng):
    length, depth, seat = rng.uniform(1.5, 2.3), rng.uniform(0.8, 1.0), rng.uniform(0.38, 0.45)
    back, arm = rng.uniform(0.35, 0.5), 0.18
    return [Part("board", (0, 0, seat / 2), (length, depth, seat)),
            Part("board", (0, -depth / 2 + 0.1, seat + back / 2), (length, 0.2, back)),
            *(Part("board", (s * (length / 2 - arm / 2), 0.1, seat + 0.12), (arm, depth - 0.2, 0.24))
              for s in (-1, 1))]


def _bed(rng):
    length, width, height = rng.uniform(1.9, 2.2), rng.uniform(0.9, 1.8), rng.uniform(0.45, 0.6)
    head = rng.uniform(0.4, 0.6)
    return [Part("board", (0.05, 0, height / 2), (length - 0.1, width, height)),
            Part("board", (-length / 2 + 0.05, 0, (height + head) / 2), (0.1, width, height + head))]


def _bookshelf(rng):
    length, depth, height = rng.uniform(0.6, 1.2), rng.uniform(0.28, 0.4), rng.uniform(1.2, 2.0)
    shelves = int(rng.integers(3, 6))
    parts = [Part("board", (s * (length / 2 - 0.01), 0, height / 2), (0.02, depth, height)) for s in (-1, 1)]
    parts.append(Part("board", (0, -depth / 2 + 0.01, height / 2), (length, 0.02, height)))
    parts += [Part("board", (0, 0, z), (length - 0.04, depth, 0.02)) for z in np.linspace(0.05, height - 0.01,
                                                                                         shelves + 1)]
    return parts


def _cabinet(rng):
    length, depth, height = rng.uniform(0.5, 1.2), rng.uniform(0.4, 0.6), rng.uniform(0.7, 1.1)
    return [Part("board", (0, 0, height / 2), (length, depth, height))]


def _lamp(rng):
    pole, shade = rng.uniform(1.2, 1.6), rng.uniform(0.25, 0.35)
    return [Part("post", (0, 0, 0.015), (rng.uniform(0.12, 0.18), 0, 0.03)),
            Part("post", (0, 0, pole / 2), (0.015, 0, pole)),
            Part("cone", (0, 0, pole + shade / 2 - 0.05), (rng.uniform(0.18, 0.24), 0.1, shade))]


def _trash_can(rng):
    radius, height = rng.uniform(0.12, 0.2), rng.uniform(0.3, 0.5)
    return [Part("tube", (0, 0, height / 2), (radius, 0, height)),
            Part("post", (0, 0, 0.005), (radius, 0, 0.01))]


def _plant(rng):
    pot, leaves = rng.uniform(0.2, 0.3), rng.uniform(0.25, 0.4)
    return [Part("post", (0, 0, pot / 2), (rng.uniform(0.1, 0.16), 0, pot)),
            Part("ball", (0, 0, pot + leaves * 0.8), (leaves, 0, 0))]


def _stool(rng):
    radius, height = rng.uniform(0.15, 0.22), rng.uniform(0.45, 0.7)
    return [Part("post", (0, 0, height - 0.02), (radius, 0, 0.04)),
            *(Part("post", (0.7 * radius * np.cos(a), 0.7 * radius * np.sin(a), (height - 0.04) / 2),
                   (0.015, 0, height - 0.04)) for a in np.arange(3) * 2 * np.pi / 3)]


BUILDERS: dict[str, Callable[[np.random.Generator], list[Part]]] = {
    "chair": _chair, "table": _table, "sofa": _sofa, "bed": _bed, "bookshelf": _bookshelf,
    "cabinet": _cabinet, "lamp": _lamp, "trash can": _trash_can, "plant": _plant, "stool": _stool}


# -- surfaces ------------------------------------------------------------------------------


def _count(area: float, rng: np.random.Generator) -> int:
    return int(rng.poisson(max(area, 0.0) * DENSITY))


def _board(part: Part, rng) -> np.ndarray:
    half = np.asarray(part.size) / 2
    faces = []
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        area = 4 * half[others[0]] * half[others[1]]
        for sign in (-1, 1):
            n = _count(area, rng)
            face = rng.uniform(-1, 1, (n, 3)) * half
            face[:, axis] = sign * half[axis]
            faces.append(face)
    return np.concatenate(faces)


def _cylinder_side(radius_bottom: float, radius_top: float, height: float, rng) -> np.ndarray:
    area = np.pi * (radius_bottom + radius_top) * np.hypot(height, radius_bottom - radius_top)
    n = _count(area, rng)
    t, angle = rng.uniform(0, 1, n), rng.uniform(0, 2 * np.pi, n)
    radius = radius_bottom + (radius_top - radius_bottom) * t
    return np.stack([radius * np.cos(angle), radius * np.sin(angle), (t - 0.5) * height], 1)


def _disc(radius: float, z: float, rng) -> np.ndarray:
    n = _count(np.pi * radius ** 2, rng)
    r, angle = radius * np.sqrt(rng.uniform(0, 1, n)), rng.uniform(0, 2 * np.pi, n)
    return np.stack([r * np.cos(angle), r * np.sin(angle), np.full(n, z)], 1)


def _surface(part: Part, rng) -> np.ndarray:
    a, b, h = part.size
    if part.shape == "board":
        local = _board(part, rng)
    elif part.shape in ("post", "tube"):
        pieces = [_cylinder_side(a, a, h, rng), _disc(a, h / 2, rng)]
        if part.shape == "post":
            pieces.append(_disc(a, -h / 2, rng))
        local = np.concatenate(pieces)
    elif part.shape == "cone":
        local = _cylinder_side(a, b, h, rng)
    elif part.shape == "ball":
        n = _count(4 * np.pi * a ** 2, rng)
        direction = rng.standard_normal((n, 3))
        local = a * direction / np.linalg.norm(direction, axis=1, keepdims=True)
    else:
        raise TritonForgeError(f"unknown primitive {part.shape!r}")
    return local + np.asarray(part.at)


def _extent(part: Part) -> np.ndarray:
    """[2, 3] min and max corner of a part in its object's frame."""
    a, b, h = part.size
    half = {"board": (a / 2, b / 2, h / 2), "post": (a, a, h / 2), "tube": (a, a, h / 2),
            "cone": (max(a, b),) * 2 + (h / 2,), "ball": (a, a, a)}[part.shape]
    centre = np.asarray(part.at)
    return np.stack([centre - half, centre + half])


def box_frame(points: np.ndarray, box: np.ndarray) -> np.ndarray:
    """`points` [N, 3] in the frame of `box` (centre at 0, its length along x)."""
    return (np.asarray(points, np.float64) - box[:3]) @ _rotation(float(box[6]))


def in_box(points: np.ndarray, box: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """[N] bool: which `points` lie inside `box` grown by `margin` on every side."""
    return np.all(np.abs(box_frame(points, box)) <= box[3:6] / 2 + margin, axis=1)


def _rotation(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# -- rooms ---------------------------------------------------------------------------------


def random_room(rng: np.random.Generator, classes: tuple[str, ...] = CLASSES,
                objects: tuple[int, int] = (4, 9), views: tuple[int, int] = (2, 3)) -> Room:
    """A room of `objects` pieces of furniture drawn from `classes`, seen from `views` places."""
    unknown = sorted(set(classes) - set(BUILDERS))
    if unknown:
        raise TritonForgeError(f"no builder for classes {unknown}: choose from {', '.join(BUILDERS)}")
    size_x, size_y = rng.uniform(4.0, 7.0, 2)
    wanted = int(rng.integers(objects[0], objects[1] + 1))
    clouds, owners, boxes, labels, placed = [], [], [], [], []
    for _attempt in range(wanted * 20):
        if len(boxes) == wanted:
            break
        name = classes[int(rng.integers(len(classes)))]
        parts = BUILDERS[name](rng)
        low = np.min([_extent(p)[0] for p in parts], 0)
        high = np.max([_extent(p)[1] for p in parts], 0)
        middle = (low + high) / 2
        radius = float(np.hypot(*(high - low)[:2]) / 2)
        centre = rng.uniform([radius + 0.05, radius + 0.05], [size_x - radius - 0.05, size_y - radius - 0.05])
        if radius * 2 + 0.1 > min(size_x, size_y) or any(np.hypot(*(centre - c)) < radius + r + 0.1
                                                         for c, r in placed):
            continue
        yaw = float(rng.uniform(-np.pi, np.pi))
        rotation = _rotation(yaw)
        offset = np.array([*centre, 0.0]) - rotation @ np.array([middle[0], middle[1], 0.0])
        local = np.concatenate([_surface(p, rng) for p in parts])
        clouds.append(local @ rotation.T + offset)
        owners.append(np.full(len(local), len(boxes)))
        boxes.append([centre[0], centre[1], middle[2], *(high - low), yaw])
        labels.append(CLASSES.index(name))
        placed.append((centre, radius))
    shell = _shell(size_x, size_y, rng)
    points = np.concatenate([shell, *clouds])
    owner = np.concatenate([np.full(len(shell), -1), *owners])
    seen = np.zeros(len(points), bool)
    for _view in range(int(rng.integers(views[0], views[1] + 1))):
        seen |= _visible(points, _viewpoint(size_x, size_y, rng))
    points = points[seen] + rng.normal(0.0, NOISE, (int(seen.sum()), 3))
    owner = owner[seen]
    counts = np.bincount(owner[owner >= 0], minlength=len(boxes))
    kept = np.flatnonzero(counts >= MIN_POINTS)
    renumber = np.full(len(boxes) + 1, -1)
    renumber[kept] = np.arange(len(kept))
    return Room(points.astype(np.float32), np.asarray(boxes, np.float32).reshape(-1, 7)[kept],
                np.asarray(labels, np.int64)[kept], renumber[owner].astype(np.int64),
                (float(size_x), float(size_y)))


def _shell(size_x: float, size_y: float, rng) -> np.ndarray:
    """The floor and the four walls, sampled at SHELL_DENSITY of the furniture's density."""
    n = _count(SHELL_DENSITY * size_x * size_y, rng)
    pieces = [np.column_stack([rng.uniform(0, size_x, n), rng.uniform(0, size_y, n), np.zeros(n)])]
    for axis, length, other in ((0, size_x, size_y), (1, size_y, size_x)):
        for place in (0.0, other):
            n = _count(SHELL_DENSITY * length * WALL_HEIGHT, rng)
            wall = np.column_stack([rng.uniform(0, length, n), np.full(n, place),
                                    rng.uniform(0, WALL_HEIGHT, n)])
            pieces.append(wall if axis == 0 else wall[:, [1, 0, 2]])
    return np.concatenate(pieces)


def _viewpoint(size_x: float, size_y: float, rng) -> np.ndarray:
    """A sensor somewhere in the room at head height."""
    return np.array([rng.uniform(0.15, 0.85) * size_x, rng.uniform(0.15, 0.85) * size_y,
                     rng.uniform(1.4, 2.0)])


def _visible(points: np.ndarray, eye: np.ndarray, bins: int = 256, tolerance: float = 0.04) -> np.ndarray:
    """Points a sensor at `eye` sees: per direction (a spherical z-buffer of `bins`^2 cells),
    those within `tolerance` of the nearest."""
    ray = points - eye
    distance = np.linalg.norm(ray, axis=1)
    azimuth = np.arctan2(ray[:, 1], ray[:, 0])
    elevation = np.arcsin(np.clip(ray[:, 2] / np.maximum(distance, 1e-9), -1, 1))
    u = np.clip(((azimuth + np.pi) / (2 * np.pi) * bins).astype(int), 0, bins - 1)
    v = np.clip(((elevation + np.pi / 2) / np.pi * bins).astype(int), 0, bins - 1)
    cell = u * bins + v
    nearest = np.full(bins * bins, np.inf)
    np.minimum.at(nearest, cell, distance)
    return distance <= nearest[cell] + tolerance


def room(split: str, index: int, seed: int = 0, classes: tuple[str, ...] = CLASSES) -> Room:
    """Room `index` of `split` ("train" or "test": disjoint by seed)."""
    if split not in SPLITS:
        raise TritonForgeError(f"unknown room split {split!r}: choose one of {', '.join(SPLITS)}")
    return random_room(np.random.default_rng([seed, SPLITS[split] + index]), classes)
