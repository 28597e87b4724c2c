"""One run per output folder: a second run fails at once; a run killed with SIGKILL leaves no lock behind."""

from __future__ import annotations

import pytest

import os
import signal
import subprocess
import sys
import time

from tests.conftest import assert_one_line_error, run_cli, write_recipe


@pytest.mark.slow
def test_a_second_run_on_the_same_folder_fails_at_once_and_a_killed_run_does_not_block(tmp_path):
    recipe = write_recipe(tmp_path, epochs=30)  # long enough to be caught running
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "EDGEPRESS_DEBUG"}
    first = subprocess.Popen([sys.executable, "-m", "edgepress", "run", str(recipe), "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        lock = out / ".edgepress.lock"
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text().startswith(f"pid {first.pid}")):
            assert first.poll() is None and time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.2)
        started = time.monotonic()
        second = run_cli("run", str(recipe), "--out", str(out))
        assert_one_line_error(second, "another edgepress run is using", f"pid {first.pid}", "another --out")
        assert time.monotonic() - started < 30, "the second run waited instead of failing at once"
        assert first.poll() is None, "the second run disturbed the first"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # SIGKILL: no cleanup ran, the lock file may still be there, and must not block.
    again = run_cli("run", str(write_recipe(tmp_path, epochs=1, name="short.toml")), "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert not (out / ".edgepress.lock").exists(), "a finished run leaves its lock file behind"
