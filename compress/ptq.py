"""`ptq`: static INT8 post-training quantization with onnxruntime.quantization (QDQ, per-channel)."""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from edgepress.errors import UserError
from edgepress.compress.saturation import signed_input_nodes, weight_tensors
from edgepress.schema import closest
from edgepress.stage import Artifact, StageContext, StageDef, StageOutput

# scheme = activation type + weight type, as ONNX Runtime's docs name them.
SCHEMES = {"u8s8": ("QUInt8", "QInt8"), "s8s8": ("QInt8", "QInt8"), "u8u8": ("QUInt8", "QUInt8")}


@dataclass(frozen=True)
class PtqSettings:
    scheme: Literal["u8s8", "s8s8", "u8u8"] = "u8s8"
    # Nodes fed by possibly-negative activations saturate x86 U8S8 kernels (see saturation.py):
    # "fp32" keeps them in float, "uint8_weights" runs them with the U8U8 kernel, "off" leaves them be.
    saturation_guard: Literal["off", "uint8_weights", "fp32"] = "uint8_weights"
    # 7-bit weights everywhere: the blunt alternative to the guard, at a cost in precision.
    reduce_range: bool = False
    per_channel: bool = True
    calibration_method: Literal["minmax", "entropy", "percentile"] = "percentile"
    calibration_samples: int = 512
    calibration_batch: int = 32
    percentile: float = 99.999
    nodes_to_exclude: tuple[str, ...] = ()
    op_types: tuple[str, ...] = ()
    preprocess: bool = True

    def __post_init__(self) -> None:
        if self.calibration_samples <= 0 or self.calibration_batch <= 0:
            raise ValueError("calibration_samples and calibration_batch must be positive")
        if not 90.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (90, 100], got {self.percentile}")


class _ArrayReader:
    """onnxruntime.quantization's one-method data reader over an in-memory array."""

    def __init__(self, input_name: str, inputs: np.ndarray, batch: int) -> None:
        self._batches = iter([{input_name: inputs[i:i + batch]} for i in range(0, len(inputs), batch)])

    def get_next(self):
        return next(self._batches, None)


def _check_excluded(model_path: Path, names: tuple[str, ...]) -> None:
    import onnx

    graph_names = [n.name for n in onnx.load(str(model_path), load_external_data=False).graph.node]
    for name in names:
        if name not in graph_names:
            guess = closest(name, graph_names)
            raise UserError(f"nodes_to_exclude names {name!r}, which matches no node of the model",
                            fix=f"did you mean {guess!r}?" if guess else "list node names from the ONNX graph (e.g. with Netron)")


COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def node_precision_map(model_path: Path) -> dict[str, str]:
    """"int8" or "fp32" for every compute node of the QDQ graph as saved."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    dequantized = {out for n in graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    # Integer kernels need both the activation and the weight quantized.
    return {node.name: "int8" if len(node.input) > 1 and node.input[0] in dequantized and node.input[1] in dequantized
            else "fp32" for node in graph.node if node.op_type in COMPUTE_OPS}


def node_precisions(model_path: Path) -> dict[str, int]:
    """How many compute nodes run on quantized inputs versus float."""
    precision = list(node_precision_map(model_path).values())
    return {"int8_nodes": precision.count("int8"), "float_nodes": precision.count("fp32")}


def compute_nodes(model_path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in COMPUTE_OPS]


def quantize(*, source: Path, out: Path, calibration: np.ndarray, settings: PtqSettings,
             log: Callable[[str], None] = lambda _: None, calibration_cache: Path | None = None) -> dict[str, Any]:
    """Quantize ONNX file `source` into `out` (files in, files out); return what was done.

    `calibration_cache`: a JSON file of tensor ranges (ONNX Runtime's own format), read when it
    exists and written when not, so that many variants of one model calibrate only once."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgepress.runtime.session import input_info, open_session

    inputs = calibration[: settings.calibration_samples]
    if not np.all(np.isfinite(inputs)):
        raise UserError("the calibration data contains NaN or infinite values",
                        fix="clean the calibration data or its preprocessing")
    input_name = input_info(open_session(source, threads=1)).name
    with tempfile.TemporaryDirectory(prefix="edgepress-ptq-") as scratch:
        to_quantize = source
        if settings.preprocess:
            log("quant_pre_process: shape inference and graph optimisation before quantization")
            to_quantize = Path(scratch) / "prepared.onnx"
            quant_pre_process(str(source), str(to_quantize), skip_symbolic_shape=True)
        if not compute_nodes(to_quantize):
            raise UserError(f"{source.name} has no Conv, Gemm or MatMul node, so INT8 has nothing to speed up",
                            fix="remove the quantization stage for this model")
        _check_excluded(to_quantize, settings.nodes_to_exclude)
        excluded = list(settings.nodes_to_exclude)
        overrides: dict[str, Any] = {}
        guarded = signed_input_nodes(to_quantize) if settings.saturation_guard != "off" and settings.scheme == "u8s8" else []
        if guarded:
            log(f"saturation guard ({settings.saturation_guard}) on nodes with possibly negative inputs: {guarded}")
        if settings.saturation_guard == "fp32":
            excluded += [n for n in guarded if n not in excluded]
        elif settings.saturation_guard == "uint8_weights":
            overrides = {w: [{"quant_type": QuantType.QUInt8}] for w in weight_tensors(to_quantize, guarded).values()}
        activation_type, weight_type = (getattr(QuantType, t) for t in SCHEMES[settings.scheme])
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[settings.calibration_method]
        extra_options: dict[str, Any] = {"TensorQuantOverrides": overrides} if overrides else {}
        if settings.calibration_method == "percentile":
            extra_options["CalibPercentile"] = settings.percentile
        log(f"quantize_static: {settings.scheme}, reduce_range={settings.reduce_range}, "
            f"per_channel={settings.per_channel}, {settings.calibration_method} calibration on {len(inputs)} samples")
        chatter = io.StringIO()  # quantize_static prints calibration progress; keep it in the stage log
        with contextlib.redirect_stdout(chatter):
            quantize_static(
                str(to_quantize), str(out),
                _ArrayReader(input_name, inputs, settings.calibration_batch),
                quant_format=QuantFormat.QDQ,
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
                activation_type=activation_type,
                weight_type=weight_type,
                calibrate_method=method,
                nodes_to_exclude=excluded,
                op_types_to_quantize=list(settings.op_types) or None,
                extra_options=extra_options,
                calibration_cache_path=calibration_cache,
            )
        log(chatter.getvalue())
    precisions = node_precisions(out)
    log(f"quantized: {precisions}")
    fallback = [{"node": n, "reason": "nodes_to_exclude"} for n in settings.nodes_to_exclude]
    if settings.saturation_guard == "fp32":
        fallback += [{"node": n, "reason": "saturation guard: its input may be negative, which saturates x86 U8S8"}
                     for n in guarded if n not in settings.nodes_to_exclude]
    return {"scheme": settings.scheme, "reduce_range": settings.reduce_range, "node_precision": node_precision_map(out),
            "fp32_fallback": fallback,
            "saturation_guard": settings.saturation_guard, "guarded_nodes": guarded,
            "calibration_method": settings.calibration_method, "calibration_samples": int(len(inputs)), **precisions}


def run(source: Artifact, settings: PtqSettings, ctx: StageContext) -> StageOutput:
    calibration = ctx.data.calibration
    ctx.log(f"calibration set: {calibration.name}")
    out = ctx.output_path("onnx")
    done = quantize(source=source.path, out=out, calibration=calibration.inputs, settings=settings, log=ctx.log)
    return StageOutput(artifact=Artifact(path=out, format="onnx"), metrics={"quantization": done})


STAGE = StageDef(kind="ptq", settings_type=PtqSettings, input_format="onnx", output_format="onnx", run=run, needs=("calibration",),
                 summary="static INT8 quantization (QDQ, per-channel) calibrated on [data.calibration]")
