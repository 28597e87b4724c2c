"""`ptq`: static INT8 post-training quantization with onnxruntime.quantization (QDQ, per-channel).

The settings and the algorithm live in compress/quant/static.py; this module runs them as a stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgepress.compress.quant.static import PtqSettings, calibration_feeds, quantize
from edgepress.runtime.isa import saturation_guard_for
from edgepress.stages.stage import Artifact, StageContext, StageDef, StageOutput
from edgepress.targets import known_isa

__all__ = ["PtqSettings", "STAGE", "quantize", "run"]


def run(source: Artifact, settings: PtqSettings, ctx: StageContext) -> StageOutput:
    calibration = ctx.data.calibration
    ctx.log(f"calibration set: {calibration.name}")
    out = ctx.output_path("onnx")
    target_isas = [known_isa(name) for name in ctx.targets]
    if settings.float_where_faster:
        from edgepress.compress.quant.speed_fallback import quantize_float_where_faster

        done = quantize_float_where_faster(source=source.path, out=out, calibration=calibration.feeds,
                                           settings=settings, threads=ctx.threads,
                                           target_isas=target_isas, log=ctx.log)
    else:
        done = quantize(source=source.path, out=out, calibration=calibration.feeds, settings=settings, log=ctx.log,
                        target_isas=target_isas)
    if settings.choose_conv_kernels:
        done["conv_kernels"] = conv_kernels_on_target(out, ctx, calibration.feeds)
    return StageOutput(artifact=Artifact(path=out, format="onnx"), metrics={"quantization": done})


def conv_kernels_on_target(model: Path, ctx: StageContext, calibration) -> dict[str, Any]:
    """compress/quant/conv_kernels.py on `model` in place, timed here when the recipe's first target is this machine."""
    from edgepress.compress.quant.conv_kernels import choose_conv_kernels
    from edgepress.runtime.session import open_session
    from edgepress.targets import scheme_of

    target = ctx.targets[0]
    if scheme_of(target) != "local":
        ctx.log(f"conv kernels: not chosen, since they are timed where the model runs and {target} is not this machine")
        return {"skipped": f"target {target} is not this machine"}
    # The rewrites keep every output bit where integer products add in int32; x86 kernels without VNNI add pairs
    # in int16, and there the other form of a conv may saturate where the quantizer's did not (under qemu as
    # Haswell, ResNet-20's rewritten and plain INT8 files differed by up to 4.8 in a logit).
    saturates, why = saturation_guard_for([known_isa(name) for name in ctx.targets])
    if saturates:
        ctx.log(f"conv kernels: not chosen, since {why}")
        return {"skipped": why}
    session = open_session(model, threads=ctx.threads)
    sample = {name: values[:1] for name, values in calibration_feeds(session, calibration, samples=1).items()}
    return choose_conv_kernels(model, model, threads=ctx.threads, sample=sample, log=ctx.log)


STAGE = StageDef(kind="ptq", reads_targets=lambda s: s.saturation_guard == "auto" or s.choose_conv_kernels,
                 timed=lambda s: s.float_where_faster or s.choose_conv_kernels, settings_type=PtqSettings, input_format="onnx", output_format="onnx", run=run, needs=("calibration",),
                 summary="static INT8 quantization (QDQ, per-channel) calibrated on [data.calibration]")
