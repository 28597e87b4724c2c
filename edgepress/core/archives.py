"""Zip files from outside (torch checkpoints, npz arrays): how much they unpack to, checked before any reader
allocates it. torch.save and numpy.savez store their entries uncompressed, but numpy.savez_compressed deflates
mostly-black images a hundredfold, so no ratio tells a zip bomb from an honest file: what is bounded is the
memory the readers would fill."""

from __future__ import annotations

import zipfile
from pathlib import Path

from edgepress.core.errors import UserError

MAX_UNPACKED_BYTES = 8 << 30  # far beyond any checkpoint or data set edgepress handles in one piece


def _available_memory() -> int | None:
    """Bytes of memory free for a new allocation (Linux's MemAvailable); None where the system does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def unpack_limit() -> int:
    """MAX_UNPACKED_BYTES, or half the memory available now when that is less: the readers copy what they unpack."""
    available = _available_memory()
    return MAX_UNPACKED_BYTES if available is None else min(MAX_UNPACKED_BYTES, available // 2)


def check_unpacked_size(path: Path, *, what: str, fix: str, limit: int | None = None) -> None:
    """Refuse a zip whose entries unpack to more than `limit` bytes (default: unpack_limit()).
    A file that is no zip, or one that zipfile cannot read, passes: its own reader names that problem."""
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except Exception:  # BadZipFile, NotImplementedError for a flipped version field, ...: the reader's to name
        return
    limit = unpack_limit() if limit is None else limit
    if unpacked > limit:
        raise UserError(f"{what} {Path(path).name} would unpack to {unpacked >> 20} MiB, more than the "
                        f"{limit >> 20} MiB edgepress unpacks ({MAX_UNPACKED_BYTES >> 30} GiB, or half the memory "
                        "available when that is less)",
                        fix=f"split it into smaller files or run where more memory is free; if the file is not what "
                        f"you meant to give: {fix}")


def check_npz(path: Path, *, what: str, fix: str, limit: int | None = None) -> None:
    """An npz's arrays, checked before numpy allocates them: each .npy header's shape must fit in the bytes
    its entry holds (numpy allocates what the header declares, then finds the data short), and the archive
    must not unpack to more than `limit` bytes (see check_unpacked_size)."""
    import numpy as np

    check_unpacked_size(path, what=what, fix=fix, limit=limit)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as fh:
                    reader = readers.get(np.lib.format.read_magic(fh))
                    if reader is None:  # a newer format: numpy's own reader judges it
                        continue
                    shape, _, dtype = reader(fh)
                declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if declared > info.file_size:
                    raise UserError(f"{what} {Path(path).name}: array {info.filename[:-4]!r} declares shape "
                                    f"{list(shape)} ({declared} bytes) but its entry holds {info.file_size} bytes",
                                    fix=fix)
    except UserError:
        raise
    except Exception:  # a broken archive: numpy's reader names the problem
        return
