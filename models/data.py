"""Numpy-only dataset readers and preprocessing: these run on devices, so no torch here.

Sources: built-in names ('cifar10:<stem>', 'fashion_mnist:train|test', 'digits:train|test'),
an npz file with `images` and `labels`, or a pair of IDX files (gzip or raw).
"""

from __future__ import annotations

import difflib
import gzip
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from edgepress.core import datapath
from edgepress.core.archives import check_npz
from edgepress.core.errors import UserError
from edgepress.core.data_spec import DatasetSpec, PreprocessSpec


@dataclass(frozen=True)
class RawDataset:
    images: np.ndarray  # uint8, N x H x W (grayscale) or N x H x W x C
    labels: np.ndarray  # int64, N
    name: str


# Documented stems, used for suggestions when the data folder is absent.
_CIFAR_STEMS = ("test_raw_1017", "train_raw_5085", "test_jpeg_10000", "train_jpeg_10000")
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
DIGITS_TEST_SIZE = 360
_DIGITS_SEED = 0

MAX_LABEL = 1_000_000  # a class index; any larger is an id or a corrupt file, not a class

# IDX type byte -> big-endian numpy dtype.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_dataset(spec: DatasetSpec) -> RawDataset:
    """Read the images and labels `spec` names, first `spec.limit` only when given."""
    limit = spec.limit
    if spec.dataset is not None:
        images, labels = _load_builtin(spec.dataset, limit=limit)
    elif spec.path is not None:
        images, labels = _load_npz(Path(spec.path))
    else:
        images = _read_idx(Path(spec.images), limit=limit)
        labels = _read_idx(Path(spec.labels), limit=limit)
    name = spec.display_name
    images, labels = _validate(images, labels, name=name)
    if limit is not None and limit < len(images):
        # Copies, so the full arrays behind a slice can be freed.
        images, labels = images[:limit].copy(), labels[:limit].copy()
    return RawDataset(images=images, labels=labels, name=name)


def builtin_names() -> list[str]:
    """Every valid built-in dataset name (CIFAR stems from the data folder when present)."""
    folder = datapath.data_root() / "cifar10"
    stems = sorted(p.stem for p in folder.glob("*.npz")) if folder.is_dir() else list(_CIFAR_STEMS)
    return ([f"cifar10:{s}" for s in stems] + [f"fashion_mnist:{s}" for s in _FASHION_FILES]
            + ["digits:train", "digits:test"])


def _unknown_builtin(name: str) -> UserError:
    valid = builtin_names()
    guess = difflib.get_close_matches(name, valid, n=1, cutoff=0.0)
    fix = f"did you mean {guess[0]!r}?" if guess else "use one of " + ", ".join(valid)
    return UserError(f"unknown built-in dataset {name!r}", fix=f"{fix} (valid: {', '.join(valid)})")


def _missing_builtin(name: str, path: Path) -> UserError:
    return UserError(f"built-in dataset {name!r} needs {path}, which does not exist",
                     fix=f"set {datapath.DATA_ENV} to the shared data folder (now {datapath.data_root()})")


