"""The classifier training loop the image families share: AdamW, a one-cycle (or cosine)
learning rate, label smoothing and random shifts of the batch, deterministic for a seed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Transform = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Schedule:
    epochs: int
    batch_size: int
    lr: float  # the one-cycle peak (or the cosine start)
    weight_decay: float
    label_smoothing: float
    shift: int  # random shifts of up to this many pixels
    fill: float  # what a shift uncovers (the background after normalisation)
    seed: int
    one_cycle: bool = True


def shift_batch(images: torch.Tensor, shift: int, fill: float, generator: torch.Generator) -> torch.Tensor:
    """The batch moved by one random offset of up to `shift` pixels, the uncovered edge `fill`."""
    if shift <= 0:
        return images
    dy, dx = torch.randint(-shift, shift + 1, (2,), generator=generator).tolist()
    moved = torch.full_like(images, fill)
    height, width = images.shape[-2:]
    moved[..., max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        images[..., max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return moved


def fit_classifier(model: torch.nn.Module, logits: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
                   images: torch.Tensor, labels: torch.Tensor, schedule: Schedule,
                   on_epoch: Callable[[int, float], None] | None = None,
                   transform: Transform | None = None) -> torch.nn.Module:
    """Train `model` (whose class scores are `logits(model, x)`) on `images` and `labels`;
    `transform(images, labels, generator)` changes each shifted batch before the loss;
    `on_epoch(epoch, mean loss)` after each epoch."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(schedule.seed)
        generator = torch.Generator().manual_seed(schedule.seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay)
        steps = schedule.epochs * -(-len(labels) // schedule.batch_size)
        rate = (torch.optim.lr_scheduler.OneCycleLR(optimizer, schedule.lr, total_steps=steps, pct_start=0.1)
                if schedule.one_cycle else torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps))
        for epoch in range(schedule.epochs):
            model.train()
            total = 0.0
            for batch in torch.randperm(len(labels), generator=generator).split(schedule.batch_size):
                x, y = shift_batch(images[batch], schedule.shift, schedule.fill, generator), labels[batch]
                if transform is not None:
                    x, y = transform(x, y, generator)
                loss = torch.nn.functional.cross_entropy(logits(model, x), y,
                                                         label_smoothing=schedule.label_smoothing)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                rate.step()
                total += loss.item() * len(batch)
            if on_epoch:
                on_epoch(epoch + 1, total / len(labels))
    return model.eval()
