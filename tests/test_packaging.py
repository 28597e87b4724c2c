"""The built wheel installs into a fresh virtual environment with the promised import layout."""

from __future__ import annotations

import pytest

import json
import os
import subprocess
import sys
import venv
import zipfile

from tests.conftest import ROOT, assert_one_line_error, one_node_model, run_cli


@pytest.mark.slow
def test_wheel_installs_and_runtime_never_imports_torch(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(ROOT)],
                   check=True, capture_output=True, cwd=tmp_path)
    wheel = next(dist.glob("edgepress-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("edgepress/cli/main.py", "edgepress/compress/ptq.py", "edgepress/export/export.py",
                   "edgepress/compress/quant/static.py", "edgepress/core/errors.py", "edgepress/api.py",
                   "edgepress/runtime/session.py", "edgepress/models/zoo.py", "edgepress/builtin/demo.toml",
                   "edgepress/runtime/device_runner.py", "edgepress/targets/ssh.py", "edgepress/targets/qemu.py"):
        assert module in names, module
    # Never as bare top-level packages that would collide with users' own `models` or `runtime`.
    assert not [n for n in names if n.split("/")[0] in {"models", "runtime", "compress", "export"}]

    env_dir = tmp_path / "venv"
    # System site-packages supply onnxruntime/numpy (no network in tests); the wheel itself goes into the venv.
    venv.EnvBuilder(with_pip=True, system_site_packages=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    probe = (
        "import sys, edgepress, edgepress.runtime, edgepress.runtime.session, edgepress.runtime.latency\n"
        "assert 'torch' not in sys.modules, 'edgepress.runtime imported torch'\n"
        "import edgepress.models, edgepress.models.data\n"
        "assert 'torch' not in sys.modules, 'edgepress.models.data imported torch'\n"
        "import edgepress.targets\n"
        "assert edgepress.targets.RUNNER.is_file(), 'the device runner is not installed beside edgepress.runtime'\n"
        "assert 'torch' not in sys.modules, 'edgepress.targets imported torch'\n"
        "import edgepress.models.zoo\n"
        "print(edgepress.__file__)\n"
    )
    proc = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert str(env_dir) in proc.stdout, f"imported from outside the venv: {proc.stdout}"
    script = env_dir / "bin" / "edgepress"
    help_proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert help_proc.returncode == 0 and "demo" in help_proc.stdout and "bench" in help_proc.stdout


def test_version_prints_the_installed_version():
    from importlib import metadata

    proc = run_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"edgepress {metadata.version('edgepress')}"


# Installed as sitecustomize on PYTHONPATH: what a device-only install (numpy and onnxruntime) cannot import.
BLOCKER = '''
import sys

class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnx", "onnxscript", "google"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
'''


def test_bench_needs_neither_torch_nor_onnx(tmp_path):
    """The base install's promise: bench (its model checks included) and --help run with ONNX Runtime and numpy
    alone, and a model reading weights from outside its folder is still refused before any session."""
    from onnx import TensorProto, helper

    from tests.test_untrusted import hostile_locations

    model = one_node_model(tmp_path / "relu.onnx", helper.make_node("Relu", ["x"], ["y"]),
                           [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    blocker = tmp_path / "device-only"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    device_only = {"PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)])}
    for module in ("torch", "onnx", "google.protobuf"):
        probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                               env={**os.environ, **device_only})
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, (module, probe.stderr)
    for args in (["--help"], ["bench", "--help"]):
        shown = run_cli(*args, env=device_only)
        assert shown.returncode == 0 and "usage: edgepress" in shown.stdout, (args, shown.stderr)
    proc = run_cli("bench", str(model), "--runs", "5", "--warmup", "1", env=device_only)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["runs"] == 5
    # an ORT-format model too, against the ONNX one: both files checked without onnx or protobuf
    from tests.test_bench_cli import ort_of

    converted = ort_of(model)
    proc = run_cli("bench", str(converted), "--compare", str(model), "--runs", "5", "--warmup", "1", env=device_only)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["compare"]["model"] == "relu.onnx"
    hostile, _ = hostile_locations(tmp_path)["dot-dot"]
    assert_one_line_error(run_cli("bench", str(hostile), "--runs", "5", env=device_only), "'../outside.data'",
                          "outside")
