"""Data of any kind: named input arrays (any dtype and shape, several inputs) plus optional targets.

From an npz holding arrays named after the model's inputs (the rest are targets), or from a user's
`package.module:function` returning arrays, a sequence of batches, or a torch Dataset. Unnamed targets are
`labels` when integer (classes, masks) and `targets` otherwise; named ones keep their names (`boxes` and
`labels` for detection). No preprocessing: a user's own function does its own.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgepress.core.archives import check_npz
from edgepress.core.errors import UserError
from edgepress.core.data_spec import DatasetSpec

__all__ = ["ArraySet", "load_arrays", "split_named", "is_image_npz"]

# What a one-input model's input may be called in an npz that does not use the model's own name.
SINGLE_INPUT_NAMES = ("inputs", "input", "x")
NPZ_FIX = "save it with np.savez(path, <input name>=N x ..., labels=N or targets=N x ...)"


@dataclass(frozen=True)
class ArraySet:
    name: str
    feeds: dict[str, np.ndarray]  # the model's inputs, in its order, N first
    targets: dict[str, np.ndarray] | None  # N first; None when the set has none (judged against the reference)

    def __len__(self) -> int:
        return len(next(iter(self.feeds.values())))

    def sample(self, index: int = 0) -> dict[str, np.ndarray]:
        return {name: values[index] for name, values in self.feeds.items()}

    def head(self, count: int | None) -> "ArraySet":
        if count is None:
            return self
        return ArraySet(self.name, {k: v[:count] for k, v in self.feeds.items()},
                        None if self.targets is None else {k: v[:count] for k, v in self.targets.items()})


def is_image_npz(path: Path) -> bool:
    """An npz of uint8 `images` and `labels`: the image classifier's format, preprocessed by [data.preprocess]."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = {n.removesuffix(".npy") for n in archive.namelist()}
    except (OSError, zipfile.BadZipFile):
        return True  # the image reader says what is wrong with it, as before
    return "images" in names


def load_arrays(spec: DatasetSpec, *, input_names: tuple[str, ...]) -> ArraySet:
    name = spec.display_name
    if spec.entry is not None:
        named = _from_entry(spec)
    else:
        named = _read_npz(Path(spec.path))
    feeds, targets = split_named(named, input_names=input_names, source=name)
    found = ArraySet(name, feeds, targets or None)
    return found.head(spec.limit) if spec.limit is not None and spec.limit < len(found) else found


