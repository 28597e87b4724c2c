"""The device runner under a real Python 3.8, the oldest it promises, with the newest onnxruntime and numpy that still
support 3.8: what an old board gets from `pip install onnxruntime numpy`. test_bench_cli.py parses the runner with
3.8's grammar, which misses a newer stdlib call or numpy API; running it here does not.

The interpreter comes from $EDGEPRESS_PY38 (`bash .ci/run` makes one and sets it); without the variable, from the
environment .ci/run leaves in the cache folder, python3.8 on PATH or pyenv's 3.8 versions, whichever has onnxruntime."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.conftest import ROOT

RUNNER = ROOT / "runtime" / "device_runner.py"
ENV_VAR = "EDGEPRESS_PY38"
LATENCY_KEYS = {"p50", "p90", "p95", "p99", "mean", "std", "min", "max", "cv"}
# ONNX Runtime 1.19, the last with 3.8 wheels, loads IR versions up to 10; onnx here writes a newer one by default.
IR_VERSION = 8
OPSET = 17

_VERSIONS = ("import json, platform, sys, numpy, onnxruntime; "
             "print(json.dumps({'python': list(sys.version_info[:2]), 'python_version': platform.python_version(), "
             "'onnxruntime': onnxruntime.__version__, 'numpy': numpy.__version__}))")


def _versions(python: str) -> tuple[dict | None, str]:
    """What `python` has, or None and why it will not do."""
    try:
        proc = subprocess.run([python, "-I", "-c", _VERSIONS], capture_output=True, text=True, timeout=120)
    except OSError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or [f"exit {proc.returncode}"]
        # a traceback's reason is its last line; a pyenv shim whose version is not selected says why in its first
        return None, lines[-1] if lines[0].startswith("Traceback") else lines[0]
    info = json.loads(proc.stdout.splitlines()[-1])
    if info["python"] != [3, 8]:
        return None, f"it is Python {info['python_version']}, not 3.8"
    return info, ""


def _candidates():
    cache = Path(os.environ.get("EDGEPRESS_CACHE") or Path.home() / ".cache" / "edgepress").expanduser()
    yield str(cache / "py38-runner" / "bin" / "python")
    on_path = shutil.which("python3.8")
    if on_path:
        yield on_path
    roots = [Path("/root/.pyenv")]
    if shutil.which("pyenv"):
        proc = subprocess.run(["pyenv", "root"], capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout.strip():
            roots.insert(0, Path(proc.stdout.strip()))
    for root in roots:
        yield from (str(p) for p in sorted(root.glob("versions/3.8*/bin/python3.8")))


@pytest.fixture(scope="module")
def python38():
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        info, problem = _versions(explicit)
        if info is None:  # CI set it up: a silent skip would hide that the runner went untested under 3.8
            pytest.fail(f"{ENV_VAR}={explicit} is not a Python 3.8 with onnxruntime and numpy: {problem}")
        return explicit, info
    tried = []
    for candidate in dict.fromkeys(_candidates()):
        if not os.path.exists(candidate):
            continue
        info, problem = _versions(candidate)
        if info is not None:
            return candidate, info
        tried.append(f"{candidate} ({problem})")
    pytest.skip(f"no Python 3.8 with onnxruntime and numpy: set {ENV_VAR} to one (`bash .ci/run` makes one where a "
                f"Python 3.8 exists); tried {'; '.join(tried) or 'none found'}")


def tiny_model(path: Path, *, width: int) -> Path:
    """x[batch, 8] -> y = relu(x W + b) and z = sigmoid(x W): two outputs, a free batch dimension."""
    rng = np.random.default_rng(width)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [8, width],
                                rng.standard_normal((8, width)).astype(np.float32).ravel())
    bias = helper.make_tensor("b", TensorProto.FLOAT, [width], rng.standard_normal(width).astype(np.float32))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"]), helper.make_node("Sigmoid", ["h"], ["z"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", width])],
                              initializer=[weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def run_runner(python: str, folder: Path, *args: str) -> subprocess.CompletedProcess:
    """The runner copied alone into `folder` and run there with -I, as on a device: no edgepress, no torch."""
    (folder / "device_runner.py").write_bytes(RUNNER.read_bytes())
    return subprocess.run([python, "-I", "device_runner.py", *args], cwd=folder, capture_output=True, text=True,
                          timeout=300)


def test_bench_under_python_3_8(python38, tmp_path):
    python, info = python38
    tiny_model(tmp_path / "a.onnx", width=16)
    tiny_model(tmp_path / "b.onnx", width=32)
    proc = run_runner(python, tmp_path, "bench", "a.onnx", "--compare", "b.onnx", "--runs", "60", "--dim", "batch=3",
                      "--samples")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "runner: warm-up" in proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert "partial" not in result and result["complete"] is True
    assert result["device"]["python"] == info["python_version"] and result["device"]["python"].startswith("3.8.")
    assert result["device"]["onnxruntime"] == info["onnxruntime"] and result["device"]["numpy"] == info["numpy"]
    assert result["runs"] == 60 and len(result["samples_ms"]) == 60 and result["warmup_runs"] >= 20
    lat = result["latency_ms"]
    assert LATENCY_KEYS <= lat.keys()
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    low, high = result["p50_ci95_ms"]
    assert low <= lat["p50"] <= high
    assert result["inputs"] == {"x": {"shape": [3, 8], "dtype": "float32"}} and result["input_source"] == "random"
    assert result["thread_settings"]["intra_op"] == 1 and result["thread_settings"]["interleaved"] is True
    assert result["size_bytes"] == (tmp_path / "a.onnx").stat().st_size and result["peak_memory_bytes"] > 0
    compare = result["compare"]
    assert compare["model"] == "b.onnx" and compare["runs"] == 60 and len(compare["samples_ms"]) == 60
    assert LATENCY_KEYS <= compare["latency_ms"].keys()
    ratio_low, ratio_high = compare["p50_ratio_ci95"]
    assert 0 < ratio_low <= ratio_high and compare["p50_ratio"] > 0 and len(compare["epoch_ratios"]) == 12


def test_predict_under_python_3_8_matches_onnxruntime_here(python38, tmp_path):
    import onnxruntime as ort

    python, info = python38
    model = tiny_model(tmp_path / "tiny.onnx", width=16)
    x = np.random.default_rng(3).standard_normal((10, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    proc = run_runner(python, tmp_path, "predict", "tiny.onnx", "--inputs", "in.npz", "--out", "out.npz",
                      "--batch-size", "4")  # batches of 4, 4 and 2: the concatenation is checked too
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["outputs"] == "out.npz" and result["samples"] == 10
    assert result["device"]["onnxruntime"] == info["onnxruntime"]
    expected = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    with np.load(tmp_path / "out.npz") as got:
        assert sorted(got.files) == ["y", "z"]
        np.testing.assert_allclose(got["y"], expected[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["z"], expected[1], rtol=1e-5, atol=1e-6)
