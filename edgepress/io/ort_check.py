"""An ORT-format model (.ort) from outside, checked on the host before any ONNX Runtime session opens it.

ONNX Runtime reads a file as ORT format by its name (a path ending in .ort) and as an ONNX protobuf otherwise,
so a model whose name and bytes disagree is named here, with the rename that mends it. What is checked is what
edgepress/io/ort_wire.py reads: the identifier, the tables down to the graph and its outputs, all inside the file
(a truncated download fails here). Whether the device's onnxruntime reads this ORT format version is for the
device to say: the runner names its version and the fix. ORT format keeps every weight inside the file, so
nothing travels with it.
"""

from __future__ import annotations

from pathlib import Path

from edgepress.core.errors import UserError
from edgepress.io import onnx_wire, ort_wire
from edgepress.runtime.session import NOT_ORT_FIX, check_model_path

ORT_NAMED_ONNX_FIX = ("rename it to {stem}.onnx, or convert it to ORT format (the ort_format stage, or "
                      "python -m onnxruntime.tools.convert_onnx_models_to_ort)")


def check_ort_file(path: Path, *, what: str = "ORT-format model") -> tuple[Path, ...]:
    """Refuse `path` unless it is an ORT-format model with a graph; returns the files that travel with it (none)."""
    path = Path(path)
    check_model_path(path, what=what)
    try:
        model = ort_wire.read_model(path)
    except ort_wire.NotOrt:
        if _is_onnx(path):
            raise UserError(f"{what} {path} is an ONNX model (protobuf) named .ort; ONNX Runtime reads a .ort file as "
                            "ORT format", fix=ORT_NAMED_ONNX_FIX.format(stem=path.stem)) from None
        raise UserError(f"{what} {path} is not an ORT-format model (it lacks the file identifier 'ORTM')",
                        fix=NOT_ORT_FIX) from None
    except (ort_wire.WireError, OSError) as exc:
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise UserError(f"{what} {path} is not a valid ORT-format model (it is truncated or corrupt: {reason})",
                        fix=NOT_ORT_FIX) from None
    if not model.format_version.isdigit():
        raise UserError(f"{what} {path} names no ORT format version (it says {model.format_version!r})",
                        fix=NOT_ORT_FIX)
    if not model.has_graph or not model.graph_outputs:
        raise UserError(f"{what} {path} is not a valid ORT-format model (it has no graph with outputs)",
                        fix=NOT_ORT_FIX)
    return ()


def _is_onnx(path: Path) -> bool:
    """Whether the bytes read as an ONNX model with a graph: the tell of an .onnx file given the wrong name."""
    try:
        found = onnx_wire.read_model(path)
    except (onnx_wire.WireError, OSError):
        return False
    return found.ir_version > 0 and found.has_graph and found.graph_outputs > 0
