"""The command line's contract, in real processes as a user or CI meets it: every command's exit codes (0 ok,
1 a budget violated, 2 bad input) and its one-line errors, with no traceback. What each command computes is tested
in-process through the Python API elsewhere; here only the process boundary is.

The processes start together (two phases: the gate and ops commands read the run's report), so the layer costs about
one interpreter start-up plus one short run, not one per case."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import TINY_RECIPE, assert_one_line_error, one_node_model

# About 10 s for the layer's processes: over the fast command's 3 s a test (README).
pytestmark = pytest.mark.slow


@dataclass
class Case:
    args: list[str]
    exit_code: int
    fragments: tuple[str, ...] = ()  # in the one error line (exit 2) or in stdout and stderr (exit 0 or 1)
    process: subprocess.Popen | None = field(default=None, repr=False)
    result: subprocess.CompletedProcess | None = field(default=None, repr=False)


def _start(case: Case, cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("EDGEPRESS_DEBUG", None)  # which would turn a one-line error into a traceback
    case.process = subprocess.Popen([sys.executable, "-m", "edgepress", *case.args], cwd=cwd, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(case: Case) -> None:
    out, err = case.process.communicate(timeout=600)
    case.result = subprocess.CompletedProcess(case.process.args, case.process.returncode, out, err)


def _relu_model(folder: Path) -> Path:
    from onnx import TensorProto, helper

    return one_node_model(folder / "relu.onnx", helper.make_node("Relu", ["x"], ["y"]),
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])])


def _ort_model(source: Path) -> Path:
    from edgepress.export.ort_format import OrtFormatSettings, convert

    out = source.with_suffix(".ort")
    convert(source, out=out, config=source.parent / "relu.config", settings=OrtFormatSettings(), log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def contract(tmp_path_factory) -> tuple[dict[str, Case], Path]:
    folder = tmp_path_factory.mktemp("contract")
    recipe = folder / "tiny.toml"
    recipe.write_text(TINY_RECIPE.format(epochs=1, budgets="size_bytes = 100"))
    (folder / "typo.toml").write_text(TINY_RECIPE.format(epochs=1, budgets="").replace("epochs = 1", "epoch = 1"))
    (folder / "notes.txt").write_text("the user's own file\n")
    (folder / "loose.toml").write_text("size_bytes = 100000000\n")
    (folder / "broken.json").write_text("{ not json")
    model = _relu_model(folder)
    ort_model = _ort_model(model)
    first = {
        "version": Case(["--version"], 0, ("edgepress ",)),
        "help": Case(["--help"], 0, ("check", "run", "bench", "gate")),
        "unknown command": Case(["quantise"], 2, ("invalid choice", "--help")),
        "usage error": Case(["run"], 2, ("run:", "recipe", "edgepress run --help")),
        "check ok": Case(["check", str(recipe)], 0, ("recipe tiny is valid",)),
        "check typo": Case(["check", str(folder / "typo.toml")], 2, ("epoch", "did you mean 'epochs'")),
        "run into a file": Case(["run", str(recipe), "--out", str(folder / "notes.txt")], 2, ("is a file",)),
        "run over budget": Case(["run", str(recipe), "--out", str(folder / "out")], 1,
                                ("budget violated: size_bytes", "gate FAILED")),
        "bench ok": Case(["bench", str(model), "--runs", "5", "--warmup", "1"], 0, ('"latency_ms"',)),
        "bench missing model": Case(["bench", str(folder / "absent.onnx")], 2, ("absent.onnx",)),
        "stages ok": Case(["stages", "ptq"], 0, ("nodes_to_exclude",)),
        "stages typo": Case(["stages", "ptqq"], 2, ("'ptqq'", "did you mean 'ptq'")),
        "metrics ok": Case(["metrics", "--json"], 0, ('"top1"',)),
        "target unknown": Case(["target", "setup", "qemu-mips"], 2, ("unknown target 'qemu-mips'", "qemu-aarch64")),
        "ops ok": Case(["ops", str(ort_model), "--out", str(folder / "ops.config")], 0, ("merged 1 .ort model(s)",)),
    }
    for case in first.values():
        _start(case, folder)
    for case in first.values():
        _finish(case)
    report = folder / "out" / "report.json"
    second = {
        "gate over budget": Case(["gate", str(report)], 1, ("size_bytes",)),
        "gate within budgets": Case(["gate", str(report), "--budgets", str(folder / "loose.toml")], 0, ()),
        "gate unreadable report": Case(["gate", str(folder / "broken.json")], 2, ("broken.json",)),
        "gate missing budgets": Case(["gate", str(report), "--budgets", str(folder / "absent.toml")], 2,
                                     ("absent.toml",)),
        "ops run without ort stage": Case(["ops", str(report.parent), "--out", str(folder / "ops2.config")], 2,
                                          ("has no ORT-format stage",)),
    }
    if report.is_file():  # else "run over budget" fails and says why
        for case in second.values():
            _start(case, folder)
        for case in second.values():
            _finish(case)
    return {**first, **second}, folder


CASES = ["version", "help", "unknown command", "usage error", "check ok", "check typo", "run into a file",
         "run over budget", "bench ok", "bench missing model", "stages ok", "stages typo", "metrics ok",
         "target unknown", "ops ok", "gate over budget", "gate within budgets", "gate unreadable report",
         "gate missing budgets", "ops run without ort stage"]


@pytest.mark.parametrize("name", CASES)
def test_exit_code_and_message(contract, name):
    cases, _ = contract
    case = cases[name]
    proc = case.result
    assert proc is not None, f"{name} did not run (an earlier phase failed)"
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    if case.exit_code == 2:
        assert_one_line_error(proc, *case.fragments)
        return
    assert proc.returncode == case.exit_code, (proc.returncode, proc.stdout, proc.stderr)
    assert "edgepress: error:" not in proc.stderr, proc.stderr
    for fragment in case.fragments:
        assert fragment in proc.stdout + proc.stderr, (fragment, proc.stdout, proc.stderr)


def test_every_command_is_covered():
    from edgepress.cli.main import COMMAND_MODULES

    commands = {"check", "run", "demo", *COMMAND_MODULES}
    covered = {name.split()[0] for name in CASES}
    assert commands - covered == {"demo"}  # demo is `run` on a built-in recipe; tests/test_readme.py runs it


def test_a_refused_run_leaves_the_users_file_alone(contract):
    _, folder = contract
    assert (folder / "notes.txt").read_text() == "the user's own file\n"


def test_json_output_is_the_only_thing_on_stdout(contract):
    cases, _ = contract
    for name in ("bench ok", "metrics ok"):
        json.loads(cases[name].result.stdout)
