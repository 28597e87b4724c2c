"""Conv kernels by measurement: ptq's `choose_conv_kernels`, the fastest of ONNX Runtime's integer conv kernels
for each conv shape on this CPU, reached through rewrites of the QDQ graph that change no output bit.

ONNX Runtime (1.32, MLAS) picks a QLinearConv's kernel from the form of its data, not from its speed:
- int8 weights with zero point 0 and input channels a multiple of 4: the symmetric indirect kernel (ConvSym,
  AVX-512 VNNI or ARM dot product), which works on 4 channels at a time;
- anything else: im2col and the general integer GEMM (QGEMM, which runs on AMX tiles where the CPU has them).
Timed alone on a VNNI + AMX Xeon (bench/RESULTS.md, issue 20): a 3-channel first conv takes the general path at
2x its float conv, and 0.58x of that with its input padded to 4 channels; 64 -> 64 3x3 on 8x8 maps runs 0.87x
as fast on the general GEMM as on ConvSym, 320 -> 1280 1x1 on 4x4 maps 0.70x, while 16 -> 16 3x3 on 32x32
maps runs 1.37x as slow. No rule of thumb holds across CPUs, so each conv shape is timed where it will run.

The rewrites (what may change):
- `weights_offset`: symmetric int8 weights q (in [-127, 127]) become q - 1 with zero point -1: the same real
  weights and the same integer sums, on the general GEMM;
- `channels_padded`: the input gets zero-weight channels up to a multiple of 4, from a Pad on the integer
  input filled with its zero point.
The score: each distinct conv (input shape, weights, attributes) runs alone as a one-conv QDQ model in every
form, interleaved in one process at the target's threads; a form replaces the quantizer's where it is faster
in a clear majority of rounds (speed_fallback's sign test) and by at least 5 % in the median. Then the whole
model, rewritten, is timed against the one quantized, and dropped if that is faster in a clear majority of
rounds: a Pad or a layout change the one-conv models did not see. (Two sessions of one model can differ by a
few per cent by where their buffers land, so this check catches losses, not small gains: `edgepress bench`
measures those over fresh sessions.)
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgepress.compress.quant import onnx_graph
from edgepress.compress.quant.speed_fallback import faster_in_rounds, runs_per_round

__all__ = ["ConvForm", "choose_conv_kernels", "integer_convs", "rewrite"]

CHANNEL_GROUP = 4  # int8 dot products (VNNI vpdpbusd, ARM sdot) take 4 input channels at a time
ROUNDS = 15  # a form kept on 13 or more wins of 15: a coin does that under 2 % of the time
# Two sessions of one model can run a few per cent apart, steadily, by where their buffers land; a form must
# gain more than that, as well as win the rounds.
MIN_GAIN = 0.95


@dataclass(frozen=True)
class ConvForm:
    weights_offset: bool = False
    channels_padded: bool = False

    @property
    def label(self) -> str:
        parts = [name for name, on in (("weights_offset", self.weights_offset),
                                       ("channels_padded", self.channels_padded)) if on]
        return "+".join(parts) or "as_quantized"


@dataclass(frozen=True)
class IntegerConv:
    """A Conv that ONNX Runtime fuses into a QLinearConv: DequantizeLinear on both inputs, int8 symmetric weights
    read by it alone, QuantizeLinear after it (`quantized_tail`)."""

    node: str
    input_shape: tuple[int, ...]  # of the integer input; a dynamic dimension as 1
    input_type: int  # its ONNX element type (uint8 or int8)
    output_type: int  # the QuantizeLinear's after it
    key: str  # what the kernel's speed depends on; equal keys are timed once

    @property
    def input_channels(self) -> int:
        return self.input_shape[1]


def _attributes(node) -> dict[str, Any]:
    from onnx import helper

    return {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}


def _tensors(model) -> dict[str, tuple[tuple[int, ...], int]]:
    """(shape with dynamic dimensions as 1, element type) of every tensor shape inference can tell."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    found = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            found[value.name] = (tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                                       for d in tensor.shape.dim), tensor.elem_type)
    return found


