"""Per-pixel class scores N x K x H x W against label masks N x H x W: mean IoU over classes, pixel accuracy."""

from __future__ import annotations

import numpy as np

__all__ = ["segmentation_scores", "IGNORE_LABEL"]

IGNORE_LABEL = 255  # pixels labelled so (borders, "don't care") count nowhere, as in VOC and Cityscapes


def segmentation_scores(scores: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    classes = scores.shape[1]
    predicted = scores.argmax(axis=1).reshape(-1)
    truth = masks.reshape(-1).astype(np.int64)
    kept = truth != IGNORE_LABEL
    predicted, truth = predicted[kept], truth[kept]
    confusion = np.bincount(truth * classes + predicted, minlength=classes * classes).reshape(classes, classes)
    intersection = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - intersection
    present = union > 0  # a class in neither prediction nor truth has no IoU to average
    miou = float(np.mean(intersection[present] / union[present])) if present.any() else 1.0
    return {"miou": miou, "pixel_accuracy": float(intersection.sum() / max(len(truth), 1))}
