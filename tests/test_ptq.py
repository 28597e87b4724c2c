"""ptq on tiny real graphs: op counts, integer kernels after ORT optimisation, numeric parity, guards."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from edgepress.compress.ptq import PtqSettings, quantize

from edgepress.compress.quant.static import resolve_guard
from edgepress.compress.quant.saturation import signed_input_nodes
from edgepress.core.errors import UserError
from edgepress.export.export import ExportSettings, export_onnx
from edgepress.io.onnx_stats import count_params_and_macs
from edgepress.runtime.isa import Isa
from tests.conftest import one_node_model


class TinyNet(torch.nn.Module):
    """conv(image) -> relu -> conv -> [relu] -> conv -> relu -> pool -> linear; `bottleneck` drops the middle relu."""

    def __init__(self, *, bottleneck: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, 10)
        self.bottleneck = bottleneck

    def forward(self, x):
        y = torch.relu(self.c1(x))
        y = self.c2(y) if self.bottleneck else torch.relu(self.c2(y))
        y = torch.relu(self.c3(y))
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))


def export(tmp_path, *, bottleneck: bool = False):
    path = tmp_path / f"tiny-{bottleneck}.onnx"
    export_onnx(model=TinyNet(bottleneck=bottleneck).eval(), input_shape=(3, 16, 16), path=path,
                settings=ExportSettings(), log=lambda _: None)
    return path


def inputs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 16, 16)).astype(np.float32)


def run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def optimized_ops(path, tmp_path) -> list[str]:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


def conv_weight_dtypes(path) -> list[int]:
    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    dtypes = []
    for node in graph.node:
        if node.op_type == "Conv":
            dq = producers.get(node.input[1])
            dtypes.append(inits[dq.input[0]].data_type if dq is not None and dq.op_type == "DequantizeLinear" else 1)
    return dtypes


def test_signed_inputs_are_found(tmp_path):
    plain = export(tmp_path)
    graph = onnx.load(str(plain)).graph
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    assert signed_input_nodes(plain) == [convs[0]]  # only the conv fed by the image
    bottleneck = export(tmp_path, bottleneck=True)
    bconvs = [n.name for n in onnx.load(str(bottleneck)).graph.node if n.op_type == "Conv"]
    assert signed_input_nodes(bottleneck) == [bconvs[0], bconvs[2]]


def test_default_quantizes_every_conv_to_integer_kernels_with_parity(tmp_path):
    source = export(tmp_path)
    before = hashlib.sha256(source.read_bytes()).hexdigest()
    out = tmp_path / "q.onnx"
    done = quantize(source=source, out=out, calibration=inputs(64), settings=PtqSettings())
    assert hashlib.sha256(source.read_bytes()).hexdigest() == before  # a stage never changes its input
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("Conv") == 3 and ops.count("DequantizeLinear") >= 7 and ops.count("QuantizeLinear") >= 4
    assert done["int8_nodes"] == 4 and done["float_nodes"] == 0
    optimized = optimized_ops(out, tmp_path)
    assert optimized.count("QLinearConv") == 3 and "Conv" not in optimized
    x = inputs(256, seed=1)
    fp32, int8 = run(source, x), run(out, x)
    scale = np.abs(fp32).max()
    assert np.abs(fp32 - int8).mean() / scale < 0.02
    assert np.abs(fp32 - int8).max() / scale < 0.1
    assert np.mean(fp32.argmax(1) == int8.argmax(1)) >= 0.9


def test_uint8_weights_guard_gives_the_first_conv_uint8_weights(tmp_path):
    out = tmp_path / "q.onnx"
    quantize(source=export(tmp_path), out=out, calibration=inputs(32), settings=PtqSettings(saturation_guard="uint8_weights"))
    assert conv_weight_dtypes(out) == [onnx.TensorProto.UINT8, onnx.TensorProto.INT8, onnx.TensorProto.INT8]


AVX2 = Isa(arch="x86_64", vnni=False)
VNNI = Isa(arch="x86_64", vnni=True)
ARM = Isa(arch="aarch64")


@pytest.mark.parametrize(("isas", "guard"), [
    ((AVX2,), "uint8_weights"), ((VNNI,), "off"), ((ARM,), "off"), ((VNNI, ARM), "off"),
    ((VNNI, AVX2), "uint8_weights"), ((None,), "uint8_weights"), ((ARM, None), "uint8_weights")])
def test_automatic_guard_follows_the_targets_cpus(isas, guard):
    applied, why = resolve_guard("auto", scheme="u8s8", target_isas=isas)
    assert applied == guard
    assert ("saturate on" in why) == (guard != "off")
    assert resolve_guard("fp32", scheme="u8s8", target_isas=isas)[0] == "fp32"  # an explicit setting wins
    assert resolve_guard("auto", scheme="s8s8", target_isas=isas)[0] == "off"  # no U8S8 kernel to saturate


def test_automatic_guard_guards_only_for_cpus_that_saturate(tmp_path):
    source = export(tmp_path)
    for isas, first_conv in (((AVX2,), onnx.TensorProto.UINT8), ((VNNI, ARM), onnx.TensorProto.INT8)):
        out = tmp_path / f"q-{first_conv}.onnx"
        done = quantize(source=source, out=out, calibration=inputs(32), settings=PtqSettings(), target_isas=isas)
        assert conv_weight_dtypes(out)[0] == first_conv
        assert done["saturation_guard"] == ("uint8_weights" if first_conv == onnx.TensorProto.UINT8 else "off")
        assert done["saturation_guard_reason"]


def test_fp32_guard_keeps_signed_input_convs_in_float(tmp_path):
    out = tmp_path / "q.onnx"
    done = quantize(source=export(tmp_path, bottleneck=True), out=out, calibration=inputs(32),
                    settings=PtqSettings(saturation_guard="fp32"))
    assert done["float_nodes"] == 2 and done["int8_nodes"] == 2
    assert len(done["guarded_nodes"]) == 2
    assert optimized_ops(out, tmp_path).count("QLinearConv") == 1


def test_guard_off_and_s8s8_quantize_everything_int8(tmp_path):
    for settings in (PtqSettings(saturation_guard="off"), PtqSettings(scheme="s8s8")):
        out = tmp_path / f"{settings.scheme}-{settings.saturation_guard}.onnx"
        done = quantize(source=export(tmp_path), out=out, calibration=inputs(32), settings=settings)
        assert conv_weight_dtypes(out) == [onnx.TensorProto.INT8] * 3
        assert done["guarded_nodes"] == []
    zero_points = [numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer if i.name.endswith("zero_point") and "bias" not in i.name]
    assert zero_points and all(z.dtype == np.int8 for z in zero_points)


def test_a_float_node_between_integer_neighbours_stays_float_in_the_session(tmp_path):
    """ONNX Runtime's WeightBiasQuantization would quantize it at load time (compress/quant/keep_float.py)."""
    source = export(tmp_path)
    middle = [n.name for n in onnx.load(str(source)).graph.node if n.op_type == "Conv"][1]
    out = tmp_path / "q.onnx"
    done = quantize(source=source, out=out, calibration=inputs(32),
                    settings=PtqSettings(nodes_to_exclude=(middle,), saturation_guard="off"))
    assert done["node_precision"][middle] == "fp32" and done["transforms"]["float_nodes_pinned"] == [middle]
    optimized = optimized_ops(out, tmp_path)
    assert optimized.count("QLinearConv") == 2 and optimized.count("Conv") == 1
    x = inputs(64, seed=3)
    fp32, int8 = run(source, x), run(out, x)
    assert np.mean(fp32.argmax(1) == int8.argmax(1)) >= 0.9


