"""QAT: the torch model is the INT8 model ONNX Runtime runs, on real sessions and real models."""

from __future__ import annotations


import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import TINY_RECIPE, assert_user_error, requires_shared_data, write_recipe
import edgepress
from edgepress.compress.quant.conv_kernels import ConvForm, integer_convs, rewrite
from edgepress.compress.quant.qat_export import check_integer_kernels, int8_weights
from edgepress.compress.quant.qat_graph import QatGraph
from edgepress.core.errors import UserError
from edgepress.export.export import ExportSettings, export_onnx
from edgepress.runtime.isa import local_isa
from edgepress.runtime.session import open_session, predict


class ResidualNet(nn.Module):
    """Every pattern QAT places quantization around: conv-bn-relu, a residual add, a strided
    option-A shortcut (slice + channel pad), ReLU6, pooling, flatten and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.conv1 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        out = F.relu6(self.bn1(self.conv1(x)))
        shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 4, 4))
        out = F.relu(self.conv2(out) + shortcut)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def _trained_like(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # non-trivial statistics, so folding changes the weights
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def _images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 3, 16, 16)).astype(np.float32)


def _export(tmp_path, *, weight_qmax: int, float_layers: tuple[str, ...] = ()):
    graph = QatGraph(_trained_like(ResidualNet()), weight_qmax=weight_qmax, float_layers=float_layers)
    torch.manual_seed(0)
    graph.calibrate(torch.from_numpy(_images(128, seed=1)), method="percentile", percentile=99.99)
    frozen, weights = graph.frozen_copy()
    path = tmp_path / "qat.onnx"
    export_onnx(model=frozen, input_shape=(3, 16, 16), path=path, settings=ExportSettings(exporter="torchscript", opset=17),
                log=lambda _: None)
    assert int8_weights(path, weights) == 4 - len(float_layers)  # 3 convs + the linear layer, int8 initializers now
    return graph, path


def test_exported_qdq_runs_integer_kernels_and_matches_torch_bit_for_bit(tmp_path):
    graph, path = _export(tmp_path, weight_qmax=64)
    kernels = check_integer_kernels(path)
    assert kernels["float_compute_nodes"] == 0
    assert kernels["op_counts"].get("QLinearConv") == 3 and kernels["op_counts"].get("QGemm") == 1
    assert kernels["op_counts"].get("QLinearAdd") == 1

    inputs = _images(256, seed=2)
    graph.set_mode("exact")
    with torch.no_grad():
        exact = graph.module(torch.from_numpy(inputs)).numpy()
    onnx_logits = predict(open_session(path, threads=1), inputs, batch_size=64)
    np.testing.assert_allclose(onnx_logits, exact, atol=1e-5)  # the same integer arithmetic, to float rounding
    graph.set_mode("quantize")
    with torch.no_grad():
        fake = graph.module(torch.from_numpy(inputs)).numpy()
    assert np.abs(fake - onnx_logits).max() < 0.05 * np.abs(onnx_logits).max()  # training's approximation is close

    # The convs (Conv -> Relu -> QuantizeLinear as exported) can be steered to other kernels, bit-exact.
    model = onnx.load(str(path))
    convs = integer_convs(model)
    assert len(convs) == 3
    for conv in convs:
        rewrite(model, conv.node, ConvForm(weights_offset=True))
    steered = tmp_path / "steered.onnx"
    onnx.save(model, str(steered))
    assert check_integer_kernels(steered)["op_counts"].get("QLinearConv") == 3
    assert np.array_equal(predict(open_session(steered, threads=1), inputs, batch_size=64), onnx_logits)


def test_a_layer_left_in_fp32_sees_the_float_image_and_the_rest_stays_integer_and_exact(tmp_path):
    graph, path = _export(tmp_path, weight_qmax=64, float_layers=("stem.0",))
    with pytest.raises(UserError, match="1 convolutions or matmuls"):
        check_integer_kernels(path)
    kernels = check_integer_kernels(path, allowed_float=1)
    assert kernels["float_compute_nodes"] == 1 and kernels["integer_compute_nodes"] == 3
    assert kernels["op_counts"].get("QLinearConv") == 2 and kernels["op_counts"].get("QGemm") == 1
    import onnx

    model = onnx.load(path)
    stem = next(node for node in model.graph.node if node.op_type == "Conv" and "stem" in node.name)
    assert stem.input[0] == model.graph.input[0].name  # the image itself, not a QuantizeLinear/DequantizeLinear copy

    inputs = _images(256, seed=2)
    graph.set_mode("exact")
    with torch.no_grad():
        exact = graph.module(torch.from_numpy(inputs)).numpy()
    onnx_logits = predict(open_session(path, threads=1), inputs, batch_size=64)
    # FP32 convolution differs from torch's by float rounding, which can move a value across a rounding step.
    assert np.mean(np.abs(onnx_logits - exact) < 1e-4) > 0.99


def test_8_bit_weights_saturate_where_the_cpu_adds_u8s8_pairs_in_int16(tmp_path):
    """Why 7-bit weights: with 8-bit ones, AVX2 without VNNI leaves the integer model's arithmetic."""
    from edgepress.runtime.isa import local_isa

    graph, path = _export(tmp_path, weight_qmax=127)
    inputs = _images(64, seed=2)
    graph.set_mode("exact")
    with torch.no_grad():
        exact = graph.module(torch.from_numpy(inputs)).numpy()
    gap = np.abs(predict(open_session(path, threads=1), inputs, batch_size=64) - exact).max()
    if local_isa().u8s8_saturates:
        assert gap > 1e-3
    else:
        assert gap < 1e-5


