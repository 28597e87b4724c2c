"""`edgepress target setup qemu-aarch64`: an aarch64 CPython with onnxruntime and numpy, for qemu-user.

Everything lands under the cache folder ($EDGEPRESS_CACHE, default ~/.cache/edgepress), built without root and
without touching the system:

- Debian bookworm's arm64 CPython 3.11 and the libraries it and onnxruntime load, fetched with this machine's
  apt-get under a private configuration (APT_CONFIG: its own sources list naming only arm64, package index,
  cache and an empty dpkg status, all in the build folder), so no `dpkg --add-architecture`, no change to
  /etc/apt or /var/lib/apt, no maintainer scripts; the packages are checked against Debian's archive keyring
  and unpacked with `dpkg-deb -x` into a sysroot for `qemu-aarch64 -L`. Network settings (proxies) are taken
  from this machine's apt configuration; its hooks (APT::Update::Post-Invoke and the like) are not run.
- the onnxruntime (this host's version when it has an aarch64 wheel) and numpy manylinux aarch64 wheels for
  CPython 3.11, fetched with `pip download --platform ... --no-deps` and unzipped into a site-packages folder.

It is built in a hidden folder beside its final place and renamed into place only when it works: an interrupted
setup leaves nothing half-made (its leftovers are removed by the next setup), a second setup returns at once.
The last step runs `import onnxruntime` under qemu, which also compiles, once, the bytecode the runner needs.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

from edgepress.core import children
from edgepress.core.errors import UserError
from edgepress.core.progress import say
from edgepress.targets import qemu

DEBIAN_SUITE = "bookworm"
PYTHON_VERSION = "3.11"  # bookworm's CPython; the wheels are chosen for it
PYTHON_PATH = f"usr/bin/python{PYTHON_VERSION}"  # inside the sysroot
GLIBC_MINOR = 36  # bookworm's glibc 2.36: manylinux_2_17 ... manylinux_2_36 wheels run on it
# CPython and what it and the wheels load (onnxruntime: libstdc++, libgcc_s; numpy bundles its OpenBLAS).
# Left out on purpose: libssl3 (hashlib falls back to its own code), readline, ncurses, sqlite, tzdata.
PACKAGES = (f"python{PYTHON_VERSION}-minimal", f"libpython{PYTHON_VERSION}-minimal",
            f"libpython{PYTHON_VERSION}-stdlib", "libc6", "libgcc-s1", "libstdc++6", "zlib1g", "libexpat1", "libffi8", "libbz2-1.0", "liblzma5")
PRUNED = ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/lintian", "usr/share/gdb",
          "usr/lib/aarch64-linux-gnu/gconv")  # glibc's iconv modules (20 MB); Python's codecs do not use them
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PARTIAL_PREFIX = f".{qemu.SETUP_FOLDER}.partial-"
OLD_PREFIX = f".{qemu.SETUP_FOLDER}.old-"
# The host's apt settings that a download needs (proxies, timeouts, a snapshot mirror's date checks).
_HOST_ACQUIRE = re.compile(r"^Acquire::(https?|ftp|Retries|Check-Valid-Until|Check-Date|ForceIPv4|ForceIPv6|"
                           r"Max-ValidTime|Queue-Mode)\b")

VERIFY = r"""
import io, json, platform
import argparse, random, resource, time, zipfile  # what the device runner imports: compiled to bytecode now, once
import numpy, onnxruntime
buffer = io.BytesIO()
numpy.savez(buffer, x=numpy.arange(3.0))
buffer.seek(0)
assert float(numpy.load(buffer)["x"].sum()) == 3.0
print(json.dumps({"machine": platform.machine(), "python": platform.python_version(),
                  "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__,
                  "providers": onnxruntime.get_available_providers()}))