def split_named(named: dict[str, np.ndarray], *, input_names: tuple[str, ...], source: str
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(feeds in the model's input order, targets): arrays named after the model's inputs feed it."""
    numbered = [f"input_{i}" for i in range(len(input_names))]  # a function's tuple of inputs, in order
    if all(n in named for n in input_names):
        feeds = {n: named[n] for n in input_names}
    elif len(input_names) > 1 and all(n in named for n in numbered):
        feeds = {n: named[k] for n, k in zip(input_names, numbered)}
    elif len(input_names) == 1 and (alias := next((n for n in SINGLE_INPUT_NAMES if n in named), None)):
        feeds = {input_names[0]: named[alias]}
    else:
        missing = [n for n in input_names if n not in named]
        raise UserError(f"data {source!r} has arrays {sorted(named) or 'none'} but the model's inputs are "
                        f"{list(input_names)} ({', '.join(missing)} missing)",
                        fix="name each input array after the model's input (its forward argument)")
    used = set(feeds) | set(SINGLE_INPUT_NAMES) | set(numbered)
    targets = {k: v for k, v in named.items() if k not in used}
    _check_lengths({**feeds, **targets}, source=source)
    return feeds, targets


def _check_lengths(arrays: dict[str, np.ndarray], *, source: str) -> None:
    for key, values in arrays.items():
        if values.ndim == 0:
            raise UserError(f"data {source!r} array {key!r} is a single number, not one value per sample",
                            fix="give every array the samples on its first axis")
        if values.dtype.kind not in "biuf":
            raise UserError(f"data {source!r} array {key!r} holds {values.dtype}, not numbers",
                            fix="store inputs and targets as numeric arrays")
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            raise UserError(f"data {source!r} array {key!r} holds NaN or infinite values",
                            fix="clean the data (or mark missing targets another way) before edgepress reads it")
    lengths = {key: len(values) for key, values in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise UserError(f"data {source!r} arrays have different sample counts: {lengths}",
                        fix="give every input and target array the same first axis")
    if not lengths or not next(iter(lengths.values())):
        raise UserError(f"data {source!r} holds no samples", fix="point the recipe at a set with samples")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UserError(f"dataset file {path} does not exist", fix="check the path (use {data}/... for shared data)")
    check_npz(path, what="dataset file", fix=NPZ_FIX)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, MemoryError) as exc:
        raise UserError(f"{path.name} is not a readable npz archive ({type(exc).__name__}: {exc})",
                        fix=NPZ_FIX) from None


def _from_entry(spec: DatasetSpec) -> dict[str, np.ndarray]:
    from edgepress.models.zoo import import_entry

    function = import_entry(spec.entry, role="data entry")
    try:
        value = function(**spec.kwargs)
    except Exception as exc:  # the user's loader failing: their bug, in one line
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        raise UserError(f"data entry {spec.entry!r} failed: {type(exc).__name__}: {reason}",
                        fix="fix the function, or its [data] kwargs") from None
    try:
        return _named(value)
    except (TypeError, ValueError) as exc:
        raise UserError(f"data entry {spec.entry!r} returned data edgepress cannot read: {exc}",
                        fix="return a dict of arrays, (inputs, targets), a list of such batches, or a torch "
                            "Dataset of (input, target) samples") from None


def _named(value: Any) -> dict[str, np.ndarray]:
    """A user function's result as named N-first arrays."""
    if isinstance(value, dict):
        return {str(k): _array(v) for k, v in value.items()}
    if isinstance(value, tuple) and len(value) == 2:
        inputs, targets = value
        return {**_inputs_named(inputs), **_targets_named(targets)}
    if _is_torch_dataset(value):
        samples = [_named(_batched(value[i])) for i in range(len(value))]
        return _concatenate(samples)
    if isinstance(value, (list, tuple)) or hasattr(value, "__iter__"):
        batches = [_named(batch if isinstance(batch, (dict, tuple)) else (batch, None)) for batch in value]
        if not batches:
            raise ValueError("it holds no batches")
        return _concatenate(batches)
    return _inputs_named(value)


def _batched(sample: Any) -> Any:
    """One Dataset sample with a batch axis of 1 added to every array in it."""
    if isinstance(sample, dict):
        return {k: _array(v)[None] for k, v in sample.items()}
    if isinstance(sample, tuple):
        return tuple(None if part is None else _batched(part) if isinstance(part, dict) else _array(part)[None]
                     for part in sample)
    return (_array(sample)[None], None)


def _inputs_named(inputs: Any) -> dict[str, np.ndarray]:
    if isinstance(inputs, dict):
        return {str(k): _array(v) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):  # several inputs, in the model's order: named when split
        return {f"input_{i}": _array(v) for i, v in enumerate(inputs)}
    return {"inputs": _array(inputs)}


def _targets_named(targets: Any) -> dict[str, np.ndarray]:
    if targets is None:
        return {}
    if isinstance(targets, dict):
        return {str(k): _array(v) for k, v in targets.items()}
    array = _array(targets)
    return {"labels" if array.dtype.kind in "iu" else "targets": array}


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype == np.float64:
        array = array.astype(np.float32)  # what the models and ONNX Runtime take
    return array


def _concatenate(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    keys = list(parts[0])
    if any(list(p) != keys for p in parts):
        raise ValueError("its batches or samples do not all hold the same arrays")
    return {key: np.concatenate([p[key] for p in parts]) for key in keys}


def _is_torch_dataset(value: Any) -> bool:
    try:
        from torch.utils.data import Dataset
    except ImportError:
        return False
    return isinstance(value, Dataset) and hasattr(value, "__len__")
