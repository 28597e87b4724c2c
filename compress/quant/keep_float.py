"""Nodes the quantizer leaves in float stay in float when ONNX Runtime opens the model.

Since 1.20 ONNX Runtime's session runs `WeightBiasQuantization`: a Conv, ConvTranspose or Gemm whose input comes
from a DequantizeLinear with a per-tensor scale and whose only output path (through Relu or Clip) ends in a
QuantizeLinear gets its float weights quantized, per tensor, at load time, and runs as an integer kernel. A node
kept in float (`nodes_to_exclude`, the fp32 saturation guard, accuracy_aware_ptq's sensitive nodes) between two
integer neighbours was silently integer again, with coarser weights than the quantizer would have chosen.

The transformer only takes a per-tensor input scale. Each float node gets a DequantizeLinear of its own whose
scale and zero point are repeated per input channel (axis 1): the same numbers, the same single node, and a
shape `WeightBiasQuantization` passes over.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepress.compress.quant import onnx_graph

# What WeightBiasQuantization rewrites (onnxruntime/core/optimizer/qdq_transformer/weight_bias_quantization.cc).
REQUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm")


def _input_channels(node, constants: dict[str, np.ndarray]) -> int | None:
    """Axis 1 of the node's data input, read from its float weight."""
    weight = constants.get(node.input[1]) if len(node.input) > 1 else None
    if weight is None or weight.dtype != np.float32:
        return None
    attributes = {a.name: a for a in node.attribute}
    if node.op_type == "Conv":
        return int(weight.shape[1]) * int(attributes["group"].i if "group" in attributes else 1)
    if node.op_type == "ConvTranspose":
        return int(weight.shape[0])
    if "transA" in attributes and attributes["transA"].i:
        return None  # Gemm's input axis 1 is then M, not K
    return int(weight.shape[1 if "transB" in attributes and attributes["transB"].i else 0])


def pin_float_nodes(source: Path, out: Path) -> list[str]:
    """Write `source` to `out` with every float Conv/ConvTranspose/Gemm fed by a per-tensor DequantizeLinear
    given its own per-channel one; returns the nodes' names."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producer = onnx_graph.producers(model)
    pinned, added_nodes = [], []
    for node in graph.node:
        if node.op_type not in REQUANTIZED_OPS or len(node.input) < 2:
            continue
        dequantize = producer.get(node.input[0])
        if dequantize is None or dequantize.op_type != "DequantizeLinear" or len(dequantize.input) < 3:
            continue
        scale, zero = constants.get(dequantize.input[1]), constants.get(dequantize.input[2])
        channels = _input_channels(node, constants)
        if scale is None or zero is None or scale.size != 1 or channels is None:
            continue
        stem = f"{node.name or node.output[0]}_float_input"
        graph.initializer.extend([numpy_helper.from_array(np.full(channels, scale.reshape(()), scale.dtype), f"{stem}_scale"),
                                  numpy_helper.from_array(np.full(channels, zero.reshape(()), zero.dtype), f"{stem}_zero_point")])
        added_nodes.append((node, helper.make_node("DequantizeLinear", [dequantize.input[0], f"{stem}_scale",
                                                                        f"{stem}_zero_point"], [stem], name=stem, axis=1)))
        node.input[0] = stem
        pinned.append(node.name)
    before = {id(consumer): dequantize for consumer, dequantize in added_nodes}
    ordered = []
    for node in graph.node:  # each new DequantizeLinear right before its node: the graph stays in topological order
        if id(node) in before:
            ordered.append(before[id(node)])
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    onnx_graph.drop_unread_dequantize(model)  # per-tensor ones now read by nothing
    onnx.save(model, str(out))
    return pinned
