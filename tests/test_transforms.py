"""Quantization transforms on tiny real graphs: batch-norm folding on/off, cross-layer equalization,
empirical bias correction. Every model is exported from torch and run in real ONNX Runtime sessions."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgepress.compress.quant.equalize import equalize_file, range_evenness
from edgepress.compress.ptq import PtqSettings, quantize
from edgepress.export.export import ExportSettings, export_onnx
from edgepress.runtime.session import open_session, predict


def inputs(n: int, seed: int, *, shift: float = 0.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, 3, 12, 12)) + shift).astype(np.float32)


def outputs(path, x: np.ndarray) -> np.ndarray:
    return predict(open_session(path, threads=1), x, batch_size=64)


def relative_error(reference: np.ndarray, got: np.ndarray) -> float:
    return float(np.sum((got - reference) ** 2) / np.sum(reference ** 2))


def ops(path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def optimized_ops(path, tmp_path) -> list[str]:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return ops(tmp_path / "optimized.onnx")


def weight(path, node_index: int) -> np.ndarray:
    model = onnx.load(str(path))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    init = {i.name: i for i in model.graph.initializer}[convs[node_index].input[1]]
    return onnx.numpy_helper.to_array(init)


def export(model: torch.nn.Module, path) -> None:
    export_onnx(model=model.eval(), input_shape=(3, 12, 12), path=path, settings=ExportSettings(), log=lambda _: None)


class BnNet(torch.nn.Module):
    """conv -> BN -> relu -> conv -> BN -> relu -> pool -> linear, BN statistics far from identity."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16), torch.nn.ReLU())
        self.fc = torch.nn.Linear(16, 10)
        for bn in (self.body[1], self.body[4]):
            bn.running_mean.normal_(0, 0.5)
            bn.running_var.uniform_(0.3, 3.0)
            bn.weight.data.uniform_(0.5, 2.0)
            bn.bias.data.normal_(0, 0.5)

    def forward(self, x):
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(self.body(x), 1).flatten(1))


def export_keeping_batchnorm(path) -> None:
    """Both edgepress exporters fold BN in eval mode; without constant folding the torchscript one keeps it."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(BnNet().eval(), (torch.zeros(2, 3, 12, 12),), str(path), dynamo=False, opset_version=18,
                          do_constant_folding=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def test_batchnorm_folding_on_and_off(tmp_path):
    source = tmp_path / "bn.onnx"
    export_keeping_batchnorm(source)
    assert ops(source).count("BatchNormalization") == 2
    x = inputs(64, seed=1)
    fp32 = outputs(source, x)
    errors = {}
    for fold in (True, False):
        out = tmp_path / f"q-{fold}.onnx"
        done = quantize(source=source, out=out, calibration=inputs(64, seed=0),
                        settings=PtqSettings(fold_batchnorm=fold))
        assert done["transforms"]["fold_batchnorm"] == {"on": fold, "batchnorm_nodes_in_source": 2,
                                                        "batchnorm_nodes_quantized": 0 if fold else 2}
        assert ops(out).count("BatchNormalization") == (0 if fold else 2)
        # Off really is off: ONNX Runtime does not fold a BN that follows a quantized conv at load time either.
        assert optimized_ops(out, tmp_path).count("BatchNormalization") == (0 if fold else 2)
        errors[fold] = relative_error(fp32, outputs(out, x))
        assert errors[fold] < 0.05
    assert ops(tmp_path / "q-True.onnx").count("Conv") == 2


def test_equalize_needs_folded_batchnorm():
    with pytest.raises(ValueError, match="fold_batchnorm"):
        PtqSettings(equalize=True, fold_batchnorm=False)
    with pytest.raises(ValueError, match="holdout"):
        PtqSettings(bias_correction_holdout=1.0)


class Unbalanced(torch.nn.Module):
    """conv -> relu -> depthwise conv -> relu -> 1x1 conv -> 1x1 conv -> relu -> pool -> linear, with output
    channel i of the first conv scaled by `spread[i]` and the depthwise conv's channel i by 1 / spread[i]:
    the same function, but activation and weight ranges that differ by the spread across channels."""

    def __init__(self, spread: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = torch.nn.Conv2d(8, 16, 1)
        self.c4 = torch.nn.Conv2d(16, 16, 1)
        self.fc = torch.nn.Linear(16, 10)
        k = torch.logspace(-np.log10(spread) / 2, np.log10(spread) / 2, 8)
        with torch.no_grad():
            self.c1.weight.mul_(k[:, None, None, None])
            self.c1.bias.mul_(k)
            self.dw.weight.div_(k[:, None, None, None])

    def forward(self, x):
        y = torch.relu(self.dw(torch.relu(self.c1(x))))
        y = torch.relu(self.c4(self.pw(y)))
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))


def test_equalization_keeps_fp32_outputs_and_evens_ranges(tmp_path):
    source, out = tmp_path / "unbalanced.onnx", tmp_path / "equalized.onnx"
    export(Unbalanced(spread=1e3), source)
    done = equalize_file(source, out, inputs(64, seed=0))
    assert done["pairs"] == 3 and done["pairs_by_activation"] == {"Relu": 2, "none": 1}
    x = inputs(128, seed=7)  # not the calibration images
    before, after = outputs(source, x), outputs(out, x)
    assert np.abs(after - before).max() <= 1e-4 * np.abs(before).max()
    assert done["fp32_max_relative_change"] < 1e-5
    # The planted spread is gone: the first conv's channel ranges went from about 1000x apart to even.
    ranges = {name: np.abs(weight(path, 0)).reshape(8, -1).max(1) for name, path in (("before", source), ("after", out))}
    assert ranges["before"].max() / ranges["before"].min() > 300
    assert ranges["after"].max() / ranges["after"].min() < 10
    assert range_evenness(weight(source, 0)) < 0.3 and range_evenness(weight(out, 0)) > 0.5
    assert done["range_evenness_after"] > done["range_evenness_before"] + 0.2


def test_equalization_lowers_int8_error_on_unbalanced_channels(tmp_path):
    source = tmp_path / "unbalanced.onnx"
    export(Unbalanced(spread=1e3), source)
    x = inputs(128, seed=7)
    fp32 = outputs(source, x)
    errors = {}
    for equalize in (False, True):
        out = tmp_path / f"q-{equalize}.onnx"
        done = quantize(source=source, out=out, calibration=inputs(128, seed=0), settings=PtqSettings(equalize=equalize))
        assert ("equalize" in done["transforms"]) == equalize
        errors[equalize] = relative_error(fp32, outputs(out, x))
    # Per-tensor activation ranges set by the largest channel round the small ones to zero without CLE.
    assert errors[True] < 0.25 * errors[False], errors


class ClippedNet(torch.nn.Module):
    """conv -> ReLU6 -> conv, where output channel 0 of the first conv always reaches 6 and the rest never do."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv2d(3, 4, 1)
        self.c2 = torch.nn.Conv2d(4, 4, 1)
        with torch.no_grad():
            self.c1.weight.mul_(torch.tensor([1.0, 0.01, 0.1, 0.05])[:, None, None, None])
            self.c1.bias.copy_(torch.tensor([20.0, 0.0, 0.0, 0.0]))

    def forward(self, x):
        return self.c2(torch.nn.functional.relu6(self.c1(x))).mean((2, 3))


