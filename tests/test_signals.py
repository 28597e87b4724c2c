"""SIGTERM, SIGINT and SIGHUP to edgepress end its child processes before it exits (issue 17), with real processes.
The helpers here send a signal to `edgepress bench` or `edgepress run` while its device runner times; the cases
that use them are the campaign's signal class (tests/test_campaign.py). Here: a runner outlives no parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import ROOT, one_node_model, write_recipe
from tests.runner_processes import runner_child, wait_for

RUNNER = ROOT / "runtime" / "device_runner.py"
# a parent that starts a runner timing for 30 s, says its pid and waits
PARENT = ("import subprocess, sys, time\n"
          "runner = subprocess.Popen([sys.executable, sys.argv[1], 'bench', sys.argv[2], '--duration', '30'],\n"
          "                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
          "print(runner.pid, flush=True)\n"
          "time.sleep(60)\n")
# the line every interrupted command ends with; the signal's name goes between
INTERRUPTED = "edgepress: interrupted by {}; its child processes are stopped (a run keeps its finished stages)"


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: state, ppid, ... (field 22 of the file, start time, is [19])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(root: int) -> dict[int, str]:
    """{pid: start time} of every process below `root`; the start time tells a later process with a reused pid apart."""
    parent_of = {}
    for entry in Path("/proc").iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None:
            parent_of[int(entry.name)] = (int(fields[1]), fields[19])
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, started) in parent_of.items():
            if ppid == parent and pid not in found:
                found[pid] = started
                frontier.append(pid)
    return found


def survivors(family: dict[int, str]) -> list[int]:
    """The processes of `family` still running (a zombie has ended: it waits only for init to reap it)."""
    alive = []
    for pid, started in family.items():
        fields = _stat(pid)
        if fields is not None and fields[19] == started and fields[0] != "Z":
            alive.append(pid)
    return alive


def start(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if key != "EDGEPRESS_DEBUG"}
    return subprocess.Popen([sys.executable, "-m", "edgepress", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)


def signal_once_timing(proc: subprocess.Popen, signum: int) -> tuple[str, str]:
    """Send `signum` to edgepress once its runner runs; assert that edgepress exits 128 + signum with the one
    line, and that no process it started outlives it. Returns its stdout and stderr."""
    runner = wait_for(lambda: runner_child(proc.pid), what="the device runner", owner=proc)
    family = descendants(proc.pid)
    assert runner in family, family
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum, (proc.returncode, stderr)
    assert stderr.strip().splitlines()[-1] == INTERRUPTED.format(signal.Signals(signum).name), stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    assert survivors(family) == [], f"still running after edgepress exited: {survivors(family)} of {family}"
    return stdout, stderr


def relu_model(folder: Path) -> Path:
    return one_node_model(folder / "relu.onnx", helper.make_node("Relu", ["x"], ["y"]),
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])


def slow_run_recipe(folder: Path) -> Path:
    """A recipe whose run spends minutes timing its model stage (a 4 M-MAC digits classifier, 100 000 runs):
    a signal sent once its runner exists arrives while the runner times."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array((rng.standard_normal(shape) * 0.05).astype(np.float32), f"w{i}")
               for i, shape in enumerate([(64, 1024), (1024, 1024), (1024, 10)])]
    nodes = [helper.make_node("Flatten", ["x"], ["h0"])] + [
        helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"h{i + 1}" if i < 2 else "y"]) for i in range(3)]
    graph = helper.make_graph(nodes, "digits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], weights)
    classifier = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    classifier.ir_version = 8
    onnx.save(classifier, str(folder / "digits.onnx"))
    return write_recipe(folder, text="""
        name = "interrupted"
        [model]
        onnx = "digits.onnx"
        [data]
        evaluation = [{ dataset = "digits:test", limit = 16 }]
        preprocess = { mean = [0.5], std = [0.5] }
        [bench]
        warmup_runs = 1
        runs = 100000
    """)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return relu_model(tmp_path_factory.mktemp("signals"))


def test_a_runner_whose_parent_is_killed_ends_too(model):
    """SIGKILL leaves edgepress no time to stop its runner: the runner asked Linux to end it with its parent.
    Its output goes to /dev/null here, so that no broken pipe ends it instead."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(RUNNER), str(model)], stdout=subprocess.PIPE,
                              text=True)
    runner = int(parent.stdout.readline())
    # ONNX Runtime loads after the runner's request to end with its parent (the first thing its main() does)
    wait_for(lambda: "onnxruntime" in Path(f"/proc/{runner}/maps").read_text(), what="the runner's ONNX Runtime",
             owner=parent)
    family = descendants(parent.pid)
    parent.kill()
    parent.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while survivors(family) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert survivors(family) == [], f"runner {runner} outlived its parent"