def _zero_point(model, node) -> np.ndarray | None:
    """A QuantizeLinear's or DequantizeLinear's zero point, None where it has none."""
    return onnx_graph.constant(model, node.input[2]) if len(node.input) > 2 and node.input[2] else None


def quantized_tail(node, read_by: dict, outputs: set[str]) -> list | None:
    """The nodes from `node`'s output to the QuantizeLinear that ends its integer kernel: [Q], or [Relu, Q] and
    [Clip, Q] as QAT exports write them (ONNX Runtime folds such an activation into the quantization); else None."""
    tail, tensor = [], node.output[0]
    while True:
        readers = read_by.get(tensor, [])
        if tensor in outputs or len(readers) != 1:
            return None
        tail.append(readers[0])
        if readers[0].op_type == "QuantizeLinear":
            return tail
        if readers[0].op_type not in ("Relu", "Clip") or len(tail) > 1:
            return None
        tensor = readers[0].output[0]


def integer_convs(model) -> list[IntegerConv]:
    """The convs whose kernel the rewrites can steer, in graph order."""
    made_by, read_by = onnx_graph.producers(model), onnx_graph.consumers(model)
    constants, outputs, tensors = onnx_graph.initializers(model), onnx_graph.graph_outputs(model), _tensors(model)
    found = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        data, weights = made_by.get(node.input[0]), made_by.get(node.input[1])
        tail = quantized_tail(node, read_by, outputs)
        if (data is None or weights is None or data.op_type != "DequantizeLinear" or weights.op_type != "DequantizeLinear"
                or data.input[0] in constants or weights.input[0] not in constants or node.output[0] in outputs
                or tail is None):
            continue
        values = onnx_graph.constant(model, weights.input[0])
        zero_point, data_zero_point = _zero_point(model, weights), _zero_point(model, data)
        shared = len(read_by.get(weights.input[0], [])) > 1 or len(read_by.get(weights.output[0], [])) > 1
        if (values is None or values.dtype != np.int8 or values.min() < -127 or shared
                or (zero_point is not None and np.any(zero_point != 0))
                or (data_zero_point is not None and data_zero_point.size != 1) or data.input[0] not in tensors
                or tail[-1].output[0] not in tensors):
            continue
        shape, input_type = tensors[data.input[0]]
        key = repr((shape, values.shape, sorted(_attributes(node).items()),
                    None if data_zero_point is None else str(data_zero_point.dtype),
                    len(node.input) > 2 and bool(node.input[2])))
        found.append(IntegerConv(node=node.name, input_shape=shape, input_type=input_type,
                                 output_type=tensors[tail[-1].output[0]][1], key=key))
    return found


def forms_for(conv: IntegerConv, model) -> list[ConvForm]:
    """The quantizer's form first, then every other form that applies to this conv."""
    from onnx import TensorProto

    node = next(n for n in model.graph.node if n.name == conv.node)
    # Only uint8 data: with int8 data (s8s8) ONNX Runtime's x86 pass that moves it to uint8 stops at the Pad,
    # and the conv falls back to float.
    can_pad = (conv.input_channels % CHANNEL_GROUP != 0 and _attributes(node).get("group", 1) == 1
               and onnx_graph.opset(model) >= 11 and conv.input_type == TensorProto.UINT8)
    forms = [ConvForm(), ConvForm(weights_offset=True)]
    if can_pad:
        forms += [ConvForm(channels_padded=True), ConvForm(weights_offset=True, channels_padded=True)]
    return forms


