"""What the calibration-free quantizers (dynamic_int8, int4_weights) share: node-name checks and op counts."""

from __future__ import annotations

import collections
from pathlib import Path

from edgepress.core.errors import UserError
from edgepress.core.schema import closest

QUANTIZED_OPS = ("MatMulInteger", "ConvInteger", "QAttention", "QEmbedLayerNormalization", "DynamicQuantizeLSTM",
                 "MatMulNBits", "GatherBlockQuantized")
FLOAT_COMPUTE_OPS = ("MatMul", "Gemm", "Conv", "Attention")


def check_node_names(path: Path, names: tuple[str, ...]) -> None:
    """Every name must be a node of the model: a typo would silently quantize the node it meant to keep."""
    import onnx

    nodes = [node.name for node in onnx.load(str(path), load_external_data=False).graph.node]
    missing = [name for name in names if name not in nodes]
    if missing:
        guess = closest(missing[0], nodes)
        raise UserError(f"nodes_to_exclude names {missing[0]!r}, which is no node of {path.name}",
                        fix=f"did you mean {guess!r}?" if guess else "copy node names from the ONNX graph")


def op_counts(path: Path) -> dict[str, int]:
    """Quantized nodes by op type, and the float compute nodes left with a constant weight."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {init.name for init in graph.initializer}
    counts = collections.Counter(node.op_type for node in graph.node if node.op_type in QUANTIZED_OPS)
    float_left = sum(1 for node in graph.node if node.op_type in FLOAT_COMPUTE_OPS and len(node.input) > 1
                     and node.input[1] in constants)
    return {**dict(sorted(counts.items())), "float_with_constant_weight": float_left}


def quantized_or_error(out: Path, source: Path) -> dict[str, int]:
    counts = op_counts(out)
    if not any(counts.get(op) for op in QUANTIZED_OPS):
        out.unlink()  # a copy of the float model is no product of this stage
        raise UserError(f"{source.name} has no operator this quantization handles (MatMul with a constant weight, "
                        "Attention, Conv, EmbedLayerNormalization)",
                        fix="drop the stage, or check op_types and nodes_to_exclude")
    return counts
