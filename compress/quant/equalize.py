"""Cross-layer equalization on an ONNX graph (Nagel et al. 2019, "Data-Free Quantization Through
Weight Equalization and Bias Correction", section 4.1).

For two consecutive convolutions y = W2 f(W1 x + b1), with f positively homogeneous
(f(z / s) = f(z) / s for s > 0: ReLU, LeakyReLU, or no activation at all), scaling output channel i
of the first by 1/s_i and input channel i of the second by s_i leaves the function unchanged. With
r1_i, r2_i the ranges of those weight slices, s_i = sqrt(r1_i / r2_i) makes both ranges
sqrt(r1_i * r2_i): channels with tiny weights no longer waste the quantization grid that one large
channel sets. A conv that ends one pair and starts the next is pulled both ways, so the pairs are
swept until the scales settle.

ReLU6 (Clip(0, 6), MobileNetV2's activation) is not homogeneous: clip(z / s, 0, 6) equals
clip(z, 0, 6) / s only while z stays below 6 * min(1, s). We keep the Clip and use the calibration
data to decide per channel: a channel whose pre-activation reaches the clip on any calibration image
keeps s = 1 (exact), and any other channel is scaled only as far as keeps its calibrated maximum below
the clip (exact on every calibration image). An image that goes beyond the calibrated maximum can be
clipped differently than before, which is why `fp32_max_relative_change` is reported and the
benchmark measures the float model's agreement on held-out images.

Works on float weights after batch-norm folding: a BatchNormalization between the convs breaks the pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgepress.compress.quant import onnx_graph

HOMOGENEOUS = {"Relu", "LeakyRelu"}
MAX_STEP = 1e3  # no single sweep moves a channel by more than this factor


@dataclass
class Pair:
    first: object  # onnx NodeProto (Conv)
    second: object  # onnx NodeProto (Conv)
    activation: str  # "none", "Relu", "LeakyRelu" or "Clip"
    clip_max: float | None = None
    # per output channel of `first`: the calibrated maximum of its pre-activation (Clip pairs only)
    calibrated_max: np.ndarray | None = None
    divisor: np.ndarray | None = field(default=None)  # the cumulative s applied to `first`'s output channels


def _conv_weight(model, node) -> np.ndarray | None:
    if node.op_type != "Conv" or len(node.input) < 2:
        return None
    weight = onnx_graph.constant(model, node.input[1])
    if weight is None or weight.dtype != np.float32 or (len(node.input) > 2 and node.input[2]
                                                        and onnx_graph.constant(model, node.input[2]) is None):
        return None
    return weight


def _groups(node) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def _clip_bounds(model, node) -> tuple[float | None, float | None] | None:
    """(min, max) of a Clip whose bounds are constants, None when they are not."""
    bounds = []
    for index, attr in ((1, "min"), (2, "max")):
        if len(node.input) > index and node.input[index]:
            value = onnx_graph.constant(model, node.input[index])
            if value is None:
                return None
            bounds.append(float(value.reshape(())))
        else:
            bounds.append(next((a.f for a in node.attribute if a.name == attr), None))
    return bounds[0], bounds[1]


def find_pairs(model) -> tuple[list[Pair], dict[str, int]]:
    """Conv -> (ReLU | LeakyReLU | Clip(0, M) | nothing) -> Conv chains whose middle tensors feed
    nothing else; also counts why other convs could not start a pair."""
    users = onnx_graph.consumers(model)
    outputs = onnx_graph.graph_outputs(model)
    pairs: list[Pair] = []
    skipped: dict[str, int] = {}

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    def single_user(tensor: str):
        found = users.get(tensor, [])
        return found[0] if len(found) == 1 and tensor not in outputs else None

    for first in model.graph.node:
        w1 = _conv_weight(model, first)
        if w1 is None:
            continue
        nxt = single_user(first.output[0])
        if nxt is None:
            skip("output feeds more than one node (e.g. a residual add)")
            continue
        activation, clip_max, second = "none", None, nxt
        if nxt.op_type in HOMOGENEOUS or nxt.op_type == "Clip":
            activation = nxt.op_type
            if nxt.op_type == "Clip":
                bounds = _clip_bounds(model, nxt)
                if bounds is None or bounds[0] is None or bounds[0] != 0.0:
                    skip("Clip whose lower bound is not a constant 0")
                    continue
                clip_max = bounds[1]
                if clip_max is None:
                    activation = "Relu"  # Clip(0, inf)
            second = single_user(nxt.output[0])
        if second is None or second.input[0] != (first.output[0] if activation == "none" else nxt.output[0]):
            skip("not followed by a conv through a homogeneous activation")
            continue
        w2 = _conv_weight(model, second)
        if w2 is None:
            skip("not followed by a conv through a homogeneous activation")
            continue
        if w2.shape[1] * _groups(second) != w1.shape[0]:
            skip("channel counts do not line up")
            continue
        pairs.append(Pair(first=first, second=second, activation=activation, clip_max=clip_max,
                          divisor=np.ones(w1.shape[0])))
    return pairs, skipped


def _input_channel_index(second_weight: np.ndarray, groups: int) -> np.ndarray:
    """[out, in_per_group] -> the input channel of `second` that each weight slice reads."""
    out_channels, per_group = second_weight.shape[:2]
    group_of_output = np.arange(out_channels) // (out_channels // groups)
    return group_of_output[:, None] * per_group + np.arange(per_group)[None, :]


def _ranges(w1: np.ndarray, w2: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1).astype(np.float64)
    slice_max = np.abs(w2).reshape(w2.shape[0], w2.shape[1], -1).max(axis=2)
    r2 = np.zeros(w1.shape[0])
    np.maximum.at(r2, _input_channel_index(w2, groups).ravel(), slice_max.ravel())
    return r1, r2


def range_evenness(weight: np.ndarray) -> float:
    """Mean over output channels of (channel range / tensor range): 1.0 when every channel spans the
    whole per-tensor grid, near 0 when one channel's range dwarfs the others (the paper's precision)."""
    ranges = np.abs(weight).reshape(weight.shape[0], -1).max(axis=1)
    return float(ranges.mean() / ranges.max()) if ranges.max() > 0 else 1.0


def _step(model, pair: Pair) -> float:
    """Equalize one pair once; returns the largest |log s| applied."""
    w1_name = onnx_graph.private_initializer(model, pair.first, 1)
    w2_name = onnx_graph.private_initializer(model, pair.second, 1)
    w1, w2 = onnx_graph.constant(model, w1_name), onnx_graph.constant(model, w2_name)
    groups = _groups(pair.second)
    r1, r2 = _ranges(w1, w2, groups)
    live = (r1 > 0) & (r2 > 0)
    scale = np.ones_like(r1)
    scale[live] = np.clip(np.sqrt(r1[live] / r2[live]), 1 / MAX_STEP, MAX_STEP)
    if pair.calibrated_max is not None:
        reaches = pair.calibrated_max >= pair.clip_max
        scale[reaches] = 1.0  # the clip binds on this channel: any scaling would move it
        # keep calibrated_max / (divisor * scale) below the clip
        floor = pair.calibrated_max / (pair.clip_max * pair.divisor)
        scale = np.where(reaches, 1.0, np.maximum(scale, floor))
    pair.divisor = pair.divisor * scale
    onnx_graph.set_initializer(model, w1_name, w1 / scale.reshape((-1,) + (1,) * (w1.ndim - 1)))
    if len(pair.first.input) > 2 and pair.first.input[2]:
        b1_name = onnx_graph.private_initializer(model, pair.first, 2)
        onnx_graph.set_initializer(model, b1_name, onnx_graph.constant(model, b1_name) / scale)
    factor = scale[_input_channel_index(w2, groups)]
    onnx_graph.set_initializer(model, w2_name, w2 * factor.reshape(factor.shape + (1,) * (w2.ndim - 2)))
    return float(np.abs(np.log(scale)).max())


def _calibrate_clips(model, pairs: list[Pair], calibration: np.ndarray, *, batch: int) -> None:
    clip_pairs = [p for p in pairs if p.activation == "Clip"]
    if not clip_pairs:
        return
    probe = type(model)()
    probe.CopyFrom(model)
    wanted = {}
    for index, pair in enumerate(clip_pairs):
        name = f"cle_max_{index}"
        spatial = list(range(2, onnx_graph.constant(model, pair.first.input[1]).ndim))
        onnx_graph.append_reduction(probe, pair.first.output[0], "max", [0] + spatial, name)
        wanted[name] = "max"
    found = onnx_graph.reduced_over_batches(probe, wanted, calibration, batch=batch)
    for index, pair in enumerate(clip_pairs):
        pair.calibrated_max = found[f"cle_max_{index}"]


def equalize_model(model, calibration: np.ndarray, *, iterations: int = 20, tolerance: float = 1e-3,
                   batch: int = 32, log: Callable[[str], None] = lambda _: None) -> dict:
    """Equalize `model` (an onnx ModelProto, changed in place); returns what it did."""
    pairs, skipped = find_pairs(model)
    touched = {id(n): n for p in pairs for n in (p.first, p.second)}
    before = {key: range_evenness(onnx_graph.constant(model, n.input[1])) for key, n in touched.items()}
    _calibrate_clips(model, pairs, calibration, batch=batch)
    sweeps, change = 0, 0.0
    for sweeps in range(1, iterations + 1):
        change = max((_step(model, pair) for pair in pairs), default=0.0)
        if change < tolerance:
            break
    after = {key: range_evenness(onnx_graph.constant(model, n.input[1])) for key, n in touched.items()}
    kinds: dict[str, int] = {}
    for pair in pairs:
        kinds[pair.activation] = kinds.get(pair.activation, 0) + 1
    clip_pairs = [p for p in pairs if p.calibrated_max is not None]
    pinned = int(sum(int(np.sum(p.calibrated_max >= p.clip_max)) for p in clip_pairs))
    limited = int(sum(int(np.sum(np.isclose(p.calibrated_max / p.divisor, p.clip_max, rtol=1e-6)
                                 & (p.calibrated_max < p.clip_max))) for p in clip_pairs))
    scales = np.concatenate([p.divisor for p in pairs]) if pairs else np.ones(1)
    done = {
        "pairs": len(pairs), "pairs_by_activation": kinds, "not_paired": skipped, "sweeps": sweeps,
        "last_sweep_max_log_scale": round(change, 6),
        "scale_min": float(scales.min()), "scale_max": float(scales.max()),
        "clip_channels_total": int(sum(len(p.divisor) for p in clip_pairs)),
        "clip_channels_kept_unscaled": pinned, "clip_channels_scale_limited": limited,
        "range_evenness_before": float(np.mean(list(before.values()))) if before else None,
        "range_evenness_after": float(np.mean(list(after.values()))) if after else None,
    }
    log(f"cross-layer equalization: {len(pairs)} conv pairs {kinds}, {sweeps} sweeps; mean channel-range evenness "
        f"{done['range_evenness_before']} -> {done['range_evenness_after']}; "
        f"{pinned} of {done['clip_channels_total']} ReLU6 channels reach the clip on calibration data and stay unscaled")
    return done


def equalize_file(source: Path, out: Path, calibration: np.ndarray, *, batch: int = 32,
                  log: Callable[[str], None] = lambda _: None, check_samples: int = 64) -> dict:
    """Equalize ONNX file `source` into `out`; also reports how far the float outputs moved on the
    first `check_samples` calibration inputs (0 up to float rounding when the transform is exact)."""
    import onnx

    model = onnx.load(str(source))
    done = equalize_model(model, calibration, batch=batch, log=log)
    onnx.save(model, str(out))
    x = np.ascontiguousarray(calibration[:check_samples], dtype=np.float32)
    original, equalized = (onnx_graph.session(onnx.load(str(p))) for p in (source, out))
    name = original.get_inputs()[0].name
    y0, y1 = original.run(None, {name: x})[0], equalized.run(None, {name: x})[0]
    done["fp32_max_relative_change"] = float(np.abs(y1 - y0).max() / max(float(np.abs(y0).max()), 1e-12))
    log(f"equalized float model vs original on {len(x)} calibration inputs: max relative change "
        f"{done['fp32_max_relative_change']:.2e}")
    return done
