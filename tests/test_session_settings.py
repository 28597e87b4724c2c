"""ONNX Runtime session settings edgepress passes on: denormals flushed to zero, graph transformers skipped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgepress.runtime.session import open_session
from tests.conftest import run_cli

RUNNER = Path(__file__).resolve().parents[1] / "runtime" / "device_runner.py"
HIDDEN = 64


def _save(path: Path, nodes, inputs, initializers) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_denormals_zero_flushes_what_keep_keeps(tmp_path):
    # 1e-30 * 1e-10 = 1e-40 is below float32's smallest normal (1.2e-38): a denormal.
    model = _save(tmp_path / "mul.onnx", [helper.make_node("Mul", ["x", "c"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                  [numpy_helper.from_array(np.full(4, 1e-10, np.float32), "c")])
    np.savez(tmp_path / "in.npz", x=np.full((2, 4), 1e-30, np.float32))
    outputs = {}
    for mode in ("keep", "zero"):
        # One process each: ONNX Runtime sets the thread's flag from the first session a process opens.
        proc = subprocess.run([sys.executable, str(RUNNER), "predict", "mul.onnx", "--inputs", "in.npz",
                               "--out", f"{mode}.npz", "--denormals", mode], cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        with np.load(tmp_path / f"{mode}.npz") as found:
            outputs[mode] = found[found.files[0]]
    assert np.allclose(outputs["keep"], 1e-40, rtol=1e-2, atol=0) and np.all(outputs["keep"] > 0)
    assert np.all(outputs["zero"] == 0)


def _add_layer_norm(tmp_path) -> Path:
    scale = numpy_helper.from_array(np.ones(HIDDEN, np.float32), "gamma")
    bias = numpy_helper.from_array(np.zeros(HIDDEN, np.float32), "beta")
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 8, HIDDEN]) for name in ("x", "skip")]
    return _save(tmp_path / "add_ln.onnx", [helper.make_node("Add", ["x", "skip"], ["sum"]),
                                            helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"],
                                                             axis=-1, epsilon=1e-12)], inputs, [scale, bias])


def _ops_run(model: Path, optimized: Path, **settings) -> set[str]:
    open_session(model, threads=1, optimized_model_path=optimized, **settings)
    return {node.op_type for node in onnx.load(optimized).graph.node}


def test_a_disabled_optimizer_leaves_its_pattern_unfused(tmp_path):
    model = _add_layer_norm(tmp_path)
    assert "SkipLayerNormalization" in _ops_run(model, tmp_path / "default.onnx")
    kept = _ops_run(model, tmp_path / "disabled.onnx", disabled_optimizers=("SkipLayerNormFusion",))
    assert "SkipLayerNormalization" not in kept and {"Add", "LayerNormalization"} <= kept


def test_bench_reports_the_session_settings_the_runner_applied(tmp_path):
    model = _add_layer_norm(tmp_path)
    proc = run_cli("bench", str(model), "--runs", "20", "--warmup", "2", "--denormals", "zero",
                   "--disable-optimizer", "SkipLayerNormFusion")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["session_settings"] == {"denormals": "zero",
                                                           "disabled_optimizers": ["SkipLayerNormFusion"]}
    proc = run_cli("bench", str(model), "--runs", "20", "--warmup", "2")
    assert json.loads(proc.stdout)["session_settings"] == {"denormals": "keep", "disabled_optimizers": []}


def test_bench_refuses_an_optimizer_name_that_cannot_be_one(tmp_path):
    from tests.conftest import assert_one_line_error

    model = _add_layer_norm(tmp_path)
    assert_one_line_error(run_cli("bench", str(model), "--disable-optimizer", "Skip Layer Norm"),
                          "Skip Layer Norm", "SkipLayerNormFusion")
