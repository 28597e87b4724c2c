"""Tabular models and data for the any-model recipes: scikit-learn's bundled diabetes set (442 patients, 10
standardised features, disease progression after one year, 25-346), read locally, never downloaded.

`diabetes` gives one input of 10 features; `diabetes_two_inputs` splits them into two inputs (demographics:
age, sex, BMI, blood pressure; blood: the six serum measurements), for a model with two inputs."""

from __future__ import annotations

import numpy as np
from torch import nn

__all__ = ["diabetes", "diabetes_two_inputs", "mlp_regressor", "two_branch_regressor"]

TEST_SHARE = 0.2
_SPLIT_SEED = 0
# The target's mean and spread over the whole set: the last layer starts at that scale and offset, so the models
# predict in the target's own unit (MAE budgets read in progression points) with plain Linear layers only.
TARGET_MEAN, TARGET_SCALE = 152.0, 77.0


def _table() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_diabetes  # bundled with scikit-learn: no download

    found = load_diabetes()
    return found.data.astype(np.float32), found.target.astype(np.float32)


def _split(part: str, count: int) -> np.ndarray:
    if part not in ("train", "test"):
        raise ValueError(f"part must be 'train' or 'test', got {part!r}")
    order = np.random.RandomState(_SPLIT_SEED).permutation(count)
    test = int(round(count * TEST_SHARE))
    return np.sort(order[:test] if part == "test" else order[test:])


def diabetes(part: str = "train") -> dict[str, np.ndarray]:
    """{'input': N x 10 features, 'targets': N x 1 progression}; a fixed 80/20 split."""
    features, target = _table()
    rows = _split(part, len(target))
    return {"input": features[rows], "targets": target[rows, None]}


def diabetes_two_inputs(part: str = "train") -> dict[str, np.ndarray]:
    found = diabetes(part)
    return {"demographics": found["input"][:, :4], "blood": found["input"][:, 4:], "targets": found["targets"]}


def _in_target_units(layer: nn.Linear) -> nn.Linear:
    import torch

    with torch.no_grad():
        layer.weight.mul_(TARGET_SCALE)
        layer.bias.fill_(TARGET_MEAN)
    return layer


def mlp_regressor(features: int = 10, hidden: int = 64) -> nn.Module:
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         _in_target_units(nn.Linear(hidden, 1)))


mlp_regressor.input_shape = (10,)


class TwoBranchRegressor(nn.Module):
    """Each input through its own layer, joined: a model whose forward takes two named inputs."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.demographics = nn.Sequential(nn.Linear(4, hidden), nn.ReLU())
        self.blood = nn.Sequential(nn.Linear(6, hidden), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), _in_target_units(nn.Linear(hidden, 1)))

    def forward(self, demographics, blood):
        return self.head(torch_cat(self.demographics(demographics), self.blood(blood)))


def torch_cat(a, b):
    import torch

    return torch.cat([a, b], dim=1)


def two_branch_regressor(hidden: int = 32) -> nn.Module:
    return TwoBranchRegressor(hidden=hidden)


two_branch_regressor.input_shape = (4,)
