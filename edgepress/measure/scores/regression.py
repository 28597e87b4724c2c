"""Predicted values against true ones: MAE, RMSE (in the targets' own unit) and R2."""

from __future__ import annotations

import numpy as np

__all__ = ["regression_errors"]


def regression_errors(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    predicted = predicted.reshape(truth.shape).astype(np.float64)
    truth = truth.astype(np.float64)
    error = predicted - truth
    spread = float(np.sum(np.square(truth - truth.mean(axis=0))))
    # R2 of a set whose targets are all equal is undefined; 0 says "no better than the mean" without a NaN.
    r2 = 1.0 - float(np.sum(np.square(error))) / spread if spread > 0 else 0.0
    return {"mae": float(np.mean(np.abs(error))), "rmse": float(np.sqrt(np.mean(np.square(error)))), "r2": r2}
