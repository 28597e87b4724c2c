"""`dynamic_int8` (`onnxruntime.quantization.quantize_dynamic`): ONNX -> ONNX, no calibration data.

Weights INT8 ahead of time, activations quantized to UINT8 at run time from each tensor's own range.
On a fused transformer it quantizes MatMul (MatMulInteger), Attention (QAttention, the Q/K/V
projection) and EmbedLayerNormalization (QEmbedLayerNormalization, the embedding tables).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgepress.compress.quant.dynamic import check_node_names, quantized_or_error
from edgepress.core.progress import tool_output_to
from edgepress.core.schema import closest, setting
from edgepress.stages.stage import Artifact, StageContext, StageDef, StageOutput

# onnxruntime.quantization's IntegerOpsRegistry: what quantize_dynamic can quantize.
DYNAMIC_OP_TYPES = ("Conv", "MatMul", "Attention", "LSTM", "Gather", "Transpose", "EmbedLayerNormalization")


@dataclass(frozen=True)
class DynamicInt8Settings:
    weight_type: Literal["int8", "uint8"] = setting(
        "int8", help='weight type: "int8" for U8S8 kernels (fast on x86 and ARM), "uint8" for U8U8')
    per_channel: bool = setting(True, help="a weight scale per output channel; per tensor (false) costs MiniLM 0.03 "
                                           "of cosine")
    reduce_range: bool = setting(False, help="7-bit weights against x86 U8S8 saturation; costs precision")
    op_types: tuple[str, ...] = setting((), help="ONNX op types to quantize, of " + ", ".join(DYNAMIC_OP_TYPES)
                                        + "; empty: all of them")
    nodes_to_exclude: tuple[str, ...] = setting((), help="ONNX node names left in float")

    def __post_init__(self) -> None:
        _check_op_types(self.op_types, DYNAMIC_OP_TYPES)


def _check_op_types(op_types: tuple[str, ...], valid: tuple[str, ...]) -> None:
    for op in op_types:
        if op not in valid:
            guess = closest(op, valid)
            raise ValueError(f"op_types names {op!r}, which dynamic quantization cannot quantize"
                             + (f"; did you mean {guess!r}?" if guess else f"; use {', '.join(valid)}"))


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
    return quantized_or_error(out, source)


def run(source: Artifact, settings: DynamicInt8Settings, ctx: StageContext) -> StageOutput:
    out = ctx.output_path("onnx")
    counts = quantize_int8(source=source.path, out=out, settings=settings, log=ctx.log)
    ctx.log(f"quantized nodes: {counts}")
    summary = {"mode": "dynamic", "scheme": "u8s8" if settings.weight_type == "int8" else "u8u8",
               "per_channel": settings.per_channel, "reduce_range": settings.reduce_range, "nodes": counts}
    return StageOutput(artifact=Artifact(path=out, format="onnx"), metrics={"quantization": summary})


STAGE = StageDef(kind="dynamic_int8", settings_type=DynamicInt8Settings, input_format="onnx", output_format="onnx",
                      run=run, modalities=("image", "text"),
                      summary="dynamic INT8: weights ahead of time, activation ranges at run time, no calibration")
