"""What every target shares: the options, the Target protocol, placing the device runner, and reading what it
prints (its result, its error, or the timed runs it streamed before it stopped)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

from edgepress.core.errors import UserError

import edgepress.runtime as _runtime_package

# Installed, runtime/ is edgepress.runtime wherever it lies; the runner ships inside it.
RUNNER = Path(_runtime_package.__file__).resolve().parent / "device_runner.py"
SIGKILL = 9  # the same number on every POSIX device, whatever this host's signal module says


@dataclass(frozen=True)
class TargetOptions:
    """Options a target may use; each target ignores those that do not concern it."""

    python: str | None = None  # the device's Python; None: the target's default
    identity_file: Path | None = None  # ssh: a private key, as `ssh -i`
    workdir: str | None = None  # ssh: the parent folder for the working folder; None: the device's temp folder
    connect_timeout_s: float = 10.0
    retries: int = 1  # one more try after a failure to connect or copy (never after the runner itself failed)
    strict_host_key_checking: bool = True


class Target(Protocol):
    name: str  # as the user wrote it, normalised: "local", "ssh://pi@board:2222", "qemu-aarch64:cortex-a53"
    emulated: bool  # timings under emulation are marked as such and never gate latency

    def run(self, *, files: Sequence[Path], args: Sequence[str], fetch: Sequence[str] = (),
            into: Path | None = None, timeout_s: float = 600.0) -> dict[str, Any]:
        """Copy `files` (by base name) and the runner into a fresh folder on the device, run the runner there
        with `args` (which name files by base name), return the JSON object it printed; copy each name in
        `fetch` from that folder into `into`. A runner that exits 2 prints {"error": ..., "fix": ...}: raise
        UserError with it. An unreachable device or a missing onnxruntime: UserError naming it and the fix."""
        ...


def require_files(files: Sequence[Path]) -> None:
    for path in files:
        if not Path(path).is_file():
            raise UserError(f"{path} does not exist", fix="pass the path of an existing file")


def place_runner(work: Path, files: Sequence[Path]) -> None:
    """The device runner and `files`, by base name, in the working folder `work` on this machine."""
    import shutil

    shutil.copy2(RUNNER, work / RUNNER.name)
    for path in files:
        link_or_copy(Path(path), work / Path(path).name)


def link_or_copy(source: Path, destination: Path) -> None:
    """A hard link costs nothing for a large model; another file system needs a copy."""
    import shutil

    try:
        destination.hardlink_to(source.resolve())
    except OSError:
        shutil.copy2(source, destination)


class PartialMeasurement(UserError):
    """The runner stopped (killed, out of time, its connection lost) after some timed runs: `result` holds the
    statistics of those runs, with "complete": false and "incomplete" saying why, so they are not lost."""

    def __init__(self, problem: str, *, fix: str, result: dict[str, Any]) -> None:
        super().__init__(problem, fix=fix)
        self.result = result


def _json_lines(stdout: str) -> list[dict[str, Any]]:
    """Every JSON object the runner printed, one a line; a line cut off by a dying runner is skipped."""
    import json

    found = []
    for line in stdout.splitlines():
        if line.strip().startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                found.append(value)
    return found


def partial_result(stdout: str) -> dict[str, Any] | None:
    """The statistics of the timed epochs a bench runner streamed in its progress lines before it stopped (see
    runtime/device_runner.py), computed by the runner's own summarize(); None when none arrived."""
    header, epochs = None, None
    for line in _json_lines(stdout):
        if line.get("partial") is not True:
            continue
        new = line.get("new_epochs_ms")
        header = line.get("header", header)
        if not isinstance(header, dict) or not isinstance(new, list) or len(new) != len(header.get("models", ())):
            break  # not the stream this runner writes: keep what came before
        epochs = epochs or [[] for _ in new]
        for kept, more in zip(epochs, new):
            kept.extend(more)
        if len(epochs[0]) != line.get("epochs"):
            break
    if header is None or not epochs or not epochs[0]:
        return None
    import numpy as np

    from edgepress.runtime import device_runner

    try:
        return dict(device_runner.summarize(np, header, epochs), complete=False)
    except (KeyError, TypeError, ValueError):  # a runner of another version: its lines are not ours to read
        return None


def runner_stopped(head: str, tail: str = "", *, fix: str, stdout: str) -> UserError:
    """The error for a runner that never printed its result: `head`, the count of timed runs that did arrive
    (if any), `tail`; with any, a PartialMeasurement that keeps them."""
    partial = partial_result(stdout)
    if partial is None:
        return UserError(head + tail, fix=fix)
    runs = partial["runs"]
    line = f"{head} after {runs} timed run{'s' if runs != 1 else ''}{tail}"
    partial["incomplete"] = {"reason": line, "runs_measured": runs,
                             "statistics": f"from the {runs} timed runs measured before the runner stopped, "
                                           "not from every run asked for"}
    return PartialMeasurement(line, fix=fix, result=partial)


def output_so_far(exc: BaseException) -> str:
    """What a runner cut off by a time-out had printed (subprocess keeps it on the exception, as bytes)."""
    out = getattr(exc, "stdout", None)
    return out.decode("utf-8", "replace") if isinstance(out, bytes) else (out or "")


def parse_runner_output(stdout: str, stderr: str, returncode: int, *, target: str) -> dict[str, Any]:
    """The runner's final JSON object; its {"error", "fix"} becomes a UserError naming the target. A runner
    that stopped before its result but after some timed runs: a PartialMeasurement keeping them."""
    finals = [line for line in _json_lines(stdout) if line.get("partial") is not True]
    result = finals[-1] if finals else None
    if isinstance(result, dict) and "error" in result:
        raise UserError(f"on {target}: {result['error']}", fix=result.get("fix", "see the runner's message"))
    if returncode == -SIGKILL:  # the kernel's out-of-memory killer, or someone on the device
        raise runner_stopped(f"the device runner on {target} was killed (signal {SIGKILL})", stdout=stdout,
                             fix="check the device's free memory and what else runs there, then run again")
    if returncode < 0:  # a signal: ONNX Runtime crashed in native code, or the kernel killed it for memory
        raise runner_stopped(f"the device runner on {target} was killed by signal {-returncode}", stdout=stdout,
                             fix="check the model with onnx.checker.check_model and its memory needs; a crash of "
                                 "ONNX Runtime itself on a valid model is worth a report to ONNX Runtime")
    if result is None or returncode != 0:
        last = relayed((stderr.strip().splitlines() or ["no output"])[-1])
        raise runner_stopped(f"the device runner failed on {target} (exit {returncode})", f": {last}",
                             stdout=stdout, fix="check that the device's Python has onnxruntime and numpy "
                                                "(pip install onnxruntime numpy)")
    return result


def relayed(line: str) -> str:
    """A line of a device's output inside an error of ours: on one line, cut short, and without an "edgepress:"
    prefix of its own (--python naming an edgepress, a remote edgepress), which would read twice."""
    line = " ".join(line.split())
    for prefix in ("edgepress: error: ", "edgepress: "):
        line = line.removeprefix(prefix)
    return line[:300]