def test_excluded_node_stays_float_and_unknown_name_is_an_error(tmp_path):
    source = export(tmp_path)
    last_conv = [n.name for n in onnx.load(str(source)).graph.node if n.op_type == "Conv"][-1]
    out = tmp_path / "q.onnx"
    done = quantize(source=source, out=out, calibration=inputs(32),
                    settings=PtqSettings(nodes_to_exclude=(last_conv,), preprocess=False))
    assert done["float_nodes"] == 1
    with pytest.raises(UserError, match="matches no node"):
        quantize(source=source, out=tmp_path / "x.onnx", calibration=inputs(32),
                 settings=PtqSettings(nodes_to_exclude=(last_conv + "x",), preprocess=False))
    assert not (tmp_path / "x.onnx").exists()


def test_nan_calibration_is_refused(tmp_path):
    bad = inputs(8)
    bad[3, 0, 0, 0] = np.nan
    with pytest.raises(UserError, match="NaN"):
        quantize(source=export(tmp_path), out=tmp_path / "q.onnx", calibration=bad, settings=PtqSettings())


def test_calibration_of_the_wrong_shape_is_refused_before_any_work(tmp_path):
    wrong = np.zeros((8, 3, 8, 8), dtype=np.float32)  # the model takes 3 x 16 x 16
    with pytest.raises(UserError, match=r"the calibration data gives inputs of shape \[3, 8, 8\]"):
        quantize(source=export(tmp_path), out=tmp_path / "q.onnx", calibration=wrong, settings=PtqSettings())
    assert not (tmp_path / "q.onnx").exists()


