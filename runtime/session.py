"""Open ONNX Runtime sessions on files that may not be ONNX at all, and feed them safely."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgepress.core.errors import UserError
from edgepress.runtime.device_runner import is_ort_path, ort_reason, set_denormals

MAX_ONNX_BYTES = 2**31  # protobuf's limit for one message
NOT_ONNX_FIX = "point to a .onnx file exported by torch.onnx or edgepress"
NOT_ORT_FIX = ("convert the ONNX model again with this onnxruntime version (the ort_format stage, or "
               "python -m onnxruntime.tools.convert_onnx_models_to_ort)")


@dataclass(frozen=True)
class InputInfo:
    name: str
    shape: tuple[int | str | None, ...]
    dtype: str


def check_model_path(path: Path, *, what: str | None = None, ort_format: bool | None = None) -> None:
    """A regular, non-empty file under 2 GiB (protobuf's limit, and FlatBuffers' for an .ort): checked before
    anything reads the file. `ort_format`: which format the caller wants (default: the one the name says)."""
    ort_format = is_ort_path(path) if ort_format is None else ort_format
    kind, fix = ("ORT-format model", NOT_ORT_FIX) if ort_format else ("ONNX model", NOT_ONNX_FIX)
    what = what or kind
    if not path.exists():
        raise UserError(f"{what} {path} does not exist", fix="check the path, or run the stage that produces it")
    if not path.is_file():
        raise UserError(f"{what} {path} is not a file", fix=fix)
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"{what} {path} is empty, not an {kind}", fix=fix)
    if size >= MAX_ONNX_BYTES and ort_format:  # 32-bit offsets: no larger .ort can exist
        raise UserError(f"{what} {path} is {size} bytes, more than the 2 GiB an ORT-format (FlatBuffers) file can "
                        "hold", fix="run the ONNX model, with its weights as external data, instead")
    if size >= MAX_ONNX_BYTES:  # never read whole: protobuf could not parse it anyway
        raise UserError(f"{what} {path} is {size} bytes, more than the 2 GiB an ONNX protobuf can hold",
                        fix="save the weights as external data: onnx.save(model, path, save_as_external_data=True)")


def open_session(path: Path, *, threads: int, optimization: bool = True, denormals: str = "keep",
                 disabled_optimizers: tuple[str, ...] = (), optimized_model_path: Path | None = None
                 ) -> ort.InferenceSession:
    """`denormals` and `disabled_optimizers` as the device runner's --denormals and --disable-optimizer.
    The first session a process opens decides whether its thread flushes denormals (ONNX Runtime 1.32).
    `optimized_model_path` receives the graph ONNX Runtime runs, after its optimisations."""
    path = Path(path)
    check_model_path(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not optimization:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    set_denormals(options, denormals)
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(disabled_optimizers))
    except Exception as exc:  # ORT raises its own exception types for a bad protobuf or graph
        if is_ort_path(path):
            raise UserError(f"{path} is not an ORT-format model this onnxruntime {ort.__version__} loads "
                            f"({ort_reason(exc)})", fix=NOT_ORT_FIX) from None
        raise UserError(f"{path} is not a valid ONNX model ({ort_reason(exc)})", fix=NOT_ONNX_FIX) from None


def input_info(session: ort.InferenceSession) -> InputInfo:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise UserError(f"the model has {len(inputs)} inputs ({names}); image evaluation feeds exactly one",
                        fix="export the model with a single image input")
    first = inputs[0]
    return InputInfo(name=first.name, shape=tuple(first.shape), dtype=first.type)


def sample_shape(session: ort.InferenceSession) -> tuple[int, ...] | None:
    """The model's per-sample input shape (without batch), or None when any of it is symbolic;
    for a text model (an input named input_ids), its sequence length."""
    by_name = {i.name: i for i in session.get_inputs()}
    dims = tuple(by_name["input_ids"].shape[1:]) if "input_ids" in by_name else input_info(session).shape[1:]
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
    return predict_feeds(session, {input_info(session).name: inputs}, batch_size=batch_size, on_batch=on_batch)


_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
                "tensor(float16)": np.float16, "tensor(double)": np.float64, "tensor(bool)": np.bool_,
                "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def as_feed(session: ort.InferenceSession, sample: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The session's feed from one array (a one-input model) or from named arrays (the model's own
    inputs are picked, so text feeds may carry token_type_ids a model does not take), contiguous
    and of the types the model declares."""
    inputs = session.get_inputs()
    if not isinstance(sample, dict):
        sample = {input_info(session).name: sample}
    elif len(sample) == 1 and len(inputs) == 1 and inputs[0].name not in sample:  # one array: whatever its name
        sample = {inputs[0].name: next(iter(sample.values()))}
    return {i.name: np.ascontiguousarray(sample[i.name], dtype=_NUMPY_TYPES.get(i.type))
            for i in session.get_inputs()}


def check_feeds(session: ort.InferenceSession, feeds: dict[str, np.ndarray], *, source: str) -> None:
    """Named inputs (text) must include every model input, at the model's fixed sizes."""
    for model_input in session.get_inputs():
        if model_input.name not in feeds:
            raise UserError(f"the model takes an input {model_input.name!r} that {source} does not give "
                            f"(it gives {', '.join(feeds)})",
                            fix="use a text model exported by edgepress (inputs input_ids, attention_mask, "
                                "token_type_ids)")
        given = feeds[model_input.name].shape
        expected = tuple(model_input.shape)
        if expected and isinstance(expected[0], int) and expected[0] != given[0]:
            raise UserError(f"the model's input {model_input.name!r} has a fixed batch size of {expected[0]}",
                            fix="export with a dynamic batch axis")
        if len(given) != len(expected) or any(isinstance(e, int) and e != g for e, g in zip(expected[1:], given[1:])):
            shown = ["N" if not isinstance(e, int) else e for e in expected]
            text = model_input.name in ("input_ids", "attention_mask", "token_type_ids")
            what = "inputs" if len(feeds) == 1 else repr(model_input.name)
            raise UserError(f"{source} gives {what} of shape {list(given[1:])} per sample but the model's input "
                            f"{model_input.name!r} takes {shown}",
                            fix="set [model] input_shape = [sequence length] to the length the model was exported with"
                            if text else "use data that matches the model, or set model.input_shape / preprocessing "
                                         "to match")


def run_all(session: ort.InferenceSession, feeds: dict[str, np.ndarray], *, batch_size: int,
            on_batch=None) -> dict[str, np.ndarray]:
    """Every output, by name, for all samples of `feeds` (named arrays of equal length), batch by batch."""
    names = [o.name for o in session.get_outputs()]
    total = len(next(iter(feeds.values())))
    chunks = []
    for start in range(0, total, batch_size):
        chunk = as_feed(session, {name: values[start:start + batch_size] for name, values in feeds.items()})
        chunks.append(session.run(None, chunk))
        if on_batch is not None:
            on_batch(min(start + batch_size, total))
    return {name: np.concatenate([c[i] for c in chunks], axis=0) for i, name in enumerate(names)}


def predict_feeds(session: ort.InferenceSession, feeds: dict[str, np.ndarray], *, batch_size: int,
                  on_batch=None) -> np.ndarray:
    """The first output for all samples of `feeds` (named arrays of equal length), batch by batch."""
    return next(iter(run_all(session, feeds, batch_size=batch_size, on_batch=on_batch).values()))
