"""compress/quant/conv_kernels.py on real quantized graphs of every conv class: which convs it can steer, that each
form keeps every output bit and every conv on an integer kernel, and the measured choice end to end."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import edgepress
from edgepress.compress.quant.conv_kernels import ConvForm, choose_conv_kernels, forms_for, integer_convs, rewrite
from edgepress.compress.ptq import PtqSettings, quantize
from edgepress.export.export import ExportSettings, export_onnx
from edgepress.runtime.isa import Isa


class ConvClasses(torch.nn.Module):
    """A first conv of `channels` inputs, then a strided conv without bias, a grouped and a depthwise conv, a
    dilated 1x1 and a conv whose weights another conv shares, pooling and a linear head."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        torch.manual_seed(channels)
        self.first = torch.nn.Conv2d(channels, 8, 3, padding=1)
        self.strided = torch.nn.Conv2d(8, 6, 3, stride=2, padding=1, bias=False)
        self.grouped = torch.nn.Conv2d(6, 12, 3, padding=1, groups=3)
        self.depthwise = torch.nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.pointwise = torch.nn.Conv2d(12, 12, 1, dilation=2)
        self.head = torch.nn.Linear(12, 5)

    def forward(self, x):
        y = torch.relu(self.first(x))
        y = torch.relu(self.strided(y))
        y = torch.relu(self.grouped(y))
        y = torch.relu(self.depthwise(y))
        y = torch.relu(self.pointwise(y))
        y = torch.relu(self.pointwise(y))  # the same weights again: shared, so left alone
        return self.head(y.mean((2, 3)))


class Conv1d(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a, self.b = torch.nn.Conv1d(3, 8, 5, padding=2), torch.nn.Conv1d(8, 8, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))).mean(2)


def quantized(tmp_path, net, shape, settings: PtqSettings):
    source, out = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    export_onnx(model=net.eval(), input_shape=shape, path=source, settings=ExportSettings(), log=lambda _: None)
    x = np.random.default_rng(0).normal(size=(16, *shape)).astype(np.float32)
    quantize(source=source, out=out, calibration=x, settings=settings, target_isas=[Isa(arch="x86_64", vnni=True)])
    return out, x


def outputs(model, x):
    session = ort.InferenceSession(model.SerializeToString() if not isinstance(model, str) else model,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def optimized_ops(model, tmp_path) -> list[str]:
    path = tmp_path / "optimized.onnx"
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(path)).graph.node]


CASES = [
    pytest.param(ConvClasses(1), (1, 10, 10), PtqSettings(), id="1-channel-u8s8"),
    pytest.param(ConvClasses(3), (3, 10, 10), PtqSettings(), id="3-channel-u8s8"),
    pytest.param(ConvClasses(5), (5, 9, 7), PtqSettings(scheme="s8s8"), id="5-channel-s8s8"),
    pytest.param(ConvClasses(6), (6, 8, 8), PtqSettings(per_channel=False), id="6-channel-per-tensor"),
    pytest.param(ConvClasses(4), (4, 8, 8), PtqSettings(), id="4-channel"),
    pytest.param(Conv1d(), (3, 20), PtqSettings(), id="conv1d"),
]


@pytest.mark.parametrize("net, shape, settings", CASES)
def test_every_form_of_every_steerable_conv_keeps_every_output_bit_on_integer_kernels(tmp_path, net, shape, settings):
    path, x = quantized(tmp_path, net, shape, settings)
    model = onnx.load(str(path))
    expected = outputs(model, x)
    convs = integer_convs(model)
    steerable = {c.node for c in convs}
    all_convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    # Every integer conv but the second use of shared weights can be steered.
    assert len(steerable) >= len(all_convs) - 2, (steerable, all_convs)
    integer_kernels = optimized_ops(model, tmp_path).count("QLinearConv")
    for conv in convs:
        for form in forms_for(conv, model)[1:]:
            changed = onnx.load(str(path))
            rewrite(changed, conv.node, form)
            onnx.checker.check_model(changed)
            for got, want in zip(outputs(changed, x), expected):
                assert np.array_equal(got, want), (conv.node, form)
            ops = optimized_ops(changed, tmp_path)
            assert ops.count("QLinearConv") == integer_kernels and "Conv" not in ops, (conv.node, form, ops)
            assert ops.count("Pad") == optimized_ops(model, tmp_path).count("Pad") + form.channels_padded


@pytest.mark.parametrize("channels, paddable", [(1, True), (3, True), (5, True), (4, False), (8, False)])
def test_only_a_plain_conv_whose_channels_are_not_a_multiple_of_four_may_be_padded(tmp_path, channels, paddable):
    path, _ = quantized(tmp_path, ConvClasses(channels), (channels, 8, 8), PtqSettings())
    model = onnx.load(str(path))
    convs = {c.node: c for c in integer_convs(model)}
    first = next(n.name for n in model.graph.node if n.op_type == "Conv")
    assert any(f.channels_padded for f in forms_for(convs[first], model)) == paddable
    grouped = [c for c in convs.values() if c.input_channels == 6]  # groups=3 over 6 channels: never padded
    assert grouped and not any(f.channels_padded for c in grouped for f in forms_for(c, model))


