"""`tritonforge snn train`: a spiking VGG trained with the TET loss on scikit-learn's digits.

The digits are `tritonforge.data.digits`' fixed split (1,437 training, 360 test). Deterministic
for a seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tritonforge.data.digits import DIGITS_CLASSES, DIGITS_SIZE, digits
from tritonforge.errors import TritonForgeError
from tritonforge.export.snn.model import SpikingVGG, tet_loss
from tritonforge.safe_load import load_weights


@dataclass(frozen=True)
class TrainRecipe:
    widths: tuple[int, ...] = (16, 32)
    timesteps: int = 4
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    lam: float = 1e-3  # TET's weight of the MSE regulariser
    phi: float = 1.0  # its target
    seed: int = 0

    def __post_init__(self):
        if self.timesteps < 1:
            raise TritonForgeError(f"--timesteps {self.timesteps} must be at least 1 (time steps of "
                                   "the LIF neurons; TET uses 2-6)")
        if self.epochs < 1 or not self.widths or min(self.widths) < 1:
            raise TritonForgeError(
                f"--epochs {self.epochs} and --widths {list(self.widths)} must be positive")


def build(recipe: TrainRecipe) -> SpikingVGG:
    return SpikingVGG(1, DIGITS_CLASSES, DIGITS_SIZE, tuple(recipe.widths), recipe.timesteps)


def accuracy(model: SpikingVGG, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    with torch.inference_mode():
        predicted = model(torch.from_numpy(images)).argmax(1).numpy()
    return float((predicted == labels).mean())


def train(recipe: TrainRecipe, on_epoch: Callable[[int, float, float], None] | None = None) -> SpikingVGG:
    """Train with TET; `on_epoch(epoch, loss, test_accuracy)` after each epoch."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = build(recipe)
        images, labels = (torch.from_numpy(a) for a in digits("train"))
        test_images, test_labels = digits("test")
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, recipe.epochs)
        generator = torch.Generator().manual_seed(recipe.seed)
        for epoch in range(recipe.epochs):
            model.train()
            total = 0.0
            for batch in torch.randperm(len(labels), generator=generator).split(recipe.batch_size):
                optimizer.zero_grad()
                loss = tet_loss(model.per_step_logits(images[batch]), labels[batch], recipe.lam, recipe.phi)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
            schedule.step()
            if on_epoch:
                on_epoch(epoch + 1, total / len(labels), accuracy(model, test_images, test_labels))
    return model.eval()


def save_checkpoint(model: SpikingVGG, recipe: TrainRecipe, path: Path) -> Path:
    """Weights and recipe, in a file `torch.load(..., weights_only=True)` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"arch": "vgg", "recipe": {**asdict(recipe), "widths": list(recipe.widths)},
                "state_dict": model.state_dict()}, path)
    return path


def load_checkpoint(path: Path) -> tuple[SpikingVGG, TrainRecipe]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise TritonForgeError(f"--checkpoint {path} does not exist: train one with `tritonforge snn train`")
    saved: dict[str, Any] = load_weights(path, f"--checkpoint {path}",
                                         "give a checkpoint written by `tritonforge snn train`")
    if not isinstance(saved, dict) or saved.get("arch") != "vgg" or "state_dict" not in saved:
        raise TritonForgeError(f"--checkpoint {path} is not a `tritonforge snn train` checkpoint (no "
                               "arch 'vgg' and state_dict)")
    recipe = TrainRecipe(**{**saved["recipe"], "widths": tuple(saved["recipe"]["widths"])})
    model = build(recipe)
    expected, found = set(model.state_dict()), set(saved["state_dict"])
    if expected != found:
        raise TritonForgeError(
            f"--checkpoint {path} does not fit widths {list(recipe.widths)}: missing "
            f"{sorted(expected - found)[:6]}, unexpected {sorted(found - expected)[:6]}")
    wrong = [f"{key} {tuple(value.shape)} (this network: {tuple(model.state_dict()[key].shape)})"
             for key, value in saved["state_dict"].items() if value.shape != model.state_dict()[key].shape]
    if wrong:
        raise TritonForgeError(f"--checkpoint {path} does not fit widths {list(recipe.widths)}: "
                               f"{'; '.join(wrong[:4])}")
    model.load_state_dict(saved["state_dict"])
    return model.eval(), recipe