def test_weights_stay_within_7_bits_where_u8s8_would_saturate():
    graph = QatGraph(_trained_like(ResidualNet()), weight_qmax=64)
    graph.calibrate(torch.from_numpy(_images(32, seed=1)), method="minmax", percentile=99.99)
    _, weights = graph.frozen_copy()
    largest = max(int(integers.abs().max()) for integers, _ in weights.values())
    assert largest == 64  # 255 * 64 * 2 < 32767: the int16 pair sums of AVX2's U8S8 kernel cannot overflow


def test_an_op_qat_cannot_place_is_named():
    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.sigmoid(self.conv(x)).mean((2, 3))

    with pytest.raises(UserError, match="sigmoid"):
        QatGraph(Gated().eval(), weight_qmax=64)


def _tiny_qat_recipe(settings: str) -> str:
    """The tiny digits recipe with train -> qat in place of train -> export -> ptq."""
    text = TINY_RECIPE.replace('[[stages]]\nkind = "export"\n\n[[stages]]\nkind = "ptq"', '[[stages]]\nkind = "qat"\n' + settings)
    assert 'kind = "qat"' in text
    return text


def test_qat_stage_in_a_recipe_reports_parity_and_integer_kernels(tmp_path):
    text = _tiny_qat_recipe("epochs = 1\nparity_samples = 300\nchoose_conv_kernels = true")
    recipe = write_recipe(tmp_path, text=text.format(epochs=3, budgets=""))
    report = edgepress.run(recipe, out=tmp_path / "out").to_json_dict()
    assert report["gate"]["passed"], report["gate"]
    stage = next(s for s in report["stages"] if s["name"] == "qat")
    qat = stage["metrics"]["qat"]
    assert qat["parity"]["top1_agreement"] >= 0.995
    assert qat["onnxruntime_kernels"]["float_compute_nodes"] == 0
    assert qat["int8_weights"] == qat["onnxruntime_kernels"]["integer_compute_nodes"]
    assert stage["metrics"]["quantization"]["float_nodes"] == 0
    # Its convs were timed for their kernels like ptq's (compress/quant/conv_kernels.py), where that is exact.
    if local_isa().u8s8_saturates:
        assert "int16" in qat["conv_kernels"]["skipped"]
    else:
        assert qat["conv_kernels"]["integer_convs"] == qat["onnxruntime_kernels"]["op_counts"]["QLinearConv"]
    assert stage["metrics"]["agreement"] >= 0.9


