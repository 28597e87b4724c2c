"""`qemu-aarch64[:CPU]`: the aarch64 build of ONNX Runtime run under qemu-user on this machine.

What it is for: an INT8 model's answers from ARM's kernels (MLAS picks NEON, dot-product or i8mm kernels from the
CPU's features), checked for accuracy and agreement without a board. Its timings are emulated: they measure
qemu's translation of those kernels on this machine, so they are marked `emulated` and never gate latency.

The aarch64 side is prepared once by `edgepress target setup qemu-aarch64` (edgepress.targets.qemu_setup) under
the cache folder ($EDGEPRESS_CACHE, default ~/.cache/edgepress): a Debian arm64 sysroot holding CPython and the
few libraries it and onnxruntime load, and a site-packages folder of the onnxruntime and numpy aarch64 wheels.
Each run is `qemu-aarch64 -cpu CPU -L ROOT PYTHON device_runner.py ARGS` in a fresh folder, as the local target.

ROOT is a per-run folder: symbolic links to the sysroot's top folders plus a /proc/cpuinfo describing the
emulated CPU. qemu-user looks up every absolute path the guest opens under -L first, so the guest reads that
file, not the host's x86 one: ONNX Runtime's cpuinfo library crashes (SIGSEGV at import) on an x86
/proc/cpuinfo, and reads the CPU's part number (MIDR) from it to choose kernels tuned for a core. The CPU's
features themselves (dot product, i8mm, SVE) reach the guest from qemu through the auxiliary vector.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from edgepress.core import children
from edgepress.core.errors import UserError
from edgepress.targets import SCHEMES
from edgepress.targets.base import (RUNNER, TargetOptions, output_so_far, parse_runner_output, place_runner,
                                    require_files, runner_stopped)

SCHEME = "qemu-aarch64"
DEFAULT_CPU = "cortex-a53"  # no dot product: the most common small ARM core (Raspberry Pi 3, many boards)
SETUP_COMMAND = "edgepress target setup qemu-aarch64"
QEMU_BINARIES = ("qemu-aarch64", "qemu-aarch64-static")  # Debian's qemu-user, qemu-user-static
SETUP_FOLDER = "qemu-aarch64"  # under the cache folder
MANIFEST = "setup.json"

_ARMV8 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
_ARMV82_DOT = _ARMV8 + " atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp"
_ARMV9 = _ARMV82_DOT + " jscvt fcma sha3 sm3 sm4 sha512 asimdfhm dit uscat ilrcpc flagm sb paca pacg dcpodp" \
                       " sve sve2 i8mm bf16 bti"

if TYPE_CHECKING:
    from edgepress.runtime.isa import Isa


@dataclass(frozen=True)
class Cpu:
    """What Linux shows of a core in /proc/cpuinfo (MIDR fields as qemu sets them)."""

    implementer: int
    variant: int
    part: int
    revision: int
    features: str
    dot_product: bool  # SDOT/UDOT: ONNX Runtime's INT8 GEMM uses other kernels with it than without


# CPUs this target offers, where the installed qemu has them too (`qemu-aarch64 -cpu help`).
CPUS: dict[str, Cpu] = {
    "cortex-a35": Cpu(0x41, 0x0, 0xd04, 0, _ARMV8, False),
    "cortex-a53": Cpu(0x41, 0x0, 0xd03, 4, _ARMV8, False),
    "cortex-a55": Cpu(0x41, 0x1, 0xd05, 0, _ARMV82_DOT, True),
    "cortex-a57": Cpu(0x41, 0x1, 0xd07, 0, _ARMV8, False),
    "cortex-a72": Cpu(0x41, 0x0, 0xd08, 3, _ARMV8, False),
    "cortex-a76": Cpu(0x41, 0x4, 0xd0b, 1, _ARMV82_DOT, True),
    "neoverse-n1": Cpu(0x41, 0x4, 0xd0c, 1, _ARMV82_DOT, True),
    "cortex-a710": Cpu(0x41, 0x2, 0xd47, 1, _ARMV9, True),
    "neoverse-n2": Cpu(0x41, 0x0, 0xd49, 3, _ARMV9, True),
    "neoverse-v1": Cpu(0x41, 0x1, 0xd40, 2, _ARMV9, True),
    "a64fx": Cpu(0x46, 0x1, 0x001, 0, _ARMV8 + " atomics fphp asimdhp asimdrdm sve", False),
    "max": Cpu(0x00, 0x0, 0x051, 0, _ARMV9, True),  # every feature this qemu emulates; part 'Q' for QEMU
}


def cache_root() -> Path:
    return Path(os.environ.get("EDGEPRESS_CACHE") or Path.home() / ".cache" / "edgepress").expanduser()


def setup_folder() -> Path:
    return cache_root() / SETUP_FOLDER


def find_qemu() -> str:
    for binary in QEMU_BINARIES:
        found = shutil.which(binary)
        if found:
            return found
    raise UserError("qemu-aarch64 is not installed (the qemu-aarch64 target runs aarch64 ONNX Runtime under it)",
                    fix="install the Debian package qemu-user: sudo apt-get install qemu-user")


@functools.lru_cache(maxsize=None)
def qemu_cpus(qemu: str) -> tuple[str, ...]:
    """The CPUs of CPUS that this qemu emulates; all of CPUS if its list cannot be read."""
    try:
        listing = children.run([qemu, "-cpu", "help"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        listing = ""
    named = {line.split()[0] for line in listing.splitlines()[1:] if line.strip()}
    offered = tuple(name for name in CPUS if name in named)
    return offered or tuple(CPUS)


def from_name(name: str, options: TargetOptions) -> "QemuTarget":
    from edgepress.core.schema import closest

    scheme, sep, cpu = name.partition(":")
    if scheme != SCHEME or (sep and not cpu.strip()):
        raise UserError(f"target {name!r} is not qemu-aarch64[:CPU]",
                        fix=f"write qemu-aarch64 (CPU {DEFAULT_CPU}) or e.g. qemu-aarch64:cortex-a76")
    cpu = cpu.strip().lower() or DEFAULT_CPU
    qemu = find_qemu()
    valid = qemu_cpus(qemu)
    if cpu not in valid:
        guess = closest(cpu, valid)
        listed = ", ".join(valid)
        raise UserError(f"unknown CPU {cpu!r} for the qemu-aarch64 target",
                        fix=(f"did you mean qemu-aarch64:{guess}? " if guess else "") + f"CPUs: {listed}")
    return QemuTarget(name=f"{SCHEME}:{cpu}", cpu=cpu, qemu=qemu)


@dataclass(frozen=True)
class Prepared:
    """What `edgepress target setup qemu-aarch64` left under the cache folder."""

    folder: Path
    manifest: dict[str, Any]

    @property
    def sysroot(self) -> Path:
        return self.folder / "sysroot"

    @property
    def site_packages(self) -> Path:
        return self.folder / "site-packages"

    @property
    def python(self) -> Path:
        return self.sysroot / self.manifest["python_path"]


def prepared(folder: Path | None = None) -> Prepared:
    """The prepared aarch64 Python and onnxruntime; UserError naming the setup command when absent."""
    folder = setup_folder() if folder is None else folder
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        found = Prepared(folder, manifest)
        ready = found.python.is_file() and found.site_packages.is_dir()
    except (OSError, ValueError, KeyError, TypeError):
        ready = False
    if not ready:
        raise UserError(f"the qemu-aarch64 target is not set up (no aarch64 Python and onnxruntime in {folder})",
                        fix=f"run `{SETUP_COMMAND}` once (about 60 MB of downloads; EDGEPRESS_CACHE picks the folder)")
    return found


def guest_env(site_packages: Path, *, write_bytecode: bool = False) -> dict[str, str]:
    """A clean environment: qemu hands it to the guest, and nothing of this machine's Python may leak in."""
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/"),
           "PYTHONPATH": str(site_packages), "PYTHONNOUSERSITE": "1", "PYTHONUNBUFFERED": "1"}
    if not write_bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # the setup compiled what the runner imports; runs leave the cache be
    if os.environ.get("TMPDIR"):
        env["TMPDIR"] = os.environ["TMPDIR"]
    return env


