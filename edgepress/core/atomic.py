"""Writes that a reader never sees half done: temporary name, fsync, rename."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

# Every temporary name starts with this, so that cleaning a killed run's leftovers never matches a user's
# file (a user's ".notes.tmp" or ".thesis.old/" is theirs, whatever it ends with).
TEMP_PREFIX = ".edgepress-tmp-"
OLD_PREFIX = ".edgepress-old-"


def _umask() -> int:
    """The process's umask (reading it means setting it; set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _as_created(path: Path, *, folder: bool) -> None:
    """mkstemp and mkdtemp make private files (0600) and folders (0700) whatever the umask; a report is for a
    CI artifact step or a teammate to read too, so give it the mode an ordinary open() or mkdir() would."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it into place only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{final.name[:100]}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    _as_created(tmp, folder=False)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(final: Path, text: str) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(final: Path, data: Any) -> None:
    write_text(final, json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Build a directory under a temporary name; replace `final` only when complete."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{final.name[:100]}.", suffix=".tmp", dir=final.parent))
    _as_created(tmp, folder=True)
    try:
        yield tmp
        if final.exists():
            # A fresh name: never one that exists, so nothing is removed to make room for it.
            old = Path(tempfile.mkdtemp(prefix=f"{OLD_PREFIX}{final.name[:100]}.", dir=final.parent)) / "old"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old.parent, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_leftovers(folder: Path) -> None:
    """Temporary files and folders of the functions above that a killed process left in `folder`: only names
    with edgepress's own prefixes. Only for a folder no other process writes (the run lock guarantees that for
    an output folder)."""
    for path in Path(folder).iterdir():
        if path.name.startswith((TEMP_PREFIX, OLD_PREFIX)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


FULL_BELOW_BYTES = 1 << 20


def out_of_space(exc: BaseException, folder: Path) -> bool:
    """Whether `exc`, raised while writing under `folder`, means its disk is full. Not every writer keeps the
    errno (torch.save says only "file write failed"), so a disk nearly full when the error is caught, before
    the partial files are removed, counts too."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(folder).free < FULL_BELOW_BYTES
    except OSError:
        return False
