"""compress/quant/qdq_cleanup.py on tiny graphs: which patterns it rewrites, which it leaves, and that no output changes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgepress.compress.ptq import PtqSettings, quantize
from edgepress.compress.quant.qdq_cleanup import pads_on_quantized_data, spatial_means_to_global_pool
from edgepress.export.export import ExportSettings, export_onnx
from edgepress.runtime.isa import Isa
from tests.test_ptq import optimized_ops

SCALE, ZERO = 0.05, 7


def qdq_pad_model(path, *, fill: float | None, mode: str = "constant", out_scale: float = SCALE,
                  fill_quantized: bool = True, pad_is_output: bool = False):
    """x -> Q -> DQ -> Pad(fill) -> Q(out_scale) -> DQ -> y: what quantize_static leaves around a shortcut Pad."""
    init = [numpy_helper.from_array(np.array(SCALE, np.float32), "s"),
            numpy_helper.from_array(np.array(ZERO, np.uint8), "z"),
            numpy_helper.from_array(np.array(out_scale, np.float32), "s_out"),
            numpy_helper.from_array(np.array([0, 2, 1, 0, 0, 2, 1, 0], np.int64), "pads")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"])]
    pad_inputs = ["xd", "pads"]
    if fill is not None and fill_quantized:
        init += [numpy_helper.from_array(np.array(round(fill / 0.01), np.int16).astype(np.uint8)
                                         if fill >= 0 else np.array(0, np.uint8), "fq"),
                 numpy_helper.from_array(np.array(0.01, np.float32), "fs"),
                 numpy_helper.from_array(np.array(0, np.uint8), "fz")]
        nodes.append(helper.make_node("DequantizeLinear", ["fq", "fs", "fz"], ["fill"]))
        pad_inputs.append("fill")
    elif fill is not None:
        init.append(numpy_helper.from_array(np.array(fill, np.float32), "fill"))
        pad_inputs.append("fill")
    nodes += [helper.make_node("Pad", pad_inputs, ["padded"], mode=mode, name="pad"),
              helper.make_node("QuantizeLinear", ["padded", "s_out", "z"], ["pq"]),
              helper.make_node("DequantizeLinear", ["pq", "s_out", "z"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 6, 4])]
    if pad_is_output:
        outputs.append(helper.make_tensor_value_info("padded", TensorProto.FLOAT, [1, 5, 6, 4]))
    graph = helper.make_graph(nodes, "pad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              outputs, initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def outputs(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def ops(path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


X = np.random.default_rng(0).normal(size=(1, 3, 4, 4)).astype(np.float32)


@pytest.mark.parametrize("fill", [None, 0.0, 0.5, 1.27])
@pytest.mark.parametrize("fill_quantized", [True, False])
def test_a_pad_between_matching_qdq_runs_on_the_integers_with_every_output_bit_kept(tmp_path, fill, fill_quantized):
    source = qdq_pad_model(tmp_path / "in.onnx", fill=fill, fill_quantized=fill_quantized)
    out = tmp_path / "out.onnx"
    assert pads_on_quantized_data(source, out) == 1
    assert ops(out) == ["QuantizeLinear", "Pad", "DequantizeLinear"]
    assert np.array_equal(outputs(source, X)[0], outputs(out, X)[0])
    assert ops(source) != ops(out)  # the source file is left as it was


@pytest.mark.parametrize("variant", [dict(mode="reflect"), dict(out_scale=0.1), dict(pad_is_output=True)])
def test_pads_that_are_not_a_pure_integer_move_stay(tmp_path, variant):
    source = qdq_pad_model(tmp_path / "in.onnx", fill=0.0, **variant)
    out = tmp_path / "out.onnx"
    assert pads_on_quantized_data(source, out) == 0
    assert ops(out) == ops(source)
    assert all(np.array_equal(a, b) for a, b in zip(outputs(source, X), outputs(out, X)))


def reduce_mean_model(path, *, axes, keepdims: int, opset: int = 18):
    init, inputs, attributes = [], ["x"], {"keepdims": keepdims}
    if opset >= 18:
        init.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
        inputs.append("axes")
    else:
        attributes["axes"] = axes
    graph = helper.make_graph([helper.make_node("ReduceMean", inputs, ["y"], **attributes)], "mean",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(("axes", "keepdims", "opset", "pooled"), [
    ([2, 3], 1, 18, True), ([-1, -2], 1, 18, True), ([2, 3], 1, 13, True),
    ([2, 3], 0, 18, False), ([1], 1, 18, False), ([1, 2, 3], 1, 18, False)])
def test_only_a_kept_spatial_mean_becomes_global_average_pool(tmp_path, axes, keepdims, opset, pooled):
    source = reduce_mean_model(tmp_path / "in.onnx", axes=axes, keepdims=keepdims, opset=opset)
    out = tmp_path / "out.onnx"
    assert spatial_means_to_global_pool(source, out) == int(pooled)
    assert ops(out) == (["GlobalAveragePool"] if pooled else ["ReduceMean"])
    x = np.random.default_rng(1).normal(size=(2, 3, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(outputs(source, x)[0], outputs(out, x)[0], rtol=1e-6, atol=1e-6)


class Shortcut(torch.nn.Module):
    """ResNet option-A shortcut: a strided slice zero-padded with channels, added to a conv; then the mean pool."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c0 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c1 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        y = torch.relu(self.c0(x))
        short = torch.nn.functional.pad(y[:, :, ::2, ::2], (0, 0, 0, 0, 4, 4))
        y = torch.relu(self.c1(y) + short)
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))


def test_ptq_leaves_no_float_pad_or_mean_in_a_resnet_shortcut(tmp_path):
    source = tmp_path / "shortcut.onnx"
    export_onnx(model=Shortcut().eval(), input_shape=(3, 16, 16), path=source, settings=ExportSettings(),
                log=lambda _: None)
    x = np.random.default_rng(0).normal(size=(64, 3, 16, 16)).astype(np.float32)
    done = {}
    for simplify in (True, False):
        done[simplify] = quantize(source=source, out=tmp_path / f"q-{simplify}.onnx", calibration=x,
                                  settings=PtqSettings(simplify_qdq=simplify), target_isas=[Isa(arch="x86_64", vnni=True)])
    assert done[True]["transforms"]["simplify_qdq"] == {"spatial_means_to_global_pool": 1, "pads_on_quantized_data": 1}
    assert "simplify_qdq" not in done[False]["transforms"]
    simplified, plain = (optimized_ops(tmp_path / f"q-{s}.onnx", tmp_path) for s in (True, False))
    assert "ReduceMean" in plain and "ReduceMean" not in simplified and "QLinearGlobalAveragePool" in simplified
    assert len(simplified) < len(plain)
    assert simplified.count("DequantizeLinear") + simplified.count("QuantizeLinear") \
        < plain.count("DequantizeLinear") + plain.count("QuantizeLinear")
    reference = outputs(source, x)[0]
    for simplify in (True, False):
        int8 = outputs(tmp_path / f"q-{simplify}.onnx", x)[0]
        assert np.mean(int8.argmax(1) == reference.argmax(1)) >= 0.9
    assert np.abs(outputs(tmp_path / "q-True.onnx", x)[0] - outputs(tmp_path / "q-False.onnx", x)[0]).max() \
        <= 0.05 * np.abs(reference).max()
