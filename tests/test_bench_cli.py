"""`edgepress bench` and the single-file device runner, on the local target with real ONNX Runtime sessions."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.conftest import ROOT, assert_one_line_error, one_node_model, run_main
from tests.runner_processes import kill_once_timing, runner_child, wait_for

RUNNER = ROOT / "runtime" / "device_runner.py"
LATENCY_KEYS = {"p50", "p90", "p95", "p99", "mean", "std", "min", "max"}


def matmul_model(path: Path, *, width: int, name: str = "x") -> Path:
    """A free batch dimension and `width` x `width` float MatMul layers: cost grows with `width`."""
    rng = np.random.default_rng(0)
    weights = [helper.make_tensor(f"w{i}", TensorProto.FLOAT, [width, width],
                                  (rng.standard_normal((width, width)) / width).astype(np.float32).ravel())
               for i in range(4)]
    nodes = [helper.make_node("MatMul", [name if i == 0 else f"h{i - 1}", f"w{i}"], [f"h{i}" if i < 3 else "y"])
             for i in range(4)]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
                              initializer=weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    return matmul_model(folder / "small.onnx", width=64), matmul_model(folder / "large.onnx", width=512)


def test_bench_prints_the_json_contract_and_writes_it_atomically(models, tmp_path):
    small, _ = models
    out = tmp_path / "bench.json"
    proc = run_main("bench", str(small), "--runs", "300", "--warmup", "20", "--dim", "batch=4", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == result
    assert result["target"] == "local" and result["emulated"] is False
    assert result["runs"] == 300 and result["threads"] == 1 and result["warmup_runs"] == 20
    lat = result["latency_ms"]
    assert LATENCY_KEYS <= lat.keys()
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    low, high = result["p50_ci95_ms"]
    assert low <= lat["p50"] <= high and high - low < lat["p50"]
    assert result["session_create_ms"] > 0 and result["first_run_ms"] > 0
    # a Python with ONNX Runtime loaded: tens of MB at least, and the model's session on top of it
    assert result["peak_memory_bytes"] > result["runner_baseline_bytes"] > 10 * 2**20
    assert result["size_bytes"] == small.stat().st_size
    assert result["inputs"] == {"x": {"shape": [4, 64], "dtype": "float32"}}
    assert result["thread_settings"]["intra_op"] == 1
    assert "p50 " in proc.stderr and "95% CI" in proc.stderr  # a human line besides the JSON


def test_compare_interleaves_two_models_and_the_ratio_interval_excludes_one(models):
    small, large = models
    proc = run_main("bench", str(large), "--compare", str(small), "--runs", "200", "--warmup", "10")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    compare = result["compare"]
    assert compare["model"] == "small.onnx" and result["thread_settings"]["interleaved"] is True
    ratio, (low, high) = compare["p50_ratio"], compare["p50_ratio_ci95"]
    # the median of the epochs' ratios: near the ratio of the two p50s, and inside its interval
    assert ratio == pytest.approx(result["latency_ms"]["p50"] / compare["latency_ms"]["p50"], rel=0.2)
    assert low <= ratio <= high and len(compare["epoch_ratios"]) == result["epochs"] == 12
    assert low > 1.5, "four 512x512 matmuls against four 64x64 ones: the larger must be clearly slower"


def test_profile_says_where_each_models_time_goes(models):
    small, large = models
    proc = run_main("bench", str(large), "--compare", str(small), "--runs", "50", "--warmup", "5", "--profile")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for profile in (result["profile"], result["compare"]["profile"]):
        assert [row["op_type"] for row in profile["by_op_type"]] == ["MatMul"]  # four MatMuls, nothing else
        assert profile["by_op_type"][0]["nodes"] == 4 and len(profile["by_node"]) == 4
        assert profile["by_op_type"][0]["share"] == pytest.approx(1.0)
    # four 512x512 MatMuls take far longer per run than four 64x64 ones, in the profiler's clock too
    assert result["profile"]["kernels_ms"] > 3 * result["compare"]["profile"]["kernels_ms"]
    assert "time by op type: MatMul 100%" in proc.stderr


def test_inputs_from_npz_and_duration(models, tmp_path):
    small, _ = models
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=np.ones((2, 64), dtype=np.float32))
    proc = run_main("bench", str(small), "--inputs", str(inputs), "--duration", "0.5", "--warmup", "auto")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["input_source"] == "inputs.npz" and result["inputs"]["x"]["shape"] == [2, 64]
    assert result["runs"] >= 10 and result["warmup_runs"] >= 20  # auto: at least two windows of 10


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is a Linux call")
def test_thread_settings_report_inter_op_threads_spinning_and_the_cpus_it_ran_on(models):
    small, _ = models
    allowed = sorted(os.sched_getaffinity(0))
    pinned = allowed[-1]  # one CPU this test may use, whichever the machine's cpuset grants
    proc = run_main("bench", str(small), "--runs", "50", "--warmup", "5", "--inter-op-threads", "2",
                   "--spinning", "off", "--cpus", str(pinned))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["thread_settings"] == {
        "intra_op": 1, "inter_op": 2, "spinning": "off", "affinity": [pinned], "pinned": [pinned],
        "interleaved": False}
    # unpinned, the runner reports the CPUs it inherited, not None
    proc = run_main("bench", str(small), "--runs", "20", "--warmup", "2", "--threads", "2", "--spinning", "on")
    assert proc.returncode == 0, proc.stderr
    settings = json.loads(proc.stdout)["thread_settings"]
    assert settings["affinity"] == allowed and settings["pinned"] is None
    assert (settings["intra_op"], settings["inter_op"], settings["spinning"]) == (2, 1, "on")
    missing = max(allowed) + 1024  # no machine this runs on has so many CPUs in its cpuset
    assert_one_line_error(run_main("bench", str(small), "--runs", "20", "--cpus", str(missing)),
                          f"--cpus {missing} names no CPU", "pick from")


@pytest.mark.parametrize("args,fragments", [
    (["--dim", "sequence=8"], ["match no free dimension", "batch"]),
    (["--runs", "0"], ["--runs 0 is outside [1, 1000000]"]),
    (["--warmup", "lots"], ["neither a count up to 1000000 nor auto"]),
    (["--target", "telnet://board"], ["unknown target", "ssh://user@host"]),
])
def test_bad_flags_are_one_line_errors(models, args, fragments):
    small, _ = models
    assert_one_line_error(run_main("bench", str(small), *args), *fragments)


def test_every_error_line_says_edgepress_once(models, tmp_path):
    """Parser errors of the command and of a subcommand, a runner's own error relayed, and a --python that is
    another edgepress (its "edgepress: error:" line relayed as the reason): never "edgepress: error: edgepress:"."""
    small, _ = models
    other_edgepress = tmp_path / "python"
    other_edgepress.write_text("#!/bin/sh\necho 'edgepress: error: no such command; fix: see --help' >&2\nexit 2\n")
    other_edgepress.chmod(0o755)
    cases = [[], ["nope"], ["bench"], ["bench", str(small), "--runs", "x"], ["target", "setup"],
             ["bench", str(small), "--dim", "sequence=8"], ["bench", str(small), "--python", str(other_edgepress)]]
    for args in cases:
        line = assert_one_line_error(run_main(*args))
        assert line.count("edgepress:") == 1, (args, line)
    assert "failed on local (exit 2): no such command" in line


def test_bad_models_and_inputs_are_one_line_errors(models, tmp_path):
    small, _ = models
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a protobuf at all")
    assert_one_line_error(run_main("bench", str(corrupt)), "not a valid ONNX model", "corrupt.onnx")
    assert_one_line_error(run_main("bench", str(tmp_path / "missing.onnx")), "does not exist")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.ones((2, 3, 4), dtype=np.float32))
    assert_one_line_error(run_main("bench", str(small), "--inputs", str(wrong)), "shape [2, 3, 4]")
    named = tmp_path / "named.npz"
    np.savez(named, a=np.ones((1, 64), np.float32), b=np.ones((1, 64), np.float32))
    assert_one_line_error(run_main("bench", str(small), "--inputs", str(named)), "lack arrays named ['x']")


@pytest.mark.slow
def test_a_runner_killed_mid_bench_keeps_the_runs_it_measured(models, tmp_path):
    """SIGKILL, as the kernel's out-of-memory killer sends it, to the local target's runner while it times."""
    small, _ = models
    out = tmp_path / "bench.json"
    env = {key: value for key, value in os.environ.items() if key != "EDGEPRESS_DEBUG"}
    bench = subprocess.Popen([sys.executable, "-m", "edgepress", "bench", str(small), "--duration", "300",
                              "--warmup", "5", "--samples", "--json", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        runner = wait_for(lambda: runner_child(bench.pid), what="runner process", owner=bench)
        kill_once_timing(runner, owner=bench)
        stdout, stderr = bench.communicate(timeout=120)
    finally:
        bench.kill()
    proc = subprocess.CompletedProcess(bench.args, bench.returncode, stdout, stderr)
    assert_one_line_error(proc, "the device runner on local was killed (signal 9) after", "timed runs", str(out),
                          '"complete": false', "free memory")
    result = json.loads(out.read_text())
    assert json.loads(stdout) == result
    assert result["complete"] is False and result["runs"] > 0
    assert f"after {result['runs']} timed runs" in stderr
    # every timing that arrived is kept, and the statistics are those of exactly these timings
    samples = np.asarray(result["samples_ms"])
    assert samples.size == result["runs"] == result["incomplete"]["runs_measured"]
    assert result["latency_ms"]["p50"] == pytest.approx(float(np.median(samples)), rel=1e-6)
    assert result["latency_ms"]["max"] == pytest.approx(float(samples.max()), rel=1e-6)
    assert result["thread_settings"]["intra_op"] == 1 and result["size_bytes"] == small.stat().st_size


@pytest.mark.slow
def test_a_finished_bench_is_marked_complete_and_streams_its_progress(models, tmp_path):
    """The runner's progress lines carry every timing once, and the host's summary of them is the result."""
    small, _ = models
    (tmp_path / "small.onnx").write_bytes(small.read_bytes())
    proc = subprocess.run([sys.executable, str(RUNNER), "bench", "small.onnx", "--duration", "2.5", "--warmup", "5",
                           "--samples"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    final, progress = lines[-1], lines[:-1]
    assert final["complete"] is True and "partial" not in final
    assert len(progress) >= 1 and all(line["partial"] is True for line in progress)
    streamed = [value for line in progress for epoch in line["new_epochs_ms"][0] for value in epoch]
    epochs = sum(len(line["new_epochs_ms"][0]) for line in progress)
    assert streamed == final["samples_ms"][:len(streamed)] and progress[-1]["epochs"] == epochs
    from edgepress.targets.base import partial_result

    rebuilt = partial_result(proc.stdout)
    assert rebuilt["complete"] is False and rebuilt["runs"] == len(streamed)
    assert rebuilt["latency_ms"]["p50"] == pytest.approx(float(np.median(streamed)), rel=1e-9)


def test_a_model_whose_inputs_cannot_be_fed_is_a_one_line_error(tmp_path):
    """A string input has no random values; a Reshape to 7 x 7 of a 1 x 16 input loads but fails its first run."""
    strings = one_node_model(tmp_path / "strings.onnx", helper.make_node("Identity", ["text"], ["same"]),
                              [helper.make_tensor_value_info("text", TensorProto.STRING, [1])],
                              [helper.make_tensor_value_info("same", TensorProto.STRING, [1])])
    proc = run_main("bench", str(strings), "--runs", "20")
    assert_one_line_error(proc, "input 'text' has type tensor(string)", "random inputs do not cover",
                          "fix: pass real inputs with --inputs FILE.npz")
    assert proc.stdout == ""  # no result, not even a partial one: nothing was timed

    impossible = helper.make_tensor("shape", TensorProto.INT64, [2], [7, 7])
    reshape = one_node_model(tmp_path / "reshape.onnx", helper.make_node("Reshape", ["x", "shape"], ["y"]),
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [7, 7])], [impossible])
    proc = run_main("bench", str(reshape), "--runs", "20")
    line = assert_one_line_error(proc, "the model does not run on these inputs",
                                 "cannot be reshaped to the requested shape", "{1,16}", "{7,7}", "re-export it")
    assert "onnxruntime_src" not in line and "[ONNXRuntimeError]" not in line  # the reason, not ORT's noise
    assert proc.stdout == ""


def test_runner_needs_only_python_3_8_onnxruntime_and_numpy():
    source = RUNNER.read_text()
    ast.parse(source, feature_version=(3, 8))  # no syntax newer than the oldest Python a board may have
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names)
    assert third_party == {"numpy", "onnxruntime"}, third_party


def test_runner_runs_as_a_lone_file_without_edgepress_or_torch(models, tmp_path):
    """Copied alone into an empty folder, run with -I (no user site, no PYTHONPATH, no edgepress on the path),
    and with torch made unimportable: what a device sees."""
    small, _ = models
    (tmp_path / "device_runner.py").write_bytes(RUNNER.read_bytes())
    (tmp_path / "small.onnx").write_bytes(small.read_bytes())
    blocker = ("import sys, runpy; sys.modules['torch'] = None; sys.modules['edgepress'] = None; "
               "sys.argv = ['device_runner.py', 'bench', 'small.onnx', '--runs', '50', '--warmup', '5']; "
               "runpy.run_path('device_runner.py', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-I", "-c", blocker], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["runs"] == 50


def test_predict_writes_every_output_for_every_input(models, tmp_path):
    small, _ = models
    x = np.random.default_rng(1).standard_normal((150, 64)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    (tmp_path / "small.onnx").write_bytes(small.read_bytes())
    proc = subprocess.run([sys.executable, str(RUNNER), "predict", "small.onnx", "--inputs", "in.npz",
                           "--out", "out.npz", "--batch-size", "64"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["samples"] == 150
    import onnxruntime as ort

    expected = ort.InferenceSession(str(small), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with np.load(tmp_path / "out.npz") as got:
        np.testing.assert_allclose(got["y"], expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- ORT-format models (.ort)

def ort_of(onnx_path: Path, out: Path | None = None, **settings) -> Path:
    """`onnx_path` converted by the ort_format stage's own converter (ONNX Runtime's) to ORT format."""
    from export.ort_format import OrtFormatSettings, convert

    out = out or onnx_path.with_suffix(".ort")
    convert(onnx_path, out=out, config=out.with_suffix(".config"), settings=OrtFormatSettings(**settings),
            log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def ort_models(models):
    small, large = models
    return ort_of(small), ort_of(large)


def test_bench_times_an_ort_model_with_dims_inputs_and_profile(ort_models, tmp_path):
    """What bench does for an .onnx it does for an .ort: the runner opens the file as ORT format (its bytes would
    not parse as ONNX), sizes free dimensions by name (the converter keeps them), reads --inputs, profiles."""
    small_ort, _ = ort_models
    assert small_ort.read_bytes()[4:8] == b"ORTM"
    out = tmp_path / "bench.json"
    proc = run_main("bench", str(small_ort), "--runs", "50", "--warmup", "5", "--dim", "batch=4", "--profile",
                    "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == result and result["complete"] is True
    assert result["model"] == "small.ort" and result["size_bytes"] == small_ort.stat().st_size
    assert result["inputs"] == {"x": {"shape": [4, 64], "dtype": "float32"}}
    assert [row["op_type"] for row in result["profile"]["by_op_type"]] == ["MatMul"]
    assert result["profile"]["by_op_type"][0]["nodes"] == 4
    assert "small.ort on local: p50" in proc.stderr
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=np.ones((3, 64), dtype=np.float32))
    proc = run_main("bench", str(small_ort), "--runs", "20", "--warmup", "2", "--inputs", str(inputs))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["inputs"]["x"]["shape"] == [3, 64]


def test_an_ort_model_compares_with_an_onnx_model_either_way(models, ort_models):
    """Interleaved in one runner, whichever format comes first: four 512x512 MatMuls (either format) are clearly
    slower than four 64x64 ones (the other), so each ratio's interval must lie well clear of 1."""
    import edgepress

    small, large = models
    small_ort, large_ort = ort_models
    result = edgepress.bench(large_ort, compare=small, runs=200, warmup="10")
    assert result["model"] == "large.ort" and result["compare"]["model"] == "small.onnx"
    assert result["size_bytes"] == large_ort.stat().st_size
    assert result["compare"]["p50_ratio_ci95"][0] > 1.5
    proc = run_main("bench", str(small), "--compare", str(large_ort), "--runs", "200", "--warmup", "10")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["model"] == "small.onnx" and result["compare"]["model"] == "large.ort"
    assert result["compare"]["size_bytes"] == large_ort.stat().st_size
    assert result["compare"]["p50_ratio_ci95"][1] < 1 / 1.5
    # the same model in both formats: the same file name twice would collide on the device, these do not
    proc = run_main("bench", str(small_ort), "--compare", str(small), "--runs", "20", "--warmup", "2")
    assert proc.returncode == 0, proc.stderr


