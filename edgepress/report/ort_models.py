"""The .ort models a run shipped, found from what the user names: a run folder, its report.json, or .ort files.
Each one is checked to be the file the run recorded and one ONNX Runtime can read, so that a config merged from
them describes what was measured."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from edgepress.core.errors import UserError
from edgepress.io.operators import operators
from edgepress.report.model import read_report
from edgepress.report.ort_section import ort_stages
from edgepress.runtime.device_runner import is_ort_path

_WHAT = "a run folder of `edgepress run`, its report.json, or .ort files"


def ort_models(sources: Iterable[Path]) -> list[Path]:
    """Every .ort the sources name, in order, each once (the same file named twice is one model)."""
    found: dict[Path, Path] = {}
    for source in sources:
        for model in _models_of(Path(source)):
            found.setdefault(model.resolve(), model)
    if not found:
        raise UserError("no model to merge", fix=f"pass {_WHAT}")
    for model in found.values():
        _check_readable(model)
    return list(found.values())


def _models_of(source: Path) -> list[Path]:
    if source.is_dir():
        report = source / "report.json"
        if not report.is_file():
            raise UserError(f"folder {source} holds no report.json", fix=f"pass {_WHAT}")
        return _from_report(report)
    if not source.exists():
        raise UserError(f"{source} does not exist", fix=f"pass {_WHAT}")
    if is_ort_path(source):
        return [source]
    return _from_report(source)  # anything else must be a report: read_report says so in one line if not


def _from_report(path: Path) -> list[Path]:
    report = read_report(path)
    staged = ort_stages(report)
    if not staged:
        raise UserError(f"run {report.name!r} ({path}) has no ORT-format stage",
                        fix='add [[stages]] kind = "ort_format" to its recipe and rerun it, or pass .ort files')
    models = []
    for stage in staged:
        model = path.parent / stage.artifact
        if not model.is_file():
            raise UserError(f"{model}, stage {stage.name!r} of {path}, is missing",
                            fix="rerun the recipe (a kept stage is not redone), or pass the .ort files themselves")
        if hashlib.sha256(model.read_bytes()).hexdigest() != stage.sha256:
            # Another file than the one the run evaluated and timed: its operators are not the report's.
            raise UserError(f"{model} is not the file stage {stage.name!r} of {path} recorded (sha256 differs)",
                            fix="rerun the recipe, or pass the .ort file itself to merge it as it is")
        models.append(model)
    return models


def _check_readable(model: Path) -> None:
    try:
        operators(model)
    except Exception as exc:  # ONNX Runtime's reader raises what it meets: a bad header, a short buffer
        reason = " ".join(str(exc).split())[:200]
        raise UserError(f"{model} is not an ORT format model ONNX Runtime can read ({reason})",
                        fix="pass the model.ort an ort_format stage wrote, or rerun that stage") from None
