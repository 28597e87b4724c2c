"""A plain multi-layer perceptron over a flattened input (sklearn digits' 8x8 images in the demo).

Wide layers on a small input: its weights (4.5 MB as FP32) spill out of a core's L2 cache at batch 1, where
their INT8 copy (1.1 MB) does not, which is where INT8 pays off most on a CPU.
"""

from __future__ import annotations

from torch import nn


def mlp(*, input_features: int = 64, hidden: int = 1024, hidden_layers: int = 2, num_classes: int = 10) -> nn.Module:
    if min(input_features, hidden, hidden_layers, num_classes) < 1:
        raise ValueError("input_features, hidden, hidden_layers and num_classes must be at least 1")
    layers: list[nn.Module] = [nn.Flatten()]
    width = input_features
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
