"""The qemu-aarch64 target for real: Debian's arm64 CPython and the aarch64 onnxruntime wheel under qemu-user.

One session-scoped `edgepress target setup qemu-aarch64` into a fresh cache folder serves every test: about
56 MB of downloads (Debian's arm64 package index 9 MB, 11 packages 8 MB, the onnxruntime and numpy wheels 39 MB),
about 150 MB on disk, 15-40 s. Before it, a first setup in the same folder is killed half-way: nothing may be left
in place, and the full setup must clear its leftovers. To reuse a prepared cache between test sessions while
working on this file, set EDGEPRESS_TEST_QEMU_CACHE to a folder (the interruption check is skipped when it is ready).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import edgepress
from edgepress.core.errors import UserError
from edgepress.targets import TargetOptions, open_target
from edgepress.targets import qemu
from tests.conftest import assert_one_line_error, run_cli, run_main

pytestmark = pytest.mark.skipif(shutil.which("qemu-aarch64") is None or shutil.which("apt-get") is None
                                or shutil.which("dpkg-deb") is None,
                                reason="needs qemu-aarch64 (apt install qemu-user), apt-get and dpkg-deb")

DOT_CPU = "cortex-a76"  # ARMv8.2 with SDOT/UDOT; cortex-a53 has neither


@dataclass(frozen=True)
class Prepared:
    cache: Path
    seconds: float
    stdout: str
    interrupted: dict | None  # what a setup killed half-way left, when this session made the setup itself


def _interrupt_a_setup(cache: Path) -> dict:
    """Start a setup, kill it (and its apt-get) once it downloads packages; what it left in the cache."""
    env = {**os.environ, "EDGEPRESS_CACHE": str(cache)}
    env.pop("EDGEPRESS_DEBUG", None)
    process = subprocess.Popen([sys.executable, "-m", "edgepress", "target", "setup", "qemu-aarch64"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = []
    try:
        deadline = time.monotonic() + 180
        for line in process.stderr:
            seen.append(line)
            if "[2/5]" in line or time.monotonic() > deadline:
                break
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return {"stderr": "".join(seen), "entries": sorted(p.name for p in cache.iterdir())}


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Prepared:
    reuse = os.environ.get("EDGEPRESS_TEST_QEMU_CACHE")
    cache = Path(reuse) if reuse else tmp_path_factory.mktemp("edgepress-cache")
    cache.mkdir(parents=True, exist_ok=True)
    interrupted = None if (cache / qemu.SETUP_FOLDER / qemu.MANIFEST).is_file() else _interrupt_a_setup(cache)
    started = time.monotonic()
    proc = run_cli("target", "setup", "qemu-aarch64", env={"EDGEPRESS_CACHE": str(cache)})
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    return Prepared(cache=cache, seconds=seconds, stdout=proc.stdout, interrupted=interrupted)


@pytest.fixture
def cache_env(prepared, monkeypatch) -> Path:
    monkeypatch.setenv("EDGEPRESS_CACHE", str(prepared.cache))
    return prepared.cache


def _report(capsys, line: str) -> None:
    with capsys.disabled():
        print(f"\n[qemu-aarch64] {line}", flush=True)


# ---------------------------------------------------------------- models

def _tiny_model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
                              "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _int8_conv_model(folder: Path, inputs: np.ndarray) -> Path:
    """A small CNN (conv, depthwise conv, strided conv, pooling, classifier) quantized to QDQ INT8 with
    onnxruntime.quantization.quantize_static, per-channel weights, calibrated on `inputs`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(1)

    def tensor(name: str, *shape: int, scale: float) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    weights = [tensor("w1", 16, 3, 3, 3, scale=0.3), tensor("b1", 16, scale=0.1),
               tensor("w2", 16, 1, 3, 3, scale=0.4), tensor("b2", 16, scale=0.1),
               tensor("w3", 32, 16, 3, 3, scale=0.1), tensor("b3", 32, scale=0.1), tensor("fc", 32, 10, scale=0.3)]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=16),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c3"], ["r3"]),
             helper.make_node("GlobalAveragePool", ["r3"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["logits"])]
    graph = helper.make_graph(nodes, "int8_cnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    fp32, int8 = folder / "cnn_fp32.onnx", folder / "cnn_int8.onnx"
    onnx.save(model, fp32)

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": inputs[i:i + 16]} for i in range(0, len(inputs), 16)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(fp32), str(int8), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return int8


def _compare(name: str, found: np.ndarray, reference: np.ndarray, reference_name: str) -> dict:
    """How far `found` is from `reference`, as a sentence and numbers."""
    difference = np.abs(found.astype(np.float64) - reference.astype(np.float64))
    differing = int((difference.reshape(len(found), -1).max(axis=1) > 0).sum())
    agreement = float((found.argmax(axis=1) == reference.argmax(axis=1)).mean())
    scale = float(np.abs(reference).max()) or 1.0
    identical = differing == 0
    sentence = (f"{name} vs {reference_name}: " + ("identical outputs" if identical else
                f"outputs differ on {differing}/{len(found)} samples, max |diff| {difference.max():.3g} "
                f"({100 * difference.max() / scale:.2f}% of the largest output)") +
                f", top-1 agreement {100 * agreement:.1f}%")
    return {"identical": identical, "differing": differing, "max_abs_diff": float(difference.max()),
            "relative_diff": float(difference.max() / scale), "agreement": agreement, "sentence": sentence}


# ---------------------------------------------------------------- setup

@pytest.mark.slow
def test_setup_is_complete_atomic_and_idempotent(prepared, capsys):
    import onnxruntime

    if prepared.interrupted is not None:
        left = prepared.interrupted["entries"]
        assert "[2/5]" in prepared.interrupted["stderr"], prepared.interrupted["stderr"]
        assert qemu.SETUP_FOLDER not in left, left  # killed half-way: nothing in place
        assert any(name.startswith(".qemu-aarch64.partial-") for name in left), left
    entries = sorted(p.name for p in prepared.cache.iterdir())
    assert entries == [".qemu-aarch64.lock", qemu.SETUP_FOLDER], entries  # the full setup cleared the leftovers
    manifest = json.loads((prepared.cache / qemu.SETUP_FOLDER / qemu.MANIFEST).read_text())
    assert manifest["onnxruntime"] == onnxruntime.__version__  # the host's version has an aarch64 wheel
    assert manifest["python"].startswith("3.11.") and manifest["debian"] == "bookworm"
    assert not (prepared.cache / qemu.SETUP_FOLDER / "downloads").exists()
    assert "qemu-aarch64 is ready" in prepared.stdout
    _report(capsys, f"setup: {prepared.seconds:.1f} s through the CLI ({manifest['setup_seconds']} s of work), "
                    f"downloaded {manifest['downloaded_bytes'] / 1e6:.1f} MB, {manifest['disk_bytes'] / 1e6:.0f} MB "
                    f"on disk; onnxruntime {manifest['onnxruntime']}, numpy {manifest['numpy']}, "
                    f"Python {manifest['python']}")

    started = time.monotonic()
    again = run_cli("target", "setup", "qemu-aarch64", env={"EDGEPRESS_CACHE": str(prepared.cache)})
    assert again.returncode == 0, again.stderr
    assert "is ready" in again.stdout and "[1/5]" not in again.stderr
    assert time.monotonic() - started < 30
    assert json.loads((prepared.cache / qemu.SETUP_FOLDER / qemu.MANIFEST).read_text()) == manifest


@pytest.mark.slow
def test_guest_sees_the_chosen_cpu(cache_env, tmp_path):
    """-cpu reaches qemu (dot product in the auxiliary vector only on the dot-product CPU) and the guest's
    /proc/cpuinfo is the emulated core's, not this machine's."""
    script = ("import struct; auxv = dict(struct.iter_unpack('<QQ', open('/proc/self/auxv', 'rb').read())); "
              "part = [l.split(':')[1].strip() for l in open('/proc/cpuinfo') if l.startswith('CPU part')][0]; "
              "print(bool(auxv[16] >> 20 & 1), part)")  # AT_HWCAP, HWCAP_ASIMDDP
    setup = qemu.prepared()
    seen = {}
    for cpu in ("cortex-a53", DOT_CPU):
        target = open_target(f"qemu-aarch64:{cpu}")
        root = qemu.make_guest_root(tmp_path / f"root-{cpu}", setup.sysroot, cpu)
        done = subprocess.run(target.command(setup, root, "-c", script), capture_output=True, text=True,
                              env=qemu.guest_env(setup.site_packages), timeout=120)
        assert done.returncode == 0, done.stderr
        seen[cpu] = done.stdout.split()
    assert seen == {"cortex-a53": ["False", "0xd03"], DOT_CPU: ["True", "0xd0b"]}


# ---------------------------------------------------------------- bench and predict

@pytest.mark.slow
def test_bench_cli_on_cortex_a53_is_marked_emulated(prepared, tmp_path):
    model = _tiny_model(tmp_path / "tiny.onnx")
    proc = run_main("bench", str(model), "--target", "qemu-aarch64:cortex-a53", "--runs", "20", "--warmup", "2",
                    env={"EDGEPRESS_CACHE": str(prepared.cache)})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["target"] == "qemu-aarch64:cortex-a53"
    assert result["emulated"] is True and "never as latency" in result["note"]
    assert result["device"]["machine"] == "aarch64" and result["device"]["emulated_cpu"] == "cortex-a53"
    assert result["runs"] == 20 and result["latency_ms"]["p50"] > 0
    assert "(emulated)" in proc.stderr


@pytest.mark.slow
def test_int8_model_on_arm_kernels_against_x86(cache_env, tmp_path, capsys, record_property):
    """The same QDQ INT8 model on x86 (local) and on ARM's kernels with and without dot product: it must run
    everywhere, and any difference between the kernels is measured and reported, not assumed away."""
    import onnxruntime

    inputs = np.random.default_rng(2).standard_normal((64, 3, 16, 16)).astype(np.float32)
    model = _int8_conv_model(tmp_path, inputs)
    np.savez(tmp_path / "inputs.npz", x=inputs)

    def predict(name: str) -> tuple[np.ndarray, dict]:
        out = f"outputs-{name.replace(':', '-')}.npz"
        result = open_target(name, options=TargetOptions()).run(
            files=[model, tmp_path / "inputs.npz"], fetch=[out], into=tmp_path, timeout_s=300,
            args=["predict", model.name, "--inputs", "inputs.npz", "--out", out, "--batch-size", "16"])
        with np.load(tmp_path / out) as found:
            return found["logits"], result

    host, host_result = predict("local")
    outputs = {}
    for cpu in ("cortex-a53", DOT_CPU):
        found, result = predict(f"qemu-aarch64:{cpu}")
        assert result["device"] == {"machine": "aarch64", "onnxruntime": onnxruntime.__version__, "emulated_cpu": cpu}
        assert found.shape == host.shape and np.isfinite(found).all()
        outputs[cpu] = found
    comparisons = [_compare(f"qemu-aarch64:{cpu}", outputs[cpu], host, f"local {host_result['device']['machine']}")
                   for cpu in outputs]
    comparisons.append(_compare(f"qemu-aarch64:{DOT_CPU}", outputs[DOT_CPU], outputs["cortex-a53"],
                                "qemu-aarch64:cortex-a53"))
    for index, comparison in enumerate(comparisons):
        _report(capsys, "INT8 QDQ CNN, " + comparison["sentence"])
        record_property(f"comparison_{index}", comparison["sentence"])
        if comparison["identical"]:
            assert comparison["max_abs_diff"] == 0.0
        else:
            # ARM's kernels answered differently: the difference is there in the numbers and in the report.
            assert comparison["differing"] > 0 and comparison["max_abs_diff"] > 0
            assert "differ on" in comparison["sentence"]
        # Rounding in other kernels may flip a near tie, not most answers: these are the same model's answers.
        assert comparison["agreement"] >= 0.9, comparison["sentence"]


@pytest.mark.slow
def test_an_ort_model_is_benched_under_qemu_and_answers_as_its_onnx_source(cache_env, tmp_path):
    """An .ort on ARM's kernels: timed against its source .onnx in one emulated runner (profiled, on real inputs),
    its outputs there those of the .onnx there; one converted for amd64 (x86-only NCHWc operators) is refused in
    one line that names the setting to change."""
    from tests.test_bench_cli import ort_of

    source = _tiny_model(tmp_path / "tiny.onnx")
    converted = ort_of(source)
    x = np.random.default_rng(4).standard_normal((40, 8)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    proc = run_main("bench", str(converted), "--compare", str(source), "--target", "qemu-aarch64:cortex-a53",
                    "--runs", "20", "--warmup", "2", "--profile", "--inputs", str(tmp_path / "x.npz"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["emulated"] is True and result["device"]["machine"] == "aarch64"
    assert result["model"] == "tiny.ort" and result["compare"]["model"] == "tiny.onnx"
    assert result["size_bytes"] == converted.stat().st_size and result["inputs"]["x"]["shape"] == [40, 8]
    assert {row["op_type"] for row in result["profile"]["by_op_type"]} <= {"MatMul", "Relu"}

    target = open_target("qemu-aarch64:cortex-a53")
    found = {}
    for model in (converted, source):
        out = f"y-{model.suffix[1:]}.npz"
        target.run(files=[model, tmp_path / "x.npz"], fetch=[out], into=tmp_path, timeout_s=300,
                   args=["predict", model.name, "--inputs", "x.npz", "--out", out])
        with np.load(tmp_path / out) as outputs:
            found[model.suffix] = outputs["y"]
    assert found[".ort"].shape == (40, 4) and (found[".ort"] > 0).any()
    np.testing.assert_allclose(found[".ort"], found[".onnx"], rtol=1e-6, atol=1e-6)

    _int8_conv_model(tmp_path, np.random.default_rng(5).standard_normal((16, 3, 16, 16)).astype(np.float32))
    for_x86 = ort_of(tmp_path / "cnn_fp32.onnx", tmp_path / "cnn_amd64.ort", target_platform="amd64")
    assert_one_line_error(run_main("bench", str(for_x86), "--target", "qemu-aarch64:cortex-a53", "--runs", "5"),
                          "on qemu-aarch64:cortex-a53", "cannot load 'cnn_amd64.ort'", "target_platform")


# ---------------------------------------------------------------- errors, one line each

def test_unknown_cpu_names_the_closest(tmp_path):
    model = _tiny_model(tmp_path / "tiny.onnx")
    proc = run_main("bench", str(model), "--target", "qemu-aarch64:neoverse_n1")
    assert_one_line_error(proc, "unknown CPU 'neoverse_n1'", "did you mean qemu-aarch64:neoverse-n1?")
    with pytest.raises(UserError, match="did you mean qemu-aarch64:cortex-a53"):
        open_target("qemu-aarch64:cortex-53")
    with pytest.raises(UserError, match=r"qemu-aarch64\[:CPU\]"):
        open_target("qemu-aarch64:")


def test_missing_setup_names_the_setup_command(tmp_path):
    model = _tiny_model(tmp_path / "tiny.onnx")
    (tmp_path / "empty-cache").mkdir()
    proc = run_main("bench", str(model), "--target", "qemu-aarch64",
                    env={"EDGEPRESS_CACHE": str(tmp_path / "empty-cache")})
    assert_one_line_error(proc, "not set up", "`edgepress target setup qemu-aarch64`")


def test_missing_qemu_names_the_debian_package(tmp_path):
    model = _tiny_model(tmp_path / "tiny.onnx")
    (tmp_path / "bin").mkdir()
    proc = run_main("bench", str(model), "--target", "qemu-aarch64:cortex-a53", env={"PATH": str(tmp_path / "bin")})
    assert_one_line_error(proc, "qemu-aarch64 is not installed", "qemu-user")


@pytest.mark.slow
def test_failed_setup_leaves_nothing_in_place(prepared, tmp_path):
    """A version without an aarch64 wheel fails at the first step, a mirror without Debian at the second (after
    the wheels, which pip's cache holds since the session's setup): each in one line, with nothing left."""
    cache = tmp_path / "cache"
    env = {"EDGEPRESS_CACHE": str(cache)}
    proc = run_cli("target", "setup", "qemu-aarch64", "--onnxruntime", "0.0.1", env=env)
    assert_one_line_error(proc, "pip download onnxruntime==0.0.1", "--onnxruntime")
    assert sorted(p.name for p in cache.iterdir()) == [".qemu-aarch64.lock"]
    proc = run_cli("target", "setup", "qemu-aarch64", "--mirror", f"file://{tmp_path}/no-mirror/debian", env=env)
    assert_one_line_error(proc, "apt-get update failed", "--mirror")
    assert sorted(p.name for p in cache.iterdir()) == [".qemu-aarch64.lock"]


def test_setup_of_a_target_without_one_is_refused():
    assert_one_line_error(run_main("target", "setup", "local"), "needs no setup", "qemu-aarch64")
    assert_one_line_error(run_main("target", "setup", "qemu-aarch64:cortex-a99"), "unknown CPU")


def test_a_difference_between_kernels_is_reported():
    """The comparison above, on outputs where one sample's answer moved by one step: it is counted and said."""
    reference = np.random.default_rng(3).standard_normal((64, 10)).astype(np.float32)
    moved = reference.copy()
    moved[5, 2] += 0.125
    comparison = _compare("arm", moved, reference, "x86")
    assert not comparison["identical"] and comparison["differing"] == 1
    assert comparison["max_abs_diff"] == pytest.approx(0.125)
    assert "differ on 1/64 samples" in comparison["sentence"]
    assert _compare("arm", reference, reference, "x86")["sentence"].startswith("arm vs x86: identical outputs")


@pytest.mark.slow
def test_a_recipe_evaluates_and_gates_the_same_int8_model_on_x86_and_on_arm(prepared, tmp_path, monkeypatch):
    from tests.conftest import TINY_RECIPE, write_recipe

    targets = """
[[targets]]
name = "local"

[[targets]]
name = "qemu-aarch64:cortex-a53"
evaluate = true
evaluate_samples = 150
budgets = { agreement_min = 0.9 }

[[targets]]
name = "qemu-aarch64:%s"
evaluate = true
evaluate_samples = 150
latency = false
stages = ["ptq", "ort_format"]
budgets = { accuracy_drop_points = 100.0 }
""" % DOT_CPU
    text = TINY_RECIPE.format(epochs=2, budgets="agreement_min = 0.9").replace(
        "[bench]", '[[stages]]\nkind = "ort_format"\n\n[bench]')
    recipe = write_recipe(tmp_path, text=text + targets)
    monkeypatch.setenv("EDGEPRESS_CACHE", str(prepared.cache))
    ran = edgepress.run(recipe, out=tmp_path / "out")
    assert ran.gate.passed, ran.gate.violations
    report = ran.to_json_dict()
    stages = {stage["name"]: stage["metrics"] for stage in report["stages"]}
    ptq = stages["ptq"]
    a53, dot = ptq["targets"]["qemu-aarch64:cortex-a53"], ptq["targets"][f"qemu-aarch64:{DOT_CPU}"]
    assert a53["emulated"] is True and a53["device"]["machine"] == "aarch64" and a53["runs"] == 200
    assert "latency_ms" not in dot  # latency = false: evaluated, not timed
    export = stages["export"]["targets"]
    assert f"qemu-aarch64:{DOT_CPU}" not in export and "qemu-aarch64:cortex-a53" in export  # stages = [...]
    # The .ort answers as its source INT8 model does with ARM's kernels: on both CPUs, every one of the 150 images.
    for name in ("qemu-aarch64:cortex-a53", f"qemu-aarch64:{DOT_CPU}"):
        on_arm = stages["ort_format"]["targets"][name]
        assert on_arm["evaluation"]["digits:test"]["samples"] == 150
        assert on_arm["same_as_source"] == 1.0 and on_arm["accuracy"] == ptq["targets"][name]["accuracy"]
    for on_arm in (a53, dot):
        assert on_arm["evaluation"]["digits:test"]["samples"] == 150
        assert on_arm["agreement"] >= 0.9 and 0.0 <= on_arm["accuracy"] <= 1.0
        # ARM's answers against x86's on the same 150 images: reported, whatever they are.
        assert 0.9 <= on_arm["same_as_host"] <= 1.0
        assert on_arm["evaluation"]["digits:test"]["same_as_host"] == on_arm["same_as_host"]
    # The headline (primary, x86) latency is the local one, never an emulated one.
    assert ptq["latency_ms"]["target"] == "local" and not ptq["targets"]["local"]["emulated"]
    gated = {(c.get("target"), c["budget"]) for c in report["gate"]["checks"]}
    assert {(None, "agreement_min"), ("qemu-aarch64:cortex-a53", "agreement_min"),
            (f"qemu-aarch64:{DOT_CPU}", "accuracy_drop_points")} <= gated
    assert report["gate"]["passed"] is True