def test_logits_mse_loss_matches_its_formula_and_pulls_the_int8_model_to_the_teacher():
    from edgepress.compress.training.loop import LoopSettings, fit
    from edgepress.compress.distill import teacher_loss_fn

    teacher = _trained_like(ResidualNet())
    inputs = torch.from_numpy(_images(256, seed=3))
    labels = torch.randint(0, 5, (256,), generator=torch.Generator().manual_seed(0))
    graph = QatGraph(_trained_like(ResidualNet()), weight_qmax=127)
    torch.manual_seed(0)
    graph.calibrate(inputs[:128], method="percentile", percentile=99.99)
    graph.set_mode("quantize")
    with torch.no_grad():
        student, target = graph.module(inputs[:32]), teacher(inputs[:32])
        mixed, _ = teacher_loss_fn(teacher, alpha=0.25, temperature=1.0, match="logits_mse")(graph.module, inputs[:32], labels[:32])
        pure, _ = teacher_loss_fn(teacher, alpha=1.0, temperature=1.0, match="logits_mse")(graph.module, inputs[:32], labels[:32])
    mse = F.mse_loss(student, target)
    assert float(pure) == pytest.approx(float(mse), rel=1e-6)
    assert float(mixed) == pytest.approx(float(0.25 * mse + 0.75 * F.cross_entropy(student, labels[:32])), rel=1e-6)

    # Perturbed weights: the fake-quantized model starts far from its teacher, and the loss must close the gap.
    with torch.no_grad():
        for parameter in graph.module.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        before = float(F.mse_loss(graph.module(inputs), teacher(inputs)))
    fit(graph.module, inputs=inputs, labels=labels, loss_fn=teacher_loss_fn(teacher, alpha=1.0, temperature=1.0, match="logits_mse"), log=lambda _: None,
        settings=LoopSettings(epochs=5, learning_rate=0.01, weight_decay=0.0, batch_size=32), resume_dir=None, key="")
    graph.module.eval()
    with torch.no_grad():
        after = float(F.mse_loss(graph.module(inputs), teacher(inputs)))
    assert after < 0.5 * before, (before, after)


def test_an_fp32_layer_that_is_not_a_conv_or_linear_is_one_line_error(tmp_path):
    text = _tiny_qat_recipe('fp32_layers = ["features.1"]')
    recipe = write_recipe(tmp_path, text=text.format(epochs=1, budgets=""))
    assert_user_error(lambda: edgepress.check(recipe), "fp32_layers names 'features.1'")


def test_unknown_teacher_is_one_line_error(tmp_path):
    text = _tiny_qat_recipe('teacher = "nope"')
    recipe = write_recipe(tmp_path, text=text.format(epochs=1, budgets=""))
    assert_user_error(lambda: edgepress.run(recipe, out=tmp_path / "out"), "teacher 'nope'")


@pytest.mark.slow
@requires_shared_data
def test_real_resnet20_qat_recipe_shortened(tmp_path):
    """The shipped ResNet-20 QAT recipe on small sets: integer kernels, exact parity, agreement kept."""
    from conftest import ROOT

    text = (ROOT / "recipes" / "cifar10-resnet20-accurate-int8.toml").read_text()
    assert "epochs = 3" in text and 'fp32_layers = ["conv1"]' in text
    text = text.replace("epochs = 3", "epochs = 1")
    shortened = (text.replace('{ dataset = "cifar10:train_jpeg_10000" }', '{ dataset = "cifar10:train_jpeg_10000", limit = 256 }')
                 .replace('{ dataset = "cifar10:train_raw_5085" }', '{ dataset = "cifar10:train_raw_5085", limit = 256 }')
                 .replace('{ dataset = "cifar10:test_jpeg_10000" }', '{ dataset = "cifar10:test_jpeg_10000", limit = 500 }'))
    assert shortened.count("limit = 256") == 2 and "limit = 500" in shortened
    recipe = tmp_path / "resnet20-qat.toml"
    recipe.write_text(shortened)
    stages = {s["name"]: s["metrics"] for s in edgepress.run(recipe, out=tmp_path / "out").to_json_dict()["stages"]}
    qat = stages["qat"]["qat"]
    assert qat["weight_bits"] in (7, 8) and qat["int8_weights"] == 19  # 18 convolutions + the classifier
    assert qat["onnxruntime_kernels"]["float_compute_nodes"] == 1  # the first conv, as the recipe asks
    fallback = stages["qat"]["quantization"]["fp32_fallback"]
    assert [f["node"] for f in fallback] == ["/conv1/Conv"] and "fp32_layers" in fallback[0]["reason"]
    assert qat["parity"]["top1_agreement"] >= 0.995
    assert stages["qat"]["agreement"] >= 0.97
