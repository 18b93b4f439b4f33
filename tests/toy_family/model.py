"""A tiny CNN image classifier: two conv-ReLU-pool stages, global average pooling, a linear head."""

from __future__ import annotations

import torch
from torch import nn


class ToyCNN(nn.Module):
    """[N, 3, H, W] pixels -> [N, classes] logits; about 5k parameters, any H and W."""

    def __init__(self, classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # exported as GlobalAveragePool
        )
        self.classifier = nn.Linear(32, classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # named as the graph input
        return self.classifier(self.features(pixel_values))
