"""A QAT graph to a QDQ ONNX model that ONNX Runtime runs with integer kernels, and the proof that it does."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepress.compress.quant.static import COMPUTE_OPS as FLOAT_COMPUTE_OPS  # the float ops INT8 replaces
from edgepress.core.errors import UserError

INTEGER_COMPUTE_OPS = ("QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger",
                       "MatMulIntegerToFloat", "DynamicQuantizeMatMul")


def int8_weights(path: Path, weights: dict[bytes, tuple]) -> int:
    """Swap each float weight that QAT put on an int8 grid for int8 values plus DequantizeLinear.

    The exporters write the already-fake-quantized weights as float initializers; matching them by
    their bytes finds each one's integers and per-channel scales without relying on names."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    swapped = 0
    for node in list(graph.node):
        if node.op_type not in FLOAT_COMPUTE_OPS or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        name = node.input[1]
        array = numpy_helper.to_array(initializers[name])
        transposed = node.op_type == "MatMul"  # MatMul holds Linear's weight as [in, out]
        key = np.ascontiguousarray(array.T if transposed else array).astype(np.float32).tobytes()
        if key not in weights:
            continue
        integers, scale = weights[key]
        values = integers.numpy().T if transposed else integers.numpy()
        graph.initializer.remove(initializers.pop(name))
        graph.initializer.extend([
            numpy_helper.from_array(np.ascontiguousarray(values), f"{name}_int8"),
            numpy_helper.from_array(scale.numpy().astype(np.float32), f"{name}_scale"),
            numpy_helper.from_array(np.zeros(len(scale), dtype=np.int8), f"{name}_zero"),
        ])
        dequantize = helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zero"], [name],
                                      name=f"{name}_DequantizeLinear", axis=1 if transposed else 0)
        graph.node.insert(list(graph.node).index(node), dequantize)
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] in initializers:
            _int32_bias(graph, node, initializers, weight_scale=scale.numpy())
        swapped += 1
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return swapped


def _int32_bias(graph, node, initializers, *, weight_scale: np.ndarray) -> None:
    """ONNX Runtime fuses a Gemm into QGemm only when its bias is int32 on the input x weight scale."""
    from onnx import helper, numpy_helper

    producers = {out: n for n in graph.node for out in n.output}
    source = producers.get(node.input[0])
    if source is None or source.op_type != "DequantizeLinear":
        return
    scale_name = source.input[1]
    if scale_name in initializers:
        input_scale = float(numpy_helper.to_array(initializers[scale_name]))
    elif scale_name in producers and producers[scale_name].op_type == "Constant":
        input_scale = float(numpy_helper.to_array(producers[scale_name].attribute[0].t))
    else:
        return
    name = node.input[2]
    bias = numpy_helper.to_array(initializers[name]).astype(np.float64)
    scale = (input_scale * weight_scale.astype(np.float64)).astype(np.float32)
    graph.initializer.remove(initializers.pop(name))
    graph.initializer.extend([numpy_helper.from_array(np.round(bias / scale).astype(np.int32), f"{name}_int32"),
                              numpy_helper.from_array(scale, f"{name}_scale")])
    dequantize = helper.make_node("DequantizeLinear", [f"{name}_int32", f"{name}_scale"], [name],
                                  name=f"{name}_DequantizeLinear", axis=0)
    graph.node.insert(list(graph.node).index(node), dequantize)


def optimized_op_counts(path: Path) -> dict[str, int]:
    """Op types in the graph ONNX Runtime actually runs, after its QDQ fusions."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgepress-qat-") as scratch:
        options = ort.SessionOptions()
        # Basic + extended fusions only: the NCHWc layout pass would rename ops and is hardware-specific.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(scratch) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def check_integer_kernels(path: Path, *, allowed_float: int = 0) -> dict[str, int]:
    counts = optimized_op_counts(path)
    float_compute = sum(counts.get(op, 0) for op in FLOAT_COMPUTE_OPS)
    if float_compute > allowed_float:
        raise UserError(f"after ONNX Runtime's optimisation {float_compute} convolutions or matmuls of the QAT model still "
                        f"run in float ({ {op: counts[op] for op in FLOAT_COMPUTE_OPS if op in counts} })",
                        fix="report this model: its quantization placement does not match ONNX Runtime's fusions")
    return {"integer_compute_nodes": sum(counts.get(op, 0) for op in INTEGER_COMPUTE_OPS),
            "float_compute_nodes": float_compute, "op_counts": counts}
