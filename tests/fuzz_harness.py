"""The fuzz test's referee: runs cases through worker processes and says how each one ended.

A `Case` is one command line for `edgepress.cli.main.main`; the workers (tests/fuzz_worker.py, one process per core,
each importing edgepress once) run them in process, and `run_cases` hands them out, waits for each answer
within the case's time-out, and turns what came back into an `Ending`: the exit code and stderr, an exception
that escaped main(), a hang (no answer in time: the worker is killed and replaced) or a crash (the worker died
of a signal). `classify` sorts an ending into one of ENDINGS. It lives apart from the cases so that the
harness can be read, and tested, on its own.
"""

from __future__ import annotations

import collections
import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

WORKER = Path(__file__).resolve().parent / "fuzz_worker.py"

CHECK_TIMEOUT_S = 60.0  # one `check` or `bench` case; the first one of a worker also imports torch
RUN_TIMEOUT_S = 180.0
START_TIMEOUT_S = 180.0

ENDINGS = ("ok", "one-line error, exit 2", "internal error", "traceback", "hang", "crash", "other")
FAILURES = ("internal error", "traceback", "hang", "crash", "other")


@dataclass
class Case:
    id: int
    kind: str
    label: str  # the mutation, for the failure message
    argv: list[str]
    timeout_s: float = CHECK_TIMEOUT_S


@dataclass
class Ending:
    code: int | None
    stderr: str = ""
    escaped: str | None = None  # an exception that left main(): a traceback in a real run
    signal: int | None = None  # the worker died of it
    hang: bool = False
    seconds: float = 0.0


def classify(case: Case, ending: Ending) -> str:
    if ending.hang:
        return "hang"
    if ending.signal is not None:
        return "crash"
    if ending.escaped or "Traceback (most recent call last)" in ending.stderr:
        return "traceback"
    lines = ending.stderr.splitlines()
    if any(line.startswith("edgepress: internal error") for line in lines):
        return "internal error"
    errors = [line for line in lines if line.startswith("edgepress: error:")]
    if ending.code == 0 or (ending.code == 1 and case.kind == "recipes/run"):
        return "ok" if not errors else "other"
    if ending.code == 2 and len(errors) == 1 and "fix:" in errors[0]:
        return "one-line error, exit 2"
    return "other"


# ---------------------------------------------------------------- the workers

class _Worker:
    def __init__(self, *, env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, cwd=cwd, env=env)
        self.buffer = b""
        self.ready = False
        self.case: Case | None = None
        self.deadline = time.monotonic() + START_TIMEOUT_S

    def fileno(self) -> int:
        return self.proc.stdout.fileno()

    def send(self, case: Case) -> None:
        self.case = case
        self.deadline = time.monotonic() + case.timeout_s
        self.proc.stdin.write((json.dumps({"id": case.id, "argv": case.argv}) + "\n").encode())
        self.proc.stdin.flush()

    def lines(self) -> list[dict] | None:
        """The answers that arrived whole; None once the worker's stdout is closed (it died)."""
        data = os.read(self.fileno(), 1 << 16)
        if not data:
            return None
        self.buffer += data
        *complete, self.buffer = self.buffer.split(b"\n")
        return [json.loads(line) for line in complete if line.strip()]

    def stop(self, *, kill: bool) -> int | None:
        if kill and self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc.stdout.close()
        self.log.close()
        return code


def run_cases(cases: list[Case], *, folder: Path, workers: int, python_path: Path | None = None,
              after_each: Callable[[Case, Ending], None] | None = None) -> dict[int, Ending]:
    """Every case through the workers; {case id: how it ended}. `python_path` joins the workers' PYTHONPATH.
    `after_each` is called as each case ends (with one worker: before the next case starts)."""
    scratch = folder / "tmp"
    scratch.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "EDGEPRESS_DEBUG"}
    env.update(TMPDIR=str(scratch), MPLCONFIGDIR=str(folder / "matplotlib"), OMP_NUM_THREADS="1",
               PYTHONDONTWRITEBYTECODE="1")
    if python_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(python_path), env.get("PYTHONPATH")) if p)
    started = 0

    def start() -> _Worker:
        nonlocal started
        started += 1
        return _Worker(env=env, cwd=folder, log=folder / f"worker-{started}.log")

    pending = collections.deque(cases)
    pool = [start() for _ in range(max(1, min(workers, len(cases))))]
    endings: dict[int, Ending] = {}

    def ended(case: Case, ending: Ending) -> None:
        endings[case.id] = ending
        if after_each is not None:
            after_each(case, ending)

    try:
        while pending or any(w.case is not None for w in pool):
            for worker in pool:
                if worker.ready and worker.case is None and pending:
                    worker.send(pending.popleft())
            waiting = [w for w in pool if not w.ready or w.case is not None]
            if not waiting:
                break
            timeout = max(0.0, min(w.deadline for w in waiting) - time.monotonic())
            readable, _, _ = select.select(waiting, [], [], timeout)
            for index, worker in enumerate(pool):
                replace = False
                if worker in readable:
                    answers = worker.lines()
                    if answers is None:  # died: a signal (or an exit) in the middle of a case
                        code = worker.stop(kill=False)
                        if worker.case is None:
                            raise RuntimeError(f"fuzz worker exited {code} between cases; see {worker.log.name}")
                        died_of = -code if code is not None and code < 0 else None
                        ended(worker.case, Ending(code=code, signal=died_of, stderr=f"worker exit {code}"))
                        replace = True
                    for answer in answers or []:
                        if "ready" in answer:
                            worker.ready = True
                        else:
                            ended(worker.case, Ending(code=answer["code"], stderr=answer["stderr"],
                                                      escaped=answer["escaped"], seconds=answer["seconds"]))
                            worker.case = None
                elif time.monotonic() >= worker.deadline and (worker.case is not None or not worker.ready):
                    if worker.case is None:
                        raise RuntimeError(f"fuzz worker did not start within {START_TIMEOUT_S:.0f} s")
                    ended(worker.case, Ending(code=None, hang=True))
                    worker.stop(kill=True)
                    replace = True
                if replace:
                    pool[index] = start()
    finally:
        for worker in pool:
            worker.stop(kill=worker.case is not None)
    return endings