def test_equalization_leaves_relu6_channels_that_reach_the_clip_unscaled(tmp_path):
    source, out = tmp_path / "clipped.onnx", tmp_path / "equalized.onnx"
    export(ClippedNet(), source)
    calibration = inputs(64, seed=0)
    done = equalize_file(source, out, calibration)
    assert done["pairs_by_activation"] == {"Clip": 1}
    assert done["clip_channels_kept_unscaled"] == 1
    w_before, w_after = weight(source, 0), weight(out, 0)
    assert np.array_equal(w_before[0], w_after[0])  # the clipping channel
    assert not np.allclose(w_before[1:], w_after[1:])  # the others moved
    before, after = outputs(source, calibration), outputs(out, calibration)
    assert np.abs(after - before).max() <= 1e-4 * np.abs(before).max()


class BiasProne(torch.nn.Module):
    """conv -> relu -> depthwise 3x3 conv -> relu -> pool -> linear on positive-mean inputs: nine weights per
    depthwise channel and one channel 50x larger, so per-tensor int8 weights round the small channels coarsely
    and (W~ - W) E[x] is a real shift of their outputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = torch.nn.Linear(8, 10)
        with torch.no_grad():
            self.c1.bias.fill_(1.0)
            self.dw.weight[0].mul_(50.0)

    def forward(self, x):
        y = torch.relu(self.dw(torch.relu(self.c1(x))))
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))


def test_bias_correction_lowers_output_error_on_held_out_inputs(tmp_path):
    source = tmp_path / "bias.onnx"
    export(BiasProne(), source)
    calibration = inputs(128, seed=0, shift=0.5)
    x = inputs(256, seed=9, shift=0.5)  # neither range calibration nor bias estimate saw these
    fp32 = outputs(source, x)
    results = {}
    for correct in (False, True):
        out = tmp_path / f"q-{correct}.onnx"
        done = quantize(source=source, out=out, calibration=calibration,
                        settings=PtqSettings(per_channel=False, bias_correction=correct))
        results[correct] = (relative_error(fp32, outputs(out, x)), np.abs((outputs(out, x) - fp32).mean(0)).max(), done)
    corrected = results[True][2]["transforms"]["bias_correction"]
    assert corrected["nodes_corrected"] == 3 and corrected["estimate_samples"] == 96
    assert corrected["held_out"]["samples"] == 32
    assert corrected["held_out"]["output_error_after"] < corrected["held_out"]["output_error_before"]
    assert results[True][0] < 0.7 * results[False][0], results
    assert results[True][1] < 0.5 * results[False][1], results  # the mean output shift itself
    # The corrected biases are still int32 behind DequantizeLinear: every conv keeps its integer kernel.
    assert optimized_ops(tmp_path / "q-True.onnx", tmp_path).count("QLinearConv") == 2


def test_bias_correction_adds_a_bias_where_a_conv_has_none(tmp_path):
    source = tmp_path / "bn.onnx"
    export_keeping_batchnorm(source)  # bias-free convs, BN kept: the correction must create int32 biases
    out = tmp_path / "q.onnx"
    done = quantize(source=source, out=out, calibration=inputs(64, seed=0),
                    settings=PtqSettings(fold_batchnorm=False, bias_correction=True))
    corrected = done["transforms"]["bias_correction"]
    assert corrected["nodes_corrected"] == 3
    model = onnx.load(str(out))
    assert all(len(n.input) == 3 for n in model.graph.node if n.op_type == "Conv")
    assert optimized_ops(out, tmp_path).count("QLinearConv") == 2
    assert corrected["held_out"]["output_error_after"] < 0.05
