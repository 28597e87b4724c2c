"""The recipe's data, loaded once, preprocessed, and checked against the model's input shape."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from edgepress.errors import UserError
from edgepress.models.data import load_dataset, preprocess
from edgepress.models.text import is_text_source, load_text_dataset, tokenize
from edgepress.recipe import DataSpec, DatasetSpec


@dataclass(frozen=True)
class LabeledSet:
    name: str
    inputs: np.ndarray  # float32, N x C x H x W
    labels: np.ndarray  # int64, N

    def sample(self, index: int = 0) -> np.ndarray:
        """One input without the batch axis: what latency is timed on."""
        return self.inputs[index]


@dataclass(frozen=True)
class TextSet:
    name: str
    sentences: tuple[str, ...]
    feeds: dict[str, np.ndarray]  # input_ids, attention_mask, token_type_ids: int64, N x sequence length

    def __len__(self) -> int:
        return len(self.sentences)

    def sample(self, index: int = 0) -> dict[str, np.ndarray]:
        return {name: values[index] for name, values in self.feeds.items()}


class DataProvider:
    def __init__(self, spec: DataSpec, *, input_shape: tuple[int, ...] | None, tokenizer: Path | None = None) -> None:
        self.spec = spec
        self.input_shape = input_shape
        self.tokenizer = tokenizer

    def _load(self, dataset: DatasetSpec, role: str) -> LabeledSet | TextSet:
        if self.spec.modality == "text":
            return self._load_text(dataset, role)
        if is_text_source(dataset):
            raise UserError(f"{role} set {dataset.display_name!r} holds sentences; this recipe's model reads images",
                            fix='for a text model set metric = "cosine" in [data]')
        raw = load_dataset(dataset)
        inputs = preprocess(images=raw.images, spec=self.spec.preprocess)
        if self.input_shape is not None and tuple(inputs.shape[1:]) != tuple(self.input_shape):
            raise UserError(f"{role} set {dataset.display_name!r} has inputs of shape {list(inputs.shape[1:])} "
                            f"but the model takes {list(self.input_shape)}",
                            fix="choose data that fits the model, or correct model.input_shape")
        return LabeledSet(name=dataset.display_name, inputs=inputs, labels=raw.labels.astype(np.int64))

    def _load_text(self, dataset: DatasetSpec, role: str) -> TextSet:
        if self.tokenizer is None:
            raise UserError(f"{role} set {dataset.display_name!r} is text, and the model names no tokenizer",
                            fix="set [data] tokenizer = the model's tokenizer.json")
        if self.input_shape is None or len(self.input_shape) != 1:
            raise UserError(f"a text model has one sequence axis; its input shape is {list(self.input_shape or [])}",
                            fix="set [model] input_shape = [sequence length], e.g. [128]")
        sentences = load_text_dataset(dataset)
        feeds = tokenize(sentences, tokenizer_path=self.tokenizer, sequence_length=self.input_shape[0])
        return TextSet(name=dataset.display_name, sentences=tuple(sentences), feeds=feeds)

    @cached_property
    def evaluation(self) -> tuple[LabeledSet | TextSet, ...]:
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

    def check_labels(self, classes: int) -> None:
        """Every loaded labelled set's labels must be classes the model scores: accuracy and cross-entropy
        index the model's outputs by them (torch's cross-entropy raised IndexError mid-training)."""
        for role in ("evaluation", "calibration", "training"):
            loaded = self.__dict__.get(role, ())  # cached_property: only the sets load_all read
            for part in loaded if isinstance(loaded, tuple) else (loaded,):
                if isinstance(part, LabeledSet) and int(part.labels.max()) >= classes:
                    raise UserError(f"{role} set {part.name!r} has label {int(part.labels.max())}, but the model "
                                    f"scores {classes} classes (0..{classes - 1})",
                                    fix=f"use data labelled 0..{classes - 1}, or build the model with "
                                    f"{int(part.labels.max()) + 1} or more classes ([model] kwargs)")

    def load_all(self, *, calibration: bool, training: bool) -> None:
        """Load up front what the stages will need, so bad data fails before any work."""
        _ = self.evaluation
        if calibration:
            _ = self.calibration
        if training:
            _ = self.training
