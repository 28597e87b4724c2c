"""Finding and killing a real device runner mid-run, for the tests that a device dying mid-bench loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

# CPU seconds a runner has spent before it is killed: importing onnxruntime, a session and the warm-up take
# about one, and it prints its first progress line after one more second of timing (PROGRESS_INTERVAL_S).
TIMING_FOR_CPU_S = 4.0


def cpu_seconds(pid: int) -> float:
    """User plus system time of a process, from /proc (fields 14 and 15, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kill_once_timing(pid: int, *, owner: subprocess.Popen, victim: int | None = None,
                     deadline_s: float = 120.0) -> float:
    """SIGKILL `victim` (default: the runner `pid` itself) once the runner has run TIMING_FOR_CPU_S of CPU
    time, so that some progress lines are out; CPU time, not wall time, since the machine may be shared.
    Returns the CPU seconds it had."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert owner.poll() is None, f"edgepress ended before the runner was killed: {owner.communicate()}"
        used = cpu_seconds(pid)
        if used >= TIMING_FOR_CPU_S:
            os.kill(pid if victim is None else victim, signal.SIGKILL)
            return used
        time.sleep(0.2)
    raise AssertionError(f"runner {pid} did not reach {TIMING_FOR_CPU_S} CPU seconds in {deadline_s} s")


def wait_for(find, *, what: str, owner: subprocess.Popen, deadline_s: float = 60.0):
    """The first true value of `find()`, polled while `owner` runs."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        found = find()
        if found:
            return found
        assert owner.poll() is None, f"edgepress ended before {what} appeared: {owner.communicate()}"
        time.sleep(0.1)
    raise AssertionError(f"no {what} after {deadline_s} s")


def runner_child(parent: int) -> int | None:
    """The pid of a device runner started by `parent` (the local target's child process)."""
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit():
                continue
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) == parent and b"device_runner.py" in (proc / "cmdline").read_bytes():
                return int(proc.name)
        except OSError:
            continue
    return None
