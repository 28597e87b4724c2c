"""The recipe's [data] section (DataSpec), and its data loaded once, preprocessed, and checked against the model's input shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from functools import cached_property
from pathlib import Path

import numpy as np

from edgepress.core.data_spec import DatasetSpec, PreprocessSpec
from edgepress.core.errors import UserError
from edgepress.core.schema import BATCH, bounded, closest, within
from edgepress.io.arrays import ArraySet, is_image_npz, load_arrays
from edgepress.measure import metrics
from edgepress.models.data import load_dataset, preprocess
from edgepress.models.text import is_text_source, load_text_dataset, tokenize


@dataclass(frozen=True)
@bounded
class DataSpec:
    evaluation: tuple[DatasetSpec, ...]
    calibration: DatasetSpec | None = None
    training: DatasetSpec | tuple[DatasetSpec, ...] | None = None  # several sets are concatenated
    preprocess: PreprocessSpec = PreprocessSpec()
    # How every stage is judged: a key of edgepress/measure/metrics.py's table ("top1", "cosine" for text embeddings,
    # "fidelity", "regression", "segmentation", ...), a user's "package.module:function" (with
    # higher_is_better), or "auto": top1 for class scores with labels, else fidelity to the reference stage.
    metric: str = "auto"
    output: str | None = None  # the model output a single-output metric reads (a multi-output model's logits)
    # detection: "package.module:function(outputs) -> per-image {'boxes','scores','labels'}" for a model whose
    # outputs are raw heads (its decoding runs on the host, on every stage's outputs alike)
    decode: str | None = None
    higher_is_better: bool | None = None  # a user metric's direction: required for one, refused otherwise
    tokenizer: Path | None = None  # text: a tokenizer.json; default the zoo model's own
    batch_size: int = within(*BATCH, default=256)

    def __post_init__(self) -> None:
        if not self.evaluation:
            raise ValueError("at least one [[data.evaluation]] set is needed")
        if self.training == ():
            raise ValueError("training lists no sets: give one set, a list of sets, or drop the key")
        if self.tokenizer is not None and self.metric != "cosine":
            raise ValueError('tokenizer is for text models: set metric = "cosine" too, or drop it')
        user = ":" in self.metric
        if not user and self.metric != "auto" and self.metric not in metrics.METRICS:
            guess = closest(self.metric, [*metrics.METRICS, "auto"])
            raise ValueError(f"unknown metric {self.metric!r}: " + (f"did you mean {guess!r}?" if guess else
                             f"use one of {', '.join(metrics.METRICS)}, auto, or 'package.module:function'"))
        if user and self.higher_is_better is None:
            raise ValueError(f"metric {self.metric!r} is your function: say its direction with higher_is_better = "
                             "true or false")
        if not user and self.higher_is_better is not None:
            raise ValueError("higher_is_better is for a user metric ('package.module:function'); built-in metrics "
                             "know their direction")
        if self.decode is not None and self.metric != "detection":
            raise ValueError('decode turns a detector\'s outputs into boxes: set metric = "detection" too, or drop it')
        if self.decode is not None and (":" not in self.decode or not self.decode.rpartition(":")[2].isidentifier()):
            raise ValueError(f"decode {self.decode!r} must look like 'package.module:function'")
        if user and not self.metric.rpartition(":")[2].isidentifier():
            raise ValueError(f"metric {self.metric!r} must look like 'package.module:function'")

    @property
    def modality(self) -> Literal["image", "text"]:
        return "text" if self.metric == "cosine" else "image"

    def user_metric(self) -> metrics.Metric | None:
        """A user metric's table entry (its function imported later, at check); None for a built-in one."""
        if ":" not in self.metric:
            return None
        return metrics.user_metric(self.metric, None, higher_is_better=bool(self.higher_is_better))


@dataclass(frozen=True)
class LabeledSet:
    """Preprocessed images and their class labels: the image classifier's set."""

    name: str
    inputs: np.ndarray  # float32, N x C x H x W
    labels: np.ndarray  # int64, N

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        return {IMAGE_INPUT: self.inputs}

    @property
    def targets(self) -> dict[str, np.ndarray]:
        return {"labels": self.labels}

    def sample(self, index: int = 0) -> np.ndarray:
        """One input without the batch axis: what latency is timed on."""
        return self.inputs[index]

    def head(self, count: int | None) -> "LabeledSet":
        return self if count is None else LabeledSet(self.name, self.inputs[:count], self.labels[:count])