def rewrite(model, node_name: str, form: ConvForm) -> None:
    """Put conv `node_name` (one of integer_convs) into `form`, in place."""
    from onnx import helper

    node = next(n for n in model.graph.node if n.name == node_name)
    made_by = onnx_graph.producers(model)
    data, weights = made_by[node.input[0]], made_by[node.input[1]]
    values = onnx_graph.constant(model, weights.input[0]).astype(np.int16)
    zero_point = 0
    if form.weights_offset:
        values, zero_point = values - 1, -1
        scale = onnx_graph.constant(model, weights.input[1])
        name = onnx_graph.add_initializer(model, f"{weights.input[0]}__offset_zero_point",
                                          np.full(scale.shape, zero_point, dtype=np.int8))
        if len(weights.input) > 2:
            weights.input[2] = name
        else:
            weights.input.append(name)
    if form.channels_padded:
        extra = -values.shape[1] % CHANNEL_GROUP
        values = np.pad(values, [(0, 0), (0, extra)] + [(0, 0)] * (values.ndim - 2), constant_values=zero_point)
        rank = values.ndim
        data_zero_point = _zero_point(model, data)
        fill = np.zeros((), np.uint8) if data_zero_point is None else data_zero_point.reshape(())
        pads = onnx_graph.add_initializer(model, f"{node_name}__channel_pads",
                                          np.array([0] * rank + [0, extra] + [0] * (rank - 2), dtype=np.int64))
        fill_name = onnx_graph.add_initializer(model, f"{node_name}__channel_fill", fill)
        padded = f"{node_name}__channels_padded"
        pad = helper.make_node("Pad", [data.input[0], pads, fill_name], [padded], name=padded, mode="constant")
        dequantized = helper.make_node("DequantizeLinear", [padded, *data.input[1:]], [padded + "_dequantized"],
                                       name=padded + "_DequantizeLinear")
        for attr in data.attribute:
            dequantized.attribute.append(attr)
        nodes = list(model.graph.node)
        at = nodes.index(node)
        model.graph.node.insert(at, dequantized)
        model.graph.node.insert(at, pad)
        node.input[0] = dequantized.output[0]
    # Shapes recorded for the weights no longer hold.
    stale = {weights.output[0], weights.input[0]}
    kept = [v for v in model.graph.value_info if v.name not in stale]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    onnx_graph.set_initializer(model, weights.input[0], values.astype(np.int8))
    onnx_graph.drop_unread_dequantize(model)


def one_conv_model(model, conv: IntegerConv):
    """The conv alone with its DequantizeLinear and QuantizeLinear nodes, fed by its integer input."""
    from onnx import helper

    made_by, read_by = onnx_graph.producers(model), onnx_graph.consumers(model)
    node = next(n for n in model.graph.node if n.name == conv.node)
    data = made_by[node.input[0]]
    nodes = [made_by[name] for name in node.input[:2]]
    if len(node.input) > 2 and node.input[2] in made_by:
        nodes.append(made_by[node.input[2]])
    tail = quantized_tail(node, read_by, onnx_graph.graph_outputs(model))
    quantize = tail[-1]
    nodes += [node, *tail]
    # Scales and zero points that exporters write as Constant nodes come along.
    constant_nodes = {name: made_by[name] for n in nodes for name in n.input
                      if name in made_by and made_by[name].op_type == "Constant"}
    nodes = list(constant_nodes.values()) + nodes
    constants = onnx_graph.initializers(model)
    used = {name: constants[name] for n in nodes for name in n.input if name in constants}
    graph = helper.make_graph(nodes, "one_conv",
                              [helper.make_tensor_value_info(data.input[0], conv.input_type, list(conv.input_shape))],
                              [helper.make_tensor_value_info(quantize.output[0], conv.output_type, None)],
                              initializer=list(used.values()))
    return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def _random_input(conv: IntegerConv) -> np.ndarray:
    from onnx import helper

    dtype = helper.tensor_dtype_to_np_dtype(conv.input_type)
    info = np.iinfo(dtype)
    return np.random.default_rng(0).integers(info.min, info.max, size=conv.input_shape, endpoint=True).astype(dtype)


