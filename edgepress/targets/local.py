"""`local`: the runner in a child process of this Python, so its peak memory is the model's, not edgepress's."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from edgepress.core import children
from edgepress.core.errors import UserError
from edgepress.runtime.isa import Isa, local_isa
from edgepress.targets import SCHEMES
from edgepress.targets.base import (RUNNER, TargetOptions, output_so_far, parse_runner_output, place_runner,
                                    runner_stopped)


@dataclass(frozen=True)
class LocalTarget:
    python: str
    name: str = "local"
    emulated: bool = SCHEMES["local"].emulated

    @classmethod
    def from_name(cls, name: str, options: TargetOptions) -> "LocalTarget":
        if name != "local":
            raise UserError(f"target {name!r} is malformed", fix="write just local")
        return cls(python=options.python or sys.executable)

    def run(self, *, files: Sequence[Path], args: Sequence[str], fetch: Sequence[str] = (),
            into: Path | None = None, timeout_s: float = 600.0) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="edgepress-run-") as folder:
            work = Path(folder)
            place_runner(work, files)
            try:
                done = children.run([self.python, RUNNER.name, *args], cwd=work, capture_output=True, text=True,
                                      timeout=timeout_s)
            except subprocess.TimeoutExpired as exc:
                raise runner_stopped(f"the runner on {self.name} took longer than {timeout_s:.0f} s",
                                     stdout=output_so_far(exc),
                                     fix="lower --runs or --duration, or raise the time-out") from None
            except FileNotFoundError:
                raise UserError(f"python {self.python!r} not found", fix="point --python at an installed Python") from None
            result = parse_runner_output(done.stdout, done.stderr, done.returncode, target=self.name)
            for name in fetch:
                shutil.copy2(work / name, Path(into or ".") / name)
        return result


def from_name(name: str, options: TargetOptions) -> LocalTarget:
    return LocalTarget.from_name(name, options)


def known_isa(name: str) -> Isa:
    return local_isa()