"""


def setup(*, force: bool = False, onnxruntime_version: str | None = None, mirror: str | None = None,
          log: Callable[[str], None] = say) -> dict[str, Any]:
    """Prepare (or find prepared) the qemu-aarch64 target; its manifest, with "already": True if it was ready."""
    qemu_binary = qemu.find_qemu()
    cache = qemu.cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / qemu.SETUP_FOLDER
    with _locked(cache / f".{qemu.SETUP_FOLDER}.lock"):
        _remove_leftovers(cache)
        if not force:
            with contextlib.suppress(UserError):
                return {**qemu.prepared(final).manifest, "already": True}
        _check_tools()
        started = time.monotonic()
        partial = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{os.getpid()}-", dir=cache))
        try:
            manifest = _build(partial, qemu_binary=qemu_binary, mirror=mirror or _host_mirror(),
                              onnxruntime_version=onnxruntime_version, log=log)
            manifest["setup_seconds"] = round(time.monotonic() - started, 1)
            (partial / qemu.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            partial.chmod(0o755)  # mkdtemp made it private
            _move_into_place(partial, final)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return {**manifest, "already": False}


def _build(folder: Path, *, qemu_binary: str, mirror: str, onnxruntime_version: str | None,
           log: Callable[[str], None]) -> dict[str, Any]:
    downloads = folder / "downloads"  # apt's state, the .deb files and the wheels: removed before the rename
    sysroot, site = folder / "sysroot", folder / "site-packages"
    for path in (downloads / "debs", downloads / "wheels", sysroot, site):
        path.mkdir(parents=True)
    steps = 5

    log(f"qemu-aarch64 setup [1/{steps}]: onnxruntime and numpy aarch64 wheels for CPython {PYTHON_VERSION}")
    clock = time.monotonic()
    host_ort, host_numpy = _host_versions()
    wheels = [_pip_download("onnxruntime", onnxruntime_version or host_ort, downloads / "wheels", log=log,
                            required=onnxruntime_version is not None),
              _pip_download("numpy", host_numpy, downloads / "wheels", log=log, required=False)]
    fetched_wheels = sum(wheel.stat().st_size for wheel in wheels)
    log(f"  {', '.join(w.name for w in wheels)}: {_mb(fetched_wheels)} in {time.monotonic() - clock:.1f} s")

    log(f"qemu-aarch64 setup [2/{steps}]: Debian {DEBIAN_SUITE} arm64 package index from {mirror} "
        "(private apt state, no root)")
    clock = time.monotonic()
    apt_config = _write_apt_config(downloads / "apt", mirror)
    fetched = _apt(apt_config, "update")
    log(f"  {_mb(fetched)} in {time.monotonic() - clock:.1f} s")

    log(f"qemu-aarch64 setup [3/{steps}]: {len(PACKAGES)} arm64 packages (CPython {PYTHON_VERSION}, glibc, libstdc++)")
    clock = time.monotonic()
    fetched_debs = _apt(apt_config, "download", *PACKAGES, cwd=downloads / "debs")
    packages = {}
    for deb in sorted((downloads / "debs").glob("*.deb")):
        name, version, _ = deb.name.split("_")
        packages[name] = version.replace("%3a", ":")
        _run(["dpkg-deb", "-x", str(deb), str(sysroot)], what=f"dpkg-deb -x {deb.name}")
    for relative in PRUNED:
        shutil.rmtree(sysroot / relative, ignore_errors=True)
    # An empty loader cache: without it the aarch64 loader would read the host's x86 /etc/ld.so.cache.
    (sysroot / "etc" / "ld.so.cache").write_bytes(b"")
    log(f"  {_mb(fetched_debs)} in {time.monotonic() - clock:.1f} s, unpacked: {_mb(_disk_bytes(sysroot))}")

    log(f"qemu-aarch64 setup [4/{steps}]: unpacking the wheels")
    for wheel in wheels:
        _unpack_wheel(wheel, site)

    log(f"qemu-aarch64 setup [5/{steps}]: checking: import onnxruntime under qemu-aarch64 -cpu {qemu.DEFAULT_CPU}")
    clock = time.monotonic()
    found = _verify(qemu_binary, downloads / "root", sysroot, site)
    wanted = _wheel_version(wheels[0])
    if found.get("machine") != "aarch64" or found.get("onnxruntime") != wanted:
        raise UserError(f"the prepared onnxruntime reports {found} under qemu, not aarch64 and {wanted}",
                        fix="rerun with EDGEPRESS_DEBUG=1 and report it")
    log(f"  onnxruntime {found['onnxruntime']} on {found['machine']}, Python {found['python']}, "
        f"numpy {found['numpy']} ({time.monotonic() - clock:.1f} s)")
    shutil.rmtree(downloads)
    return {
        "debian": DEBIAN_SUITE, "mirror": mirror, "python": found["python"], "python_path": PYTHON_PATH,
        "onnxruntime": found["onnxruntime"], "numpy": found["numpy"], "host_onnxruntime": host_ort,
        "packages": packages, "wheels": [wheel.name for wheel in wheels], "qemu": _qemu_version(qemu_binary),
        "downloaded_bytes": fetched + fetched_debs + fetched_wheels, "disk_bytes": _disk_bytes(folder),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------- apt, privately

def _check_tools() -> None:
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise UserError(f"the qemu-aarch64 setup needs {tool}, which is not installed",
                            fix="run the setup on a Debian or Ubuntu machine (apt and dpkg)")
    if not KEYRING.is_file():
        raise UserError(f"Debian's archive keyring {KEYRING} is missing (it checks the arm64 packages)",
                        fix="sudo apt-get install debian-archive-keyring")


def _host_mirror() -> str:
    """The Debian mirror this machine's apt uses (a local mirror or cache keeps working), else deb.debian.org."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list")),
             *sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]
    for path in files:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                line = line.split("#", 1)[0]
                for word in line.replace("URIs:", " ").split():
                    if re.fullmatch(r"https?://\S+/debian/?", word):
                        return word.rstrip("/")
    return DEFAULT_MIRROR


