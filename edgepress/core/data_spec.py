"""The recipe's data sets and their preprocessing, as the loaders read them (models/data.py, io/arrays.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepress.core.schema import SAMPLES, bounded, within


@dataclass(frozen=True)
@bounded
class DatasetSpec:
    """A built-in `dataset` ('cifar10:test_raw_1017', 'digits:test', 'pydoc_topics:test', ...), an npz `path`
    (uint8 `images` + `labels`, or arrays named after the model's inputs plus targets), IDX `images`+`labels`, a
    text file of `sentences` (one per line), or a user's `entry` ('package.module:function', called with
    `kwargs`) returning arrays, a sequence of batches or a torch Dataset (edgepress/io/arrays.py)."""

    dataset: str | None = None
    path: Path | None = None
    images: Path | None = None
    labels: Path | None = None
    sentences: Path | None = None
    entry: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    limit: int | None = within(*SAMPLES, default=None)
    label: str | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("dataset", "path", "images", "sentences", "entry") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of dataset, path (npz), images (+labels, IDX), sentences (text) or "
                             f"entry ('package.module:function'); got {given or 'none'}")
        if (self.images is None) != (self.labels is None):
            raise ValueError("IDX data needs both images and labels")
        if self.entry is not None and (":" not in self.entry or not self.entry.rpartition(":")[2].isidentifier()):
            raise ValueError(f"entry {self.entry!r} must look like 'package.module:function'")
        if self.kwargs and self.entry is None:
            raise ValueError("kwargs are for a data entry's function: set entry too, or drop them")

    @property
    def display_name(self) -> str:
        if self.label:
            return self.label
        if self.dataset or self.entry:
            return self.dataset or self.entry
        return Path(self.path or self.images or self.sentences).name


@dataclass(frozen=True)
class PreprocessSpec:
    """uint8 pixels -> float: x * scale, then (x - mean) / std per channel."""

    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
