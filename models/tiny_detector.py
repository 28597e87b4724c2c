"""A tiny anchor-free CenterNet-style detector for 1 x 64 x 64 canvases (see detection_data).

The forward pass holds only conv, BatchNorm, ReLU, nearest upsample and concat, so it exports to ONNX
opset 17 and quantizes to INT8 like the classifiers. Outputs on a stride-4 grid (16 x 16 for 64 x 64):
- 'heatmap': classes x H x W logits, one peak per object centre;
- 'size': box width and height in input pixels at the centre cell;
- 'offset': where the centre lies inside its cell, 0..1 in cells (x, y).
`decode` turns them into boxes with numpy alone, since it runs on ONNX Runtime outputs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["TinyCenterNet", "tiny_centernet", "detection_loss", "training_loss", "decode", "OUTPUT_STRIDE", "OUTPUT_NAMES"]

OUTPUT_STRIDE = 4  # input pixels per output cell
OUTPUT_NAMES = ("heatmap", "size", "offset")
_HEATMAP_PRIOR = 0.1  # initial object probability per cell: a low start keeps the focal loss from blowing up
_SIZE_PRIOR_PX = 20.0  # initial box side, about a Fashion-MNIST garment at scale 1
_SIZE_WEIGHT = 0.1  # as CenterNet: pixel-size errors are large numbers next to the focal loss
_OFFSET_WEIGHT = 1.0
_MIN_OVERLAP = 0.7  # CenterNet's heatmap radius: a centre this far off still gives a box of IoU >= 0.7


def _conv(inputs: int, outputs: int, *, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(outputs), nn.ReLU(inplace=True))


def _head(inputs: int, outputs: int, *, bias: float) -> nn.Sequential:
    last = nn.Conv2d(inputs, outputs, 1)
    nn.init.constant_(last.bias, bias)
    return nn.Sequential(_conv(inputs, inputs), last)


class TinyCenterNet(nn.Module):
    """Three stride-2 stages (32, 16, 8), the 8 x 8 features upsampled and concatenated onto the 16 x 16
    ones, then one small head per output."""

    def __init__(self, *, classes: int = 10, width: int = 16) -> None:
        super().__init__()
        if classes < 1 or width < 1:
            raise ValueError(f"classes and width must be at least 1, got {classes} and {width}")
        self.stem = _conv(1, width, stride=2)
        self.stage16 = nn.Sequential(_conv(width, 2 * width, stride=2), _conv(2 * width, 2 * width))
        self.stage8 = nn.Sequential(_conv(2 * width, 4 * width, stride=2), _conv(4 * width, 4 * width))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = _conv(6 * width, 2 * width)
        self.heatmap = _head(2 * width, classes, bias=-math.log((1 - _HEATMAP_PRIOR) / _HEATMAP_PRIOR))
        self.size = _head(2 * width, 2, bias=_SIZE_PRIOR_PX)
        self.offset = _head(2 * width, 2, bias=0.5)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        fine = self.stage16(self.stem(x))
        coarse = self.stage8(fine)
        features = self.fuse(torch.cat([fine, self.up(coarse)], dim=1))
        return {"heatmap": self.heatmap(features), "size": self.size(features), "offset": self.offset(features)}


def tiny_centernet(classes: int = 10, width: int = 16) -> TinyCenterNet:
    return TinyCenterNet(classes=classes, width=width)


# Training targets and loss.

def _gaussian_radius(height: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """CenterNet's heatmap radius (in cells) for boxes of `height` x `width` cells: the smallest of the three
    corner-shift cases that keep IoU >= _MIN_OVERLAP (the formula CenterNet and CornerNet train with)."""
    overlap = _MIN_OVERLAP
    b1, c1 = height + width, width * height * (1 - overlap) / (1 + overlap)
    r1 = (b1 + torch.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2, c2 = 2 * (height + width), (1 - overlap) * width * height
    r2 = (b2 + torch.sqrt(b2 ** 2 - 16 * c2)) / 2
    a3, b3, c3 = 4 * overlap, -2 * overlap * (height + width), (overlap - 1) * width * height
    r3 = (b3 + torch.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3).floor().clamp(min=0)


def _targets(boxes: torch.Tensor, labels: torch.Tensor, *, classes: int, grid: tuple[int, int]):
    """Per object: its centre cell (integer x, y), sub-cell offset and size; per image the class heatmap,
    1 at each centre, a Gaussian around it, the maximum where objects of one class meet."""
    valid = labels >= 0
    centre = (boxes[..., :2] + boxes[..., 2:]) / (2 * OUTPUT_STRIDE)  # N x M x 2, in cells
    cell = centre.floor().clamp(min=0)
    cell = torch.stack([cell[..., 0].clamp(max=grid[1] - 1), cell[..., 1].clamp(max=grid[0] - 1)], dim=-1)
    size_px = boxes[..., 2:] - boxes[..., :2]
    radius = _gaussian_radius(size_px[..., 1] / OUTPUT_STRIDE, size_px[..., 0] / OUTPUT_STRIDE)
    sigma = (2 * radius + 1) / 6
    ys = torch.arange(grid[0], dtype=boxes.dtype, device=boxes.device).view(1, 1, -1, 1)
    xs = torch.arange(grid[1], dtype=boxes.dtype, device=boxes.device).view(1, 1, 1, -1)
    distance2 = (xs - cell[..., 0, None, None]) ** 2 + (ys - cell[..., 1, None, None]) ** 2
    gauss = torch.exp(-distance2 / (2 * sigma[..., None, None] ** 2)) * valid[..., None, None]  # N x M x H x W
    one_hot = F.one_hot(labels.clamp(min=0), classes).to(boxes.dtype) * valid[..., None]  # N x M x C
    heatmap = (gauss[:, :, None] * one_hot[..., None, None]).amax(dim=1)  # N x C x H x W
    return heatmap, cell.long(), centre - cell, size_px, valid


def _focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4), summed and divided by the object count."""
    positive = target.eq(1).to(logits.dtype)
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = torch.sigmoid(logits)
    positive_loss = positive * (1 - p) ** 2 * log_p
    negative_loss = (1 - positive) * (1 - target) ** 4 * p ** 2 * log_not_p
    return -(positive_loss.sum() + negative_loss.sum()) / positive.sum().clamp(min=1)


