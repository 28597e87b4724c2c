"""An ONNX file from outside, checked on the host before any ONNX Runtime session opens it.

Where a model enters (a recipe's `[model] onnx`, `edgepress bench MODEL [--compare OTHER]`) it must be a
regular file of at most 2 GiB (protobuf's own limit, checked before anything reads it), parse as an ONNX
ModelProto with a graph (read without the onnx package, edgepress/io/onnx_wire.py, so that a device-only install
checks too), and keep any external data in plain files inside its own folder, within their bounds.
ONNX Runtime (1.32) and onnx.load refuse absolute and escaping external-data paths themselves; this check
says so up front in one line with the fix, and names the files bench must carry along with the model.
An ORT-format model is checked by edgepress/io/ort_check.py; one given where ONNX is read is named as such.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath
from typing import Sequence

from edgepress.io import onnx_wire
from edgepress.core.errors import UserError
from edgepress.runtime.device_runner import file_is_ort
from edgepress.runtime.session import NOT_ONNX_FIX, check_model_path, is_ort_path

_EXTERNAL = 1  # TensorProto.EXTERNAL


def check_onnx_file(path: Path, *, what: str = "ONNX model", takes_ort: bool = False) -> tuple[Path, ...]:
    """Refuse `path` unless it is a loadable ONNX file; returns the external data files it reads (often none).
    `takes_ort`: the caller also takes ORT-format models (bench), so an ORT file misnamed is told to be renamed."""
    path = Path(path)
    check_model_path(path, what=what, ort_format=False)
    _parse_whole(path, what=what, takes_ort=takes_ort)
    try:
        model = onnx_wire.read_model(path)
    except (onnx_wire.WireError, OSError) as exc:
        raise _unparsable(path, exc, what=what, takes_ort=takes_ort) from None
    if model.ir_version <= 0 or not model.has_graph or not model.graph_outputs:
        raise UserError(f"{what} {path} is not a valid ONNX model (it has no IR version or no graph with outputs)",
                        fix=NOT_ONNX_FIX)
    return _external_files(model.tensors, path=path, what=what)


def _parse_whole(path: Path, *, what: str, takes_ort: bool) -> None:
    """Where onnx is installed (the host tools), every field must parse, not only those onnx_wire reads: the
    stages load the model with onnx. A device-only install leaves the rest to ONNX Runtime's own parser."""
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        return
    try:
        onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, UnicodeDecodeError, OSError) as exc:
        raise _unparsable(path, exc, what=what, takes_ort=takes_ort) from None


def _unparsable(path: Path, exc: Exception, *, what: str, takes_ort: bool) -> UserError:
    ort_format = bool(file_is_ort(path))
    if ort_format and takes_ort and not is_ort_path(path):  # ONNX Runtime reads it as ONNX, by its name
        return UserError(f"{what} {path} is an ORT-format model (its bytes are ORT's FlatBuffers, not an ONNX "
                         "protobuf); ONNX Runtime reads only a file named .ort as ORT format",
                         fix=f"rename it to {path.stem}.ort")
    if ort_format:  # where only ONNX will do (a recipe's source model)
        return UserError(f"{what} {path} is an ORT-format model, not an ONNX model",
                         fix="point to the ONNX model it was converted from (the ort_format stage makes the .ort)")
    reason = " ".join(str(exc).split())[:160] or type(exc).__name__
    return UserError(f"{what} {path} is not a valid ONNX model (it does not parse: {reason})", fix=NOT_ONNX_FIX)


def _external_files(tensors: Sequence[onnx_wire.Tensor], *, path: Path, what: str) -> tuple[Path, ...]:
    folder = path.resolve().parent
    found: dict[Path, int] = {}
    for tensor in tensors:
        if tensor.data_location != _EXTERNAL:
            continue
        info = dict(tensor.external_data)
        name = tensor.name or "(unnamed)"
        location = info.get("location", "")
        fix = ("keep external data files beside the model, named relative to its folder "
               "(onnx.save(model, path, save_as_external_data=True, location='NAME.data'))")
        if not location or "\x00" in location:
            raise UserError(f"{what} {path.name}: tensor {name!r} has external data without a valid location", fix=fix)
        relative = PurePath(location)
        if relative.is_absolute() or location.startswith(("/", "\\")) or ".." in relative.parts:
            raise UserError(f"{what} {path.name}: tensor {name!r} reads external data from {location!r}: an "
                            "absolute or '..' location may point outside the model's folder, and edgepress refuses it",
                            fix=fix)
        data = folder / relative
        if any(p.is_symlink() for p in [data, *data.parents] if p != folder and folder in p.parents):
            raise UserError(f"{what} {path.name}: tensor {name!r} reads external data through the symbolic link "
                            f"{location!r}; edgepress refuses it", fix=fix)
        if not data.is_file():
            raise UserError(f"{what} {path.name}: external data file {location!r} of tensor {name!r} is missing "
                            f"from {folder}", fix="copy the external data files beside the model")
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise UserError(f"{what} {path.name}: tensor {name!r} has a non-numeric external data offset or length",
                            fix="re-save the model with onnx.save") from None
        size = found.setdefault(data, data.stat().st_size)
        if offset < 0 or (length is not None and (length < 0 or offset + length > size)) or offset > size:
            raise UserError(f"{what} {path.name}: tensor {name!r} reads bytes {offset}..{offset + (length or 0)} of "
                            f"{location!r}, which has {size}", fix="re-save the model with onnx.save")
    return tuple(found)


def refuse_external_data(path: Path, files: tuple[Path, ...], *, what: str) -> None:
    """Where only the .onnx file travels (a recipe's source model is copied into the run folder alone)."""
    if files:
        names = ", ".join(sorted(os.path.relpath(f, Path(path).resolve().parent) for f in files))
        raise UserError(f"{what} {path} keeps its weights in external data ({names}), which edgepress does not "
                        "copy into the run folder",
                        fix="save the model as one file: onnx.save(onnx.load(path), 'model-single.onnx') "
                            "(models under 2 GiB)")
