"""`tritonforge nas train`: a genotype's network trained on real labelled images (the digits, or
the user's own), saved as a checkpoint `export nas --checkpoint` publishes.

Deterministic for a seed: AdamW with a one-cycle learning rate, label smoothing, and random
shifts of up to `shift` pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tritonforge.errors import TritonForgeError
from tritonforge.export.nas.data import Labelled
from tritonforge.export.nas.network import Network, NetworkSize
from tritonforge.export.nas.space import Genotype
from tritonforge.safe_load import read_checkpoint, save_checkpoint
from tritonforge.training import Schedule, fit_classifier

CHECKPOINT_FORMAT = "tritonforge.nas/1"
TRAIN_COMMAND = "tritonforge nas train --genotype GENOTYPE.json"


@dataclass(frozen=True)
class TrainRecipe:
    epochs: int = 30
    width: int = 16
    layers: int = 5
    batch_size: int = 64
    lr: float = 3e-3  # the one-cycle peak
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    shift: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise TritonForgeError(f"--epochs {self.epochs}, batch size {self.batch_size} and lr {self.lr} "
                                   "must be positive")

    def network(self, data: Labelled) -> NetworkSize:
        _n, channels, height, width = data.images.shape
        if height != width:
            raise TritonForgeError(f"{data.name}: images are {height} x {width}; the network takes square "
                                   "ones")
        return NetworkSize(channels=channels, image_size=height, width=self.width, layers=self.layers,
                           classes=len(data.classes))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def predict(model: torch.nn.Module, images: np.ndarray, batch: int = 256) -> np.ndarray:
    model.eval()
    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(np.ascontiguousarray(images[i:i + batch])))
                               .argmax(1).numpy() for i in range(0, len(images), batch)])


def accuracy(model: torch.nn.Module, data: Labelled) -> float:
    return float((predict(model, data.images) == data.labels).mean())


def train(genotype: Genotype, data: Labelled, held_out: Labelled, recipe: TrainRecipe,
          on_epoch: Callable[[int, float, float], None] | None = None) -> Network:
    """A new network of `genotype`, trained on `data`; `on_epoch(epoch, loss, held-out accuracy)`.
    Shifts uncover black (0): the digits' background."""
    size = recipe.network(data)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = Network(genotype, size)
    schedule = Schedule(recipe.epochs, recipe.batch_size, recipe.lr, recipe.weight_decay,
                        recipe.label_smoothing, recipe.shift, 0.0, recipe.seed)
    report = (lambda epoch, loss: on_epoch(epoch, loss, accuracy(model, held_out))) if on_epoch else None
    fit_classifier(model, lambda m, x: m(x), torch.from_numpy(data.images), torch.from_numpy(data.labels),
                   schedule, report)
    return model


def save_network(path: Path, model: Network, recipe: TrainRecipe, classes: tuple[str, ...],
                 searched: dict[str, Any], metrics: dict[str, Any]) -> Path:
    """The weights, genotype, network size and class names, and `searched`: what the genotype
    file recorded of its search (data, latency), so the manifest can say it."""
    config = {"genotype": model.genotype.to_json(), "network": model.size.to_json(), "classes": list(classes),
              "searched": searched}
    return save_checkpoint(path, CHECKPOINT_FORMAT, config, recipe.to_json(), model.state_dict(), metrics)


def load_network(path: Path) -> tuple[Network, dict[str, Any]]:
    """A checkpoint `nas train` wrote, loaded weights-only; returns the network and its config."""
    saved = read_checkpoint(path, CHECKPOINT_FORMAT, TRAIN_COMMAND)
    config = saved["config"]
    genotype = Genotype.from_json(config["genotype"], f"--checkpoint {path}")
    model = Network(genotype, NetworkSize(**config["network"]))
    model.classes = tuple(config["classes"])
    try:
        model.load_state_dict(saved["state_dict"])
    except (RuntimeError, TypeError) as exc:
        raise TritonForgeError(f"--checkpoint {path}: its weights do not fit its genotype "
                               f"({str(exc)[:200]}); train it again with `{TRAIN_COMMAND}`") from None
    return model.eval(), {**config, "recipe": saved.get("recipe", {})}