def _newer_format(ort_file: Path, out: Path) -> Path:
    """`ort_file` claiming an ORT format version no onnxruntime writes yet (the version string is one digit)."""
    from edgepress.io import ort_wire

    data = bytearray(ort_file.read_bytes())
    version = ort_wire.read_model(ort_file).format_version.encode()
    at = data.rindex(len(version).to_bytes(4, "little") + version + b"\0")
    data[at + 4:at + 4 + len(version)] = b"9" * len(version)
    out.write_bytes(bytes(data))
    return out


def hostile_ort_cases(small: Path, small_ort: Path, folder: Path) -> list[tuple[str, list[str], list[str]]]:
    """(case, bench arguments, fragments of its one-line error): truncated, corrupt, misnamed, too new."""
    data = small_ort.read_bytes()

    def write(name: str, content: bytes) -> str:
        (folder / name).write_bytes(content)
        return str(folder / name)

    cases = [(f"truncated to {cut} bytes", [write(f"cut{cut}.ort", data[:cut])], ["cut", "ORT-format model"])
             for cut in (1, 7, 8, 12, 100, len(data) // 2, len(data) - 8)]
    (folder / "folder.ort").mkdir()
    cases += [
        ("empty", [write("empty.ort", b"")], ["empty.ort is empty, not an ORT-format model"]),
        ("a folder", [str(folder / "folder.ort")], ["folder.ort is not a file"]),
        ("text", [write("text.ort", b"not an ORT model, just text\n" * 10)], ["lacks the file identifier 'ORTM'"]),
        ("ONNX named .ort", [write("onnx-inside.ort", small.read_bytes())],
         ["onnx-inside.ort is an ONNX model (protobuf) named .ort", "rename it to onnx-inside.onnx"]),
        ("ORT named .onnx", [write("ort-inside.onnx", data)],
         ["ort-inside.onnx is an ORT-format model", "rename it to ort-inside.ort"]),
        ("ORT named .onnx, as --compare", [str(small), "--compare", str(folder / "ort-inside.onnx")],
         ["--compare", "rename it to ort-inside.ort"]),
        ("corrupt --compare", [str(small), "--compare", str(folder / "cut100.ort")], ["--compare", "cut100.ort"]),
        # the host reads the version but leaves it to the device's onnxruntime, which alone knows what it reads
        ("a newer ORT format", [str(_newer_format(small_ort, folder / "newer.ort"))],
         ["on local", "cannot load 'newer.ort'", "ORT format model version [9] is not supported",
          "convert the ONNX model again with the device's onnxruntime version"]),
    ]
    return cases


def test_hostile_ort_files_are_one_line_errors(models, ort_models, tmp_path):
    small, _ = models
    for case, args, fragments in hostile_ort_cases(small, ort_models[0], tmp_path):
        proc = run_main("bench", *args, "--runs", "5", "--warmup", "1")
        line = assert_one_line_error(proc, *fragments)
        assert "internal error" not in line and "[ONNXRuntimeError]" not in line, (case, line)
        assert proc.stdout == "", case  # nothing was timed


def test_the_api_refuses_a_corrupt_ort_as_a_user_error(ort_models, tmp_path):
    import edgepress

    from tests.conftest import assert_user_error

    cut = tmp_path / "cut.ort"
    cut.write_bytes(ort_models[0].read_bytes()[:300])
    assert_user_error(lambda: edgepress.bench(cut), "cut.ort is not a valid ORT-format model", "truncated")


def test_mutated_ort_files_run_or_fail_in_one_line(ort_models, tmp_path):
    """Seeded byte changes in an .ort's tables (its first and last kilobyte; between them lie the weights): each
    either loads and is timed, or is one line, from the host's check or from ONNX Runtime's own verifier."""
    data = ort_models[0].read_bytes()
    rng = np.random.default_rng(7)
    positions = np.r_[8:1024, len(data) - 1024:len(data)]
    outcomes = []
    for index in range(8):
        mutated = bytearray(data)
        for at in rng.choice(positions, size=4, replace=False):
            mutated[at] = int(rng.integers(0, 256))
        path = tmp_path / f"mutant{index}.ort"
        path.write_bytes(bytes(mutated))
        proc = run_main("bench", str(path), "--runs", "3", "--warmup", "1")
        if proc.returncode == 0:
            assert json.loads(proc.stdout)["runs"] == 3
        else:
            assert_one_line_error(proc, f"mutant{index}.ort", "convert the ONNX model again")
        outcomes.append(proc.returncode)
    assert 2 in outcomes, "no mutant was refused: the mutations missed the tables"


def test_runner_alone_names_a_model_whose_name_and_format_disagree(models, ort_models, tmp_path):
    """By hand on a device (no host check before it): ONNX Runtime picks the format by the name, so a renamed
    file fails to parse; the runner says which format the bytes are and which name mends it."""
    small, _ = models
    (tmp_path / "device_runner.py").write_bytes(RUNNER.read_bytes())
    (tmp_path / "was-onnx.ort").write_bytes(small.read_bytes())
    (tmp_path / "was-ort.onnx").write_bytes(ort_models[0].read_bytes())
    for name, fragments in (("was-onnx.ort", ["named .ort but is not an ORT-format model", "was-onnx.onnx"]),
                            ("was-ort.onnx", ["is an ORT-format model not named .ort", "was-ort.ort"])):
        proc = subprocess.run([sys.executable, "device_runner.py", "bench", name, "--runs", "3"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        reply = json.loads(proc.stdout.splitlines()[-1])
        said = reply["error"] + " fix: " + reply["fix"]
        assert all(fragment in said for fragment in fragments), said