def test_convs_the_rewrites_cannot_steer_are_left_out(tmp_path):
    (tmp_path / "guarded").mkdir()
    guarded, _ = quantized(tmp_path / "guarded", ConvClasses(3), (3, 8, 8), PtqSettings(saturation_guard="uint8_weights"))
    model = onnx.load(str(guarded))
    first = next(n.name for n in model.graph.node if n.op_type == "Conv")
    # uint8 weights (the saturation guard) already take the general GEMM: nothing to steer.
    assert first not in {c.node for c in integer_convs(model)}
    plain, _ = quantized(tmp_path, ConvClasses(3), (3, 8, 8), PtqSettings())
    model = onnx.load(str(plain))
    shared = [n.name for n in model.graph.node if n.op_type == "Conv"][-2:]  # the pointwise conv, used twice
    steerable = {c.node for c in integer_convs(model)}
    assert not set(shared) & steerable and len(steerable) == 4, steerable


def test_the_measured_choice_keeps_every_output_bit_and_says_what_it_tried(tmp_path):
    path, x = quantized(tmp_path, ConvClasses(3), (3, 16, 16), PtqSettings())
    before = path.read_bytes()
    out = tmp_path / "chosen.onnx"
    logged: list[str] = []
    record = choose_conv_kernels(path, out, threads=1, sample={"input": x[:1]}, log=logged.append)
    assert record["integer_convs"] == len(integer_convs(onnx.load(str(path))))
    assert record["shapes_timed"] == len(record["shapes"]) <= record["integer_convs"]
    first = record["shapes"][0]
    assert [t["form"] for t in first["trials"]] == ["weights_offset", "channels_padded", "weights_offset+channels_padded"]
    assert all(t["ratio_to_as_quantized"] > 0 for s in record["shapes"] for t in s["trials"])
    assert (record["whole_model_ratio"] is None) == (not record["chosen"])
    assert not record["kept"] or record["chosen"]
    assert any("conv kernels" in line for line in logged)
    for got, want in zip(outputs(str(out), x), outputs(str(path), x)):
        assert np.array_equal(got, want)
    assert path.read_bytes() == before


def test_forms_are_named_for_the_report():
    assert ConvForm().label == "as_quantized"
    assert ConvForm(weights_offset=True, channels_padded=True).label == "weights_offset+channels_padded"


def _tiny_recipe(tmp_path, targets: str):
    """The tiny digits recipe (a small CNN: a 1-channel first conv) with choose_conv_kernels in its ptq stage."""
    from edgepress.recipe import load
    from tests.conftest import TINY_RECIPE

    text = TINY_RECIPE.format(epochs=1, budgets="").replace('kind = "ptq"\n', 'kind = "ptq"\nchoose_conv_kernels = true\n')
    path = tmp_path / "recipe.toml"
    path.write_text(text + targets)
    return load(path)


def _ptq_kernels(report: dict) -> dict:
    return next(s for s in report["stages"] if s["name"] == "ptq")["metrics"]["quantization"]["conv_kernels"]


def test_the_ptq_stage_times_its_convs_on_this_machine_and_records_the_choice(tmp_path):
    from edgepress.runtime.isa import local_isa

    recipe = _tiny_recipe(tmp_path, '\n[target]\nname = "local"\nlatency = false\n')
    kernels = _ptq_kernels(edgepress.run(recipe, out=tmp_path / "out").to_json_dict())
    if local_isa().u8s8_saturates:  # an AVX2 machine: the rewrites would not be exact here
        assert "int16" in kernels["skipped"]
        return
    assert kernels["integer_convs"] >= 2 and kernels["shapes_timed"] >= 2
    first = kernels["shapes"][0]
    assert first["input_shape"][1] == 1 and "channels_padded" in {t["form"] for t in first["trials"]}
    chosen = onnx.load(str(tmp_path / "out" / "03-ptq" / "model.onnx"))
    pads = [n for n in chosen.graph.node if n.op_type == "Pad" and n.name.endswith("__channels_padded")]
    assert len(pads) == (kernels["kept"] and sum("channels_padded" in f for f in kernels["chosen"].values()))
    # report.md names each rewritten conv's form beside its precision.
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert ("kernel form (measured faster)" in markdown) == bool(kernels["kept"] and kernels["chosen"])
    for node, form in (kernels["chosen"] if kernels["kept"] else {}).items():
        assert f"| {node} | int8 | {form} |" in markdown


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="needs qemu-x86_64 (apt install qemu-user)")
def test_a_target_whose_kernels_add_in_int16_turns_the_rewrites_off(tmp_path):

    recipe = _tiny_recipe(tmp_path, '\n[[targets]]\nname = "local"\nlatency = false\n'
                                    '\n[[targets]]\nname = "qemu-x86_64:Haswell"\nlatency = false\n')
    kernels = _ptq_kernels(edgepress.run(recipe, out=tmp_path / "out").to_json_dict())
    assert "int16" in kernels["skipped"] and "integer_convs" not in kernels