def _timed(paths: dict[str, Path], sample, *, threads: int) -> dict[str, np.ndarray]:
    from edgepress.runtime.latency import interleaved_latency
    from edgepress.runtime.session import open_session

    per_round = runs_per_round(open_session(next(iter(paths.values())), threads=threads), sample)
    return interleaved_latency(paths, sample, threads=threads, rounds=ROUNDS, runs_per_round=per_round, warmup_runs=5)


def fastest_form(model, conv: IntegerConv, *, threads: int, scratch: Path) -> tuple[ConvForm, list[dict[str, Any]]]:
    """The form this conv's kernel runs fastest in, timed alone, and each form's trial."""
    import onnx

    forms = forms_for(conv, model)
    paths = {}
    for form in forms:
        alone = one_conv_model(model, conv)
        if form != ConvForm():
            rewrite(alone, conv.node, form)
        paths[form.label] = scratch / f"{len(list(scratch.iterdir()))}-{form.label}.onnx"
        onnx.save(alone, str(paths[form.label]))
    data = onnx_graph.producers(model)[next(n for n in model.graph.node if n.name == conv.node).input[0]]
    times = _timed(paths, {data.input[0]: _random_input(conv)}, threads=threads)
    baseline = times[forms[0].label]
    best, best_ratio, trials = forms[0], 1.0, []
    for form in forms[1:]:
        kept, ratio = faster_in_rounds(times[form.label], baseline, ROUNDS)
        trials.append({"form": form.label, "ratio_to_as_quantized": round(ratio, 4), "faster": kept})
        if kept and ratio < min(best_ratio, MIN_GAIN):
            best, best_ratio = form, ratio
    return best, trials


def choose_conv_kernels(source: Path, out: Path, *, threads: int, sample: dict[str, np.ndarray],
                        log: Callable[[str], None]) -> dict[str, Any]:
    """Write `source` (a QDQ model) to `out` with each conv in its fastest measured form; return what was tried
    and chosen. `sample`: one input for the whole-model check."""
    import onnx

    model = onnx.load(str(source))
    convs = integer_convs(model)
    chosen: dict[str, ConvForm] = {}
    shapes: list[dict[str, Any]] = []
    by_key: dict[str, ConvForm] = {}
    with tempfile.TemporaryDirectory(prefix="edgepress-kernels-") as folder:
        for conv in convs:
            if conv.key not in by_key:
                by_key[conv.key], trials = fastest_form(model, conv, threads=threads, scratch=Path(folder))
                shapes.append({"first_node": conv.node, "input_shape": list(conv.input_shape), "trials": trials,
                               "chosen": by_key[conv.key].label})
                log(f"conv kernels: {conv.node} {list(conv.input_shape)}: "
                    + ", ".join(f"{t['form']} {t['ratio_to_as_quantized']:.2f}x" for t in trials)
                    + f" -> {by_key[conv.key].label}")
            if by_key[conv.key] != ConvForm():
                chosen[conv.node] = by_key[conv.key]
        record: dict[str, Any] = {"integer_convs": len(convs), "shapes_timed": len(shapes), "shapes": shapes,
                                  "chosen": {}, "whole_model_ratio": None, "kept": False}
        if chosen:
            for node, form in chosen.items():
                rewrite(model, node, form)
            candidate = Path(folder) / "rewritten.onnx"
            onnx.save(model, str(candidate))
            times = _timed({"rewritten": candidate, "as_quantized": source}, sample, threads=threads)
            slower, ratio = faster_in_rounds(times["as_quantized"], times["rewritten"], ROUNDS)
            ratio = 1.0 / ratio
            record.update(whole_model_ratio=round(ratio, 4), kept=not slower,
                          chosen={node: form.label for node, form in chosen.items()})
            log(f"conv kernels: {len(chosen)} of {len(convs)} convs rewritten, whole model {ratio:.3f}x the quantizer's "
                + ("(surely slower: not kept)" if slower else "(kept)"))
            if not slower:
                onnx.save(model, str(out))
                return record
    if Path(out).resolve() != Path(source).resolve():
        shutil.copyfile(source, out)
    return record
