"""One run per output folder: a second `edgepress run` on the same folder fails at once.

The lock is an flock on DIR/.edgepress.lock. The kernel drops an flock when its holder dies, so a run killed
with SIGKILL leaves no lock that blocks the next one; the file itself, if left behind, is inert.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from edgepress.core.errors import UserError
from edgepress.running.options import OUT

LOCK_NAME = ".edgepress.lock"


@contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no flock; runs there are not guarded against each other
        yield
        return
    # The folder exists: RunFolder.make made it, and removes it again if the run is refused on bad input.
    path = out_dir / LOCK_NAME
    while True:
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(f"another edgepress run is using {out_dir} ({holder})",
                            fix=f"wait for it to finish, or pass another {OUT}") from None
        # The holder before us may have removed the file between our open and our lock: then we hold a lock
        # on a file nobody else can see, and must take the one now at the path.
        try:
            same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # before unlocking: a waiter that opened it retries on the new file
        handle.close()