def _load_builtin(name: str, *, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    family, _, part = name.partition(":")
    root = datapath.data_root()
    if family == "cifar10" and part and "/" not in part and "\\" not in part:
        path = root / "cifar10" / f"{part}.npz"
        if path.is_file():
            return _load_npz(path)
        if (root / "cifar10").is_dir() or part not in _CIFAR_STEMS:
            raise _unknown_builtin(name)
        raise _missing_builtin(name, path)
    if family == "fashion_mnist" and part in _FASHION_FILES:
        image_file, label_file = (root / "fashion_mnist" / f for f in _FASHION_FILES[part])
        for path in (image_file, label_file):
            if not path.is_file():
                raise _missing_builtin(name, path)
        return _read_idx(image_file, limit=limit), _read_idx(label_file, limit=limit)
    if family == "digits" and part in ("train", "test"):
        return _load_digits(part)
    raise _unknown_builtin(name)


def _digits_table() -> np.ndarray:
    """sklearn's bundled digits.csv.gz (1797 rows: 64 pixels 0-16, then the label), read without importing
    sklearn.datasets, which pulls in scipy.stats: 1.7 s of every command that uses the set."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # finds the package without running its __init__
    for folder in (spec.submodule_search_locations or []) if spec else []:
        table = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if table.is_file():
            with gzip.open(table, "rt") as text:
                return np.loadtxt(text, delimiter=",")
    from sklearn.datasets import load_digits  # another layout: sklearn's own loader, bundled data, no download

    digits = load_digits()
    return np.concatenate([digits.data, digits.target[:, None]], axis=1)


def _load_digits(part: str) -> tuple[np.ndarray, np.ndarray]:
    table = _digits_table()
    images = np.rint(table[:, :64].reshape(-1, 8, 8) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = table[:, 64].astype(np.int64)
    test = digits_test_indices(labels)
    if part == "test":
        return images[test], labels[test]
    train = np.setdiff1d(np.arange(len(labels)), test)
    return images[train], labels[train]


def digits_test_indices(labels: np.ndarray) -> np.ndarray:
    """Fixed stratified split: shuffle within each class (legacy RandomState, whose stream numpy
    freezes), lay classes end to end, and take DIGITS_TEST_SIZE evenly spaced positions."""
    order = np.random.RandomState(_DIGITS_SEED).permutation(len(labels))
    grouped = order[np.argsort(labels[order], kind="stable")]
    positions = (np.arange(DIGITS_TEST_SIZE) * len(labels)) // DIGITS_TEST_SIZE
    return np.sort(grouped[positions])


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise UserError(f"dataset file {path} does not exist", fix="check the path (use {data}/... for shared data)")
    check_npz(path, what="dataset file", fix="write it with np.savez(path, images=..., labels=...)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            if not {"images", "labels"} <= keys:
                raise UserError(f"{path.name} has arrays {sorted(keys) or 'none'}, not 'images' and 'labels'",
                                fix="save it with np.savez(path, images=uint8 NxHxW[xC], labels=int N)")
            return archive["images"], archive["labels"]
    except UserError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, MemoryError) as exc:
        raise UserError(f"{path.name} is not a readable npz archive ({type(exc).__name__}: {exc})",
                        fix="write it with np.savez(path, images=..., labels=...)") from None


def _validate(images: np.ndarray, labels: np.ndarray, *, name: str) -> tuple[np.ndarray, np.ndarray]:
    if images.dtype != np.uint8:
        raise UserError(f"dataset {name!r} has {images.dtype} images; edgepress reads raw uint8 pixels",
                        fix="store images as uint8 0..255 and put scaling in [data.preprocess]")
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3, 4)):
        raise UserError(f"dataset {name!r} images have shape {list(images.shape)}",
                        fix="store images as N x H x W (grayscale) or N x H x W x C with C = 1, 3 or 4")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"dataset {name!r} labels are {labels.dtype} with shape {list(labels.shape)}",
                        fix="store labels as a 1-D integer array of class indices")
    if len(images) != len(labels):
        raise UserError(f"dataset {name!r} has {len(images)} images but {len(labels)} labels",
                        fix="give exactly one label per image")
    if not len(labels):
        raise UserError(f"dataset {name!r} holds no samples", fix="point the recipe at a set with images and labels")
    # Compared before the int64 cast: a uint64 label past 2**63 - 1 would wrap to a negative one.
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high > MAX_LABEL:
        raise UserError(f"dataset {name!r} has label {low if low < 0 else high}; labels are class indices "
                        f"0..{MAX_LABEL}", fix="store each label as its class index 0..K-1")
    return images, labels.astype(np.int64, copy=False)


def _open(path: Path) -> BinaryIO:
    with path.open("rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"  # by content, not by the file name
    return gzip.open(path, "rb") if gzipped else path.open("rb")


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
    """Read in chunks: a corrupt header may claim far more bytes than the file holds."""
    chunks, remaining = [], size
    while remaining > 0:
        chunk = stream.read(min(remaining, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


IDX_MAX_BYTES = 4 << 30  # ImageNet-sized image arrays are far beyond what an IDX file holds in practice


def _read_idx(path: Path, *, limit: int | None = None) -> np.ndarray:
    """Parse an IDX file: 2 zero bytes, a type byte, a dims byte, big-endian uint32 sizes, data.
    With `limit` only the first items are read, so a prefix of a large gzip file is cheap."""
    if not path.is_file():
        raise UserError(f"IDX file {path} does not exist", fix="check [data] images/labels paths")
    try:
        with _open(path) as stream:
            header = stream.read(4)
            if len(header) < 4 or header[:2] != b"\x00\x00" or header[2] not in _IDX_TYPES or header[3] == 0:
                raise UserError(f"{path.name} is not an IDX file (bad magic {header.hex() or 'empty'})",
                                fix="give MNIST-style IDX files (raw or .gz) for images and labels")
            dtype, ndim = np.dtype(_IDX_TYPES[header[2]]), header[3]
            dim_bytes = stream.read(4 * ndim)
            if len(dim_bytes) < 4 * ndim:
                raise UserError(f"IDX file {path.name} is truncated in its header", fix="re-create the file")
            dims = [int(d) for d in np.frombuffer(dim_bytes, dtype=">u4")]
            count = dims[0] if limit is None else min(dims[0], limit)
            item = int(np.prod(dims[1:], dtype=np.int64)) * dtype.itemsize
            if count * item > IDX_MAX_BYTES:  # a gzip file can inflate to any size: read no more than this
                raise UserError(f"IDX file {path.name} declares {count * item / 2**30:.1f} GiB of data, more than the "
                                f"{IDX_MAX_BYTES / 2**30:.0f} GiB edgepress reads",
                                fix="set a limit on the dataset in the recipe, or check the file")
            data = _read_up_to(stream, count * item)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UserError(f"cannot read IDX file {path.name} ({type(exc).__name__}: {exc})",
                        fix="re-create or re-download the file") from None
    if len(data) < count * item:
        raise UserError(f"IDX file {path.name} is truncated: header says {dims[0]} items of shape {dims[1:]}, "
                        f"data holds {len(data) // max(item, 1)}", fix="re-create or re-download the file")
    # Native byte order so downstream code never sees a big-endian dtype.
    return np.frombuffer(data, dtype=dtype).reshape([count, *dims[1:]]).astype(dtype.newbyteorder("="))


def preprocess(*, images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 N x H x W[x C] -> float32 N x C x H x W: x * scale, then (x - mean) / std per channel."""
    if images.ndim not in (3, 4):
        raise UserError(f"images have shape {list(images.shape)}", fix="pass N x H x W or N x H x W x C images")
    hwc = images[..., None] if images.ndim == 3 else images
    channels = hwc.shape[-1]
    if spec.mean and len(spec.mean) != channels:
        raise UserError(f"[data.preprocess] mean/std have {len(spec.mean)} values but images have {channels} "
                        "channel(s)", fix=f"give {channels} mean and std value(s)")
    # One float32 buffer, filled and normalised in place: no float64 or second full-size copy.
    out = np.empty((hwc.shape[0], channels, hwc.shape[1], hwc.shape[2]), dtype=np.float32)
    np.multiply(hwc.transpose(0, 3, 1, 2), np.float32(spec.scale), out=out, casting="unsafe")
    for c, (mean, std) in enumerate(zip(spec.mean, spec.std)):
        out[:, c] -= np.float32(mean)
        out[:, c] /= np.float32(std)
    return out
