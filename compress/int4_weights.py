"""`int4_weights` (`MatMulNBitsQuantizer`): ONNX -> ONNX, no calibration data.

4-bit block-quantized weights of MatMuls with a constant weight (MatMulNBits); activations stay
float, or INT8 inside the kernel with accuracy_level 4. The fused Attention's Q/K/V weights are not
MatMuls and stay float: on MiniLM that keeps more of the cosine (0.978 against 0.965 with every
projection 4-bit).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgepress.compress.quant.dynamic import check_node_names, quantized_or_error
from edgepress.core.progress import tool_output_to
from edgepress.core.schema import bounded, setting, within
from edgepress.stages.stage import Artifact, StageContext, StageDef, StageOutput


@dataclass(frozen=True)
@bounded
class Int4WeightsSettings:
    block_size: int = within(16, 1 << 16, default=32, help="weights per scale, along the input axis; a power of two")
    symmetric: bool = setting(True, help="symmetric 4-bit blocks (no zero point); false: asymmetric, with a zero "
                                         "point per block")
    accuracy_level: Literal[0, 1, 2, 3, 4] = setting(
        0, help="MatMulNBits' accuracy level: 0, float activations (ONNX Runtime's default); 1 to 3, computed in "
                "float32, float16, bfloat16; 4, activations INT8 inside the kernel (no faster on AVX2)")
    nodes_to_exclude: tuple[str, ...] = setting((), help="ONNX node names left in float")

    def __post_init__(self) -> None:
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, at least 16, got {self.block_size}")


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
    return quantized_or_error(out, source)


def run(source: Artifact, settings: Int4WeightsSettings, ctx: StageContext) -> StageOutput:
    out = ctx.output_path("onnx")
    counts = quantize_int4(source=source.path, out=out, settings=settings, log=ctx.log)
    ctx.log(f"quantized nodes: {counts}")
    summary = {"mode": "weight_only", "weight_bits": 4, "block_size": settings.block_size,
               "accuracy_level": settings.accuracy_level, "nodes": counts}
    return StageOutput(artifact=Artifact(path=out, format="onnx"), metrics={"quantization": summary})


STAGE = StageDef(kind="int4_weights", settings_type=Int4WeightsSettings, input_format="onnx", output_format="onnx",
                      run=run, modalities=("image", "text"),
                      summary="4-bit block-quantized MatMul weights (MatMulNBits), activations float or INT8")
