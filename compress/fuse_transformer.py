"""`fuse_transformer`: ONNX Runtime's transformer fusion (`onnxruntime.transformers.optimizer`), ONNX -> ONNX.

The exported BERT graph (hundreds of MatMul, Reshape, Transpose, Softmax, LayerNormalization
nodes) becomes one Attention per layer, SkipLayerNormalization, BiasGelu and one
EmbedLayerNormalization: ONNX Runtime's own fused kernels, and the ops its dynamic
quantization turns into QAttention and QEmbedLayerNormalization. ONNX Runtime's basic
graph optimisations (constant folding, the optimizer's default for BERT) run before the
fusions; the extended, machine-specific ones are left to the session, so the file is portable.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgepress.core.errors import UserError
from edgepress.core.progress import tool_output_to
from edgepress.core.schema import bounded, setting, within
from edgepress.stages.stage import Artifact, StageContext, StageDef, StageOutput

FUSED_OPS = ("Attention", "EmbedLayerNormalization", "SkipLayerNormalization", "BiasGelu", "Gelu", "FastGelu",
             "LayerNormalization")


@dataclass(frozen=True)
@bounded
class FusionSettings:
    model_type: Literal["bert"] = setting("bert", help="the architecture ONNX Runtime's transformer optimizer fuses "
                                                       "for (BERT-style encoders)")
    num_heads: int = within(0, 4096, default=0, help="attention heads; 0: the count export_transformer wrote into the "
                                                     "model's metadata")
    hidden_size: int = within(0, 1 << 20, default=0, help="the model's hidden width; 0: the one export_transformer "
                                                          "wrote into the model's metadata")
    require_attention: bool = setting(True, help="a fusion that finds no attention is an error, not a silent no-op")
    # With ONNX Runtime 1.32 on x86 the other fused kernels (SkipLayerNormalization, BiasGelu,
    # EmbedLayerNormalization) are slower than the plain ops, while Attention (QAttention once dynamic INT8
    # quantizes it) is faster: MiniLM INT8 at sequence 128, 0.960x [0.954-0.969] the unfused INT8 model.
    fusions: Literal["all", "attention"] = setting(
        "all", help='"all": ONNX Runtime\'s BERT fusions; "attention": the attention fusion alone, every other op '
                    "stays as exported (on x86 the other fused kernels can be slower than the plain ops)")

    def __post_init__(self) -> None:
        if self.num_heads and self.hidden_size and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")


def attention_shape(path: Path, settings: FusionSettings) -> tuple[int, int]:
    """(num_heads, hidden_size): the settings', else the export's metadata."""
    import onnx

    from edgepress.export.export_transformer import HIDDEN_SIZE_KEY, NUM_HEADS_KEY

    metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    num_heads = settings.num_heads or int(metadata.get(NUM_HEADS_KEY, 0))
    hidden_size = settings.hidden_size or int(metadata.get(HIDDEN_SIZE_KEY, 0))
    if not num_heads or not hidden_size:
        raise UserError(f"{path.name} does not say its attention heads and width (not exported by export_transformer)",
                        fix="set num_heads and hidden_size in the fuse_transformer stage (e.g. 12 and 384 for MiniLM)")
    return num_heads, hidden_size


def _attention_only(model_type: str):
    """FusionOptions with every fusion off but attention's (shape inference, which it reads, stays on)."""
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions(model_type)
    for name, value in vars(options).items():
        if name.startswith("enable_") and isinstance(value, bool) and name != "enable_shape_inference":
            setattr(options, name, name == "enable_attention")
    return options


def fuse_transformer(*, source: Path, out: Path, model_type: str, num_heads: int, hidden_size: int,
                     log, fusions: str = "all") -> dict[str, int]:
    """Write the fused model to `out`; returns how many nodes of each fused op type it holds."""
    from onnxruntime.transformers.optimizer import optimize_model

    with tool_output_to(log):
        optimized = optimize_model(str(source), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size,
                                   opt_level=1,
                                   optimization_options=_attention_only(model_type) if fusions == "attention" else None)
        optimized.save_model_to_file(str(out))
    counts = collections.Counter(node.op_type for node in optimized.model.graph.node)
    return {op: counts[op] for op in FUSED_OPS if counts[op]} | {"MatMul": counts["MatMul"]}


def run(source: Artifact, settings: FusionSettings, ctx: StageContext) -> StageOutput:
    num_heads, hidden_size = attention_shape(source.path, settings)
    out = ctx.output_path("onnx")
    ctx.log(f"fusing a {settings.model_type} graph with {num_heads} heads, hidden size {hidden_size}")
    fused = fuse_transformer(source=source.path, out=out, model_type=settings.model_type, num_heads=num_heads,
                             hidden_size=hidden_size, log=ctx.log, fusions=settings.fusions)
    ctx.log(f"fused nodes: {fused}")
    if settings.require_attention and not fused.get("Attention"):
        raise UserError(f"transformer fusion found no attention to fuse in {source.path.name} (nodes: {fused})",
                        fix="export with export_transformer (eager attention, TorchScript), check num_heads and "
                            "hidden_size, or set require_attention = false")
    return StageOutput(artifact=Artifact(path=out, format="onnx"),
                       metrics={"fusion": {"num_heads": num_heads, "hidden_size": hidden_size, "nodes": fused}})


STAGE = StageDef(kind="fuse_transformer", settings_type=FusionSettings, input_format="onnx", output_format="onnx",
                 run=run, modalities=("text",),
                 summary="ONNX Runtime transformer fusion: Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNorm")
