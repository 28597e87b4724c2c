"""Static INT8 post-training quantization (QDQ, per channel) with onnxruntime.quantization: the algorithm behind
the `ptq` stage (compress/ptq.py), and the one qat, accuracy_aware_ptq and the speed fallback call too."""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np

from edgepress.compress.quant.calibration_histograms import narrow_range_histograms
from edgepress.compress.quant.keep_float import pin_float_nodes
from edgepress.compress.quant.qdq_cleanup import pads_on_quantized_data, spatial_means_to_global_pool
from edgepress.core.errors import UserError
from edgepress.compress.quant.saturation import signed_input_nodes, weight_tensors
from edgepress.core.schema import BATCH, SAMPLES, bounded, closest, setting, within
from edgepress.runtime.isa import Isa, local_isa, saturation_guard_for

# scheme = activation type + weight type, as ONNX Runtime's docs name them.
SCHEMES = {"u8s8": ("QUInt8", "QInt8"), "s8s8": ("QInt8", "QInt8"), "u8u8": ("QUInt8", "QUInt8")}


@dataclass(frozen=True)
@bounded
class PtqSettings:
    scheme: Literal["u8s8", "s8s8", "u8u8"] = setting(
        "u8s8", help="activation and weight integer types: u8s8 uint8 activations and int8 weights (ONNX Runtime's "
                     "fast default on x86 and ARM), s8s8 both int8, u8u8 both uint8")
    # The guard is not free: a U8U8 conv has no symmetric (indirect) kernel; on a VNNI Xeon dropping it made
    # ResNet-20's INT8 3 % and a MobileNetV3-style net's 18 % faster. See saturation.py.
    saturation_guard: Literal["auto", "off", "uint8_weights", "fp32"] = setting(
        "auto", help='nodes fed by possibly-negative activations saturate x86 U8S8 kernels without VNNI: "fp32" '
                     'keeps them in float, "uint8_weights" runs them with the U8U8 kernel, "off" leaves them be; '
                     '"auto": "uint8_weights" where one of the recipe\'s targets may saturate (x86 without VNNI, or '
                     'an ssh device whose CPU is not known here), else "off"')
    reduce_range: bool = setting(False, help="7-bit weights everywhere: the blunt alternative to saturation_guard, "
                                             "at a cost in precision")
    per_channel: bool = setting(True, help="a weight scale per output channel; false: one per tensor, coarser")
    calibration_method: Literal["minmax", "entropy", "percentile"] = setting(
        "percentile", help='how activation ranges are set from the calibration data: "percentile" clips at '
                           'percentile, "minmax" spans every value, "entropy" minimises the KL divergence of the '
                           "quantized histogram")
    calibration_samples: int = within(*SAMPLES, default=512,
                                      help="calibration samples run through the model to set activation ranges")
    calibration_batch: int = within(*BATCH, default=32,
                                    help="samples per calibration batch, at most (lowered to give equal batches)")
    percentile: float = setting(99.999, help='calibration_method "percentile": the percentile, in (90, 100], of '
                                             "each activation's values its range covers")
    nodes_to_exclude: tuple[str, ...] = setting((), help="ONNX node names kept in FP32")
    op_types: tuple[str, ...] = setting((), help="ONNX op types to quantize (e.g. Conv, MatMul); empty: every type "
                                                 "ONNX Runtime's static quantization handles")
    preprocess: bool = setting(True, help="ONNX Runtime's quant_pre_process first: shape inference and basic graph "
                                          "optimisation (constant folding, Conv+BatchNormalization fusion)")
    # Transforms that lower quantization error (README, "Quantization transforms"); each one is a switch
    # so the benchmark can measure it on and off.
    fold_batchnorm: bool = setting(
        True, help="BatchNormalization folded into the conv before it (needs preprocess): the conv then quantizes "
                   "the weights it really uses and no float BN runs between integer kernels; false keeps every BN a "
                   "separate node. Matters for ONNX models that arrive with BatchNormalization nodes (both torch "
                   "exporters already fold BN in eval mode)")
    # compress/quant/equalize.py; ReLU6 channels that reach 6 on calibration data stay unscaled.
    equalize: bool = setting(
        False, help="cross-layer equalization: rescales consecutive convs so per-channel weight ranges even out, "
                    "which helps depthwise networks (MobileNetV2) whose channels differ by orders of magnitude; the "
                    "float function is unchanged. Needs fold_batchnorm")
    # compress/quant/bias_correction.py
    bias_correction: bool = setting(
        False, help="empirical bias correction: the per-channel mean output shift that int8 rounding causes, "
                    "estimated on the calibration samples and removed through each int8 Conv/Gemm's bias")
    # compress/quant/qdq_cleanup.py. ResNet-20's two shortcut Pads and its pooling: 1.4 % faster on a VNNI Xeon
    # (bench/RESULTS.md, issue 20).
    simplify_qdq: bool = setting(
        True, help="closes float islands ONNX Runtime's QDQ fusion leaves (a Pad between a DequantizeLinear and a "
                   "QuantizeLinear, a spatial ReduceMean); every output bit stays the same")
    # compress/quant/speed_fallback.py
    float_where_faster: bool = setting(
        False, help="measure, on the primary target's threads, whether each compute node and its activation tail "
                    "runs faster in float, and keep it there where it surely does. Costs a quantization and a short "
                    "timing per node; on a net ONNX Runtime runs faster in float (hardswish, small maps) the INT8 "
                    "model gets faster, and larger. The file then depends on timings")
    # compress/quant/conv_kernels.py: input channels padded to a multiple of 4 for the dot-product kernel, or
    # weights offset to the general GEMM (AMX where present); a fraction of a second per distinct conv shape.
    # On a VNNI + AMX Xeon: ResNet-20's 3-channel first conv, padded, 0.69x as long; the whole model 0.93x.
    choose_conv_kernels: bool = setting(
        False, help="each conv shape timed alone in ONNX Runtime's INT8 kernels on this CPU, and steered to the "
                    "fastest by a rewrite that changes no output bit. Done when the recipe's first target is this "
                    "machine (local) and no target adds products in int16 (x86 without VNNI). Off by default because "
                    "the file then depends on timings (its outputs do not), like float_where_faster's")
    bias_correction_holdout: float = setting(
        0.25, help="bias_correction: the share, in (0, 1), of the calibration samples kept out of the bias estimate, "
                   "on which its effect is measured and reported (output error and top-1 agreement against the "
                   "source model, before and after)")

    def __post_init__(self) -> None:
        if not 90.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (90, 100], got {self.percentile}")
        if not 0.0 < self.bias_correction_holdout < 1.0:
            raise ValueError(f"bias_correction_holdout is a share in (0, 1), got {self.bias_correction_holdout}")
        if self.equalize and not self.fold_batchnorm:
            raise ValueError("equalize needs fold_batchnorm: a BatchNormalization between two convs breaks the pair")