def _write_apt_config(folder: Path, mirror: str) -> Path:
    """An apt configuration whose every file and folder lies in `folder`: arm64 only, an empty status."""
    for sub in ("parts", "sources.d", "preferences.d", "trusted.d", "state/lists/partial", "cache/archives/partial"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "state" / "status").write_text("")
    (folder / "sources.list").write_text(
        f"deb [arch=arm64 signed-by={KEYRING}] {mirror} {DEBIAN_SUITE} main\n")
    user = pwd.getpwuid(os.getuid()).pw_name  # download as ourselves: apt's _apt sandbox cannot read this folder
    settings = {
        "Dir::Etc::Main": folder / "none.conf", "Dir::Etc::Parts": folder / "parts",
        "Dir::Etc::SourceList": folder / "sources.list", "Dir::Etc::SourceParts": folder / "sources.d",
        "Dir::Etc::Preferences": folder / "preferences", "Dir::Etc::PreferencesParts": folder / "preferences.d",
        "Dir::Etc::Trusted": folder / "trusted.gpg", "Dir::Etc::TrustedParts": folder / "trusted.d",
        "Dir::State": folder / "state", "Dir::State::status": folder / "state" / "status",
        "Dir::Cache": folder / "cache", "APT::Architecture": "arm64", "Acquire::Languages": "none",
        "APT::Sandbox::User": user,
    }
    lines = [f'{key} "{value}";' for key, value in settings.items()]
    lines.append('APT::Architectures { "arm64"; };')
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        host = children.run(["apt-config", "dump"], capture_output=True, text=True, timeout=30).stdout
        lines += [line for line in host.splitlines() if _HOST_ACQUIRE.match(line)]
    config = folder / "apt.conf"
    config.write_text("\n".join(lines) + "\n")
    config.chmod(0o600)  # it may hold a proxy's password from the host's configuration
    return config


def _apt(config: Path, *args: str, cwd: Path | None = None) -> int:
    """Run apt-get with the private configuration; the bytes it says it fetched."""
    env = {**os.environ, "APT_CONFIG": str(config), "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
    done = _run(["apt-get", "-q", *args], what=f"apt-get {args[0]}", cwd=cwd, env=env,
                fix="check the network and the mirror (--mirror URL)")
    match = re.search(r"Fetched ([0-9.,]+) ?([kMG]?)B", done.stdout)
    if not match:
        return 0
    return int(float(match[1].replace(",", "")) * {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}[match[2]])


def _run(command: list[str], *, what: str, fix: str = "rerun with EDGEPRESS_DEBUG=1 and report it",
         cwd: Path | None = None, env: dict[str, str] | None = None,
         timeout: float = 900.0) -> subprocess.CompletedProcess:
    try:
        done = children.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"{what} took longer than {timeout:.0f} s", fix=fix) from None
    except OSError as exc:
        raise UserError(f"{what} could not start: {exc.strerror or exc}", fix=fix) from None
    # apt-get update reports an unreachable mirror with "W:"/"E:" lines and, for some failures, exit 0.
    errors = [line for line in done.stderr.splitlines() if line.startswith(("E:", "ERROR:"))]
    failed_fetch = [line for line in done.stderr.splitlines() if line.startswith("W:") and "Failed to fetch" in line]
    if done.returncode != 0 or errors or failed_fetch:
        lines = errors or failed_fetch or done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or ["?"]
        reason = " ".join(lines[0].split())[:300]
        raise UserError(f"{what} failed (exit {done.returncode}): {reason}", fix=fix)
    return done


# ---------------------------------------------------------------- wheels

