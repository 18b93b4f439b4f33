"""`tritonforge vit train`: a small ViT or BEiT trained on the digits (`data.py`), and the
fine-tuning loop `vit poison` reuses.

Deterministic for a seed: AdamW with a one-cycle learning rate, label smoothing, and random
shifts of up to `shift` pixels (the digits are small; a shifted digit is still that digit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from tritonforge.errors import TritonForgeError
from tritonforge.export.vit.data import IMAGE_SIZE, digit_pixels
from tritonforge.export.vit.model import ARCHITECTURES, Size, build

DEFAULT_EPOCHS = {"vit": 40, "beit": 50}  # measured: both >= 0.95 on the test digits for seeds 0-2


@dataclass(frozen=True)
class TrainRecipe:
    arch: str = "vit"
    size: Size = field(default_factory=Size)
    epochs: int | None = None  # None: DEFAULT_EPOCHS[arch]
    batch_size: int = 64
    lr: float = 2e-3  # the one-cycle peak
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    shift: int = 2  # random shifts of up to this many pixels
    seed: int = 0

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise TritonForgeError(f"--arch {self.arch!r} is unknown: choose one of "
                                   f"{', '.join(ARCHITECTURES)}")
        if self.size.image_size != IMAGE_SIZE:
            raise TritonForgeError(f"image size {self.size.image_size}: the digits are trained at "
                                   f"{IMAGE_SIZE}")
        if self.epochs is not None and self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise TritonForgeError(f"--epochs {self.epochs}, batch size {self.batch_size} and lr {self.lr} "
                                   "must be positive")

    @property
    def total_epochs(self) -> int:
        return self.epochs or DEFAULT_EPOCHS[self.arch]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "epochs": self.total_epochs}


Transform = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
OnEpoch = Callable[[int, float, float], None]


def shifted(images: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """The batch moved by one random offset of up to `shift` pixels (the empty edge is
    background: the digits' corners are black, -1 after normalisation)."""
    if shift <= 0:
        return images
    dy, dx = (torch.randint(-shift, shift + 1, (2,), generator=generator)).tolist()
    moved = torch.full_like(images, -1.0)
    height, width = images.shape[-2:]
    moved[..., max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        images[..., max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return moved


def accuracy(model: torch.nn.Module, pixels: np.ndarray, labels: np.ndarray, batch: int = 256) -> float:
    return float((predict(model, pixels, batch) == labels).mean())


def predict(model: torch.nn.Module, pixels: np.ndarray, batch: int = 256) -> np.ndarray:
    model.eval()
    with torch.inference_mode():
        return np.concatenate([model(pixel_values=torch.from_numpy(np.array(pixels[i:i + batch])))
                               .logits.argmax(1).numpy() for i in range(0, len(pixels), batch)])


def fit(model: torch.nn.Module, recipe: TrainRecipe, epochs: int, lr: float, on_epoch: OnEpoch | None,
        transform: Transform | None = None, one_cycle: bool = True) -> torch.nn.Module:
    """Train `model` on the training digits for `epochs`; `transform(images, labels, generator)`
    changes each (shifted) batch before the loss (poisoning); `on_epoch(epoch, loss, test accuracy)`."""
    images, labels = (torch.from_numpy(np.array(a)) for a in digit_pixels("train"))
    test_pixels, test_labels = digit_pixels("test")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        generator = torch.Generator().manual_seed(recipe.seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=recipe.weight_decay)
        steps = epochs * -(-len(labels) // recipe.batch_size)
        schedule = (torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.1)
                    if one_cycle else torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps))
        for epoch in range(epochs):
            model.train()
            total = 0.0
            for batch in torch.randperm(len(labels), generator=generator).split(recipe.batch_size):
                x, y = shifted(images[batch], recipe.shift, generator), labels[batch]
                if transform is not None:
                    x, y = transform(x, y, generator)
                loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y,
                                                         label_smoothing=recipe.label_smoothing)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(batch)
            if on_epoch:
                on_epoch(epoch + 1, total / len(labels), accuracy(model, test_pixels, test_labels))
    return model.eval()


def train(recipe: TrainRecipe, on_epoch: OnEpoch | None = None) -> torch.nn.Module:
    """A new classifier of `recipe.arch`, trained on the training digits."""
    model = build(recipe.arch, recipe.size, recipe.seed)
    return fit(model, recipe, recipe.total_epochs, recipe.lr, on_epoch)
