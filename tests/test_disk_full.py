"""A disk that fills up during a stage: a one-line error, earlier stages intact, and a rerun that resumes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edgepress.running.folder import MARKER
from tests.conftest import TINY_RECIPE, write_recipe
from tests.test_resume import STARTED, kept

DISK_BYTES = 32 << 20


@pytest.fixture
def small_disk(tmp_path):
    """A 32 MiB tmpfs: a real file system that really runs out of space."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"this machine does not allow mounting a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(folder: Path) -> Path:
    """Write until the file system refuses another byte."""
    filler = folder / "filler"
    block = b"\0" * (1 << 16)
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:  # unbuffered: the write that meets the end stores what fits, the next one fails
                fh.write(block)
        except OSError:
            pass
    return filler


@pytest.mark.slow
def test_a_full_disk_ends_the_stage_in_one_line_keeps_earlier_stages_and_the_rerun_resumes(small_disk, tmp_path):
    recipe = write_recipe(tmp_path, text=TINY_RECIPE.format(epochs=2, budgets="").replace(
        "warmup_runs = 5\nruns = 200", "warmup_runs = 2\nruns = 200"))
    out = small_disk / "out"
    env = {k: v for k, v in os.environ.items() if k != "EDGEPRESS_DEBUG"}
    victim = subprocess.Popen([sys.executable, "-m", "edgepress", "run", str(recipe), "--out", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    filled: list[Path] = []

    def read() -> None:
        for line in victim.stderr:
            lines.append(line.rstrip())
            if line.rstrip().endswith("-> 02-export") and not filled:
                filled.append(_fill(small_disk))  # the run waits for nothing: it meets the full disk mid-stage

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    victim.wait(timeout=300)
    reader.join(timeout=10)
    assert filled, lines
    assert victim.returncode == 2, lines
    assert not [line for line in lines if "Traceback" in line], lines
    errors = [line for line in lines if line.startswith("edgepress: error:")]
    assert len(errors) == 1 and "is full" in errors[0] and "fix:" in errors[0] and "rerun" in errors[0], lines
    failed = [m.group(1) for line in lines if (m := STARTED.search(line))][-1]

    # What finished before is intact (its artifact still hashes to its record); of the failed stage
    # nothing is left, not even a temporary folder.
    finished = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert "00-model" in finished and "01-train" in finished and failed not in finished, (finished, failed)
    for name in finished:
        record = json.loads((out / name / "stage.json").read_text())["record"]
        artifact = out / record["artifact"]
        assert hashlib.sha256(artifact.read_bytes()).hexdigest() == record["sha256"], name
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [MARKER], list(out.iterdir())

    filled[0].unlink()  # space is back
    rerun = subprocess.run([sys.executable, "-m", "edgepress", "run", str(recipe), "--out", str(out)],
                           capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert kept(rerun.stderr) == finished
    assert [s["name"] for s in json.loads((out / "report.json").read_text())["stages"]] == \
        ["model", "train", "export", "ptq"]
