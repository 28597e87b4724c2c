"""`ssh://[user@]host[:port]`: a device reached with this machine's OpenSSH client.

Only the system `ssh` binary is used, so ~/.ssh/config applies exactly as it does for `ssh` itself: host aliases,
users, ports, keys, ProxyJump, known_hosts. Files travel as a tar stream over ssh. The device needs a POSIX shell,
mktemp and tar (any Linux, BusyBox included) and Python 3.8+ with onnxruntime and numpy.

Each run: one connection makes a private working folder (mktemp -d) and unpacks the runner and files into it, one
runs the runner, one packs the fetched files, and a last one always removes the folder. Every word that reaches the
device's shell is quoted with shlex.quote. BatchMode is always on (no password prompts), host keys are checked as
ssh checks them (an unknown or changed key is refused), and a failure to connect or copy is tried once more;
a runner that started is never run twice.
"""

from __future__ import annotations

import contextlib
import math
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

from edgepress.core import children
from edgepress.core.errors import UserError
from edgepress.targets import SCHEMES
from edgepress.targets.base import (RUNNER, TargetOptions, output_so_far, parse_runner_output, relayed, require_files,
                                    runner_stopped)

DEFAULT_PYTHON = "python3"
FOLDER_PREFIX = "edgepress-ssh-"
PID_FILE = ".edgepress-runner.pid"
STARTED = "edgepress: runner started"  # the remote shell says this on stderr just before it execs the runner
CONNECTION_FAILED = 255  # ssh's own failures; also a remote command killed by a signal
CLEANUP_TIMEOUT_S = 60.0
RETRY_PAUSE_S = 1.0
SERVER_ALIVE = ["-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]  # notice a device gone mid-run

_NAME = re.compile(r"ssh://(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9._-]*)@)?"
                   r"(?P<host>[A-Za-z0-9_][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?")
_CONNECT = re.compile(r"connect to host (?P<host>\S+) port (?P<port>\d+)")
# what ssh says when the connection itself broke, as against a runner that died on a device still reachable
_CONNECTION_LOST = ("closed by remote host", "Broken pipe", "Connection reset", "Timeout, server", "not responding",
                    "packet_write_wait", "client_loop: send disconnect")
# ssh failures that another try cannot mend
_PERMANENT = ("Permission denied", "Host key verification failed", "host key is known", "HAS CHANGED",
              "Bad configuration option",
              "Bad owner or permissions", "Too many authentication failures", "no matching")


@dataclass(frozen=True)
class _Reply:
    returncode: int
    stdout: str
    stderr: str


def from_name(name: str, options: TargetOptions) -> "SshTarget":
    match = _NAME.fullmatch(name)
    if match is None:
        raise UserError(f"target {name!r} is not ssh://[user@]host[:port]",
                        fix="write e.g. ssh://pi@raspberrypi.local, ssh://pi@192.168.1.20:2222, "
                            "or ssh://ALIAS for a Host in ~/.ssh/config")
    user, host, port = match["user"], match["host"], match["port"]
    if port is not None and not 1 <= int(port) <= 65535:
        raise UserError(f"target {name!r} has port {port}, outside 1-65535",
                        fix="write the device's ssh port, e.g. :22")
    python = DEFAULT_PYTHON if options.python is None else options.python
    if not python.strip():
        raise UserError("--python is empty", fix="name the device's Python, e.g. --python python3")
    identity = options.identity_file
    if identity is not None:
        identity = Path(identity).expanduser()
        if not identity.is_file():
            raise UserError(f"identity file {identity} does not exist", fix="pass --identity-file with a private key")
    if options.workdir is not None and not options.workdir.strip():
        raise UserError("--workdir is empty", fix="name a folder on the device, or leave --workdir out")
    normalised = "ssh://" + (f"{user}@" if user else "") + host + (f":{int(port)}" if port else "")
    return SshTarget(name=normalised, host=host.strip("[]"), user=user, port=int(port) if port else None,
                     python=python, identity_file=identity, workdir=options.workdir,
                     connect_timeout_s=options.connect_timeout_s, retries=max(0, options.retries),
                     strict_host_key_checking=options.strict_host_key_checking)


@dataclass(frozen=True)
class SshTarget:
    name: str
    host: str  # as written: an address, a DNS name or a Host alias of ~/.ssh/config
    user: str | None  # None: ssh's choice (User in ~/.ssh/config, else the local user)
    port: int | None  # None: ssh's choice (Port in ~/.ssh/config, else 22)
    python: str = DEFAULT_PYTHON
    identity_file: Path | None = None
    workdir: str | None = None
    connect_timeout_s: float = 10.0
    retries: int = 1
    strict_host_key_checking: bool = True
    emulated: bool = SCHEMES["ssh"].emulated

    def run(self, *, files: Sequence[Path], args: Sequence[str], fetch: Sequence[str] = (),
            into: Path | None = None, timeout_s: float = 600.0) -> dict[str, Any]:
        require_files(files)
        with tempfile.TemporaryDirectory(prefix="edgepress-ssh-") as scratch:
            archive = Path(scratch) / "upload.tar"
            _write_archive(archive, [RUNNER, *map(Path, files)])
            folder = self._make_folder_and_copy(archive, timeout_s=timeout_s)
            runner_finished = False
            try:
                reply = self._run_runner(folder, args, timeout_s=timeout_s)
                runner_finished = reply.returncode != CONNECTION_FAILED  # else it may still run on the device
                result = self._runner_result(reply)
                if fetch:
                    self._fetch(folder, fetch, into=Path(into or "."), scratch=Path(scratch), timeout_s=timeout_s)
            finally:
                # A runner cut off (time-out, dropped connection, Ctrl-C) may still be running there: stop it too.
                self._remove(folder, stop_runner=not runner_finished)
        return result

    # ---------------------------------------------------------------- the four steps

    def _make_folder_and_copy(self, archive: Path, *, timeout_s: float) -> str:
        """A fresh private folder on the device holding the runner and files; its absolute path. A copy that
        breaks off removes its folder on the device (tar fails on the cut stream, the script then removes it)."""
        if self.workdir is None:
            parent, make_parent = '"${TMPDIR:-/tmp}"', ""
        else:
            parent = _remote_path(self.workdir)
            make_parent = f"mkdir -p -- {parent} && "
        script = (f"umask 077; {make_parent}d=$(mktemp -d {parent}/{FOLDER_PREFIX}XXXXXXXX) || exit 1; "
                  f"d=$(cd \"$d\" && pwd) || exit 1; printf '%s\\n' \"$d\"; "
                  f"cd \"$d\" && tar -xf - && exit 0; s=$?; cd / && rm -rf -- \"$d\"; exit $s")
        try:
            reply = self._call(script, timeout_s=timeout_s, stdin=archive)
        except subprocess.TimeoutExpired:
            raise UserError(f"copying files to {self.name} took longer than {timeout_s:.0f} s",
                            fix="check the connection to the device, or raise --timeout") from None
        if reply.returncode == CONNECTION_FAILED:  # a copy cut off removes its own folder (the script above)
            raise self._connection_error(reply.stderr)
        folders = [line for line in reply.stdout.splitlines() if _is_our_folder(line)]
        if not folders:
            where = self.workdir or "its temporary folder"
            raise UserError(f"cannot make a working folder in {where} on {self.name}: {_last_line(reply.stderr)}",
                            fix="pass --workdir with a writable folder on the device")
        if reply.returncode != 0:
            raise UserError(f"copying files to {self.name} failed (exit {reply.returncode}): "
                            f"{_last_line(reply.stderr)}",
                            fix="check free space on the device (or pass --workdir elsewhere) and that it has tar")
        return folders[-1]

    def _run_runner(self, folder: str, args: Sequence[str], *, timeout_s: float) -> _Reply:
        # `exec` keeps the shell's process id, so the pid file names the runner (for _remove to stop it).
        command = " ".join([_remote_path(self.python)] + [shlex.quote(word) for word in [RUNNER.name, *args]])
        script = (f"cd {shlex.quote(folder)} && echo $$ > {PID_FILE} && echo {shlex.quote(STARTED)} >&2 "
                  f"&& exec {command}")
        try:
            return self._call(script, timeout_s=timeout_s, may_retry=lambda reply: STARTED not in reply.stderr)
        except subprocess.TimeoutExpired as exc:
            raise runner_stopped(f"the runner on {self.name} took longer than {timeout_s:.0f} s",
                                 stdout=output_so_far(exc), fix="lower --runs or --duration, or raise --timeout") from None

    def _runner_result(self, reply: _Reply) -> dict[str, Any]:
        _, started, runner_stderr = reply.stderr.partition(STARTED)
        if not started:
            if reply.returncode == CONNECTION_FAILED:
                raise self._connection_error(reply.stderr)
            raise UserError(f"cannot start the runner on {self.name}: {_last_line(reply.stderr)}",
                            fix="check that the device's working folder is writable (or pass --workdir)")
        if reply.returncode == 127:
            raise UserError(f"python {self.python!r} not found on {self.name}",
                            fix="install Python 3.8+ with onnxruntime and numpy on the device, or pass --python "
                                "with the path of its Python there")
        if reply.returncode == 126:
            raise UserError(f"python {self.python!r} on {self.name} is not executable",
                            fix="pass --python with the path of a Python 3.8+ on the device")
        if reply.returncode == CONNECTION_FAILED:
            if any(marker in runner_stderr for marker in _CONNECTION_LOST):
                raise runner_stopped(f"the connection to {self.name} was lost", f": {_last_line(runner_stderr)}",
                                     stdout=reply.stdout,
                                     fix="check the device's power and network connection, then run again")
            raise runner_stopped(f"the runner on {self.name} stopped", " (killed on the device, "
                                 f"out of memory, or the connection dropped): {_last_line(runner_stderr)}",
                                 stdout=reply.stdout, fix="check the device's free memory and its connection, then "
                                                          "run again")
        if reply.returncode != 0 and "SyntaxError" in runner_stderr:
            raise UserError(f"python {self.python!r} on {self.name} cannot run the runner: {_last_line(runner_stderr)}",
                            fix="the runner needs Python 3.8+: pass --python with a newer Python on the device")
        return parse_runner_output(reply.stdout, runner_stderr, reply.returncode, target=self.name)

    def _fetch(self, folder: str, names: Sequence[str], *, into: Path, scratch: Path, timeout_s: float) -> None:
        packed = scratch / "fetch.tar"
        script = f"cd {shlex.quote(folder)} && tar -cf - " + " ".join(shlex.quote(f"./{name}") for name in names)
        try:
            reply = self._call(script, timeout_s=timeout_s, stdout=packed)
        except subprocess.TimeoutExpired:
            raise UserError(f"copying results back from {self.name} took longer than {timeout_s:.0f} s",
                            fix="check the connection to the device, or raise --timeout") from None
        if reply.returncode == CONNECTION_FAILED:
            raise self._connection_error(reply.stderr)
        if reply.returncode != 0:
            raise UserError(f"cannot copy {', '.join(names)} back from {self.name}: {_last_line(reply.stderr)}",
                            fix="check the runner's output files and the device's tar")
        wanted = set(names)
        into.mkdir(parents=True, exist_ok=True)
        with tarfile.open(packed, mode="r:") as tar:
            for member in tar:
                name = PurePosixPath(member.name).name
                if member.isfile() and name in wanted and PurePosixPath(member.name) == PurePosixPath(name):
                    source = tar.extractfile(member)
                    assert source is not None
                    with source, open(into / name, "wb") as destination:
                        while chunk := source.read(1 << 20):
                            destination.write(chunk)
                    wanted.discard(name)
        if wanted:
            raise UserError(f"{', '.join(sorted(wanted))} did not come back from {self.name}",
                            fix="check the runner's output files on the device")

    def _remove(self, folder: str, *, stop_runner: bool) -> None:
        """Best effort: a failure here is reported on stderr, never raised over the run's own result or error."""
        quoted = shlex.quote(folder)
        stop = (f"p=$(cat {quoted}/{PID_FILE} 2>/dev/null) && [ -n \"$p\" ] && kill \"$p\" 2>/dev/null; "
                if stop_runner else "")
        try:
            reply = self._call(f"{stop}rm -rf -- {quoted}", timeout_s=self.connect_timeout_s + CLEANUP_TIMEOUT_S)
            failed = reply.returncode != 0 and _last_line(reply.stderr)
        except subprocess.TimeoutExpired:
            failed = "timed out"
        except UserError as exc:
            failed = exc.problem
        if failed:
            print(f"edgepress: warning: could not remove {folder} on {self.name}: {failed}", file=sys.stderr)

    # ---------------------------------------------------------------- ssh

    def _argv(self, script: str, *, query: bool = False) -> list[str]:
        argv = ["ssh", "-G"] if query else ["ssh", "-T", "-o", "BatchMode=yes",
                                            "-o", f"ConnectTimeout={max(1, math.ceil(self.connect_timeout_s))}",
                                            *SERVER_ALIVE]
        if not self.strict_host_key_checking:
            argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        if self.identity_file is not None:
            argv += ["-i", str(self.identity_file)]
        if self.port is not None:
            argv += ["-p", str(self.port)]
        argv += ["--", f"{self.user}@{self.host}" if self.user else self.host]
        return argv if query else argv + [script]

    def _once(self, script: str, *, timeout_s: float, stdin: Path | None, stdout: Path | None) -> _Reply:
        with contextlib.ExitStack() as files:
            source = files.enter_context(open(stdin, "rb")) if stdin else subprocess.DEVNULL
            sink = files.enter_context(open(stdout, "wb")) if stdout else subprocess.PIPE
            try:
                done = children.run(self._argv(script), stdin=source, stdout=sink, stderr=subprocess.PIPE,
                                      timeout=timeout_s)
            except FileNotFoundError:
                raise UserError("the OpenSSH client (ssh) is not installed on this machine",
                                fix="install it (e.g. apt install openssh-client) so that `ssh` is on PATH") from None
        text = "" if stdout else done.stdout.decode("utf-8", "replace")
        return _Reply(done.returncode, text, done.stderr.decode("utf-8", "replace"))

    def _call(self, script: str, *, timeout_s: float, stdin: Path | None = None, stdout: Path | None = None,
              may_retry: Callable[[_Reply], bool] = lambda reply: True) -> _Reply:
        """One ssh command; tried once more (`retries`) when ssh itself failed in a way another try may mend."""
        for attempt in range(self.retries + 1):
            reply = self._once(script, timeout_s=timeout_s, stdin=stdin, stdout=stdout)
            if (reply.returncode != CONNECTION_FAILED or attempt == self.retries or not may_retry(reply)
                    or any(marker in reply.stderr for marker in _PERMANENT)):
                return reply
            time.sleep(RETRY_PAUSE_S)
        raise AssertionError("unreachable")

    def _effective(self) -> tuple[str, int, str]:
        """(hostname, port, user) after ~/.ssh/config, as ssh resolves them (`ssh -G`, no connection)."""
        try:
            done = children.run(self._argv("", query=True), capture_output=True, text=True, timeout=10)
            settings = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
            return settings.get("hostname", self.host), int(settings.get("port", self.port or 22)), \
                settings.get("user", self.user or "")
        except (OSError, ValueError, subprocess.SubprocessError):
            return self.host, self.port or 22, self.user or ""

    def _connection_error(self, stderr: str) -> UserError:
        """ssh's own failure (exit 255) as one line naming the host, the port and what to do."""
        host, port, user = self._effective()
        connect = _CONNECT.search(stderr)
        if connect:
            host, port = connect["host"], int(connect["port"])
        where = f"{host} port {port}" + (f" ({self.name})" if self.host != host else "")
        known_as = host if port == 22 else f"[{host}]:{port}"
        scan = f"ssh-keyscan{'' if port == 22 else f' -p {port}'} {host} >> ~/.ssh/known_hosts"
        if "IDENTIFICATION HAS CHANGED" in stderr or "has changed and you have requested strict checking" in stderr:
            return UserError(f"the host key of {where} differs from the one in known_hosts (a reinstalled device, "
                             "or someone in between); refused",
                             fix=f"if the device was reinstalled, check its new key's fingerprint, then "
                                 f"ssh-keygen -R '{known_as}' and {scan}")
        if "Host key verification failed" in stderr or "host key is known" in stderr:
            return UserError(f"the host key of {where} is not in known_hosts; unknown hosts are refused",
                             fix=f"check the device's key fingerprint and add it: {scan} "
                                 f"(or connect once with {self._by_hand()} and answer yes)")
        if "Permission denied" in stderr or "Too many authentication failures" in stderr:
            account = f"{user}@{host}" if user else host
            return UserError(f"{where} refused authentication as {account} (keys only: passwords cannot be typed "
                             "here)",
                             fix="install your public key on the device (ssh-copy-id), pass --identity-file KEY, "
                                 "or set User and IdentityFile for the host in ~/.ssh/config")
        if "Connection refused" in stderr:
            return UserError(f"connection refused by {where}",
                             fix="check that the device runs an ssh server on that port "
                                 "(ssh://user@host:PORT, or Port in ~/.ssh/config)")
        if "timed out" in stderr:
            return UserError(f"connecting to {where} timed out",
                             fix="check that the device is on and reachable from here, and its address")
        if "Could not resolve hostname" in stderr:
            return UserError(f"cannot resolve the host name {host!r} ({self.name})",
                             fix="check the spelling, use the device's IP address, "
                                 "or add a Host entry for it to ~/.ssh/config")
        for reason in ("No route to host", "Network is unreachable", "Connection reset", "Connection closed"):
            if reason in stderr:
                return UserError(f"{where} is unreachable: {reason.lower()}",
                                 fix="check the device's network connection and its ssh server")
        return UserError(f"ssh to {where} failed: {_last_line(stderr)}",
                         fix=f"check that `{self._by_hand()} true` works from this shell")

    def _by_hand(self) -> str:
        """The ssh command a user types to reach this target."""
        words = ["ssh"] + (["-i", str(self.identity_file)] if self.identity_file else []) + \
            (["-p", str(self.port)] if self.port else []) + [f"{self.user}@{self.host}" if self.user else self.host]
        return " ".join(shlex.quote(word) for word in words)


def _write_archive(path: Path, files: Sequence[Path]) -> None:
    """Files by base name, owned by nobody in particular (a root tar on the device makes them root's)."""
    with tarfile.open(path, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for file in files:
            with open(file, "rb") as source:
                info = tar.gettarinfo(fileobj=source, arcname=file.name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, source)


def _remote_path(path: str) -> str:
    """`path` for the device's shell, quoted; a leading ~ stays the device user's home."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _is_our_folder(line: str) -> bool:
    return line.startswith("/") and re.fullmatch(re.escape(FOLDER_PREFIX) + r"[A-Za-z0-9]+",
                                                 PurePosixPath(line).name) is not None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip() and STARTED not in line]
    return relayed((lines or ["no output"])[-1])


def known_isa(name: str) -> None:
    return None  # a device's CPU is known only once it is reached
