"""First-order DARTS: the network's weights and the architecture's weights trained in turn.

The search data is split in two halves: each step trains the operations' weights on a batch of
the first half (SGD, cosine schedule) and the architecture parameters on a batch of the second
(Adam), treating the weights as fixed (first order: no unrolled step). With a latency table,
`latency_weight` adds the architecture's expected latency, relative to that of the uniform
mix, to the architecture's loss. The expected latency of an edge is the mean of its primitives'
table entries under the edge's softmax weights, `none` left out (the genotype never keeps it,
so this is what the edge costs once derived).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from tritonforge.errors import TritonForgeError
from tritonforge.export.nas.data import DATA_KINDS, search_data
from tritonforge.export.nas.latency import LatencyTable
from tritonforge.export.nas.network import NetworkSize, SearchNetwork
from tritonforge.export.nas.space import CELL_KINDS, PRIMITIVES, Genotype, derive

NONE = PRIMITIVES.index("none")


@dataclass(frozen=True)
class SearchRecipe:
    data: str = "noise"
    seed: int = 0
    epochs: int = 20
    width: int = 8  # the search network's width (the derived network is trained wider)
    layers: int = 5
    batch_size: int = 32
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    arch_lr: float = 3e-3
    arch_weight_decay: float = 1e-3
    latency_weight: float = 0.0
    samples: int = 0  # search on the first this many images of the data (0: all 1,437)

    def __post_init__(self):
        if self.data not in DATA_KINDS:
            raise TritonForgeError(f"--data {self.data!r} is unknown: choose one of {', '.join(DATA_KINDS)}")
        if self.epochs < 1 or self.batch_size < 2 or self.width < 2:
            raise TritonForgeError(f"--epochs {self.epochs}, batch size {self.batch_size} and width "
                                   f"{self.width} must be at least 1, 2 and 2")
        if self.samples < 0 or 0 < self.samples < 2 * self.batch_size:
            raise TritonForgeError(f"--samples {self.samples}: 0 (all) or at least two batches "
                                   f"({2 * self.batch_size}): half trains the weights, half the architecture")
        if self.latency_weight < 0:
            raise TritonForgeError(f"--latency-weight {self.latency_weight} must be 0 (off) or positive")

    def network(self, image_size: int = 8, channels: int = 1, classes: int = 10) -> NetworkSize:
        return NetworkSize(channels=channels, image_size=image_size, width=self.width, layers=self.layers,
                           classes=classes)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResult:
    genotype: Genotype
    weights: dict[str, np.ndarray]  # softmax weights per cell kind, [14, 8]
    history: list[dict[str, float]]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"edge_weights": {kind: np.round(w, 4).tolist() for kind, w in self.weights.items()},
                "primitives": list(PRIMITIVES), "history": self.history,
                "search_seconds": round(self.seconds, 1)}


def expected_latency(weights: dict[str, torch.Tensor], costs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over edges of each edge's mean primitive cost under its weights, `none` left out."""
    total = torch.zeros(())
    for kind in CELL_KINDS:
        w = weights[kind].clone()
        w[:, NONE] = 0.0
        total = total + ((w / w.sum(dim=1, keepdim=True)) * costs[kind]).sum()
    return total


def search(recipe: SearchRecipe, table: LatencyTable | None = None,
           on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> SearchResult:
    """Search a genotype on `recipe.data`; deterministic for `recipe.seed` (on one machine)."""
    if recipe.latency_weight > 0 and table is None:
        raise TritonForgeError("--latency-weight needs a latency table (measured on the target)")
    data = search_data(recipe.data, recipe.seed)
    if recipe.samples:
        data = data.subset(np.arange(min(recipe.samples, len(data.labels))), data.name)
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        generator = torch.Generator().manual_seed(recipe.seed)
        images, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)
        order = torch.randperm(len(labels), generator=generator)
        half = len(order) // 2
        train_index, valid_index = order[:half], order[half:]
        network = SearchNetwork(recipe.network(classes=len(data.classes)))
        weights_optimizer = torch.optim.SGD(network.weight_parameters(), recipe.lr, momentum=recipe.momentum,
                                            weight_decay=recipe.weight_decay)
        steps_per_epoch = half // recipe.batch_size
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            weights_optimizer, recipe.epochs * steps_per_epoch, eta_min=recipe.lr_min)
        arch_optimizer = torch.optim.Adam(network.alphas.parameters(), recipe.arch_lr, betas=(0.5, 0.999),
                                          weight_decay=recipe.arch_weight_decay)
        costs = ({kind: torch.tensor(c, dtype=torch.float32) for kind, c in table.edge_costs().items()}
                 if table is not None else None)
        reference = (float(expected_latency(network.edge_weights(), costs).detach())
                     if costs is not None else 1.0)
        history = []
        for epoch in range(recipe.epochs):
            network.train()
            train_order = train_index[torch.randperm(half, generator=generator)]
            valid_order = valid_index[torch.randperm(len(valid_index), generator=generator)]
            totals = {"loss": 0.0, "arch_loss": 0.0}
            for step in range(steps_per_epoch):
                batch = slice(step * recipe.batch_size, (step + 1) * recipe.batch_size)
                # the architecture step on held-out search data, weights fixed (first order)
                x, y = images[valid_order[batch]], labels[valid_order[batch]]
                arch_loss = torch.nn.functional.cross_entropy(network(x), y)
                if costs is not None and recipe.latency_weight > 0:
                    arch_loss = arch_loss + recipe.latency_weight * expected_latency(
                        network.edge_weights(), costs) / reference
                arch_optimizer.zero_grad()
                arch_loss.backward()
                arch_optimizer.step()
                # the weights' step on the training half
                x, y = images[train_order[batch]], labels[train_order[batch]]
                loss = torch.nn.functional.cross_entropy(network(x), y)
                weights_optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(network.weight_parameters(), 5.0)
                weights_optimizer.step()
                schedule.step()
                totals["loss"] += loss.item() / steps_per_epoch
                totals["arch_loss"] += arch_loss.item() / steps_per_epoch
            record = {"epoch": epoch + 1, **{k: round(v, 4) for k, v in totals.items()}}
            if costs is not None:
                with torch.no_grad():
                    record["relative_expected_latency"] = round(
                        float(expected_latency(network.edge_weights(), costs)) / reference, 4)
            history.append(record)
            if on_epoch:
                on_epoch(epoch + 1, record)
        with torch.no_grad():
            weights = {kind: w.numpy().copy() for kind, w in network.edge_weights().items()}
    return SearchResult(derive(weights), weights, history, time.perf_counter() - started)