def make_guest_root(root: Path, sysroot: Path, cpu: str) -> Path:
    """`root`: the sysroot's top folders as links, and a /proc/cpuinfo of `cpu` for every online host CPU."""
    root.mkdir()
    for entry in sysroot.iterdir():
        if entry.name != "proc":
            (root / entry.name).symlink_to(entry.resolve())
    (root / "proc").mkdir()
    (root / "proc" / "cpuinfo").write_text(cpuinfo_text(cpu, _online_cpus()))
    return root


def cpuinfo_text(cpu: str, processors: Sequence[int]) -> str:
    spec = CPUS[cpu]
    block = ("processor\t: {index}\nBogoMIPS\t: 50.00\nFeatures\t: {features}\n"
             "CPU implementer\t: {implementer:#04x}\nCPU architecture: 8\nCPU variant\t: {variant:#x}\n"
             "CPU part\t: {part:#05x}\nCPU revision\t: {revision}\n\n")
    return "".join(block.format(index=index, features=spec.features, implementer=spec.implementer,
                                variant=spec.variant, part=spec.part, revision=spec.revision) for index in processors)


def _online_cpus() -> list[int]:
    """Linux's list of online CPUs (as the guest sees it in /sys, which is not redirected), e.g. 0-3,6."""
    try:
        text = Path("/sys/devices/system/cpu/online").read_text().strip()
        found: list[int] = []
        for part in text.split(","):
            low, _, high = part.partition("-")
            found.extend(range(int(low), int(high or low) + 1))
        if found:
            return found
    except (OSError, ValueError):
        pass
    return list(range(os.cpu_count() or 1))