def test_a_model_with_nothing_to_quantize_is_refused_by_static_and_dynamic_int8(tmp_path):
    from edgepress.compress.dynamic_int8 import DynamicInt8Settings, quantize_int8

    shape = ["N", 3, 16, 16]
    source = one_node_model(tmp_path / "relu.onnx", onnx.helper.make_node("Relu", ["x"], ["y"]),
                            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
                            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)])
    with pytest.raises(UserError, match="has no Conv, Gemm or MatMul node"):
        quantize(source=source, out=tmp_path / "q.onnx", calibration=inputs(8), settings=PtqSettings())
    with pytest.raises(UserError, match="has no operator this quantization handles"):
        quantize_int8(source=source, out=tmp_path / "d.onnx", settings=DynamicInt8Settings(), log=lambda _: None)
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "d.onnx").exists()


def test_macs_and_params_of_float_and_quantized_graphs(tmp_path):
    source = export(tmp_path)
    expected_macs = 16 * 16 * (8 * 3 * 9 + 8 * 8 * 9 + 16 * 8 * 9) + 16 * 10
    expected_params = sum(p.numel() for p in TinyNet(bottleneck=False).parameters())
    assert count_params_and_macs(source) == (expected_params, expected_macs)
    out = tmp_path / "q.onnx"
    quantize(source=source, out=out, calibration=inputs(16), settings=PtqSettings())
    assert count_params_and_macs(out) == (expected_params, expected_macs)


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
@pytest.mark.parametrize("count", [1, 31, 33, 40, 64])
def test_every_calibration_size_works_with_every_method(tmp_path, method, count):
    # ONNX Runtime's histogram calibrators stacked a short last batch with the full ones and crashed.
    out = tmp_path / "q.onnx"
    done = quantize(source=export(tmp_path), out=out, calibration=inputs(count), settings=PtqSettings(calibration_method=method))
    assert done["calibration_samples"] == count and done["int8_nodes"] == 4 and done["float_nodes"] == 0
    assert np.isfinite(run(out, inputs(4, seed=2))).all()


def test_an_empty_calibration_set_is_refused(tmp_path):
    with pytest.raises(UserError, match="holds no samples"):
        quantize(source=export(tmp_path), out=tmp_path / "q.onnx", calibration=inputs(0), settings=PtqSettings())
    assert not (tmp_path / "q.onnx").exists()


def test_a_tensor_that_barely_varies_calibrates(tmp_path):
    """A squeeze-excitation gate of a barely-trained MobileNetV3 sits at 0.5 +- 1e-5 on every image: ONNX Runtime's
    histogram calibration then asked numpy for 2,048 bins in a range that holds fewer float32 values and
    stopped with 'Too many bins for data range' (percentile calibration, the default)."""
    source = export(tmp_path)
    gate = (0.5 + 1e-5 * np.random.default_rng(0).standard_normal((32, 3, 16, 16))).astype(np.float32)
    out = tmp_path / "q.onnx"
    done = quantize(source=source, out=out, calibration=gate, settings=PtqSettings())
    assert done["int8_nodes"] == 4
    # The input's range is about 0.5: the first conv's input scale reflects it, not a degenerate one.
    graph = onnx.load(str(out)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    first_q = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == graph.input[0].name)
    assert 0.5 / 255 <= float(inits[first_q.input[1]]) < 1.0 / 255
