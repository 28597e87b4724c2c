"""Where a model runs, named the same way in recipes and on the command line.

`local` (this machine), `ssh://user@host[:port]` (a device over OpenSSH), `qemu-aarch64[:CPU]` (aarch64 ONNX
Runtime under qemu-user, for ARM kernels' answers) and `qemu-x86_64[:CPU]` (this machine's ONNX Runtime as an
x86 CPU without VNNI, for those kernels' answers); emulated timings are never latency.
Every target does the same thing: put the single-file device runner (runtime/device_runner.py) and the
named files in a fresh working folder on the device, run `python device_runner.py ARGS` there, parse the
one JSON object it prints on stdout, copy back the files it was asked to fetch, and clean up.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgepress.core.errors import UserError
from edgepress.targets.base import (RUNNER, PartialMeasurement, Target, TargetOptions, link_or_copy,
                                    parse_runner_output, place_runner, relayed, require_files)

if TYPE_CHECKING:
    from edgepress.runtime.isa import Isa

__all__ = ["FORMS", "RUNNER", "SCHEMES", "PartialMeasurement", "Scheme", "Target", "TargetOptions", "check_name",
           "is_emulated", "known_isa", "link_or_copy", "open_target", "parse_runner_output", "place_runner",
           "relayed", "require_files", "scheme_of"]


@dataclass(frozen=True)
class Scheme:
    """One way of naming a target. Its module (edgepress/targets/<module>.py) has from_name(name, options),
    which parses the rest of the name and raises UserError on a malformed one, and known_isa(name)."""

    name: str  # what a target name starts with
    form: str  # how a name is written, in help texts and errors
    emulated: bool  # its timings measure an emulator: reported as such, never latency, never a latency gate
    about: str  # one line for help texts
    module: str


# The one table of target schemes: the factories, the forms in messages and help, `emulated` and the ISA a
# target's kernels run on all come from here.
SCHEMES: dict[str, Scheme] = {scheme.name: scheme for scheme in (
    Scheme("local", "local", emulated=False, about="this machine", module="local"),
    Scheme("ssh", "ssh://user@host[:port]", emulated=False, about="a device over OpenSSH", module="ssh"),
    Scheme("qemu-aarch64", "qemu-aarch64[:CPU]", emulated=True,
           about="aarch64 ONNX Runtime under qemu-user, for ARM kernels' answers", module="qemu"),
    Scheme("qemu-x86_64", "qemu-x86_64[:CPU]", emulated=True,
           about="this machine's ONNX Runtime as an x86 CPU without VNNI, for those kernels' answers",
           module="qemu_x86"),
)}
FORMS = ", ".join(s.form for s in list(SCHEMES.values())[:-1]) + f" or {list(SCHEMES.values())[-1].form}"


def scheme_of(name: str) -> str:
    if name.startswith("ssh://"):
        return "ssh"
    return name.split(":", 1)[0]


def _module(name: str):
    scheme = SCHEMES.get(scheme_of(name))
    if scheme is None:
        raise UserError(f"unknown target {name!r}", fix=f"use {FORMS} (e.g. qemu-aarch64:cortex-a53)")
    # Imported when used: ssh and qemu need nothing of each other, and a device-side check needs neither.
    return importlib.import_module(f"edgepress.targets.{scheme.module}")


def is_emulated(name: str) -> bool:
    scheme = SCHEMES.get(scheme_of(name))
    return bool(scheme and scheme.emulated)


def known_isa(name: str) -> "Isa | None":
    """The instruction set a target's kernels run on, where it is known without reaching the device: this
    machine's for local, the emulated CPU's under qemu; None for a device over ssh."""
    return _module(name).known_isa(name) if scheme_of(name) in SCHEMES else None


def open_target(name: str, *, options: TargetOptions = TargetOptions()) -> Target:
    return _module(name).from_name(name, options)


def check_name(name: str) -> None:
    """A recipe's target name, checked for its scheme before anything runs (ValueError for the schema)."""
    if scheme_of(name) not in SCHEMES:
        raise ValueError(f"unknown target {name!r}: use {FORMS}")
