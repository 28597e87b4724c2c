"""A small CNN for 1xHxW grayscale input (Fashion-MNIST 28x28, sklearn digits 8x8).

Global average pooling makes the head independent of the input size, so one
architecture serves both resolutions.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, *, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        if num_classes < 1 or width < 1:
            raise ValueError(f"num_classes and width must be at least 1, got {num_classes} and {width}")
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)


def small_cnn(*, num_classes: int = 10, width: int = 16) -> SmallCNN:
    return SmallCNN(num_classes=num_classes, width=width)
