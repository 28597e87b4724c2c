"""Empirical bias correction of a QDQ model (Nagel et al. 2019, section 4.2, the empirical variant).

Rounding weights to int8 shifts a layer's expected output: E[W~ x] - E[W x] = (W~ - W) E[x] is not
zero when the inputs have a non-zero mean, as they do after every ReLU, and it is largest in layers
with few weights per output channel (depthwise convolutions). Clipping activations at a calibrated
range shifts it too. We measure the shift per output channel and subtract it through the bias.

How it is measured: for every Conv/Gemm that runs in int8, a twin of the quantized node is appended
to the float model. It reads the float model's own input tensor through the quantized model's
activation QuantizeLinear/DequantizeLinear pair and uses the quantized model's dequantized weights and
bias; the per-channel mean of (float output - twin output) over the estimation images is the
correction. Each layer is corrected for the error it adds itself, on float inputs (one pass over the
data for all layers, and no double counting of the error that upstream layers, corrected themselves,
pass on). The correction is then folded into the int32 bias that the QDQ graph dequantizes (a bias
is added where the node had none).

The effect is measured by the caller on images held out from the estimate (`measure`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from edgepress.compress.quant import onnx_graph

CORRECTED_OPS = ("Conv", "Gemm")
INT32 = np.iinfo(np.int32)


def _attribute(node, name: str, default):
    from onnx import helper

    found = next((a for a in node.attribute if a.name == name), None)
    return helper.get_attribute_value(found) if found is not None else default


def _plan(qmodel, qnode, fnode, producers, users) -> tuple[dict | None, str | None]:
    """The quantized node's dequantize nodes, or why it cannot be corrected."""
    if fnode is None or fnode.op_type != qnode.op_type:
        return None, "no node of that name in the float model"
    dq = [producers.get(name) if name else None for name in list(qnode.input) + [""] * (3 - len(qnode.input))]
    if any(node is None or node.op_type != "DequantizeLinear" for node in dq[:2]):
        return None, "inputs not dequantized"
    if dq[2] is not None and (dq[2].op_type != "DequantizeLinear" or onnx_graph.constant(qmodel, dq[2].input[0]) is None):
        return None, "bias not a dequantized constant"
    if dq[2] is None and len(qnode.input) > 2 and qnode.input[2]:
        return None, "float bias"
    if dq[2] is not None and len(users.get(dq[2].output[0], [])) > 1:
        return None, "bias shared with another node"
    if qnode.op_type == "Gemm" and _attribute(qnode, "transA", 0):
        return None, "Gemm with transA"
    return {"activation": dq[0], "weight": dq[1], "bias": dq[2]}, None


def _twin(probe, qmodel, qnode, fnode, plan: dict, tag: str) -> str:
    """Append to `probe` (the float model) the quantized node fed from the float input; returns the
    name of the per-channel mean of (float output - twin output)."""
    from onnx import helper

    def copy_constants(dq) -> list[str]:
        names = []
        for name in dq.input[1:]:
            if name:
                names.append(onnx_graph.add_initializer(probe, f"{tag}/{name}", onnx_graph.constant(qmodel, name)))
        return names

    def dequantize(dq, source: str, out: str) -> str:
        probe.graph.node.append(helper.make_node("DequantizeLinear", [source, *copy_constants(dq)], [out],
                                                 name=out, **{a.name: helper.get_attribute_value(a) for a in dq.attribute}))
        return out

    act = plan["activation"]
    probe.graph.node.append(helper.make_node("QuantizeLinear", [fnode.input[0], *copy_constants(act)], [f"{tag}/xq"],
                                             name=f"{tag}/xq"))
    inputs = [dequantize(act, f"{tag}/xq", f"{tag}/x")]
    for index in (1, 2):
        dq = plan["weight" if index == 1 else "bias"]
        if dq is not None:
            stored = onnx_graph.add_initializer(probe, f"{tag}/{dq.input[0]}", onnx_graph.constant(qmodel, dq.input[0]))
            inputs.append(dequantize(dq, stored, f"{tag}/in{index}"))
    probe.graph.node.append(helper.make_node(qnode.op_type, inputs, [f"{tag}/y"], name=f"{tag}/twin",
                                             **{a.name: helper.get_attribute_value(a) for a in qnode.attribute}))
    probe.graph.node.append(helper.make_node("Sub", [fnode.output[0], f"{tag}/y"], [f"{tag}/diff"], name=f"{tag}/diff"))
    weight = onnx_graph.constant(qmodel, plan["weight"].input[0])
    axes = [0] + list(range(2, weight.ndim)) if qnode.op_type == "Conv" else [0]
    onnx_graph.append_reduction(probe, f"{tag}/diff", "mean", axes, f"{tag}/shift")
    return f"{tag}/shift"


