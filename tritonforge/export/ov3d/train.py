"""Training the detector: 3DETR's set loss with the vocabulary as text embeddings, and
OV-3DETIC's supervision of classes known only by name.

Queries are assigned to boxes one to many by default (every query whose point lies inside a
box is that box's, and each box takes its nearest query as well), or one to one (Hungarian,
cost 5 x centre L1 + size L1 - the probability of the box's class); every decoder layer is
supervised: cross-entropy over the vocabulary and background (queries on nothing are
background, weighted 0.2), centre L1 (x 5), size L1, and yaw as a bin (x 0.1) plus the
residual in it (x 0.5). Yaw lives in [0, pi): a box turned half a turn is the same box. Rooms
are turned about z and mirrored each step (the sampler's indices do not change under either).

Open-vocabulary supervision (`Supervision.open_vocabulary`): the training vocabulary holds
every class name; seen classes come with boxes, unseen ones only as the room's class tags (its
image-level labels). The room's pseudo boxes (`pseudo.py`: clusters no seen box explains) are
regressed like boxes, and a query on one learns the room's unseen tags as a bag (multiple-
instance: -log of its probability summed over the tags), so the name is learnt from which
rooms hold such a cluster. Cross-modal contrast (`contrastive_loss`, on the last decoder
layer): the embeddings of queries on objects are contrasted with each other and with the class
names, a query on a pseudo box taking the likeliest of its room's tags as its class. Plain InfoNCE
treats other queries of the query's own class as negatives, a bias against exactly the
classes that share rooms and shapes; the debiased loss (OV-3DET's DTCC) never uses same-class
members as negatives.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from tritonforge.errors import TritonForgeError
from tritonforge.export.ov3d.data import RoomSet, room_set
from tritonforge.export.ov3d.model import Detections, Detector, DetectorConfig, gather
from tritonforge.export.ov3d.scenes import CLASSES, SEEN, in_box
from tritonforge.export.ov3d.text import embed_names
from tritonforge.export.ov3d.vocabulary import DEFAULT_TEMPLATE
from tritonforge.safe_load import read_checkpoint, save_checkpoint

WEIGHTS = {"centre": 5.0, "size": 1.0, "angle_bin": 0.1, "angle_residual": 0.5}
BACKGROUND_WEIGHT = 0.2
CONTRASTS = ("none", "plain", "debiased")
CONTRAST_WEIGHT = 0.5
CONTRAST_TEMPERATURE = 0.1  # OV-3DET's


@dataclass(frozen=True)
class Supervision:
    """What training knows of each class of `scenes.CLASSES`: its index in the training
    vocabulary `names` when the class comes with boxes (`boxed`) or only as a room's class tag
    (`tagged`), -1 otherwise. A tagged class is taught through the pseudo boxes of the rooms
    that carry its tag. `contrast`: none, plain or debiased (`contrastive_loss`)."""

    names: tuple[str, ...]
    boxed: np.ndarray
    tagged: np.ndarray
    contrast: str = "none"

    def __post_init__(self):
        if self.contrast not in CONTRASTS:
            raise TritonForgeError(f"--contrast {self.contrast!r} is unknown: choose {', '.join(CONTRASTS)}")

    @classmethod
    def seen_only(cls, contrast: str = "none") -> Supervision:
        boxed = np.array([SEEN.index(c) if c in SEEN else -1 for c in CLASSES])
        return cls(SEEN, boxed, np.full(len(CLASSES), -1), contrast)

    @classmethod
    def open_vocabulary(cls, contrast: str = "debiased") -> Supervision:
        index = np.arange(len(CLASSES))
        seen = np.array([c in SEEN for c in CLASSES])
        return cls(CLASSES, np.where(seen, index, -1), np.where(seen, -1, index), contrast)


@dataclass(frozen=True)
class Targets:
    boxes: list[torch.Tensor]  # per room [K, 7]
    classes: list[torch.Tensor]  # per room [K] indices into the training vocabulary, -1 a pseudo box
    candidates: list[torch.Tensor]  # per room: the vocabulary indices a pseudo box may be (its tags)


def room_targets(rooms: RoomSet, index: int, supervision: Supervision) -> tuple[np.ndarray, np.ndarray,
                                                                                 np.ndarray]:
    """(boxes, classes, candidates) of one room: its boxed classes' boxes, then its pseudo boxes
    when it carries a tagged class (a room without one has nothing they could be)."""
    boxed = supervision.boxed[rooms.labels[index]]
    boxes, classes = rooms.boxes[index][boxed >= 0], boxed[boxed >= 0]
    candidates = supervision.tagged[rooms.tags(index)]
    candidates = candidates[candidates >= 0]
    if len(candidates) and len(rooms.pseudo[index]):
        boxes = np.concatenate([boxes, rooms.pseudo[index]])
        classes = np.concatenate([classes, np.full(len(rooms.pseudo[index]), -1)])
    return boxes.astype(np.float32), classes, candidates


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
            known = classes >= 0  # a pseudo box's class is not known: no class term
            cost = (WEIGHTS["centre"] * torch.cdist(layer.centre[room], boxes[:, :3], p=1)
                    + torch.cdist(layer.size[room], boxes[:, 3:6], p=1)
                    - probabilities[room][:, classes.clamp(min=0)] * known)
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


def class_loss(logits: torch.Tensor, wanted: torch.Tensor, targets: Targets) -> torch.Tensor:
    """Weighted cross-entropy over the vocabulary and background. `wanted` [B, Q]: a class,
    background (the last column), or -1 for a query on a pseudo box, which learns the room's
    tags as a bag: -log of the probability summed over them."""
    background = logits.shape[-1] - 1
    log_p = logits.log_softmax(-1)
    loss = -log_p.gather(-1, wanted.clamp(min=0)[..., None])[..., 0]
    weight = torch.where(wanted == background, BACKGROUND_WEIGHT, 1.0)
    for room, candidates in enumerate(targets.candidates):
        bag = wanted[room] < 0
        if bag.any():
            loss[room, bag] = -log_p[room, bag][:, candidates].logsumexp(-1)
    return (weight * loss).sum() / weight.sum()


def assigned(logits: torch.Tensor, targets: Targets, pairs: list[tuple[np.ndarray, np.ndarray]]
             ) -> torch.Tensor:
    """[B, Q] each query's target: its box's class, -1 on a pseudo box, background (the last
    column of `logits`) for the rest."""
    wanted = torch.full(logits.shape[:2], logits.shape[-1] - 1, dtype=torch.long)
    for room, (rows, cols) in enumerate(pairs):
        wanted[room, torch.from_numpy(rows)] = targets.classes[room][torch.from_numpy(cols)]
    return wanted


def query_labels(logits: torch.Tensor, targets: Targets, pairs: list[tuple[np.ndarray, np.ndarray]]
                 ) -> torch.Tensor:
    """`assigned`, with a query on a pseudo box given the likeliest of its room's tags by its
    own (detached) scores, as OV-3DET names a crop by CLIP's likeliest label."""
    wanted = assigned(logits, targets, pairs)
    for room, candidates in enumerate(targets.candidates):
        bag = wanted[room] < 0
        if bag.any():
            wanted[room, bag] = candidates[logits[room, bag][:, candidates].detach().argmax(-1)]
    return wanted


def contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, names: torch.Tensor, debias: bool,
                     temperature: float = CONTRAST_TEMPERATURE) -> torch.Tensor:
    """Supervised contrast of query embeddings [n, D] (unit length, class `labels` [n]) with each
    other and with the class names' unit embeddings [C, D] (name c has class c). Every query is
    an anchor; each positive p of it is scored as -log softmax over [s(p), s(negatives)] at
    `temperature`, averaged over its positives, then over the anchors.

    Without `debias` (plain InfoNCE) a query's one positive is its class name and every other
    member is a negative, other queries of its own class included. With `debias` (OV-3DET's
    DTCC, the "debiased" loss of this family's papers) same-class queries are positives too and
    never negatives: only members of another class push it away."""
    pool = torch.cat([embeddings, names])
    pool_labels = torch.cat([labels, torch.arange(len(names))])
    similarity = embeddings @ pool.T / temperature  # [n, n + C]
    itself = torch.zeros_like(similarity, dtype=torch.bool)
    itself[:, :len(embeddings)] = torch.eye(len(embeddings), dtype=torch.bool)
    same = labels[:, None] == pool_labels[None]
    if debias:
        positive, negative = same & ~itself, ~same
    else:
        name_column = torch.zeros_like(same)
        name_column[:, len(embeddings):] = same[:, len(embeddings):]
        positive, negative = name_column, ~itself & ~name_column
    rival = torch.where(negative, similarity, -torch.inf).logsumexp(-1, keepdim=True)  # [n, 1]
    pair = -(similarity - torch.logaddexp(similarity, rival))  # each (anchor, positive) term
    count = positive.sum(-1)
    per_anchor = torch.where(positive, pair, 0.0).sum(-1) / count.clamp(min=1)
    kept = (count > 0) & negative.any(-1)
    return per_anchor[kept].mean() if kept.any() else similarity.sum() * 0


def set_loss(layer: Detections, targets: Targets, bins: int,
             pairs: list[tuple[np.ndarray, np.ndarray]] | None = None) -> torch.Tensor:
    pairs = match(layer, targets) if pairs is None else pairs
    loss = class_loss(layer.logits, assigned(layer.logits, targets, pairs), targets)
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