def _host_versions() -> tuple[str, str | None]:
    import onnxruntime

    try:
        import numpy
        numpy_version: str | None = numpy.__version__
    except ImportError:
        numpy_version = None
    return onnxruntime.__version__, numpy_version


def _pip_download(project: str, version: str | None, dest: Path, *, log: Callable[[str], None],
                  required: bool) -> Path:
    """The aarch64 CPython 3.11 wheel of `project`: `version` (this host's) if there is one, else the newest."""
    platforms = [f"manylinux_2_{minor}_aarch64" for minor in range(GLIBC_MINOR, 16, -1)] + ["manylinux2014_aarch64"]
    abi = "cp" + PYTHON_VERSION.replace(".", "")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
               "--disable-pip-version-check", "--python-version", PYTHON_VERSION, "--implementation", "cp",
               "--abi", abi, "--dest", str(dest)]
    for platform_tag in platforms:
        command += ["--platform", platform_tag]
    fix = (f"pass --onnxruntime a release with an aarch64 wheel for CPython {PYTHON_VERSION} (pip lists them), or "
           "leave it out" if required else "check the network and pip's index (pip download works from this Python)")
    before = set(dest.glob("*.whl"))
    # A host build without an aarch64 wheel (a dev or source build) falls back to the newest release that has one.
    if version is None:
        tries = [project]
    else:
        tries = [f"{project}=={version}"] + ([] if required else [project])
    for attempt, requirement in enumerate(tries):
        try:
            _run(command + [requirement], what=f"pip download {requirement} (aarch64, CPython {PYTHON_VERSION})",
                 fix=fix)
            break
        except UserError:
            if attempt == len(tries) - 1:
                raise
            log(f"  {project} {version} has no aarch64 wheel for CPython {PYTHON_VERSION}; taking the newest that has")
    new = sorted(set(dest.glob("*.whl")) - before)
    if len(new) != 1:
        raise UserError(f"pip download {project} left {len(new)} new wheels in {dest}", fix=fix)
    return new[0]


def _wheel_version(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def _unpack_wheel(wheel: Path, site: Path) -> None:
    """A wheel's files as an installer would place them in site-packages (no scripts, nothing outside it)."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)  # zipfile drops absolute paths and '..' parts
    for data in site.glob("*.data"):
        for kind in ("purelib", "platlib"):
            if (data / kind).is_dir():
                for item in (data / kind).iterdir():
                    shutil.move(str(item), str(site / item.name))
        shutil.rmtree(data)


# ---------------------------------------------------------------- check, place, clean

def _verify(qemu_binary: str, root: Path, sysroot: Path, site: Path) -> dict[str, Any]:
    target = qemu.QemuTarget(name=f"{qemu.SCHEME}:{qemu.DEFAULT_CPU}", cpu=qemu.DEFAULT_CPU, qemu=qemu_binary)
    setup = qemu.Prepared(sysroot.parent, {"python_path": PYTHON_PATH})
    qemu.make_guest_root(root, sysroot, qemu.DEFAULT_CPU)
    done = _run(target.command(setup, root, "-c", VERIFY), what="import onnxruntime under qemu-aarch64",
                env=qemu.guest_env(site, write_bytecode=True), timeout=600.0)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise UserError(f"import onnxruntime under qemu-aarch64 printed {done.stdout[-200:]!r}",
                        fix="rerun with EDGEPRESS_DEBUG=1 and report it") from None


def _qemu_version(qemu_binary: str) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        done = children.run([qemu_binary, "--version"], capture_output=True, text=True, timeout=30)
        return done.stdout.splitlines()[0]
    return "?"


def _move_into_place(partial: Path, final: Path) -> None:
    if not final.exists():
        os.rename(partial, final)
        return
    old = final.parent / f"{OLD_PREFIX}{os.getpid()}"
    os.rename(final, old)  # --force: the old setup steps aside, the new one takes its place, the old one goes
    os.rename(partial, final)
    shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(cache: Path) -> None:
    """Folders of an interrupted setup; safe to remove while holding the lock, which every setup holds."""
    for path in cache.iterdir():
        if path.name.startswith((PARTIAL_PREFIX, OLD_PREFIX)) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # a second setup waits here, then finds the first one's result
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _disk_bytes(folder: Path) -> int:
    return sum(path.lstat().st_size for path in folder.rglob("*") if path.is_symlink() or path.is_file())


def _mb(count: int) -> str:
    return f"{count / 1e6:.1f} MB"
