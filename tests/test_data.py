"""Numpy-only dataset readers (npz, IDX, built-ins) and preprocessing."""

from __future__ import annotations

import gzip
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgepress.core.datapath import DATA_ENV, data_root
from edgepress.core.errors import UserError
from edgepress.models.data import DIGITS_TEST_SIZE, RawDataset, load_dataset, preprocess
from edgepress.core.data_spec import DatasetSpec, PreprocessSpec

_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


def write_idx(path: Path, array: np.ndarray, *, gz: bool, magic: bytes | None = None) -> Path:
    header = magic or bytes([0, 0, _IDX_CODES[array.dtype], array.ndim])
    dims = np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + dims + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def rng_images(n: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def test_reader_does_not_import_torch() -> None:
    code = ("import sys, edgepress.models, edgepress.models.data; "
            "assert 'torch' not in sys.modules and 'sklearn' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_npz_round_trip_and_limit(tmp_path: Path) -> None:
    images, labels = rng_images(20, 5, 6, 3), np.arange(20, dtype=np.uint8) % 4
    np.savez(tmp_path / "set.npz", images=images, labels=labels)
    full = load_dataset(DatasetSpec(path=tmp_path / "set.npz"))
    assert isinstance(full, RawDataset) and full.name == "set.npz"
    assert np.array_equal(full.images, images) and full.images.dtype == np.uint8
    assert full.labels.dtype == np.int64 and np.array_equal(full.labels, labels)
    part = load_dataset(DatasetSpec(path=tmp_path / "set.npz", limit=7, label="mine"))
    assert part.name == "mine" and part.images.shape == (7, 5, 6, 3)
    assert np.array_equal(part.labels, labels[:7])


@pytest.mark.parametrize("gz", [True, False])
def test_idx_gz_and_raw(tmp_path: Path, gz: bool) -> None:
    images, labels = rng_images(12, 9, 7), (np.arange(12) % 10).astype(np.uint8)
    spec = DatasetSpec(images=write_idx(tmp_path / "img.idx", images, gz=gz),
                       labels=write_idx(tmp_path / "lbl.idx", labels, gz=gz))
    loaded = load_dataset(spec)
    assert np.array_equal(loaded.images, images) and np.array_equal(loaded.labels, labels)
    assert loaded.labels.dtype == np.int64
    limited = load_dataset(DatasetSpec(images=spec.images, labels=spec.labels, limit=5))
    assert np.array_equal(limited.images, images[:5]) and len(limited.labels) == 5


def test_idx_colour_images_and_int32_labels(tmp_path: Path) -> None:
    images, labels = rng_images(4, 3, 3, 3), np.array([0, 5, 1000, 2], dtype=np.int32)
    loaded = load_dataset(DatasetSpec(images=write_idx(tmp_path / "i", images, gz=False),
                                      labels=write_idx(tmp_path / "l", labels, gz=True)))
    assert loaded.images.shape == (4, 3, 3, 3) and loaded.labels.tolist() == [0, 5, 1000, 2]


def test_digits_split_is_fixed_stratified_and_disjoint() -> None:
    train = load_dataset(DatasetSpec(dataset="digits:train"))
    test = load_dataset(DatasetSpec(dataset="digits:test"))
    assert len(test.labels) == DIGITS_TEST_SIZE == 360 and len(train.labels) == 1797 - 360
    assert train.images.shape[1:] == (8, 8) and train.images.dtype == np.uint8
    assert train.images.max() == 255 and set(np.unique(train.images)) <= {round(v * 255 / 16) for v in range(17)}
    per_class = np.bincount(test.labels, minlength=10)
    assert per_class.min() >= 34 and per_class.max() <= 38  # about 1/5 of each ~180-image class
    again = load_dataset(DatasetSpec(dataset="digits:test"))
    assert np.array_equal(again.images, test.images) and np.array_equal(again.labels, test.labels)
    # Disjoint: no test image (with its label) appears in train.
    train_rows = {(img.tobytes(), int(lbl)) for img, lbl in zip(train.images, train.labels)}
    assert sum((img.tobytes(), int(lbl)) in train_rows for img, lbl in zip(test.images, test.labels)) <= 2
    assert np.bincount(np.concatenate([train.labels, test.labels])).sum() == 1797


def test_digits_are_read_from_sklearns_file_as_its_own_loader_reads_them() -> None:
    """The set is read without importing sklearn.datasets (1.7 s per command): the same numbers as its loader."""
    from sklearn.datasets import load_digits

    from edgepress.models.data import _digits_table

    table = _digits_table()
    digits = load_digits()
    assert np.array_equal(table[:, :64], digits.data) and np.array_equal(table[:, 64].astype(int), digits.target)
    code = ("import sys; from edgepress.models.data import load_dataset; from edgepress.core.data_spec import DatasetSpec; "
            "load_dataset(DatasetSpec(dataset='digits:test')); print('sklearn.datasets' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_preprocess_colour_values_and_layout() -> None:
    images = np.zeros((2, 4, 5, 3), dtype=np.uint8)
    images[0, 1, 2] = (255, 0, 51)
    spec = PreprocessSpec(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    out = preprocess(images=images, spec=spec)
    assert out.shape == (2, 3, 4, 5) and out.dtype == np.float32
    assert np.allclose(out[0, :, 1, 2], [1.0, -1.0, 0.1], atol=1e-6)
    assert np.allclose(out[1, 0], -1.0) and np.allclose(out[1, 2], 0.0)
    expected = (images.astype(np.float64) / 255 - np.array(spec.mean)) / np.array(spec.std)
    assert np.allclose(out, expected.transpose(0, 3, 1, 2), atol=1e-6)


def test_preprocess_grayscale_and_scale_only() -> None:
    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    out = preprocess(images=images, spec=PreprocessSpec(scale=2.0))
    assert out.shape == (2, 1, 3, 3) and np.array_equal(out[:, 0], images * 2.0)
    norm = preprocess(images=images, spec=PreprocessSpec(mean=(0.1307,), std=(0.3081,)))
    assert np.allclose(norm[:, 0], (images / 255 - 0.1307) / 0.3081, atol=1e-6)


def test_preprocess_channel_count_mismatch() -> None:
    with pytest.raises(UserError, match="3 values but images have 1 channel"):
        preprocess(images=np.zeros((1, 4, 4), np.uint8), spec=PreprocessSpec(mean=(0, 0, 0), std=(1, 1, 1)))


def test_unknown_builtin_names_closest() -> None:
    with pytest.raises(UserError) as caught:
        load_dataset(DatasetSpec(dataset="fashion_mnist:tset"))
    assert "'fashion_mnist:tset'" in str(caught.value) and "'fashion_mnist:test'" in caught.value.fix
    with pytest.raises(UserError, match="digits:test"):
        load_dataset(DatasetSpec(dataset="digit:test"))
    with pytest.raises(UserError, match="unknown built-in dataset"):
        load_dataset(DatasetSpec(dataset="cifar10:../weights/resnet20"))


def test_missing_builtin_data_mentions_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    for name in ("fashion_mnist:train", "cifar10:test_raw_1017"):
        with pytest.raises(UserError, match=DATA_ENV) as caught:
            load_dataset(DatasetSpec(dataset=name))
        assert str(tmp_path) in str(caught.value)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(DatasetSpec(path=tmp_path / "absent.npz"))
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(DatasetSpec(images=tmp_path / "i.gz", labels=tmp_path / "l.gz"))


def test_npz_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "keys.npz", x=np.zeros((2, 3, 3), np.uint8), y=np.zeros(2))
    with pytest.raises(UserError, match=r"has arrays \['x', 'y'\], not 'images' and 'labels'"):
        load_dataset(DatasetSpec(path=tmp_path / "keys.npz"))
    np.savez(tmp_path / "len.npz", images=rng_images(5, 3, 3), labels=np.zeros(4, np.int64))
    with pytest.raises(UserError, match="5 images but 4 labels"):
        load_dataset(DatasetSpec(path=tmp_path / "len.npz"))
    np.savez(tmp_path / "float.npz", images=np.zeros((2, 3, 3), np.float32), labels=np.zeros(2, np.int64))
    with pytest.raises(UserError, match="float32 images"):
        load_dataset(DatasetSpec(path=tmp_path / "float.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not an archive at all")
    with pytest.raises(UserError, match="not a readable npz"):
        load_dataset(DatasetSpec(path=tmp_path / "junk.npz"))


def test_idx_errors(tmp_path: Path) -> None:
    labels = write_idx(tmp_path / "l", np.zeros(3, np.uint8), gz=True)
    bad_magic = write_idx(tmp_path / "m", rng_images(3, 2, 2), gz=True, magic=b"\x08\x03\x00\x00")
    with pytest.raises(UserError, match="bad magic 08030000"):
        load_dataset(DatasetSpec(images=bad_magic, labels=labels))
    floats = write_idx(tmp_path / "f", np.zeros((3, 2, 2), np.float32), gz=False)
    with pytest.raises(UserError, match="float32 images"):
        load_dataset(DatasetSpec(images=floats, labels=labels))
    good = write_idx(tmp_path / "g", rng_images(3, 4, 4), gz=False)
    short = tmp_path / "short"
    short.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(UserError, match="truncated"):
        load_dataset(DatasetSpec(images=short, labels=labels))
    more_labels = write_idx(tmp_path / "l5", np.zeros(5, np.uint8), gz=False)
    with pytest.raises(UserError, match="3 images but 5 labels"):
        load_dataset(DatasetSpec(images=good, labels=more_labels))


needs_real_data = pytest.mark.skipif(
    not (data_root() / "fashion_mnist").is_dir() or not (data_root() / "cifar10").is_dir(),
    reason=f"shared data not found at {data_root()} (set {DATA_ENV} to the shared data folder)")


@needs_real_data
def test_fashion_mnist_real_files() -> None:
    train = load_dataset(DatasetSpec(dataset="fashion_mnist:train"))
    test = load_dataset(DatasetSpec(dataset="fashion_mnist:test"))
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert np.array_equal(np.bincount(test.labels), np.full(10, 1000))
    head = load_dataset(DatasetSpec(dataset="fashion_mnist:train", limit=100))
    assert np.array_equal(head.images, train.images[:100]) and np.array_equal(head.labels, train.labels[:100])


@needs_real_data
def test_cifar10_builtin() -> None:
    raw = load_dataset(DatasetSpec(dataset="cifar10:test_raw_1017", limit=10))
    assert raw.images.shape == (10, 32, 32, 3) and raw.name == "cifar10:test_raw_1017"
    assert raw.labels.tolist()[:4] == [3, 8, 8, 0]  # cat, ship, ship, airplane: the official test order
    with pytest.raises(UserError, match="'cifar10:test_raw_1017'"):
        load_dataset(DatasetSpec(dataset="cifar10:test_raw_1016"))


def test_a_gzip_idx_file_declaring_more_than_can_be_read_is_refused_before_reading(tmp_path: Path) -> None:
    # 93 GiB declared in a 40-byte file: a gzip bomb would inflate to whatever its header promises.
    header = bytes([0, 0, 0x08, 3]) + np.array([100_000, 1_000, 1_000], dtype=">u4").tobytes()
    (tmp_path / "img.gz").write_bytes(gzip.compress(header + bytes(16)))
    labels = write_idx(tmp_path / "lbl.idx", np.zeros(4, dtype=np.uint8), gz=True)
    with pytest.raises(UserError, match=r"declares 93\.1 GiB of data, more than the 4 GiB"):
        load_dataset(DatasetSpec(images=tmp_path / "img.gz", labels=labels))


def _mostly_black_npz(path: Path, *, count: int, side: int) -> Path:
    """np.savez_compressed of `count` black side x side images with an 8 x 8 patch of noise: deflates far past 16x."""
    images = np.zeros((count, side, side), dtype=np.uint8)
    images[:, :8, :8] = np.random.default_rng(0).integers(0, 256, size=(count, 8, 8), dtype=np.uint8)
    np.savez_compressed(path, images=images, labels=np.arange(count, dtype=np.int64) % 10)
    return path


def _unpacked(path: Path) -> int:
    with zipfile.ZipFile(path) as archive:
        return sum(info.file_size for info in archive.infolist())


def test_an_honest_compressed_npz_past_the_old_ratio_and_size_loads(tmp_path: Path) -> None:
    # 264 MiB unpacked from about half a MiB: the old test (16x and over 256 MiB) called this a zip bomb.
    path = _mostly_black_npz(tmp_path / "black.npz", count=2700, side=320)
    assert _unpacked(path) > 256 << 20
    assert path.stat().st_size * 16 < 256 << 20
    raw = load_dataset(DatasetSpec(path=path))
    assert raw.images.shape == (2700, 320, 320) and raw.labels[:3].tolist() == [0, 1, 2]


@pytest.mark.parametrize("count, side, limit_mib, refused", [
    (64, 256, 3, True),  # 4 MiB of images from a few KiB
    (200, 128, 2, True),
    (16, 512, 4, True),  # 4 MiB of images, and the labels and headers go over
    (16, 512, 5, False),
    (64, 64, 1, False),
])
def test_npz_past_the_unpack_limit_is_refused_whatever_its_ratio(tmp_path: Path, count, side, limit_mib, refused) -> None:
    from edgepress.core.archives import check_npz

    path = _mostly_black_npz(tmp_path / "data.npz", count=count, side=side)
    unpacked = _unpacked(path)
    assert unpacked > 16 * path.stat().st_size  # each one a "zip bomb" by the old ratio
    if not refused:
        check_npz(path, what="dataset file", fix="f", limit=limit_mib << 20)
        return
    with pytest.raises(UserError, match=rf"data\.npz would unpack to {unpacked >> 20} MiB, more than the "
                       rf"{limit_mib} MiB edgepress unpacks .*fix: split it into smaller files"):
        check_npz(path, what="dataset file", fix="f", limit=limit_mib << 20)


def test_the_default_unpack_limit_is_8_gib_or_half_the_free_memory() -> None:
    from edgepress.core import archives

    limit = archives.unpack_limit()
    assert 0 < limit <= 8 << 30
    available = archives._available_memory()
    if available is not None:
        assert limit == min(8 << 30, available // 2)