@dataclass(frozen=True)
class TextSet:
    name: str
    sentences: tuple[str, ...]
    feeds: dict[str, np.ndarray]  # input_ids, attention_mask, token_type_ids: int64, N x sequence length

    def __len__(self) -> int:
        return len(self.sentences)

    targets = None  # judged against the reference's embeddings

    def sample(self, index: int = 0) -> dict[str, np.ndarray]:
        return {name: values[index] for name, values in self.feeds.items()}

    def head(self, count: int | None) -> "TextSet":
        if count is None:
            return self
        return TextSet(self.name, self.sentences[:count], {k: v[:count] for k, v in self.feeds.items()})


IMAGE_INPUT = "input"  # a one-input model's input, as export names it
Samples = LabeledSet | TextSet | ArraySet  # every set has name, feeds, targets, len, sample() and head()


class DataProvider:
    def __init__(self, spec: DataSpec, *, input_shape: tuple[int, ...] | None, tokenizer: Path | None = None,
                 input_names: tuple[str, ...] = (IMAGE_INPUT,)) -> None:
        self.spec = spec
        self.input_shape = input_shape
        self.tokenizer = tokenizer
        self.input_names = input_names

    def _load(self, dataset: DatasetSpec, role: str) -> Samples:
        if self.spec.modality == "text":
            return self._load_text(dataset, role)
        if dataset.entry is not None or (dataset.path is not None and not is_image_npz(dataset.path)):
            return self._load_arrays(dataset, role)
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

    def _load_arrays(self, dataset: DatasetSpec, role: str) -> ArraySet:
        found = load_arrays(dataset, input_names=self.input_names)
        first = next(iter(found.feeds.values()))
        if len(self.input_names) == 1 and self.input_shape is not None and tuple(first.shape[1:]) != tuple(self.input_shape):
            raise UserError(f"{role} set {found.name!r} has inputs of shape {list(first.shape[1:])} "
                            f"but the model takes {list(self.input_shape)}",
                            fix="choose data that fits the model, or correct model.input_shape")
        return found

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
    def evaluation(self) -> tuple[Samples, ...]:
        return tuple(self._load(d, "evaluation") for d in self.spec.evaluation)

    @cached_property
    def calibration(self) -> Samples:
        if self.spec.calibration is None:
            raise UserError("this recipe has a stage that needs calibration data but [data.calibration] is missing",
                            fix='add [data.calibration] with dataset = "..." or path = "..."')
        return self._load(self.spec.calibration, "calibration")

    @cached_property
    def training(self) -> Samples:
        if self.spec.training is None:
            raise UserError("this recipe has a stage that needs training data but [data.training] is missing",
                            fix='add [data.training] with dataset = "..." or path = "..."')
        specs = self.spec.training if isinstance(self.spec.training, tuple) else (self.spec.training,)
        parts = [self._load(spec, "training") for spec in specs]
        if len(parts) == 1:
            return parts[0]
        name = " + ".join(p.name for p in parts)
        if all(isinstance(p, LabeledSet) for p in parts):
            return LabeledSet(name=name, inputs=np.concatenate([p.inputs for p in parts]),
                              labels=np.concatenate([p.labels for p in parts]))
        if not all(isinstance(p, ArraySet) and list(p.feeds) == list(parts[0].feeds)
                   and list(p.targets or {}) == list(parts[0].targets or {}) for p in parts):
            raise UserError(f"training sets {name!r} hold different kinds of data",
                            fix="give every [[data.training]] set the same arrays (or images and labels)")
        return ArraySet(name, {k: np.concatenate([p.feeds[k] for p in parts]) for k in parts[0].feeds},
                        {k: np.concatenate([p.targets[k] for p in parts]) for k in parts[0].targets or {}} or None)

    def check_labels(self, classes: int) -> None:
        """Every loaded labelled set's labels must be classes the model scores: accuracy and cross-entropy
        index the model's outputs by them (torch's cross-entropy raised IndexError mid-training)."""
        for role in ("evaluation", "calibration", "training"):
            loaded = self.__dict__.get(role, ())  # cached_property: only the sets load_all read
            for part in loaded if isinstance(loaded, tuple) else (loaded,):
                labels = (part.targets or {}).get("labels")
                if labels is None or not np.issubdtype(labels.dtype, np.integer):
                    continue
                if int(labels.min()) < 0 or int(labels.max()) >= classes:
                    wrong = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
                    raise UserError(f"{role} set {part.name!r} has label {wrong}, but the model "
                                    f"scores {classes} classes (0..{classes - 1})",
                                    fix=f"use data labelled 0..{classes - 1}, or build the model with "
                                    f"{int(labels.max()) + 1} or more classes ([model] kwargs)")

    def load_all(self, *, calibration: bool, training: bool) -> None:
        """Load up front what the stages will need, so bad data fails before any work."""
        _ = self.evaluation
        if calibration:
            _ = self.calibration
        if training:
            _ = self.training
