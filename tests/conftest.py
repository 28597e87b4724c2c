from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# The README runs the tests in two processes (pytest-xdist's `-n 2`) on two cores: a second torch thread in each
# would spin against the other process and slow both many times over. One thread per worker and the processes it
# starts, set before anything imports torch; a value the caller set stays.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from edgepress.core.datapath import data_root  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    return data_root()


requires_shared_data = pytest.mark.skipif(
    not (data_root() / "weights").is_dir(),
    reason=f"shared data folder {data_root()} is absent (set EDGEPRESS_DATA to the folder of ../shared/data)",
)

@pytest.fixture(scope="module")
def one_torch_thread():
    """Small CPU batches run fastest on one thread; several spin-wait badly on a shared machine. Restored
    afterwards for other test files."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY_RECIPE = """
name = "tiny"
reference_stage = "train"

[model]
name = "small_cnn_8"
kwargs = {{ width = 8 }}

[data]
training = {{ dataset = "digits:train", limit = 400 }}
calibration = {{ dataset = "digits:train", limit = 64 }}
evaluation = [{{ dataset = "digits:test" }}]
preprocess = {{ mean = [0.5], std = [0.5] }}

[[stages]]
kind = "train"
epochs = {epochs}
batch_size = 32

[[stages]]
kind = "export"

[[stages]]
kind = "ptq"

[bench]
warmup_runs = 5
runs = 200

[budgets]
{budgets}
"""


def write_recipe(folder: Path, *, text: str | None = None, epochs: int = 3, budgets: str = "", name: str = "recipe.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text) if text is not None else TINY_RECIPE.format(epochs=epochs, budgets=budgets))
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real command line, in a fresh interpreter, as a user runs it."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("EDGEPRESS_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "edgepress", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=600)


def run_main(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The command line's `main` in this process: the same exit code, stdout and stderr as `run_cli` gives, without
    a fresh interpreter's 2-5 s of imports and first-use warm-up. For tests of what a command does; `run_cli` stays
    for what needs a process of its own (signals, process-wide session settings, the installed entry point)."""
    import contextlib
    import io

    from edgepress.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    saved = {name: os.environ.get(name) for name in [*(env or {}), "EDGEPRESS_DEBUG"]}
    os.environ.update(env or {})
    os.environ.pop("EDGEPRESS_DEBUG", None)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exit_:  # argparse's usage errors and --help, as the process would exit
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return subprocess.CompletedProcess(["edgepress", *args], code, out.getvalue(), err.getvalue())


# One thread for torch (OMP_NUM_THREADS in a child): runs that must compute the same floats as each other.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def run_main_on_one_thread(*args: str) -> subprocess.CompletedProcess:
    """`run_main` on one torch thread, as a child started with ONE_THREAD computes: the same floats, bit for bit
    (a resumed run against an uninterrupted one)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_main(*args, env=ONE_THREAD)
    finally:
        torch.set_num_threads(before)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edgepress: error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert "fix:" in errors[0], errors[0]
    return errors[0]


def assert_user_error(call, *fragments: str) -> str:
    """An API call on bad input, as assert_one_line_error checks the command line: `edgepress.UserError` (never
    another exception), whose one line names the problem, each fragment and the fix. Returns that line."""
    from edgepress.core.errors import UserError

    with pytest.raises(UserError) as caught:
        call()
    line = caught.value.one_line()
    for fragment in fragments:
        assert fragment in line, line
    assert caught.value.fix.strip(), line
    return line


# TINY_RECIPE ending in ort_format, on a local target that evaluates the models too.
ORT_TINY_RECIPE = TINY_RECIPE.format(epochs=1, budgets="operator_count_max = 40\nsize_bytes = 100000") + """
[[stages]]
kind = "ort_format"

[[targets]]
name = "local"
threads = 1
evaluate = true
evaluate_samples = 120
"""


@pytest.fixture(scope="session")
def ort_tiny_run(tmp_path_factory):
    """ORT_TINY_RECIPE run once through the API for the tests of the stage and of its report: (the folder holding
    recipe.toml and out/, the typed report). A test that changes the run works on a copy of the folder."""
    import edgepress

    folder = tmp_path_factory.mktemp("ort-tiny")
    report = edgepress.run(write_recipe(folder, text=ORT_TINY_RECIPE), out=folder / "out")
    return folder, report


def tiny_recipe_with(stages_toml: str) -> str:
    """TINY_RECIPE with `stages_toml` ([[stages]] tables) inserted after training, before export."""
    return TINY_RECIPE.replace('[[stages]]\nkind = "export"', stages_toml.strip() + '\n\n[[stages]]\nkind = "export"')


def run_and_read_stages(folder: Path, *, text: str) -> dict:
    """Run a recipe through the Python API, require its gate to pass, and return {stage name: metrics} as
    report.json holds them."""
    import edgepress

    report = edgepress.run(write_recipe(folder, text=text), out=folder / "out")
    assert report.gate.passed, report.gate.violations
    return {s["name"]: s["metrics"] for s in report.to_json_dict()["stages"]}


def one_node_model(path: Path, node, inputs, outputs, initializer=()) -> Path:
    """A valid one-node ONNX file (opset 17, IR 8): what a test then checks is feeding, running or quantizing it."""
    import onnx
    from onnx import helper

    graph = helper.make_graph([node], path.stem, inputs, outputs, initializer=list(initializer))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def main_one_line_error(capsys, argv: list[str], *fragments: str) -> str:
    """`edgepress.cli.main.main(argv)` in this process, as assert_one_line_error checks a subprocess: exit 2 and one
    line naming the problem and the fix, no traceback, no internal error."""
    from edgepress.cli.main import main

    capsys.readouterr()  # what an earlier call printed is not this one's
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and "internal error" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("edgepress: error:")]
    assert len(errors) == 1, err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert "; fix:" in errors[0], errors[0]
    return errors[0]
