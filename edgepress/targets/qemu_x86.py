"""`qemu-x86_64[:CPU]`: this machine's Python and ONNX Runtime under qemu-user, as an older x86 CPU.

What it is for: an INT8 model's answers from the x86 kernels users without AVX-512 VNNI get. ONNX Runtime
(MLAS) chooses its kernels from CPUID, which qemu answers for the CPU named; qemu's translator (TCG) emulates
up to AVX2, so `Haswell` runs the AVX2 U8S8 kernels whose int16 pair sums saturate (runtime/isa.py) on a VNNI
or AMX machine. Nothing to set up: the guest is this Python. Its timings are emulated: they measure qemu's
translation, so they are marked `emulated` and never gate latency.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from edgepress.core.errors import UserError
from edgepress.targets import SCHEMES
from edgepress.targets.base import RUNNER, TargetOptions, parse_runner_output, place_runner, require_files
from edgepress.targets.qemu import run_emulated

SCHEME = "qemu-x86_64"
# qemu CPU model -> what ONNX Runtime's integer kernels get there. None of them has VNNI: qemu 7's TCG emulates
# no AVX-512 and no AVX-VNNI, and a VNNI machine can test itself as `local`.
CPUS = {
    "Haswell": "AVX2 + FMA, no VNNI: U8S8 pairs add in int16",
    "Skylake-Client": "AVX2 + FMA, no VNNI: U8S8 pairs add in int16",
    "Nehalem": "SSE4.2, no AVX: ONNX Runtime's SSE kernels",
}
DEFAULT_CPU = "Haswell"

if TYPE_CHECKING:
    from edgepress.runtime.isa import Isa


def find_qemu() -> str:
    found = shutil.which(SCHEME)
    if found is None:
        raise UserError("qemu-x86_64 is not installed (the qemu-x86_64 target runs ONNX Runtime under it)",
                        fix="install the Debian package qemu-user: sudo apt-get install qemu-user")
    return found


def from_name(name: str, options: TargetOptions) -> "QemuX86Target":
    from edgepress.core.schema import closest

    scheme, sep, cpu = name.partition(":")
    if scheme != SCHEME or (sep and not cpu.strip()):
        raise UserError(f"target {name!r} is not qemu-x86_64[:CPU]",
                        fix=f"write qemu-x86_64 (CPU {DEFAULT_CPU}) or e.g. qemu-x86_64:Nehalem")
    cpu = cpu.strip() or DEFAULT_CPU
    if cpu not in CPUS:
        guess = closest(cpu, list(CPUS))
        raise UserError(f"unknown CPU {cpu!r} for the qemu-x86_64 target",
                        fix=(f"did you mean qemu-x86_64:{guess}? " if guess else "") + f"CPUs: {', '.join(CPUS)}")
    return QemuX86Target(name=f"{SCHEME}:{cpu}", cpu=cpu, qemu=find_qemu(), python=options.python or sys.executable)


@dataclass(frozen=True)
class QemuX86Target:
    name: str  # qemu-x86_64:CPU
    cpu: str
    qemu: str
    python: str  # an x86_64 Python binary (not a shell shim: qemu runs ELF files)
    emulated: bool = SCHEMES[SCHEME].emulated

    def run(self, *, files: Sequence[Path], args: Sequence[str], fetch: Sequence[str] = (),
            into: Path | None = None, timeout_s: float = 600.0) -> dict[str, Any]:
        require_files(files)
        with tempfile.TemporaryDirectory(prefix="edgepress-qemu-x86-") as folder:
            work = Path(folder)
            place_runner(work, files)
            done = run_emulated([self.qemu, "-cpu", self.cpu, self.python, RUNNER.name, *args], target=self.name,
                                cwd=work, timeout_s=timeout_s)
            # qemu warns on stderr about CPU features its translator lacks (TSX, x2apic): not the runner's words.
            stderr = "\n".join(line for line in done.stderr.splitlines() if "TCG doesn't support" not in line)
            result = parse_runner_output(done.stdout, stderr, done.returncode, target=self.name)
            for name in fetch:
                shutil.copy2(work / name, Path(into or ".") / name)
        if isinstance(result.get("device"), dict):
            result["device"]["emulated_cpu"] = self.cpu
        return result


def known_isa(name: str) -> Isa:
    from edgepress.runtime.isa import Isa

    return Isa(arch="x86_64", vnni=False)  # qemu emulates no VNNI
