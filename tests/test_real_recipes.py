"""The shipped recipes on the real pretrained CIFAR-10 ResNets reproduce the published accuracy."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgepress
from edgepress.measure.metrics import TIMED_BUDGETS
from edgepress.runtime.isa import local_isa
from tests.conftest import requires_shared_data

ROOT = Path(__file__).resolve().parents[1]

# (recipe, FP32 top-1 on test_raw_1017 measured independently, on test_jpeg_10000 or None where the test
# leaves that set out: ResNet-56 takes 70 of its 100 s on it, in torch and ONNX Runtime, and ResNet-20
# already checks every step of the same recipe on it)
CASES = [("cifar10-resnet20-int8.toml", 0.9164, 0.8103), ("cifar10-resnet56-int8.toml", 0.9272, None)]
JPEG_SET = '    { dataset = "cifar10:test_jpeg_10000" },\n'


@pytest.mark.slow
@requires_shared_data
@pytest.mark.parametrize(("recipe", "raw_accuracy", "jpeg_accuracy"), CASES)
def test_recipe_reproduces_fp32_and_gates_int8(tmp_path, recipe, raw_accuracy, jpeg_accuracy):
    text = (ROOT / "recipes" / recipe).read_text()
    assert JPEG_SET in text
    if jpeg_accuracy is None:
        text = text.replace(JPEG_SET, "")
    path = tmp_path / recipe  # its only path is {data}/..., which resolves the same from here
    path.write_text(text)
    report = edgepress.run(path, out=tmp_path / "out").to_json_dict()
    stages = {s["name"]: s["metrics"] for s in report["stages"]}
    for fp32 in ("model", "export"):  # torch, then the ONNX model under ONNX Runtime
        evaluation = stages[fp32]["evaluation"]
        assert abs(evaluation["cifar10:test_raw_1017"]["accuracy"] - raw_accuracy) <= 0.001
        if jpeg_accuracy is not None:
            assert abs(evaluation["cifar10:test_jpeg_10000"]["accuracy"] - jpeg_accuracy) <= 0.001
    assert stages["export"]["agreement"] >= 0.9995
    int8 = stages["ptq"]
    # On test_jpeg_10000 this beats plain S8S8 (about 98.0-98.3 %); test_raw_1017's exact pixels agree more.
    assert int8["agreement"] >= 0.98
    assert int8["size_bytes"] < 0.35 * stages["export"]["size_bytes"]
    assert int8["quantization"]["float_nodes"] == 0
    # Every conv was considered for its kernel, each of the six shapes timed once (choose_conv_kernels); on a CPU
    # whose U8S8 kernels add in int16 the rewrites would not be exact, and the stage says it left them out.
    kernels = int8["quantization"]["conv_kernels"]
    if local_isa().u8s8_saturates:
        assert "int16" in kernels["skipped"]
    else:
        assert kernels["integer_convs"] == int8["quantization"]["int8_nodes"] - 1 and kernels["shapes_timed"] == 6
        assert {t["form"] for t in kernels["shapes"][0]["trials"]} == {"weights_offset", "channels_padded",
                                                                      "weights_offset+channels_padded"}
    # Latency budgets depend on the machine; accuracy and size ones do not.
    assert int8["latency_ratio"]["reference_stage"] == "export"
    assert not [v for v in report["gate"]["violations"] if v["budget"] not in TIMED_BUDGETS], report["gate"]


@pytest.mark.slow
@requires_shared_data
def test_prune_kd_recipe_flows_through_export_ptq_and_gate(tmp_path):
    """The shipped prune + distill recipe, shortened (1 epoch, small sets) but otherwise as shipped."""
    text = (ROOT / "recipes" / "cifar10-resnet56-prune-kd.toml").read_text()
    shortened = (text.replace("epochs = 8", "epochs = 1").replace("epochs = 2", "epochs = 1").replace("warmup_epochs = 1", "warmup_epochs = 0")
                 .replace("blocks = 6", "blocks = 6\nsamples = 32")
                 .replace('{ dataset = "cifar10:train_jpeg_10000" }', '{ dataset = "cifar10:train_jpeg_10000", limit = 256 }')
                 .replace('{ dataset = "cifar10:train_raw_5085" }', '{ dataset = "cifar10:train_raw_5085", limit = 256 }')
                 .replace('{ dataset = "cifar10:test_jpeg_10000" }', '{ dataset = "cifar10:test_jpeg_10000", limit = 500 }')
                 .replace('{ dataset = "cifar10:test_raw_1017" }', '{ dataset = "cifar10:test_raw_1017", limit = 250 }'))
    assert shortened.count("limit = 256") == 2 and shortened.count("epochs = 1") == 2 and "samples = 32" in shortened
    assert "limit = 500" in shortened and "limit = 250" in shortened
    recipe = tmp_path / "prune-kd.toml"  # its only path is {data}/..., which resolves the same from here
    recipe.write_text(shortened)
    report = edgepress.run(recipe, out=tmp_path / "out").to_json_dict()
    stages = {s["name"]: s["metrics"] for s in report["stages"]}
    assert list(stages) == ["model", "teacher", "prune_depth", "prune", "distill", "export", "ptq"]
    assert stages["distill"]["distill"]["teacher"] == "teacher"
    assert stages["prune_depth"]["depth_pruning"]["blocks_removed"] == 6
    assert stages["distill"]["macs"] <= 0.5 * stages["model"]["macs"]
    assert stages["prune"]["pruning"]["macs_kept_of_reference"] <= 0.5
    assert all(c % 8 == 0 for name, c in stages["prune"]["pruning"]["conv_out_channels"].items() if name.endswith("conv1")
               and name != "conv1")
    # The pruned ONNX model is what is evaluated, timed, quantized and gated.
    assert stages["export"]["params"] < 0.7 * stages["model"]["params"]
    assert "latency_ms" in stages["export"] and "latency_ms" in stages["ptq"]
    assert stages["ptq"]["size_bytes"] < 0.35 * stages["export"]["size_bytes"]
    assert "passed" in report["gate"]
