"""Zip files from outside (torch checkpoints, npz arrays): how much they unpack to, checked before any reader
allocates it. torch.save and numpy.savez store their entries uncompressed, or nearly so; a small file that
inflates to gigabytes of zeros is a zip bomb, whatever its entries claim to hold."""

from __future__ import annotations

import zipfile
from pathlib import Path

from edgepress.errors import UserError

MAX_UNPACK_RATIO = 16  # even all-zero pruned weights deflate far less than this in a real file
HARMLESS_BYTES = 256 << 20  # below this an archive may unpack to anything: it fits in memory anyway


def check_unpacked_size(path: Path, *, what: str, fix: str) -> None:
    """Refuse a zip whose entries unpack to more than MAX_UNPACK_RATIO times its size (and HARMLESS_BYTES).
    A file that is no zip, or one that zipfile cannot read, passes: its own reader names that problem."""
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except Exception:  # BadZipFile, NotImplementedError for a flipped version field, ...: the reader's to name
        return
    size = Path(path).stat().st_size
    if unpacked > HARMLESS_BYTES and unpacked > MAX_UNPACK_RATIO * size:
        raise UserError(f"{what} {Path(path).name} would unpack to {unpacked >> 20} MiB from a file of "
                        f"{max(size >> 20, 1)} MiB, more than {MAX_UNPACK_RATIO} times its size (a zip bomb?)",
                        fix=fix)


def check_npz(path: Path, *, what: str, fix: str) -> None:
    """An npz's arrays, checked before numpy allocates them: each .npy header's shape must fit in the bytes
    its entry holds (numpy allocates what the header declares, then finds the data short), and the archive
    must not be a zip bomb."""
    import numpy as np

    check_unpacked_size(path, what=what, fix=fix)
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
