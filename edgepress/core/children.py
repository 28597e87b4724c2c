"""Child processes end with edgepress: SIGTERM, SIGINT or SIGHUP stops them before edgepress exits.

Every process edgepress starts (the device runner, ssh, qemu-user, apt and dpkg for the qemu setup) goes
through run() here. It starts the child as the leader of a process group of its own, so that stopping it
also reaches what the child started (ssh's ProxyCommand, a shell's children), and so that a terminal's
Ctrl-C reaches edgepress alone, which then stops its children in order rather than all of them at once.

While edgepress runs (cli.main), the three signals raise Interrupted in the main thread: run() stops its
child (SIGTERM to the group, GRACE_S to end, then SIGKILL), `finally` blocks clean up as for Ctrl-C (an
ssh target stops its remote runner and removes its folder there), and main exits 128 + the signal's number.
A second signal does not wait for that clean-up: it kills every child group at once. The device runner
asks Linux to end it when its parent dies (runtime/device_runner.py), for an edgepress killed by SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any, Iterator, Sequence

GRACE_S = 2.0  # how long a child has between SIGTERM and SIGKILL
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_running: set[subprocess.Popen] = set()
_interrupted: list[int] = []  # the signals received while handlers are installed
_starting: list[bool] = []  # non-empty while a child starts and is not yet in _running
_deferred: list[int] = []  # a signal that came while a child started: raised once the child can be stopped


class Interrupted(BaseException):
    """Raised in the main thread by SIGTERM, SIGINT or SIGHUP. Like KeyboardInterrupt it is no Exception, so
    `except Exception` does not swallow it, while `finally` blocks run."""

    def __init__(self, signum: int) -> None:
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum  # the shell's convention for a process ended by a signal
        super().__init__(self.signal_name)


def run(argv: Sequence[str], *, timeout: float, capture_output: bool = False,
        **popen_kwargs: Any) -> subprocess.CompletedProcess:
    """subprocess.run, with the child stopped (group and all) on a time-out or on any exception, Interrupted
    included. stdin is /dev/null unless given: a child in a group of its own must not read the terminal."""
    if capture_output:
        popen_kwargs["stdout"] = popen_kwargs["stderr"] = subprocess.PIPE
    popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
    process = _start(argv, popen_kwargs)
    with process:
        try:
            _starting.clear()  # from here on a signal is raised here, and `finally` stops the child
            if _deferred:
                raise Interrupted(_deferred.pop())
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            stop(process)
            exc.stdout, exc.stderr = process.communicate()
            raise
        finally:
            if process.returncode is None:  # interrupted, or failed here: the child must not outlive this call
                stop(process)
            _running.discard(process)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _start(argv: Sequence[str], popen_kwargs: dict[str, Any]) -> subprocess.Popen:
    """The child, already in _running; a signal until run() is ready to stop it is deferred to run()."""
    _starting.append(True)
    try:
        process = subprocess.Popen(list(argv), start_new_session=True, **popen_kwargs)
        _running.add(process)
    except BaseException:
        _starting.clear()
        if _deferred:
            raise Interrupted(_deferred.pop()) from None
        raise
    return process


def stop(process: subprocess.Popen, *, grace_s: float = GRACE_S) -> None:
    """SIGTERM to the child's group, up to `grace_s` for the child to end, then SIGKILL to whatever of the
    group is left (a child that ended at once may leave children of its own behind)."""
    _signal_group(process, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    _signal_group(process, signal.SIGKILL)
    process.wait()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group has ended already
        os.killpg(process.pid, signum)


def _on_signal(signum: int, frame) -> None:
    if _interrupted:
        # A second signal while the first one's clean-up runs: end every child now, without waiting (a
        # handler must not wait: the main thread may hold a child's lock); the clean-up then fails fast.
        for process in list(_running):
            _signal_group(process, signal.SIGKILL)
        return
    _interrupted.append(signum)
    if _starting:  # raised inside Popen() it would leave the new child unknown to run(), and running on
        _deferred.append(signum)
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_stop_children() -> Iterator[None]:
    """Install the handlers for the duration (main thread only; elsewhere Python refuses them). A signal that
    is ignored on entry stays ignored: `nohup edgepress ...` must survive its SIGHUP."""
    previous = {}
    for signum in SIGNALS:
        with contextlib.suppress(ValueError):
            if signal.getsignal(signum) != signal.SIG_IGN:
                previous[signum] = signal.signal(signum, _on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _interrupted.clear()
        _deferred.clear()