def even_batch(count: int, batch: int) -> int:
    """The largest batch of at most `batch` that splits `count` samples into equal batches.
    ONNX Runtime's histogram calibrators (percentile, entropy) stack each batch's outputs into one array,
    which fails on a short last batch; equal batches see the same samples, so the ranges are unchanged."""
    return next(size for size in range(min(batch, count), 0, -1) if count % size == 0)


class _ArrayReader:
    """onnxruntime.quantization's one-method data reader over an in-memory array, in equal batches."""

    def __init__(self, feeds: dict[str, np.ndarray], batch: int) -> None:
        count = len(next(iter(feeds.values())))
        batch = even_batch(count, batch)
        self._batches = iter([{name: values[i:i + batch] for name, values in feeds.items()}
                              for i in range(0, count, batch)])

    def get_next(self):
        return next(self._batches, None)


def calibration_feeds(session, calibration: np.ndarray | dict[str, np.ndarray], *, samples: int
                      ) -> dict[str, np.ndarray]:
    """The first `samples` calibration samples, by the model's input names (one array: its only input)."""
    if not isinstance(calibration, dict) or (len(calibration) == 1 and len(session.get_inputs()) == 1):
        array = calibration if not isinstance(calibration, dict) else next(iter(calibration.values()))
        calibration = {session.get_inputs()[0].name: array}
    feeds = {name: values[:samples] for name, values in calibration.items()}
    if not len(next(iter(feeds.values()))):
        raise UserError("the calibration set holds no samples", fix="point [data.calibration] at a set with samples")
    for name, values in feeds.items():
        if np.issubdtype(values.dtype, np.floating) and not np.all(np.isfinite(values)):
            raise UserError(f"the calibration data's {name!r} contains NaN or infinite values",
                            fix="clean the calibration data or its preprocessing")
    return feeds


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


def batchnorm_count(model_path: Path) -> int:
    import onnx

    return sum(n.op_type == "BatchNormalization" for n in onnx.load(str(model_path), load_external_data=False).graph.node)


