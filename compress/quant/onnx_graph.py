"""Small ONNX graph helpers for the quantization transforms (equalize.py, bias_correction.py):
constants by name, rewriting initializers in place, and per-channel statistics of inner tensors
computed inside ONNX Runtime (reduction nodes appended to a copy of the graph, so only a few numbers
per tensor leave the session, never whole activation maps)."""

from __future__ import annotations

import os
from typing import Literal

import numpy as np

Reduction = Literal["max", "mean"]


def opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def initializers(model) -> dict:
    return {init.name: init for init in model.graph.initializer}


def constant(model, name: str) -> np.ndarray | None:
    """The value of `name` when it is an initializer or a Constant node's output, else None."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
                if attr.name == "value_float":
                    return np.array(attr.f, dtype=np.float32)
                if attr.name == "value_int":
                    return np.array(attr.i, dtype=np.int64)
    return None


def consumers(model) -> dict[str, list]:
    found: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            if name:
                found.setdefault(name, []).append(node)
    return found


def producers(model) -> dict[str, object]:
    return {out: node for node in model.graph.node for out in node.output}


def graph_outputs(model) -> set[str]:
    return {o.name for o in model.graph.output}


def drop_unread_dequantize(model) -> None:
    """Remove the DequantizeLinear nodes nothing reads any more after a rewrite, then unread initializers."""
    graph = model.graph
    while True:
        read = set(consumers(model)) | graph_outputs(model)
        unread = [node for node in graph.node if node.op_type == "DequantizeLinear" and node.output[0] not in read]
        if not unread:
            break
        kept = [node for node in graph.node if node not in unread]
        del graph.node[:]
        graph.node.extend(kept)
    kept_initializers = [init for init in graph.initializer if init.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept_initializers)


def private_initializer(model, node, index: int) -> str:
    """The name of `node`'s input `index`, copied to a new initializer first when any other input
    reads it too (exporters share equal constants), so that rewriting it changes this node alone."""
    from onnx import numpy_helper

    name = node.input[index]
    uses = sum(1 for n in model.graph.node for i in n.input if i == name)
    if uses <= 1:
        return name
    fresh = f"{name}__{node.name or node.output[0]}_{index}"
    model.graph.initializer.append(numpy_helper.from_array(constant(model, name), fresh))
    node.input[index] = fresh
    return fresh


def set_initializer(model, name: str, value: np.ndarray) -> None:
    """Replace initializer `name`'s contents, keeping its name and element type."""
    from onnx import numpy_helper

    for index, init in enumerate(model.graph.initializer):
        if init.name == name:
            old = numpy_helper.to_array(init)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(np.asarray(value, dtype=old.dtype), name))
            return
    raise KeyError(name)


def add_initializer(model, name: str, value: np.ndarray) -> str:
    from onnx import numpy_helper

    model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def append_reduction(model, tensor: str, how: Reduction, axes: list[int], out: str) -> None:
    """Append Reduce{Max,Mean}(tensor) over `axes` as graph output `out` (axes an input from opset 18 on)."""
    from onnx import TensorProto, helper

    op = {"max": "ReduceMax", "mean": "ReduceMean"}[how]
    if opset(model) >= 18:
        axes_name = add_initializer(model, f"{out}__axes", np.array(axes, dtype=np.int64))
        node = helper.make_node(op, [tensor, axes_name], [out], keepdims=0, name=out)
    else:
        node = helper.make_node(op, [tensor], [out], axes=axes, keepdims=0, name=out)
    model.graph.node.append(node)
    model.graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))


def session(model, *, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads if threads is not None else (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])


def reduced_over_batches(model, outputs: dict[str, Reduction], inputs: np.ndarray, *, batch: int) -> dict[str, np.ndarray]:
    """Run `model` (which already has the reduction outputs named in `outputs`) on `inputs` batch by
    batch and combine each output across batches: the max of the maxima, the sample-weighted mean
    of the means (every batch's reduction covers the same per-sample positions)."""
    run = session(model)
    input_name = run.get_inputs()[0].name
    names = list(outputs)
    combined: dict[str, np.ndarray] = {}
    for start in range(0, len(inputs), batch):
        chunk = np.ascontiguousarray(inputs[start:start + batch], dtype=np.float32)
        for name, value in zip(names, run.run(names, {input_name: chunk})):
            value = value.astype(np.float64)
            if outputs[name] == "mean":
                value = value * len(chunk)
            if name not in combined:
                combined[name] = value
            elif outputs[name] == "max":
                combined[name] = np.maximum(combined[name], value)
            else:
                combined[name] = combined[name] + value
    return {name: value / len(inputs) if outputs[name] == "mean" else value for name, value in combined.items()}
