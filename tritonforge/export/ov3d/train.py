"""Training the detector: 3DETR's set loss with the vocabulary as text embeddings.

Every decoder layer's queries are matched one to one with the room's boxes (Hungarian, cost
5 x centre L1 + size L1 - the probability of the box's class), and each layer is supervised:
cross-entropy over the vocabulary and background (unmatched queries are background, weighted
0.2), centre L1 (x 5), size L1, and yaw as a bin (x 0.1) plus the residual in it (x 0.5).
Yaw lives in [0, pi): a box turned half a turn is the same box. Rooms are turned about z and
mirrored each step (the sampler's indices do not change under either).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from tritonforge.export.ov3d.data import RoomSet
from tritonforge.export.ov3d.model import Detections, Detector, gather
from tritonforge.export.ov3d.scenes import in_box

WEIGHTS = {"centre": 5.0, "size": 1.0, "angle_bin": 0.1, "angle_residual": 0.5}
BACKGROUND_WEIGHT = 0.2


@dataclass(frozen=True)
class Targets:
    boxes: list[torch.Tensor]  # per room [K, 7]
    classes: list[torch.Tensor]  # per room [K] indices into the training vocabulary


def augment(points: torch.Tensor, boxes: list[torch.Tensor], rng: np.random.Generator):
    """Each room turned by a random angle about its centre and mirrored (x -> -x) half the time."""
    out_points, out_boxes = [], []
    for cloud, room_boxes in zip(points, boxes, strict=True):
        angle, mirror = float(rng.uniform(-math.pi, math.pi)), bool(rng.random() < 0.5)
        middle = (cloud.min(0).values + cloud.max(0).values) / 2
        middle[2] = 0
        c, s = math.cos(angle), math.sin(angle)
        turn = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        if mirror:
            turn = torch.diag(torch.tensor([-1.0, 1.0, 1.0])) @ turn
        out_points.append((cloud - middle) @ turn.T)
        centre = (room_boxes[:, :3] - middle) @ turn.T
        yaw = room_boxes[:, 6] + angle
        if mirror:
            yaw = math.pi - yaw
        out_boxes.append(torch.cat([centre, room_boxes[:, 3:6], torch.remainder(yaw, math.pi)[:, None]], 1))
    return torch.stack(out_points), out_boxes


def match(layer: Detections, targets: Targets) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per room: (query indices, box indices) of the cheapest one-to-one pairing."""
    from scipy.optimize import linear_sum_assignment

    pairs = []
    probabilities = layer.logits.softmax(-1)
    for room, (boxes, classes) in enumerate(zip(targets.boxes, targets.classes, strict=True)):
        if not len(boxes):
            pairs.append((np.zeros(0, np.int64), np.zeros(0, np.int64)))
            continue
        with torch.no_grad():
            cost = (WEIGHTS["centre"] * torch.cdist(layer.centre[room], boxes[:, :3], p=1)
                    + torch.cdist(layer.size[room], boxes[:, 3:6], p=1)
                    - probabilities[room][:, classes])
        rows, cols = linear_sum_assignment(cost.numpy())
        pairs.append((rows, cols))
    return pairs


def assign_inside(query_xyz: torch.Tensor, targets: Targets, margin: float = 0.1
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per room: every query whose point lies inside a box (grown by `margin`) is that box's
    (the nearest centre's when boxes overlap), and each box takes its nearest query as well, so
    none goes without one. One-to-many: suppression removes the duplicates after."""
    pairs = []
    for room, boxes in enumerate(targets.boxes):
        if not len(boxes):
            pairs.append((np.zeros(0, np.int64), np.zeros(0, np.int64)))
            continue
        xyz, frame = query_xyz[room].double().numpy(), boxes.double().numpy()
        inside = np.stack([in_box(xyz, box, margin) for box in frame], axis=1)  # [Q, K]
        distance = np.linalg.norm(xyz[:, None, :] - frame[None, :, :3], axis=-1)
        owner = np.where(inside, distance, np.inf).argmin(1)
        owner[~inside.any(1)] = -1
        owner[distance.argmin(0)] = np.arange(len(frame))
        rows = np.flatnonzero(owner >= 0)
        pairs.append((rows, owner[rows]))
    return pairs


def set_loss(layer: Detections, targets: Targets, bins: int,
             pairs: list[tuple[np.ndarray, np.ndarray]] | None = None) -> torch.Tensor:
    pairs = match(layer, targets) if pairs is None else pairs
    background = layer.logits.shape[-1] - 1
    wanted = torch.full(layer.logits.shape[:2], background, dtype=torch.long)
    for room, (rows, cols) in enumerate(pairs):
        wanted[room, torch.from_numpy(rows)] = targets.classes[room][torch.from_numpy(cols)]
    weight = torch.ones(background + 1)
    weight[background] = BACKGROUND_WEIGHT
    loss = F.cross_entropy(layer.logits.flatten(0, 1), wanted.flatten(), weight=weight)
    matched = max(sum(len(rows) for rows, _ in pairs), 1)
    width = math.pi / bins
    for room, (rows, cols) in enumerate(pairs):
        if not len(rows):
            continue
        rows, cols = torch.from_numpy(rows), torch.from_numpy(cols)
        boxes = targets.boxes[room][cols]
        loss = loss + WEIGHTS["centre"] * (layer.centre[room, rows] - boxes[:, :3]).abs().sum() / matched
        loss = loss + WEIGHTS["size"] * (layer.size[room, rows] - boxes[:, 3:6]).abs().sum() / matched
        position = boxes[:, 6] / width
        bin_index = position.floor().long().clamp(0, bins - 1)
        loss = loss + WEIGHTS["angle_bin"] * F.cross_entropy(layer.angle_logits[room, rows], bin_index,
                                                             reduction="sum") / matched
        residual = torch.gather(layer.angle_residual[room, rows], 1, bin_index[:, None])[:, 0]
        loss = loss + WEIGHTS["angle_residual"] * F.smooth_l1_loss(
            residual, position - bin_index, reduction="sum") / matched
    return loss


def fit(detector: Detector, rooms: RoomSet, vocabulary: torch.Tensor, class_of: np.ndarray, epochs: int,
        batch_size: int = 8, lr: float = 5e-4, seed: int = 0,
        progress: Callable[[], None] | None = None, assignment: str = "hungarian") -> Detector:
    """Train on `rooms`, whose label indices map to the training vocabulary through `class_of`
    (-1: a class trained as background, i.e. one without boxes)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(detector.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * -(-len(rooms) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.1)
    detector.train()
    for _epoch in range(epochs):
        order = rng.permutation(len(rooms))
        for start in range(0, len(rooms), batch_size):
            index = order[start:start + batch_size]
            boxes, classes = [], []
            for i in index:
                trained = class_of[rooms.labels[i]]
                boxes.append(torch.from_numpy(rooms.boxes[i][trained >= 0]))
                classes.append(torch.from_numpy(trained[trained >= 0]))
            points, boxes = augment(torch.from_numpy(rooms.points[index]), boxes, rng)
            centres, queries = torch.from_numpy(rooms.centres[index]), torch.from_numpy(rooms.queries[index])
            layers = detector.forward_layers(points, centres, torch.from_numpy(rooms.groups[index]), queries,
                                             vocabulary)
            targets = Targets(boxes, classes)
            pairs = None
            if assignment == "inside":
                pairs = assign_inside(gather(gather(points, centres), queries), targets)
            loss = sum(set_loss(layer, targets, detector.config.angle_bins, pairs) for layer in layers)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(detector.parameters(), 1.0)
            optimizer.step()
            schedule.step()
        if progress:
            progress()
    return detector.eval()
