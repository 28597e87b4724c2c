"""CIFAR ResNet-20/32/44/56, laid out exactly as akamaster/pytorch_resnet_cifar10.

Module names match that repository so its checkpoints load once the
DataParallel 'module.' prefix is stripped. The option-A shortcut is a small
module rather than a lambda so torch.onnx.export and torch-pruning can trace it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PadShortcut(nn.Module):
    """Option A: parameter-free downsample, zero-padding planes // 4 channels on each side."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0.0)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        needs_downsample = stride != 1 or in_planes != planes
        self.shortcut: nn.Module = PadShortcut(planes) if needs_downsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # Out of place: in-place adds on traced graphs confuse some pruning tools.
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, *, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be at least 1, got {blocks_per_stage}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, blocks_per_stage, stride=1)
        self.layer2 = self._make_layer(32, blocks_per_stage, stride=2)
        self.layer3 = self._make_layer(64, blocks_per_stage, stride=2)
        self.linear = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def unprunable_layers(self) -> list[nn.Module]:
        """The residual stream: option-A shortcuts zero-pad channels at fixed positions, so the
        stem and every block's output conv must keep their channels; block-inner ones may go."""
        return [self.conv1] + [block.conv2 for stage in (self.layer1, self.layer2, self.layer3) for block in stage
                              if isinstance(block, BasicBlock)]

    def removable_blocks(self) -> list[str]:
        """Blocks whose removal leaves identity: their shortcut is the identity and their input is
        already post-ReLU, so relu(x + 0) == x. Downsampling blocks change the shape and must stay."""
        return [f"{stage}.{index}" for stage in ("layer1", "layer2", "layer3")
                for index, block in enumerate(getattr(self, stage))
                if isinstance(block, BasicBlock) and isinstance(block.shortcut, nn.Identity)]

    def _make_layer(self, planes: int, blocks: int, *, stride: int) -> nn.Sequential:
        layers = []
        for block_stride in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, block_stride))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        # Adaptive pooling equals the original avg_pool2d(out, out.size(3)) at 32x32 input,
        # without baking a traced size into the exported graph.
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.linear(out)


def resnet20(*, num_classes: int = 10) -> CifarResNet:
    return CifarResNet(blocks_per_stage=3, num_classes=num_classes)


def resnet32(*, num_classes: int = 10) -> CifarResNet:
    return CifarResNet(blocks_per_stage=5, num_classes=num_classes)


def resnet44(*, num_classes: int = 10) -> CifarResNet:
    return CifarResNet(blocks_per_stage=7, num_classes=num_classes)


def resnet56(*, num_classes: int = 10) -> CifarResNet:
    return CifarResNet(blocks_per_stage=9, num_classes=num_classes)
