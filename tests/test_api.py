"""The Python API (`import edgepress`): what it exports, that it stays light, and that it does what the command
line does. The README's snippet runs in tests/test_readme.py."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

import edgepress
from edgepress.core.errors import UserError
from tests.conftest import TINY_RECIPE, one_node_model, write_recipe

TINY_TABLE = {
    "name": "tiny",
    "reference_stage": "train",
    "model": {"name": "small_cnn_8", "kwargs": {"width": 8}},
    "data": {"training": {"dataset": "digits:train", "limit": 400},
             "calibration": {"dataset": "digits:train", "limit": 64},
             "evaluation": [{"dataset": "digits:test"}], "preprocess": {"mean": [0.5], "std": [0.5]}},
    "stages": [{"kind": "train", "epochs": 3, "batch_size": 32}, {"kind": "export"}, {"kind": "ptq"}],
    "bench": {"warmup_runs": 5, "runs": 200},
    "budgets": {},
}


def test_every_exported_name_resolves_and_nothing_else_does():
    assert len(edgepress.__all__) == len(set(edgepress.__all__))
    for name in edgepress.__all__:
        assert getattr(edgepress, name) is not None, name
    assert sorted(dir(edgepress)) == sorted(edgepress.__all__)
    with pytest.raises(AttributeError, match="no attribute 'quantise'"):
        edgepress.quantise  # noqa: B018 - the attribute access is the test


def test_import_edgepress_loads_neither_torch_nor_onnx():
    """A device installs onnxruntime and numpy only: `import edgepress` and its runtime must load there."""
    code = ("import sys, edgepress, edgepress.runtime.session; "
            "print(sorted(m for m in ('torch', 'onnx', 'edgepress.api', 'edgepress.recipe') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_recipe_built_in_code_equals_the_same_recipe_from_a_file(tmp_path):
    from_file = edgepress.load_recipe(write_recipe(tmp_path, text=TINY_RECIPE.format(epochs=3, budgets="")))
    in_code = edgepress.recipe_from_dict(TINY_TABLE, base_dir=tmp_path)
    assert in_code == from_file


def test_a_bad_recipe_in_code_is_the_same_one_line_error_as_in_a_file(tmp_path):
    bad = {**TINY_TABLE, "stages": [{"kind": "ptw"}]}
    with pytest.raises(UserError) as caught:
        edgepress.recipe_from_dict(bad, base_dir=tmp_path)
    assert "ptq" in caught.value.one_line() and "\n" not in caught.value.one_line()


def test_check_says_what_the_command_says(tmp_path, capsys):
    from tests.conftest import run_main

    result = edgepress.check(edgepress.recipe_from_dict(TINY_TABLE, base_dir=tmp_path))
    assert dataclasses.is_dataclass(result)
    assert result.stages == ("model", "train", "export", "ptq")
    assert result.metric == "top1" and result.evaluation_sets == ("digits:test",)
    assert result.input_shape == (1, 8, 8) and result.input_shapes == {}
    line = run_main("check", str(write_recipe(tmp_path, text=TINY_RECIPE.format(epochs=3, budgets="")))).stdout
    assert "model -> train -> export -> ptq; input shape [1, 8, 8]" in line


def test_bench_takes_the_commands_options_and_refuses_unknown_ones(tmp_path):
    from onnx import TensorProto, helper

    model = one_node_model(tmp_path / "relu.onnx", helper.make_node("Relu", ["x"], ["y"]),
                           [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])])
    with pytest.raises(UserError, match="did you mean 'runs'"):
        edgepress.bench(model, rusn=10)
    result = edgepress.bench(model, runs=50, warmup="5", compare=model.with_name("relu.onnx"))
    assert result["target"] == "local" and result["runs"] == 50
    assert np.isfinite(result["latency_ms"]["p50"]) and "p50_ratio" in result["compare"]


@pytest.mark.slow
def test_run_returns_the_report_it_wrote_and_gate_agrees_with_the_command(tmp_path):
    from tests.conftest import run_main

    # This tiny INT8 file is nine tenths of its FP32 one (the graph weighs most), never a hundredth.
    table = {**TINY_TABLE, "stages": [{"kind": "train", "epochs": 1, "batch_size": 32}, {"kind": "export"},
                                      {"kind": "ptq"}], "budgets": {"size_ratio_max": 0.01}}
    report = edgepress.run(edgepress.recipe_from_dict(table, base_dir=tmp_path), out=tmp_path / "out")
    assert isinstance(report, edgepress.Report)
    assert report == edgepress.read_report(tmp_path / "out" / "report.json")
    assert report.final_stage.name == "ptq" and not report.gate.passed
    assert [c.budget for c in report.gate.violations] == ["size_ratio_max"]
    verdict = edgepress.gate(tmp_path / "out" / "report.json")
    assert isinstance(verdict, edgepress.GateResult) and not verdict.passed
    assert run_main("gate", str(tmp_path / "out" / "report.json")).returncode == 1
    (tmp_path / "loose.toml").write_text("size_ratio_max = 0.99\n")
    assert edgepress.gate(report, budgets=tmp_path / "loose.toml").passed
    assert run_main("gate", str(tmp_path / "out" / "report.json"), "--budgets", str(tmp_path / "loose.toml")).returncode == 0
    with pytest.raises(UserError, match="needs --baseline"):
        edgepress.gate(report, max_p50_growth_percent=5)
