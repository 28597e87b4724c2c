"""`dynamic_int8` and `int4_weights`: quantization that needs no calibration data, ONNX -> ONNX.

`dynamic_int8` (`onnxruntime.quantization.quantize_dynamic`): weights INT8 ahead of time,
activations quantized to UINT8 at run time from each tensor's own range. On a fused
transformer it quantizes MatMul (MatMulInteger), Attention (QAttention, the Q/K/V projection)
and EmbedLayerNormalization (QEmbedLayerNormalization, the embedding tables).

`int4_weights` (`MatMulNBitsQuantizer`): 4-bit block-quantized weights of MatMuls with a
constant weight (MatMulNBits); activations stay float, or INT8 inside the kernel with
accuracy_level 4. The fused Attention's Q/K/V weights are not MatMuls and stay float: on MiniLM
that keeps more of the cosine (0.978 against 0.965 with every projection 4-bit).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgepress.errors import UserError
from edgepress.progress import tool_output_to
from edgepress.schema import bounded, closest, within
from edgepress.stage import Artifact, StageContext, StageDef, StageOutput

# onnxruntime.quantization's IntegerOpsRegistry: what quantize_dynamic can quantize.
DYNAMIC_OP_TYPES = ("Conv", "MatMul", "Attention", "LSTM", "Gather", "Transpose", "EmbedLayerNormalization")
QUANTIZED_OPS = ("MatMulInteger", "ConvInteger", "QAttention", "QEmbedLayerNormalization", "DynamicQuantizeLSTM",
                 "MatMulNBits", "GatherBlockQuantized")
FLOAT_COMPUTE_OPS = ("MatMul", "Gemm", "Conv", "Attention")


@dataclass(frozen=True)
class DynamicInt8Settings:
    weight_type: Literal["int8", "uint8"] = "int8"  # U8S8 (fast on x86 and ARM) or U8U8
    per_channel: bool = True  # per output channel weight scales: per-tensor costs MiniLM 0.03 of cosine
    reduce_range: bool = False  # 7-bit weights against x86 U8S8 saturation; costs precision
    op_types: tuple[str, ...] = ()  # empty: every type in DYNAMIC_OP_TYPES
    nodes_to_exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_op_types(self.op_types, DYNAMIC_OP_TYPES)


@dataclass(frozen=True)
@bounded
class Int4WeightsSettings:
    block_size: int = within(16, 1 << 16, default=32)  # weights per scale, along the input axis
    symmetric: bool = True
    # 0: float activations (ONNX Runtime's default); 4: activations INT8 inside the kernel (no faster on AVX2).
    accuracy_level: Literal[0, 1, 2, 3, 4] = 0
    nodes_to_exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, at least 16, got {self.block_size}")


def _check_op_types(op_types: tuple[str, ...], valid: tuple[str, ...]) -> None:
    for op in op_types:
        if op not in valid:
            guess = closest(op, valid)
            raise ValueError(f"op_types names {op!r}, which dynamic quantization cannot quantize"
                             + (f"; did you mean {guess!r}?" if guess else f"; use {', '.join(valid)}"))


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


def quantize_int8(*, source: Path, out: Path, settings: DynamicInt8Settings, log) -> dict[str, int]:
    import onnx

    check_node_names(source, settings.nodes_to_exclude)
    with tool_output_to(log):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(source), str(out), per_channel=settings.per_channel, reduce_range=settings.reduce_range,
                         weight_type=QuantType.QInt8 if settings.weight_type == "int8" else QuantType.QUInt8,
                         op_types_to_quantize=list(settings.op_types or DYNAMIC_OP_TYPES),
                         nodes_to_exclude=list(settings.nodes_to_exclude),
                         # The fused com.microsoft ops defeat shape inference; their outputs are float.
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True})
    return _quantized_or_error(out, source)


def quantize_int4(*, source: Path, out: Path, settings: Int4WeightsSettings, log) -> dict[str, int]:
    import onnx

    check_node_names(source, settings.nodes_to_exclude)
    with tool_output_to(log):  # the quantizer's module calls logging.basicConfig(level=INFO) when imported
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), bits=4, block_size=settings.block_size,
                                         is_symmetric=settings.symmetric, accuracy_level=settings.accuracy_level,
                                         nodes_to_exclude=list(settings.nodes_to_exclude))
        quantizer.process()
    quantizer.model.save_model_to_file(str(out))
    return _quantized_or_error(out, source)


def _quantized_or_error(out: Path, source: Path) -> dict[str, int]:
    counts = op_counts(out)
    if not any(counts.get(op) for op in QUANTIZED_OPS):
        out.unlink()  # a copy of the float model is no product of this stage
        raise UserError(f"{source.name} has no operator this quantization handles (MatMul with a constant weight, "
                        "Attention, Conv, EmbedLayerNormalization)",
                        fix="drop the stage, or check op_types and nodes_to_exclude")
    return counts


def run_int8(source: Artifact, settings: DynamicInt8Settings, ctx: StageContext) -> StageOutput:
    out = ctx.output_path("onnx")
    counts = quantize_int8(source=source.path, out=out, settings=settings, log=ctx.log)
    ctx.log(f"quantized nodes: {counts}")
    summary = {"mode": "dynamic", "scheme": "u8s8" if settings.weight_type == "int8" else "u8u8",
               "per_channel": settings.per_channel, "reduce_range": settings.reduce_range, "nodes": counts}
    return StageOutput(artifact=Artifact(path=out, format="onnx"), metrics={"quantization": summary})


def run_int4(source: Artifact, settings: Int4WeightsSettings, ctx: StageContext) -> StageOutput:
    out = ctx.output_path("onnx")
    counts = quantize_int4(source=source.path, out=out, settings=settings, log=ctx.log)
    ctx.log(f"quantized nodes: {counts}")
    summary = {"mode": "weight_only", "weight_bits": 4, "block_size": settings.block_size,
               "accuracy_level": settings.accuracy_level, "nodes": counts}
    return StageOutput(artifact=Artifact(path=out, format="onnx"), metrics={"quantization": summary})


INT8_STAGE = StageDef(kind="dynamic_int8", settings_type=DynamicInt8Settings, input_format="onnx", output_format="onnx",
                      run=run_int8, modalities=("image", "text"),
                      summary="dynamic INT8: weights ahead of time, activation ranges at run time, no calibration")
INT4_STAGE = StageDef(kind="int4_weights", settings_type=Int4WeightsSettings, input_format="onnx", output_format="onnx",
                      run=run_int4, modalities=("image", "text"),
                      summary="4-bit block-quantized MatMul weights (MatMulNBits), activations float or INT8")