def _prepare(source: Path, out: Path, *, fold_batchnorm: bool, scratch: Path, log: Callable[[str], None]) -> None:
    """quant_pre_process: ONNX Runtime's basic graph optimisation (constant folding, Conv+BN, Conv+Add,
    Conv+Mul fusions), then shape inference. Without fold_batchnorm the same optimisation runs with
    only the Conv+BN fusion disabled, so the switch changes that one thing."""
    import onnxruntime as ort
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if fold_batchnorm:
        log("quant_pre_process: shape inference and graph optimisation (folds BatchNormalization) before quantization")
        quant_pre_process(str(source), str(out), skip_symbolic_shape=True)
        return
    log("quant_pre_process: shape inference and graph optimisation without the Conv+BatchNormalization fusion")
    optimized = scratch / "optimized-keep-bn.onnx"
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(optimized)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    ort.InferenceSession(str(source), sess_options=options, providers=["CPUExecutionProvider"],
                         disabled_optimizers=["ConvBNFusion"])
    quant_pre_process(str(optimized), str(out), skip_symbolic_shape=True, skip_optimization=True)


def _transformed_cache(cache: Path | None, settings: PtqSettings) -> Path | None:
    """Ranges calibrated on an equalized or unfolded graph are not those of the plain one: own file."""
    if cache is None or (settings.fold_batchnorm and not settings.equalize):
        return cache
    tag = ("-keep-bn" if not settings.fold_batchnorm else "") + ("-equalized" if settings.equalize else "")
    return cache.with_name(f"{cache.stem}{tag}{cache.suffix}")


def _split_for_bias_correction(inputs: np.ndarray, holdout: float) -> tuple[np.ndarray, np.ndarray]:
    """(estimate, held out): a seeded shuffle, so class-sorted calibration sets split fairly."""
    held = int(round(len(inputs) * holdout))
    if held < 1 or held >= len(inputs):
        raise UserError(f"bias correction holds out {holdout:.0%} of {len(inputs)} calibration samples, "
                        "which leaves none to estimate or none to measure on",
                        fix="use more calibration samples or change bias_correction_holdout")
    order = np.random.default_rng(0).permutation(len(inputs))
    return inputs[np.sort(order[held:])], inputs[np.sort(order[:held])]


def _bias_correction(*, source: Path, float_model: Path, out: Path, inputs: np.ndarray, settings: PtqSettings,
                     scratch: Path, log: Callable[[str], None]) -> dict[str, Any]:
    from edgepress.compress.quant.bias_correction import correct_biases, measure

    estimate, held_out = _split_for_bias_correction(inputs, settings.bias_correction_holdout)
    uncorrected = scratch / "uncorrected.onnx"
    shutil.copyfile(out, uncorrected)
    int8 = [name for name, precision in node_precision_map(out).items() if precision == "int8"]
    done = correct_biases(float_model=float_model, quantized=out, nodes=int8, inputs=estimate,
                          batch=settings.calibration_batch, log=log)
    done["held_out"] = measure(reference=source, models={"before": uncorrected, "after": out}, inputs=held_out)
    log(f"bias correction on {len(held_out)} held-out calibration samples: output error vs source "
        f"{done['held_out']['output_error_before']:.4g} -> {done['held_out']['output_error_after']:.4g}")
    return done


def resolve_guard(setting: str, *, scheme: str, target_isas: Sequence[Isa | None]) -> tuple[str, str]:
    """The saturation guard applied, and why."""
    if scheme != "u8s8":
        return "off", f"{scheme} has no U8S8 kernel to saturate"
    if setting != "auto":
        return setting, f"saturation_guard = {setting!r} in the settings"
    needed, why = saturation_guard_for(list(target_isas))
    return ("uint8_weights" if needed else "off"), why


def prepared_graph(source: Path, out: Path, *, settings: PtqSettings, log: Callable[[str], None]) -> dict[str, Any]:
    """The float graph quantize_static is given, written to `out` (its node names are the ones nodes_to_exclude
    names); returns the transforms done."""
    with tempfile.TemporaryDirectory(prefix="edgepress-prepare-") as scratch:
        prepared = source
        if settings.preprocess:
            prepared = Path(scratch) / "prepared.onnx"
            _prepare(source, prepared, fold_batchnorm=settings.fold_batchnorm, scratch=Path(scratch), log=log)
        transforms: dict[str, Any] = {"fold_batchnorm": {
            "on": settings.fold_batchnorm and settings.preprocess, "batchnorm_nodes_in_source": batchnorm_count(source),
            "batchnorm_nodes_quantized": batchnorm_count(prepared)}}
        if not compute_nodes(prepared):
            raise UserError(f"{source.name} has no Conv, Gemm or MatMul node, so INT8 has nothing to speed up",
                            fix="remove the quantization stage for this model")
        if settings.simplify_qdq:
            transforms["simplify_qdq"] = {"spatial_means_to_global_pool": spatial_means_to_global_pool(prepared, out)}
        else:
            import onnx

            onnx.save(onnx.load(str(prepared)), str(out))  # external weights come along, inline
    return transforms