def detection_loss(outputs: dict[str, torch.Tensor], boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Focal loss on the heatmap plus L1 on size (pixels) and offset (cells) at the object centres, for
    padded N x M x 4 xyxy pixel boxes and N x M labels (-1 pads)."""
    logits = outputs["heatmap"]
    heatmap, cell, offset, size_px, valid = _targets(boxes.to(logits.dtype), labels, classes=logits.shape[1],
                                                     grid=tuple(logits.shape[-2:]))
    image = torch.arange(len(labels), device=labels.device)[:, None].expand_as(labels)[valid]
    x, y = cell[..., 0][valid], cell[..., 1][valid]
    size_at = outputs["size"].permute(0, 2, 3, 1)[image, y, x]  # objects x 2
    offset_at = outputs["offset"].permute(0, 2, 3, 1)[image, y, x]
    objects = max(int(valid.sum()), 1)
    size_loss = F.l1_loss(size_at, size_px[valid], reduction="sum") / (2 * objects)
    offset_loss = F.l1_loss(offset_at, offset[valid], reduction="sum") / (2 * objects)
    return _focal_loss(logits, heatmap) + _SIZE_WEIGHT * size_loss + _OFFSET_WEIGHT * offset_loss


def training_loss(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """detection_loss as a recipe's train stage calls a user loss: outputs and targets by name."""
    return detection_loss(outputs, targets["boxes"], targets["labels"])


# Decoding, numpy only.

def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))  # clipped: no overflow warning on large logits


def _max_pool3(x: np.ndarray) -> np.ndarray:
    """3 x 3 max pool, stride 1, over the last two axes (edges padded with -inf)."""
    height, width = x.shape[-2:]
    padded = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)], constant_values=-np.inf)
    return np.max([padded[..., dy:dy + height, dx:dx + width] for dy in range(3) for dx in range(3)], axis=0)


def _decode_one(scores: np.ndarray, size_px: np.ndarray, offset: np.ndarray, *, top_k: int,
                score_threshold: float) -> dict[str, np.ndarray]:
    classes, height, width = scores.shape
    flat = scores.reshape(-1)
    k = min(top_k, flat.size)
    best = np.argpartition(-flat, k - 1)[:k] if k else np.zeros(0, dtype=np.int64)
    best = best[np.argsort(-flat[best], kind="stable")]
    best = best[flat[best] >= score_threshold]
    label, y, x = np.unravel_index(best, (classes, height, width))
    centre_x = (x + offset[0, y, x]) * OUTPUT_STRIDE
    centre_y = (y + offset[1, y, x]) * OUTPUT_STRIDE
    half_w, half_h = np.maximum(size_px[0, y, x], 0) / 2, np.maximum(size_px[1, y, x], 0) / 2
    boxes = np.stack([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], axis=1)
    boxes = np.clip(boxes, 0, [width * OUTPUT_STRIDE, height * OUTPUT_STRIDE] * 2)
    return {"boxes": boxes.astype(np.float32).reshape(-1, 4), "scores": flat[best].astype(np.float32),
            "labels": label.astype(np.int64)}


def decode(outputs: dict[str, np.ndarray], *, top_k: int = 20,
           score_threshold: float = 0.05) -> list[dict[str, np.ndarray]]:
    """Model outputs (numpy, N x ...) -> per image {'boxes': K x 4 xyxy input pixels, 'scores', 'labels'}:
    sigmoid, peaks that are the maximum of their 3 x 3 neighbourhood (CenterNet's stand-in for NMS), the
    `top_k` best over all classes, those scoring at least `score_threshold`."""
    scores = _sigmoid(np.asarray(outputs["heatmap"], dtype=np.float32))
    scores = np.where(scores == _max_pool3(scores), scores, 0.0)
    size_px, offset = np.asarray(outputs["size"]), np.asarray(outputs["offset"])
    return [_decode_one(scores[i], size_px[i], offset[i], top_k=top_k, score_threshold=score_threshold)
            for i in range(len(scores))]
