"""Float islands that ONNX Runtime's QDQ fusion leaves in an INT8 graph, closed without changing an output bit.

Two patterns, both found in the per-operator profile of the real CIFAR ResNets (bench/RESULTS.md, issue 20):

- `quantize_static` quantizes a constant Pad's fill value as if it were data, and ONNX Runtime then cannot
  move the Pad onto the integer tensor: DequantizeLinear -> Pad -> QuantizeLinear stays, three float passes.
  With the same scale and zero point on both sides the Pad can work on the integer tensor itself, filled with
  the quantized fill value (`pads_on_quantized_data`).
- torch's exporters write `adaptive_avg_pool2d(x, 1)` as ReduceMean over the two spatial axes. ONNX Runtime
  has an integer kernel for GlobalAveragePool (QLinearGlobalAveragePool, in NHWC like the convs around it)
  and none for ReduceMean, which runs in float between a DequantizeLinear and a QuantizeLinear
  (`spatial_means_to_global_pool`, on the float graph before quantization; the same mean).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepress.compress.quant import onnx_graph


def _rank4_inputs(model) -> set[str]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    return {value.name for value in [*inferred.graph.input, *inferred.graph.value_info]
            if value.type.tensor_type.HasField("shape") and len(value.type.tensor_type.shape.dim) == 4}


def spatial_means_to_global_pool(source: Path, out: Path) -> int:
    """ReduceMean over axes (2, 3) of a 4-D tensor, keeping them, becomes GlobalAveragePool; returns how many."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    four_d = _rank4_inputs(model)
    rewritten = 0
    for node in model.graph.node:
        if node.op_type != "ReduceMean" or node.input[0] not in four_d:
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        axes = attributes.get("axes")  # opset < 18 keeps the axes in an attribute
        if axes is None and len(node.input) > 1 and node.input[1] in constants:
            axes = constants[node.input[1]].ravel().tolist()
        if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3] or attributes.get("keepdims", 1) != 1:
            continue
        node.op_type = "GlobalAveragePool"
        del node.input[1:]
        del node.attribute[:]
        rewritten += 1
    onnx.save(model, str(out))
    return rewritten


def _same_quantization(constants: dict[str, np.ndarray], first, second) -> bool:
    names = (first.input[1], first.input[2], second.input[1], second.input[2])
    if len(first.input) < 3 or len(second.input) < 3 or not all(name in constants for name in names):
        return False
    (scale_a, zero_a, scale_b, zero_b) = (constants[name] for name in names)
    return (scale_a.size == 1 and zero_a.size == 1 and zero_a.dtype == zero_b.dtype
            and np.array_equal(scale_a, scale_b) and np.array_equal(zero_a, zero_b))


def pads_on_quantized_data(source: Path, out: Path) -> int:
    """DequantizeLinear -> constant Pad -> QuantizeLinear with one scale and zero point becomes a Pad of the integer
    tensor; returns how many."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producer, consumers = onnx_graph.producers(model), onnx_graph.consumers(model)
    outputs = onnx_graph.graph_outputs(model)
    dropped: set[int] = set()
    rewritten = 0
    for pad in list(graph.node):
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        dequantize = producer.get(pad.input[0])
        users = consumers.get(pad.output[0], [])
        if (pad.op_type != "Pad" or mode != b"constant" or dequantize is None or dequantize.op_type != "DequantizeLinear"
                or len(users) != 1 or users[0].op_type != "QuantizeLinear" or pad.output[0] in outputs
                or not _same_quantization(constants, dequantize, users[0])):
            continue
        quantize = users[0]
        fill = 0.0
        if len(pad.input) > 2 and pad.input[2]:
            fill_node = producer.get(pad.input[2])
            if pad.input[2] in constants:
                fill = float(constants[pad.input[2]].reshape(()))
            elif fill_node is not None and fill_node.op_type == "DequantizeLinear" and all(
                    name in constants for name in fill_node.input[:3]):
                q, scale, zero = (constants[name] for name in fill_node.input[:3])
                fill = float(((q.astype(np.float32) - zero.astype(np.float32)) * scale).reshape(()))
            else:
                continue
        scale, zero = constants[quantize.input[1]], constants[quantize.input[2]]
        info = np.iinfo(zero.dtype)
        # QuantizeLinear's own arithmetic: round half to even, then saturate.
        quantized_fill = np.clip(np.round(np.float32(fill) / scale.astype(np.float32)) + zero.astype(np.int64),
                                 info.min, info.max).astype(zero.dtype).reshape(())
        fill_name = f"{pad.name or pad.output[0]}_quantized_fill"
        graph.initializer.append(numpy_helper.from_array(quantized_fill, fill_name))
        pads = pad.input[1]
        del pad.input[:]
        pad.input.extend([dequantize.input[0], pads, fill_name])
        pad.output[0] = quantize.output[0]
        dropped.add(id(quantize))
        rewritten += 1
    kept = [node for node in graph.node if id(node) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    onnx_graph.drop_unread_dequantize(model)  # the Pad's old input and its fill value's
    onnx.save(model, str(out))
    return rewritten
