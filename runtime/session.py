"""Open ONNX Runtime sessions on files that may not be ONNX at all, and feed them safely."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgepress.errors import UserError


@dataclass(frozen=True)
class InputInfo:
    name: str
    shape: tuple[int | str | None, ...]
    dtype: str


def open_session(path: Path, *, threads: int, optimization: bool = True) -> ort.InferenceSession:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX model {path} does not exist", fix="check the path, or run the stage that produces it")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        raise UserError(f"{path} is empty, not an ONNX model", fix="point to a .onnx file exported by torch.onnx or edgepress")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not optimization:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for a bad protobuf or graph
        reason = " ".join(str(exc).split())[:200]
        raise UserError(f"{path} is not a valid ONNX model ({reason})",
                        fix="point to a .onnx file exported by torch.onnx or edgepress") from None


def input_info(session: ort.InferenceSession) -> InputInfo:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise UserError(f"the model has {len(inputs)} inputs ({names}); image evaluation feeds exactly one",
                        fix="export the model with a single image input")
    first = inputs[0]
    return InputInfo(name=first.name, shape=tuple(first.shape), dtype=first.type)


def sample_shape(session: ort.InferenceSession) -> tuple[int, ...] | None:
    """The model's per-sample input shape (without batch), or None when any of it is symbolic."""
    dims = input_info(session).shape[1:]
    return tuple(dims) if all(isinstance(d, int) for d in dims) else None  # type: ignore[return-value]


def check_feed(session: ort.InferenceSession, batch: np.ndarray, *, source: str) -> None:
    info = input_info(session)
    expected = info.shape
    if len(expected) != batch.ndim or any(isinstance(e, int) and e != g for e, g in zip(expected[1:], batch.shape[1:])):
        shown = ["N" if not isinstance(e, int) else e for e in expected]
        raise UserError(f"{source} gives inputs of shape {list(batch.shape[1:])} per sample but the model's input "
                        f"{info.name!r} takes {shown}",
                        fix="use data that matches the model, or set model.input_shape / preprocessing to match")
    if isinstance(expected[0], int) and expected[0] != batch.shape[0]:
        raise UserError(f"the model's input {info.name!r} has a fixed batch size of {expected[0]}",
                        fix="export with a dynamic batch axis")


def predict(session: ort.InferenceSession, inputs: np.ndarray, *, batch_size: int,
            on_batch=None) -> np.ndarray:
    """Logits for all `inputs`, batch by batch; `on_batch(done)` reports progress."""
    name = input_info(session).name
    outputs = []
    for start in range(0, len(inputs), batch_size):
        chunk = np.ascontiguousarray(inputs[start:start + batch_size], dtype=np.float32)
        outputs.append(session.run(None, {name: chunk})[0])
        if on_batch is not None:
            on_batch(min(start + batch_size, len(inputs)))
    return np.concatenate(outputs, axis=0)