def _fold_into_bias(qmodel, qnode, plan: dict, shift: np.ndarray) -> None:
    """Add `shift` (per output channel, float) to the node's int32 bias, creating one if it has none."""
    from onnx import helper

    shift = shift / _attribute(qnode, "beta", 1.0) if qnode.op_type == "Gemm" else shift
    bias_dq = plan["bias"]
    if bias_dq is not None:
        stored = onnx_graph.private_initializer(qmodel, bias_dq, 0)
        scale = onnx_graph.constant(qmodel, bias_dq.input[1]).astype(np.float64)
        zero = onnx_graph.constant(qmodel, bias_dq.input[2]) if len(bias_dq.input) > 2 and bias_dq.input[2] else 0
        value = (onnx_graph.constant(qmodel, stored).astype(np.float64) - zero) * scale + shift
        onnx_graph.set_initializer(qmodel, stored, np.clip(np.rint(value / scale) + zero, INT32.min, INT32.max))
        return
    # ONNX Runtime's convention for a quantized bias: int32, scale = input scale x weight scale, zero point 0.
    act_scale = onnx_graph.constant(qmodel, plan["activation"].input[1]).astype(np.float64).reshape(-1)
    weight_scale = onnx_graph.constant(qmodel, plan["weight"].input[1]).astype(np.float64).reshape(-1)
    scale = np.broadcast_to(act_scale * weight_scale, shift.shape).astype(np.float32)
    tag = f"{qnode.name}_bias_correction"
    names = [onnx_graph.add_initializer(qmodel, f"{tag}_quantized",
                                        np.clip(np.rint(shift / scale), INT32.min, INT32.max).astype(np.int32)),
             onnx_graph.add_initializer(qmodel, f"{tag}_scale", scale),
             onnx_graph.add_initializer(qmodel, f"{tag}_zero_point", np.zeros(shift.shape, dtype=np.int32))]
    node = helper.make_node("DequantizeLinear", names, [f"{tag}_dequantized"], name=f"{tag}_dq", axis=0)
    position = list(qmodel.graph.node).index(qnode)
    qmodel.graph.node.insert(position, node)
    qnode.input.append(f"{tag}_dequantized")


def correct_biases(*, float_model: Path, quantized: Path, nodes: list[str], inputs: np.ndarray, batch: int,
                   log: Callable[[str], None] = lambda _: None) -> dict:
    """Rewrite QDQ file `quantized` (made from `float_model`) with corrected biases on `nodes`,
    estimated on `inputs`; returns what changed."""
    import onnx

    fmodel, qmodel = onnx.load(str(float_model)), onnx.load(str(quantized))
    float_nodes = {n.name: n for n in fmodel.graph.node if n.name}
    producers, users = onnx_graph.producers(qmodel), onnx_graph.consumers(qmodel)
    probe = onnx.ModelProto()
    probe.CopyFrom(fmodel)
    wanted = set(nodes)
    planned, skipped = [], {}
    for index, qnode in enumerate(qmodel.graph.node):
        if qnode.name not in wanted or qnode.op_type not in CORRECTED_OPS:
            continue
        plan, reason = _plan(qmodel, qnode, float_nodes.get(qnode.name), producers, users)
        if plan is None:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        planned.append((qnode, plan, _twin(probe, qmodel, qnode, float_nodes[qnode.name], plan, f"bc{index}")))
    shifts = onnx_graph.reduced_over_batches(probe, {out: "mean" for _, _, out in planned}, inputs, batch=batch)
    for qnode, plan, out in planned:
        _fold_into_bias(qmodel, qnode, plan, shifts[out])
    onnx.save(qmodel, str(quantized))
    flat = np.concatenate([np.abs(shifts[out]) for _, _, out in planned]) if planned else np.zeros(1)
    done = {"nodes_corrected": len(planned), "not_corrected": skipped, "estimate_samples": int(len(inputs)),
            "max_abs_shift": float(flat.max()), "mean_abs_shift": float(flat.mean())}
    log(f"bias correction: {len(planned)} nodes, shifts up to {done['max_abs_shift']:.4g} "
        f"(mean {done['mean_abs_shift']:.4g}) estimated on {len(inputs)} inputs")
    return done


def output_error(reference: np.ndarray, outputs: np.ndarray) -> float:
    """Squared error relative to the reference's energy: reads the same for logits and embeddings."""
    return float(np.sum((outputs - reference) ** 2) / max(float(np.sum(reference ** 2)), 1e-12))


def measure(*, reference: Path, models: dict[str, Path], inputs: np.ndarray, threads: int = 1) -> dict:
    """Output error and top-1 agreement of each of `models` against `reference` on `inputs`
    (real ONNX Runtime sessions, integer kernels included)."""
    from edgepress.runtime.session import open_session, predict

    def outputs(path: Path) -> np.ndarray:
        return predict(open_session(path, threads=threads), inputs, batch_size=64)

    expected = outputs(reference)
    found = {"samples": int(len(inputs))}
    for name, path in models.items():
        got = outputs(path)
        found[f"output_error_{name}"] = output_error(expected, got)
        if expected.ndim == 2:
            found[f"agreement_{name}"] = float(np.mean(got.argmax(1) == expected.argmax(1)))
    return found