def fit(detector: Detector, rooms: RoomSet, vocabulary: torch.Tensor, supervision: Supervision,
        epochs: int, batch_size: int = 8, lr: float = 5e-4, seed: int = 0,
        progress: Callable[[], None] | None = None, assignment: str = "inside") -> Detector:
    """Train on `rooms` with the text embeddings `vocabulary` [C, D] of `supervision.names`."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(detector.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * -(-len(rooms) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.1)
    names = torch.nn.functional.normalize(vocabulary, dim=-1)
    detector.train()
    for _epoch in range(epochs):
        order = rng.permutation(len(rooms))
        for start in range(0, len(rooms), batch_size):
            index = order[start:start + batch_size]
            boxes, classes, candidates = zip(*(room_targets(rooms, i, supervision) for i in index),
                                             strict=True)
            points, boxes = augment(torch.from_numpy(rooms.points[index]),
                                    [torch.from_numpy(b) for b in boxes], rng)
            centres, queries = torch.from_numpy(rooms.centres[index]), torch.from_numpy(rooms.queries[index])
            layers = detector.forward_layers(points, centres, torch.from_numpy(rooms.groups[index]), queries,
                                             vocabulary)
            targets = Targets(boxes, [torch.from_numpy(c) for c in classes],
                              [torch.from_numpy(c) for c in candidates])
            pairs = None
            if assignment == "inside":
                pairs = assign_inside(gather(gather(points, centres), queries), targets)
            bins = detector.config.angle_bins
            loss = sum(set_loss(layer, targets, bins, pairs) for layer in layers)
            if supervision.contrast != "none":
                last = layers[-1]
                pairs = pairs if pairs is not None else match(last, targets)
                labels = query_labels(last.logits, targets, pairs)
                on_object = labels < len(names)
                loss = loss + CONTRAST_WEIGHT * contrastive_loss(last.embedding[on_object], labels[on_object],
                                                                 names, supervision.contrast == "debiased")
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(detector.parameters(), 1.0)
            optimizer.step()
            schedule.step()
        if progress:
            progress()
    return detector.eval()


# -- the recipe and checkpoints ------------------------------------------------------------

CHECKPOINT_FORMAT = "tritonforge.ov3d/1"
SUPERVISIONS = ("open", "seen")


@dataclass(frozen=True)
class TrainRecipe:
    """`ov3d train`'s recipe. `supervision`: open (seen-class boxes, unseen classes from room
    tags through pseudo boxes) or seen (seen-class boxes only: the baseline that never hears
    of the unseen classes)."""

    rooms: int = 200
    epochs: int = 80
    batch_size: int = 8
    lr: float = 5e-4
    seed: int = 0
    supervision: str = "open"
    contrast: str = "debiased"
    assignment: str = "inside"
    template: str = DEFAULT_TEMPLATE
    num_points: int = 2048
    centres: int = 256
    queries: int = 64
    width: int = 96

    def __post_init__(self):
        if self.supervision not in SUPERVISIONS:
            raise TritonForgeError(f"--supervision {self.supervision!r} is unknown: choose open or seen")
        if self.assignment not in ("inside", "hungarian"):
            raise TritonForgeError(f"--assignment {self.assignment!r} is unknown: choose inside or hungarian")
        if self.rooms < 1 or self.epochs < 1 or self.batch_size < 1:
            raise TritonForgeError(f"--rooms {self.rooms}, --epochs {self.epochs} and batch size "
                                   f"{self.batch_size} must be at least 1")

    @property
    def config(self) -> DetectorConfig:
        return DetectorConfig(num_points=self.num_points, centres=self.centres, queries=self.queries,
                              width=self.width)

    @property
    def supervised(self) -> Supervision:
        if self.supervision == "seen":
            return Supervision.seen_only(self.contrast)
        return Supervision.open_vocabulary(self.contrast)


def train(recipe: TrainRecipe, progress: Callable[[], None] | None = None) -> Detector:
    """A detector trained on `recipe.rooms` procedural training rooms."""
    rooms = room_set("train", recipe.rooms, recipe.config)
    supervision = recipe.supervised
    vocabulary = torch.from_numpy(embed_names(supervision.names, recipe.template))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        detector = Detector(recipe.config)
    return fit(detector, rooms, vocabulary, supervision, recipe.epochs, recipe.batch_size, recipe.lr,
               recipe.seed, progress, recipe.assignment)


def save_detector(path: Path, detector: Detector, recipe: TrainRecipe, metrics: dict[str, Any]) -> Path:
    return save_checkpoint(path, CHECKPOINT_FORMAT, detector.config.to_json(), asdict(recipe),
                           detector.state_dict(), metrics)


def load_detector(path: Path) -> tuple[Detector, TrainRecipe]:
    """A detector saved by `save_detector`, and its recipe."""
    saved = read_checkpoint(path, CHECKPOINT_FORMAT, "tritonforge ov3d train --out FILE")
    known = {f.name for f in fields(DetectorConfig)}
    detector = Detector(DetectorConfig(**{k: v for k, v in saved["config"].items() if k in known}))
    missing, unexpected = detector.load_state_dict(saved["state_dict"], strict=False)
    if missing or unexpected:
        raise TritonForgeError(f"--checkpoint {path} does not fit its detector: missing {list(missing)[:4]}, "
                               f"unexpected {list(unexpected)[:4]}")
    names = {f.name for f in fields(TrainRecipe)}
    return detector.eval(), TrainRecipe(**{k: v for k, v in saved.get("recipe", {}).items() if k in names})
