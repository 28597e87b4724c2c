"""Which compute nodes risk int16 saturation in x86 U8S8 kernels.

Without VNNI, ONNX Runtime's U8S8 kernels (VPMADDUBSW) add pairs of u8*s8 products into
int16, which saturates when activations sit high in the u8 range. After a ReLU, activations
are quantized with zero point 0 and are mostly small, so that rarely happens; inputs that can
be negative (the normalized image, a linear bottleneck) get a mid-range zero point and saturate
often. We find the nodes whose data input is not provably non-negative.
"""

from __future__ import annotations

from pathlib import Path

COMPUTE_OPS = {"Conv", "Gemm", "MatMul"}
_NONNEG_SOURCES = {"Relu", "Sigmoid", "Softmax", "Abs"}
# Ops whose output is non-negative when every data input is.
_PASS_THROUGH = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Reshape", "Transpose",
                 "Squeeze", "Unsqueeze", "Concat", "Add", "Mul", "Slice", "Pad", "Identity", "Resize", "ReduceMean",
                 "Gather", "Split"}


def _clip_is_nonneg(node, constants: dict[str, float]) -> bool:
    if len(node.input) > 1 and node.input[1]:
        return constants.get(node.input[1], -1.0) >= 0.0
    return any(a.name == "min" and a.f >= 0.0 for a in node.attribute)


def signed_input_nodes(model_path: Path) -> list[str]:
    """Names of Conv/Gemm/MatMul nodes whose data input may be negative."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    constants = {}
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        if array.size == 1:
            constants[init.name] = float(array.reshape(()))
    nonneg: set[str] = set()
    for node in graph.node:  # ONNX graphs are stored in topological order
        data_inputs = [i for i in node.input[:1] if i] if node.op_type in ("Reshape", "Slice", "Pad", "Gather",
                                                                           "Resize", "Split") else \
            [i for i in node.input if i and i not in initializers]
        positive = (node.op_type in _NONNEG_SOURCES
                    or (node.op_type == "Clip" and _clip_is_nonneg(node, constants))
                    or (node.op_type in _PASS_THROUGH and data_inputs and all(i in nonneg for i in data_inputs)))
        if positive:
            nonneg.update(node.output)
    return [n.name for n in graph.node if n.op_type in COMPUTE_OPS and n.input[0] not in nonneg]


def weight_tensors(model_path: Path, node_names: list[str]) -> dict[str, str]:
    """node name -> its weight initializer name (input 1)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    wanted = set(node_names)
    return {n.name: n.input[1] for n in graph.node if n.name in wanted and len(n.input) > 1 and n.input[1] in initializers}
