"""Where a model runs, named the same way in recipes and on the command line.

`local` (this machine), `ssh://user@host[:port]` (a device over OpenSSH), `qemu-aarch64[:CPU]` (aarch64 ONNX
Runtime under qemu-user, for ARM kernels' answers) and `qemu-x86_64[:CPU]` (this machine's ONNX Runtime as an
x86 CPU without VNNI, for those kernels' answers); emulated timings are never latency.
Every target does the same thing: put the single-file device runner (runtime/device_runner.py) and the
named files in a fresh working folder on the device, run `python device_runner.py ARGS` there, parse the
one JSON object it prints on stdout, copy back the files it was asked to fetch, and clean up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from edgepress.errors import UserError

import edgepress.runtime as _runtime_package

if TYPE_CHECKING:
    from edgepress.runtime.isa import Isa

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


# scheme -> factory(name, options). A factory parses everything after the scheme and raises UserError on a
# malformed name. One explicit list, like the stage registry.
Factory = Callable[[str, TargetOptions], Target]


def _factories() -> dict[str, Factory]:
    from edgepress.targets import local, qemu, qemu_x86, ssh

    return {"local": local.LocalTarget.from_name, "ssh": ssh.from_name, "qemu-aarch64": qemu.from_name,
            "qemu-x86_64": qemu_x86.from_name}


# How target names are written, for help texts and errors.
FORMS = "local, ssh://user@host[:port], qemu-aarch64[:CPU] or qemu-x86_64[:CPU]"


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


def scheme_of(name: str) -> str:
    if name.startswith("ssh://"):
        return "ssh"
    return name.split(":", 1)[0]


def known_isa(name: str) -> "Isa | None":
    """The instruction set a target's kernels run on, where it is known without reaching the device: this
    machine's for local, the emulated CPU's under qemu; None for a device over ssh."""
    from edgepress.runtime.isa import Isa, local_isa

    scheme = scheme_of(name)
    if scheme == "local":
        return local_isa()
    if scheme == "qemu-aarch64":
        from edgepress.targets.qemu import CPUS, DEFAULT_CPU

        cpu = CPUS.get(name.partition(":")[2] or DEFAULT_CPU)
        return Isa(arch="aarch64", dot_product=bool(cpu and cpu.dot_product))
    if scheme == "qemu-x86_64":
        return Isa(arch="x86_64", vnni=False)  # qemu emulates no VNNI (targets/qemu_x86.py)
    return None


def open_target(name: str, *, options: TargetOptions = TargetOptions()) -> Target:
    factories = _factories()
    scheme = scheme_of(name)
    if scheme not in factories:
        raise UserError(f"unknown target {name!r}", fix=f"use {FORMS} (e.g. qemu-aarch64:cortex-a53)")
    return factories[scheme](name, options)


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


SCHEMES = ("local", "ssh", "qemu-aarch64", "qemu-x86_64")


def check_name(name: str) -> None:
    """A recipe's target name, checked for its scheme before anything runs (ValueError for the schema)."""
    if scheme_of(name) not in SCHEMES:
        raise ValueError(f"unknown target {name!r}: use {FORMS}")