def run_emulated(command: list[str], *, target: str, cwd: Path, timeout_s: float,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`command` (qemu first) in `cwd`; a time-out or a qemu that does not start is a one-line UserError."""
    try:
        return children.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as exc:
        raise runner_stopped(f"the runner on {target} took longer than {timeout_s:.0f} s",
                             " (emulation is 10-50x slower than the host)", stdout=output_so_far(exc),
                             fix="lower --runs or --duration, or raise the time-out") from None
    except OSError as exc:
        raise UserError(f"cannot start {command[0]}: {exc.strerror or exc}",
                        fix="reinstall the Debian package qemu-user") from None


@dataclass(frozen=True)
class QemuTarget:
    name: str  # qemu-aarch64:CPU
    cpu: str
    qemu: str  # path of the qemu-aarch64 binary
    emulated: bool = SCHEMES[SCHEME].emulated

    def command(self, setup: Prepared, root: Path, *args: str) -> list[str]:
        return [self.qemu, "-cpu", self.cpu, "-L", str(root), str(setup.python), *args]

    def run(self, *, files: Sequence[Path], args: Sequence[str], fetch: Sequence[str] = (),
            into: Path | None = None, timeout_s: float = 600.0) -> dict[str, Any]:
        setup = prepared()
        require_files(files)
        with tempfile.TemporaryDirectory(prefix="edgepress-qemu-") as folder:
            root = make_guest_root(Path(folder) / "root", setup.sysroot, self.cpu)
            work = Path(folder) / "work"
            work.mkdir()
            place_runner(work, files)
            done = run_emulated(self.command(setup, root, RUNNER.name, *args), target=self.name, cwd=work,
                                timeout_s=timeout_s, env=guest_env(setup.site_packages))
            result = parse_runner_output(done.stdout, done.stderr, done.returncode, target=self.name)
            for name in fetch:
                shutil.copy2(work / name, Path(into or ".") / name)
        if isinstance(result.get("device"), dict):
            result["device"]["emulated_cpu"] = self.cpu
        return result


def known_isa(name: str) -> Isa:
    from edgepress.runtime.isa import Isa

    cpu = CPUS.get(name.partition(":")[2] or DEFAULT_CPU)
    return Isa(arch="aarch64", dot_product=bool(cpu and cpu.dot_product))
