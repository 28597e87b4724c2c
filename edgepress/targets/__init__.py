"""Where a model runs, named the same way in recipes and on the command line.

`local` (this machine), `ssh://user@host[:port]` (a device over OpenSSH) and `qemu-aarch64[:CPU]`
(aarch64 ONNX Runtime under qemu-user, for ARM kernels' answers; its timings are emulated, never latency).
Every target does the same thing: put the single-file device runner (runtime/device_runner.py) and the
named files in a fresh working folder on the device, run `python device_runner.py ARGS` there, parse the
one JSON object it prints on stdout, copy back the files it was asked to fetch, and clean up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from edgepress.errors import UserError

import edgepress.runtime as _runtime_package

# Installed, runtime/ is edgepress.runtime wherever it lies; the runner ships inside it.
RUNNER = Path(_runtime_package.__file__).resolve().parent / "device_runner.py"


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
    from edgepress.targets import local, qemu, ssh

    return {"local": local.LocalTarget.from_name, "ssh": ssh.from_name, "qemu-aarch64": qemu.from_name}


def scheme_of(name: str) -> str:
    if name.startswith("ssh://"):
        return "ssh"
    return name.split(":", 1)[0]


def open_target(name: str, *, options: TargetOptions = TargetOptions()) -> Target:
    factories = _factories()
    scheme = scheme_of(name)
    if scheme not in factories:
        raise UserError(f"unknown target {name!r}",
                        fix="use local, ssh://user@host[:port] or qemu-aarch64[:CPU] (e.g. qemu-aarch64:cortex-a53)")
    return factories[scheme](name, options)


def parse_runner_output(stdout: str, stderr: str, returncode: int, *, target: str) -> dict[str, Any]:
    """The runner's one JSON object; its {"error", "fix"} becomes a UserError naming the target."""
    import json

    lines = [line for line in stdout.splitlines() if line.strip().startswith("{")]
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    if isinstance(result, dict) and "error" in result:
        raise UserError(f"on {target}: {result['error']}", fix=result.get("fix", "see the runner's message"))
    if returncode < 0:  # a signal: ONNX Runtime crashed in native code, or the kernel killed it for memory
        raise UserError(f"the device runner on {target} was killed by signal {-returncode}",
                        fix="check the model with onnx.checker.check_model and its memory needs; a crash of "
                            "ONNX Runtime itself on a valid model is worth a report to ONNX Runtime")
    if result is None or returncode != 0:
        last = " ".join((stderr.strip().splitlines() or ["no output"])[-1].split())[:300]
        raise UserError(f"the device runner failed on {target} (exit {returncode}): {last}",
                        fix="check that the device's Python has onnxruntime and numpy (pip install onnxruntime numpy)")
    return result


SCHEMES = ("local", "ssh", "qemu-aarch64")


def check_name(name: str) -> None:
    """A recipe's target name, checked for its scheme before anything runs (ValueError for the schema)."""
    if scheme_of(name) not in SCHEMES:
        raise ValueError(f"unknown target {name!r}: use local, ssh://user@host[:port] or qemu-aarch64[:CPU]")