def quantize(*, source: Path, out: Path, calibration: np.ndarray | dict[str, np.ndarray], settings: PtqSettings,
             log: Callable[[str], None] = lambda _: None, calibration_cache: Path | None = None,
             target_isas: Sequence[Isa | None] | None = None) -> dict[str, Any]:
    """Quantize ONNX file `source` into `out` (files in, files out); return what was done.

    `calibration_cache`: a JSON file of tensor ranges (ONNX Runtime's own format), read when it
    exists and written when not, so that many variants of one model calibrate only once.
    `target_isas`: the CPUs the model will run on, for saturation_guard "auto" (None: this machine's)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgepress.runtime.session import as_feed, check_feeds, open_session

    session = open_session(source, threads=1)
    feeds = calibration_feeds(session, calibration, samples=settings.calibration_samples)
    check_feeds(session, {k: v[: settings.calibration_batch] for k, v in feeds.items()}, source="the calibration data")
    feeds = as_feed(session, feeds)  # the model's own inputs, at the types it declares
    # One-input transforms (equalization, bias correction) read the only input's array.
    inputs = next(iter(feeds.values()))
    if len(feeds) > 1 and (settings.equalize or settings.bias_correction):
        raise UserError(f"equalize and bias_correction work on one-input models, and {source.name} has {len(feeds)}",
                        fix="set equalize = false and bias_correction = false in this ptq stage")
    with tempfile.TemporaryDirectory(prefix="edgepress-ptq-") as scratch:
        to_quantize = Path(scratch) / "graph.onnx"
        transforms = prepared_graph(source, to_quantize, settings=settings, log=log)
        _check_excluded(to_quantize, settings.nodes_to_exclude)
        if settings.equalize:  # before the guard: equalizing may give shared weights their own names
            from edgepress.compress.quant.equalize import equalize_file

            equalized = Path(scratch) / "equalized.onnx"
            transforms["equalize"] = equalize_file(to_quantize, equalized, inputs, batch=settings.calibration_batch, log=log)
            to_quantize = equalized
        excluded = list(settings.nodes_to_exclude)
        overrides: dict[str, Any] = {}
        guard, guard_reason = resolve_guard(settings.saturation_guard, scheme=settings.scheme,
                                            target_isas=(local_isa(),) if target_isas is None else target_isas)
        log(f"saturation guard {guard}: {guard_reason}")
        guarded = signed_input_nodes(to_quantize) if guard != "off" else []
        if guarded:
            log(f"saturation guard ({guard}) on nodes with possibly negative inputs: {guarded}")
        if guard == "fp32":
            excluded += [n for n in guarded if n not in excluded]
        elif guard == "uint8_weights":
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
        with contextlib.redirect_stdout(chatter), narrow_range_histograms():
            quantize_static(
                str(to_quantize), str(out),
                _ArrayReader(feeds, settings.calibration_batch),
                quant_format=QuantFormat.QDQ,
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
                activation_type=activation_type,
                weight_type=weight_type,
                calibrate_method=method,
                nodes_to_exclude=excluded,
                op_types_to_quantize=list(settings.op_types) or None,
                extra_options=extra_options,
                calibration_cache_path=_transformed_cache(calibration_cache, settings),
            )
        log(chatter.getvalue())
        pinned = Path(scratch) / "float-pinned.onnx"
        transforms["float_nodes_pinned"] = pin_float_nodes(out, pinned)
        shutil.copyfile(pinned, out)
        if settings.simplify_qdq:
            padded = Path(scratch) / "quantized-pads.onnx"
            transforms["simplify_qdq"]["pads_on_quantized_data"] = pads_on_quantized_data(out, padded)
            shutil.copyfile(padded, out)
            log(f"Q/DQ islands closed: {transforms['simplify_qdq']}")
        if settings.bias_correction:
            transforms["bias_correction"] = _bias_correction(source=source, float_model=to_quantize, out=out, inputs=inputs,
                                                             settings=settings, scratch=Path(scratch), log=log)
    precisions = node_precisions(out)
    log(f"quantized: {precisions}")
    fallback = [{"node": n, "reason": "nodes_to_exclude"} for n in settings.nodes_to_exclude]
    if guard == "fp32":
        fallback += [{"node": n, "reason": "saturation guard: its input may be negative, which saturates x86 U8S8"}
                     for n in guarded if n not in settings.nodes_to_exclude]
    return {"scheme": settings.scheme, "reduce_range": settings.reduce_range, "node_precision": node_precision_map(out),
            "fp32_fallback": fallback,
            "saturation_guard": guard, "saturation_guard_reason": guard_reason, "guarded_nodes": guarded,
            "calibration_method": settings.calibration_method, "calibration_samples": int(len(inputs)),
            "transforms": transforms, **precisions}
