"""Class scores N x K against labels (top-1, top-5) and against the reference's top-1 (agreement)."""

from __future__ import annotations

import numpy as np

__all__ = ["accuracy", "agreement", "TOP5_MIN_CLASSES"]

TOP5_MIN_CLASSES = 6  # with 5 classes or fewer, top-5 accuracy is 100 % and says nothing


def accuracy(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    found = {"accuracy": float(np.mean(scores.argmax(axis=1) == labels))}
    if scores.shape[1] >= TOP5_MIN_CLASSES:
        top5 = np.argpartition(-scores, 4, axis=1)[:, :5]
        found["top5_accuracy"] = float(np.mean(np.any(top5 == labels[:, None], axis=1)))
    return found


def agreement(scores: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    return {"agreement": float(np.mean(scores.argmax(axis=1) == reference.argmax(axis=1)))}
