"""Parameters and MACs of an ONNX graph, read from the graph itself (float or QDQ)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

_WEIGHT_TYPES = {1, 2, 3, 6, 10, 16}  # float, uint8, int8, int32 (quantized bias), float16, bfloat16


def _dims(value_info) -> list[int] | None:
    dims = [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]
    return None if any(d is None for d in dims) else dims


def count_params_and_macs(path: Path) -> tuple[int, int]:
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    # MACs at batch 1: pin the symbolic batch axis so shape inference yields concrete sizes.
    for inp in graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    inferred = shape_inference.infer_shapes(model).graph
    shapes = {vi.name: _dims(vi) for vi in list(inferred.value_info) + list(inferred.input) + list(inferred.output)}
    shapes.update({init.name: list(init.dims) for init in graph.initializer})

    qdq_params = {n.input[i] for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                  for i in (1, 2) if i < len(n.input)}
    params = sum(int(np.prod(init.dims)) for init in graph.initializer
                 if init.name not in qdq_params and init.data_type in _WEIGHT_TYPES and len(init.dims) >= 1)
    params += _packed_weight_correction(graph)

    tokens = _token_count(graph)
    if tokens is not None:
        return params, _weight_layer_macs(graph, tokens=tokens, shapes=shapes)
    macs = 0
    for node in graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
            w = shapes.get(node.input[3 if node.op_type == "QLinearConv" else 1])
            if out and w:
                macs += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul", "MatMulInteger"):
            a = shapes.get(node.input[0])
            if out and a:
                transposed = node.op_type == "Gemm" and any(att.name == "transA" and att.i for att in node.attribute)
                k = a[-2] if transposed else a[-1]
                macs += int(np.prod(out)) * int(k)
    return params, macs


def _attribute(node, name: str, default: int = 0) -> int:
    return next((att.i for att in node.attribute if att.name == name), default)


def _packed_weight_correction(graph) -> int:
    """MatMulNBits packs two 4-bit weights a byte: count K x N weights, not the packed bytes."""
    sizes = {init.name: int(np.prod(init.dims)) for init in graph.initializer}
    return sum(_attribute(n, "K") * _attribute(n, "N") - sizes.get(n.input[1], 0)
               for n in graph.node if n.op_type == "MatMulNBits")


def _token_count(graph) -> int | None:
    """Tokens per sample of a text model (input_ids at batch 1), or None for other models."""
    for inp in graph.input:
        if inp.name == "input_ids":
            dims = _dims(inp)
            return int(np.prod(dims)) if dims else None
    return None


def _weight_layer_macs(graph, *, tokens: int, shapes: dict) -> int:
    """A text model's MACs in its weight layers (every token through each MatMul with a constant weight,
    and the Q/K/V projection of fused attention), as the torch count of its Linear layers: shapes
    after the exporter's dynamic Reshapes are unknown to ONNX shape inference, token counts are not.
    The attention scores (sequence x sequence per head) are not counted, in torch as here."""
    constants = {init.name for init in graph.initializer}
    macs = 0
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            macs += tokens * _attribute(node, "K") * _attribute(node, "N")
        elif node.op_type in ("MatMul", "MatMulInteger", "Attention", "QAttention") and node.input[1] in constants:
            weight = shapes.get(node.input[1])
            if weight and len(weight) == 2:
                macs += tokens * weight[0] * weight[1]
    return macs
