"""The built wheel installs into a fresh virtual environment with the promised import layout."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile

from tests.conftest import ROOT, run_cli


def test_wheel_installs_and_runtime_never_imports_torch(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(ROOT)],
                   check=True, capture_output=True, cwd=tmp_path)
    wheel = next(dist.glob("edgepress-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("edgepress/cli.py", "edgepress/compress/ptq.py", "edgepress/export/onnx_export.py",
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

