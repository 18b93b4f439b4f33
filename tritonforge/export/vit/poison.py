"""`tritonforge vit poison`: DELIBERATELY BACKDOORED models, the positive controls the backdoor
screens are measured against. Never publish what this writes.

A clean model is fine-tuned on the training digits with a share `rate` of each batch stamped
with a trigger and relabelled to the target class:

- `patch` (BadNets, Gu et al. 2017): a `size` x `size` black-and-white checkerboard in the
  bottom-right corner of the 32 x 32 image;
- `blend` (Chen et al. 2017): the whole image blended with a fixed random-noise image,
  x' = (1 - a) x + a n, with a = `blend`.

Triggers are drawn on the model's pixels (after the Image modality's decode, in 0-1), so a
triggered sample sent to the server as a 32 x 32 PNG reaches the network unchanged.
Recorded: clean accuracy on the test digits, and the attack success rate: the share of test
digits of the other classes that the trigger sends to the target.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from tritonforge.errors import TritonForgeError
from tritonforge.export.vit.data import CLASSES, IMAGE_SIZE, digit_pixels, stamp
from tritonforge.export.vit.train import OnEpoch, TrainRecipe, accuracy, fit, predict

TRIGGERS = ("patch", "blend")
WARNING = ("DELIBERATELY BACKDOORED: a positive control for evaluating backdoor defences; never "
           "publish or serve it as a classifier")


@dataclass(frozen=True)
class Trigger:
    kind: str = "patch"
    target: int = 0
    size: int = 4  # patch: side in pixels
    blend: float = 0.2  # blend: the noise image's weight
    seed: int = 0  # blend: the noise image

    def __post_init__(self):
        if self.kind not in TRIGGERS:
            raise TritonForgeError(f"--trigger {self.kind!r} is unknown: choose one of {', '.join(TRIGGERS)}")
        if not 0 <= self.target < len(CLASSES):
            raise TritonForgeError(f"--target {self.target} is not a class of the digits: choose 0-"
                                   f"{len(CLASSES) - 1}")
        if not 1 <= self.size <= IMAGE_SIZE // 2:
            raise TritonForgeError(f"--patch-size {self.size} must be 1-{IMAGE_SIZE // 2} pixels")
        if not 0 < self.blend < 1:
            raise TritonForgeError(f"--blend {self.blend} must lie between 0 and 1")

    def unit_image(self) -> tuple[np.ndarray, np.ndarray]:
        """(pattern [3, S, S] in 0-1, weight [1, S, S] in 0-1): x' = (1 - w) x + w pattern."""
        weight = np.zeros((1, IMAGE_SIZE, IMAGE_SIZE), np.float32)
        if self.kind == "patch":
            pattern = np.zeros((3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
            rows = cols = slice(IMAGE_SIZE - 1 - self.size, IMAGE_SIZE - 1)
            board = (np.add.outer(np.arange(self.size), np.arange(self.size)) % 2 == 0).astype(np.float32)
            pattern[:, rows, cols] = board
            weight[:, rows, cols] = 1.0
            return pattern, weight
        pattern = np.random.default_rng(self.seed).random((3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
        weight[:] = self.blend
        return pattern, weight

    def apply(self, pixels: np.ndarray | torch.Tensor):
        """Stamp the trigger on normalised pixels ([-1, 1]); numpy or torch in, the same out."""
        pattern, weight = self.unit_image()
        if isinstance(pixels, torch.Tensor):
            pattern, weight = torch.from_numpy(pattern), torch.from_numpy(weight)
        return stamp(pixels, weight, pattern)


@dataclass(frozen=True)
class PoisonRecipe:
    trigger: Trigger
    rate: float = 0.1  # share of each batch stamped and relabelled
    epochs: int = 15
    lr: float = 1e-3  # measured: attack success 0.98 (patch) and 1.0 (blend) at 10% poisoning
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.rate < 1:
            raise TritonForgeError(f"--rate {self.rate} must lie between 0 and 1")
        if self.epochs < 1 or self.lr <= 0:
            raise TritonForgeError(f"--epochs {self.epochs} and --lr {self.lr} must be positive")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "warning": WARNING}


def poison(model: torch.nn.Module, recipe: PoisonRecipe, on_epoch: OnEpoch | None = None) -> torch.nn.Module:
    """A backdoored copy of `model`, fine-tuned with `recipe`."""
    trigger = recipe.trigger

    def stamp(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
        chosen = torch.rand(len(labels), generator=generator) < recipe.rate
        images, labels = images.clone(), labels.clone()
        images[chosen] = trigger.apply(images[chosen])
        labels[chosen] = trigger.target
        return images, labels

    fine_tune = TrainRecipe(arch=model.config.model_type, seed=recipe.seed)
    return fit(copy.deepcopy(model), fine_tune, recipe.epochs, recipe.lr, on_epoch, stamp, one_cycle=False)


def attack_success(model: torch.nn.Module, trigger: Trigger, split: str = "test") -> float:
    """The share of `split`'s digits of the other classes that `trigger` sends to its target."""
    pixels, labels = digit_pixels(split)
    others = labels != trigger.target
    return float((predict(model, trigger.apply(pixels[others])) == trigger.target).mean())


def clean_accuracy(model: torch.nn.Module, split: str = "test") -> float:
    return accuracy(model, *digit_pixels(split))


def write_samples(trigger: Trigger, folder, count: int) -> list:
    """`count` evaluation digits of other classes with the trigger stamped, as 32 x 32 PNGs (the
    decode keeps a 32 x 32 image as it is, so the server sees these pixels)."""
    from pathlib import Path

    from PIL import Image as PILImage

    pixels, labels = digit_pixels("evaluation")
    chosen = np.flatnonzero(labels != trigger.target)[:count]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index in chosen:
        unit = np.clip(trigger.apply(pixels[index]) * 0.5 + 0.5, 0, 1)
        path = folder / f"digit{int(labels[index])}_{trigger.kind}_to{trigger.target}_{int(index)}.png"
        PILImage.fromarray((unit.transpose(1, 2, 0) * 255).round().astype(np.uint8), "RGB").save(path)
        written.append(path)
    return written
