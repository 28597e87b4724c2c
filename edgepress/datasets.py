"""The recipe's data, loaded once, preprocessed, and checked against the model's input shape."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from edgepress.errors import UserError
from edgepress.models.data import load_dataset, preprocess
from edgepress.recipe import DataSpec, DatasetSpec


@dataclass(frozen=True)
class LabeledSet:
    name: str
    inputs: np.ndarray  # float32, N x C x H x W
    labels: np.ndarray  # int64, N


class DataProvider:
    def __init__(self, spec: DataSpec, *, input_shape: tuple[int, ...] | None) -> None:
        self.spec = spec
        self.input_shape = input_shape

    def _load(self, dataset: DatasetSpec, role: str) -> LabeledSet:
        raw = load_dataset(dataset)
        inputs = preprocess(images=raw.images, spec=self.spec.preprocess)
        if self.input_shape is not None and tuple(inputs.shape[1:]) != tuple(self.input_shape):
            raise UserError(f"{role} set {dataset.display_name!r} has inputs of shape {list(inputs.shape[1:])} "
                            f"but the model takes {list(self.input_shape)}",
                            fix="choose data that fits the model, or correct model.input_shape")
        return LabeledSet(name=dataset.display_name, inputs=inputs, labels=raw.labels.astype(np.int64))

    @cached_property
    def evaluation(self) -> tuple[LabeledSet, ...]:
        return tuple(self._load(d, "evaluation") for d in self.spec.evaluation)

    @cached_property
    def calibration(self) -> LabeledSet:
        if self.spec.calibration is None:
            raise UserError("this recipe has a stage that needs calibration data but [data.calibration] is missing",
                            fix='add [data.calibration] with dataset = "..." or path = "..."')
        return self._load(self.spec.calibration, "calibration")

    @cached_property
    def training(self) -> LabeledSet:
        if self.spec.training is None:
            raise UserError("this recipe has a stage that needs training data but [data.training] is missing",
                            fix='add [data.training] with dataset = "..." or path = "..."')
        specs = self.spec.training if isinstance(self.spec.training, tuple) else (self.spec.training,)
        parts = [self._load(spec, "training") for spec in specs]
        if len(parts) == 1:
            return parts[0]
        return LabeledSet(name=" + ".join(p.name for p in parts), inputs=np.concatenate([p.inputs for p in parts]),
                          labels=np.concatenate([p.labels for p in parts]))

    def load_all(self, *, calibration: bool, training: bool) -> None:
        """Load up front what the stages will need, so bad data fails before any work."""
        _ = self.evaluation
        if calibration:
            _ = self.calibration
        if training:
            _ = self.training
