"""Which finished stage folders a rerun may keep, and which of their measurements it must redo.

A stage folder is kept when its key matches: a hash of the previous stage's key, the artifact it was made
from (by content), its own name, kind and settings, and the code and library versions. The first key also
covers the recipe's model, the user's model code (the entry's package, by content), the data (by content, as
loaded) and the evaluation settings. It leaves out what cannot change an artifact: the run's name, budgets,
targets and [bench], so a changed budget re-gates and a changed target re-times without redoing any stage
(a stage that times candidates on the primary target, such as a latency-searched prune, also keys on its
threads). Each target's numbers for a stage carry a key of their own (the stage's key, that target's
settings and [bench]): a rerun redoes the targets whose key changed, and only those. A stage folder only
appears complete (atomic rename) and is checked again on reuse: its artifact must still hash to what its
record says.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgepress.core import atomic
from edgepress.core import user_code
from edgepress.measure.datasets import DataProvider
from edgepress.core.errors import UserError
from edgepress.running.options import FROM
from edgepress.stages.code_version import code_version

STAGE_FILE = "stage.json"
OUTPUTS_FILE = "outputs.npz"  # the stage's evaluation outputs, per set: a reused reference stage needs them


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _data_digest(data: DataProvider) -> str:
    """The loaded data itself, so an edited file or another EDGEPRESS_DATA counts, whatever the paths say."""
    digest = hashlib.sha256()
    loaded = [("evaluation", s) for s in data.evaluation]
    loaded += [(role, data.__dict__[role]) for role in ("calibration", "training") if role in data.__dict__]
    for role, labeled in loaded:
        digest.update(f"{role}:{labeled.name}\0".encode())
        arrays = list(labeled.feeds.values()) + list((labeled.targets or {}).values())
        for array in arrays:
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def _hash(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def first_key(recipe, data: DataProvider) -> str:
    """The key of stage 00 (the source model)."""
    context = _plain(recipe)
    for dropped in ("path", "name", "budgets", "stages", "targets", "bench"):
        context.pop(dropped, None)
    for source in ("checkpoint", "onnx"):  # by content below: a moved file is the same model
        context["model"].pop(source, None)
    return _hash({"code": code_version(), "recipe": context, "data": _data_digest(data),
                  "user_code": user_code.digest(recipe.model.entry),
                  **{source: file_sha256(path) if path is not None else ""
                     for source, path in (("checkpoint", recipe.model.checkpoint), ("onnx", recipe.model.onnx))}})


def next_key(previous_key: str, *, source_sha256: str, name: str, kind: str, settings: Any,
             timing_threads: int | None = None, target_names: tuple[str, ...] | None = None) -> str:
    """`timing_threads`: the primary target's threads, for a stage whose output depends on timings there;
    `target_names`: the recipe's targets, for a stage whose output depends on their CPUs."""
    key = {"previous": previous_key, "source": source_sha256, "name": name, "kind": kind,
           "settings": _plain(settings), "timing_threads": timing_threads}
    if target_names is not None:  # absent otherwise, so earlier runs' keys still match
        key["targets"] = list(target_names)
    return _hash(key)


def target_key(stage_key: str, *, target: Any, bench: Any, reference_sha256: str | None = None) -> str:
    """What one target's numbers for a stage depend on: the stage, the target, [bench], and the ONNX reference
    it is timed against (a changed reference is a changed ratio); its budgets only gate them."""
    settings = _plain(target)
    settings.pop("budgets", None)
    key = {"stage": stage_key, "target": settings, "bench": _plain(bench)}
    if reference_sha256 is not None:
        key["latency_reference"] = reference_sha256
    return _hash(key)


@dataclass(frozen=True)
class Kept:
    record: dict[str, Any]
    outputs: list[dict[str, np.ndarray]]  # evaluation outputs by name, per set
    target_keys: dict[str, str]  # the key each target's entry in the record was measured under


def save(work: Path, *, key: str, record: dict[str, Any], outputs: list[dict[str, np.ndarray]] | None,
         target_keys: dict[str, str]) -> None:
    """Written last into the stage's working folder, before it is renamed into place (or, re-timed, into the
    kept folder: the record is replaced whole). `outputs` None keeps the saved ones."""
    if outputs is not None:
        with atomic.atomic_path(work / OUTPUTS_FILE) as tmp:
            with open(tmp, "wb") as fh:
                # "<set index>/<output name>": an output's name may be any string, the index comes first
                np.savez(fh, **{f"{i}/{name}": values for i, per_set in enumerate(outputs)
                                for name, values in per_set.items()})
    atomic.write_json(work / STAGE_FILE, {"key": key, "record": record, "target_keys": target_keys})


def reusable(folder: Path, *, key: str) -> Kept | None:
    """A complete stage folder with this key and an intact artifact, else None."""
    try:
        saved = json.loads((folder / STAGE_FILE).read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or saved.get("key") != key:
            return None
        record = saved["record"]
        artifact = folder / Path(record["artifact"]).name
        if file_sha256(artifact) != record["sha256"]:
            return None
        with np.load(folder / OUTPUTS_FILE, allow_pickle=False) as archive:
            outputs: list[dict[str, np.ndarray]] = []
            for key_name in archive.files:
                index, _, name = key_name.partition("/")
                while len(outputs) <= int(index):
                    outputs.append({})
                outputs[int(index)][name] = archive[key_name]
        target_keys = saved.get("target_keys", {})
        if not isinstance(target_keys, dict):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Kept(record=record, outputs=outputs, target_keys=target_keys)


def check_from(stage: str | None, names: list[str]) -> None:
    if stage is None or stage in names:
        return
    import difflib

    close = difflib.get_close_matches(stage, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UserError(f"{FROM} {stage!r} names no stage of this recipe",
                    fix=f"{hint}the stages are: {', '.join(names)}")
