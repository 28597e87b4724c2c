"""The shipped recipes on the real pretrained CIFAR-10 ResNets reproduce the published accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import requires_shared_data, run_cli

ROOT = Path(__file__).resolve().parents[1]

# (recipe, FP32 top-1 on test_raw_1017 measured independently, on test_jpeg_10000)
CASES = [("cifar10-resnet20-int8.toml", 0.9164, 0.8103), ("cifar10-resnet56-int8.toml", 0.9272, 0.8320)]


@requires_shared_data
@pytest.mark.parametrize(("recipe", "raw_accuracy", "jpeg_accuracy"), CASES)
def test_recipe_reproduces_fp32_and_gates_int8(tmp_path, recipe, raw_accuracy, jpeg_accuracy):
    proc = run_cli("run", str(ROOT / "recipes" / recipe), "--out", str(tmp_path / "out"))
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    stages = {s["name"]: s["metrics"] for s in report["stages"]}
    for fp32 in ("model", "export"):  # torch, then the ONNX model under ONNX Runtime
        evaluation = stages[fp32]["evaluation"]
        assert abs(evaluation["cifar10:test_raw_1017"]["accuracy"] - raw_accuracy) <= 0.001
        assert abs(evaluation["cifar10:test_jpeg_10000"]["accuracy"] - jpeg_accuracy) <= 0.001
    assert stages["export"]["agreement"] >= 0.9995
    int8 = stages["ptq"]
    assert int8["agreement"] >= 0.98  # beats plain S8S8 (about 98.0-98.3 %) on test_jpeg_10000
    assert int8["size_bytes"] < 0.35 * stages["export"]["size_bytes"]
    assert int8["quantization"]["float_nodes"] == 0
    # Latency budgets depend on the machine; accuracy and size ones do not.
    assert not [v for v in report["gate"]["violations"] if v["budget"] != "latency_p90_ms"], report["gate"]
