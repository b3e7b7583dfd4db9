"""The MNIST IDX reader refuses unusable files with one InputError(kind="data") naming the file
and what is wrong (before: EOFError, gzip.BadGzipFile, struct.error, IndexError escaped)."""

from __future__ import annotations

import gzip
import re
import struct

import numpy as np
import pytest

from varprop._src.data import DataNotFoundError, load_mnist, read_idx, standardize_split
from varprop._src.errors import InputError


def _gz(data: bytes) -> bytes:
    """gzip with a fixed header time: the same bytes in every process, so parametrized test
    ids built from them agree between pytest-xdist workers."""
    return gzip.compress(data, mtime=0)


def idx_bytes(values: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, values.ndim]) + struct.pack(f">{values.ndim}I", *values.shape)
    return header + values.astype(values.dtype.newbyteorder(">")).tobytes()


def images(n: int = 3) -> np.ndarray:
    return (np.arange(n * 28 * 28) % 256).astype(np.uint8).reshape(n, 28, 28)


def write_pair(d, imgs: bytes, labs: bytes, gz: bool = False):
    suffix = ".gz" if gz else ""
    opener = gzip.compress if gz else (lambda b: b)
    (d / f"t10k-images-idx3-ubyte{suffix}").write_bytes(opener(imgs))
    (d / f"t10k-labels-idx1-ubyte{suffix}").write_bytes(opener(labs))


def test_reads_raw_and_gzipped(tmp_path):
    x = images()
    (tmp_path / "a").write_bytes(idx_bytes(x))
    (tmp_path / "a.gz").write_bytes(_gz(idx_bytes(x)))
    for name in ("a", "a.gz"):
        got = read_idx(tmp_path / name)
        assert got.dtype == np.uint8 and got.shape == (3, 28, 28)
        np.testing.assert_array_equal(got, x)
    f = np.array([1.5, -2.0], np.float32)
    (tmp_path / "f").write_bytes(idx_bytes(f, 0x0D))
    got = read_idx(tmp_path / "f")
    assert got.dtype == np.float32 and got.dtype.byteorder in ("=", "|", "<")
    np.testing.assert_array_equal(got, f)


GOOD = idx_bytes(images(2))


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("empty", b"", "is empty"),
        ("short", b"\x00\x00", "is not an IDX file"),
        ("magic", b"PK\x03\x04" + GOOD[4:], "starts with bytes 50 4b 03 04"),
        ("dtype", b"\x00\x00\x07\x01" + GOOD[4:], "unknown IDX data type 0x07"),
        ("nodims", b"\x00\x00\x08\x00", "0 dimensions"),
        ("header", GOOD[:9], "header declares 3 dimensions (16 header bytes)"),
        ("data", GOOD[:-5], "is truncated: its header says shape (2, 28, 28)"),
        ("trailing", GOOD + b"\x00", "has trailing bytes"),
        ("gz-named-raw", _gz(GOOD), "is gzipped but its name does not end in .gz"),
        ("huge", b"\x00\x00\x08\x03" + b"\xff" * 12, "is truncated"),
    ],
)
def test_bad_raw_files(tmp_path, name, content, match):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(InputError, match=re.escape(match)) as e:
        read_idx(p)
    assert e.value.kind == "data"
    assert str(p) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (_gz(GOOD)[:-12], "truncated gzip file"),  # EOFError before
        (GOOD, "not a valid gzip file"),  # gzip.BadGzipFile before
        (b"", "is empty"),
        (_gz(GOOD)[:20] + b"\xff" * 40 + _gz(GOOD)[60:], "gzip"),  # zlib
        (_gz(b"\x00\x00\x08"), "is not an IDX file"),  # IndexError before
        (_gz(b"\x00\x00\x08\x02\x00\x00"), "is truncated"),  # struct.error before
    ],
)
def test_bad_gzip_files(tmp_path, content, match):
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(content)
    with pytest.raises(InputError, match=re.escape(match)) as e:
        read_idx(p)
    assert e.value.kind == "data" and str(p) in str(e.value)


def test_unreadable_path_is_data_error(tmp_path):
    with pytest.raises(InputError, match="cannot be read") as e:
        read_idx(tmp_path)  # a directory
    assert e.value.kind == "data"


def test_load_mnist_checks_shapes_and_counts(tmp_path):
    write_pair(tmp_path, idx_bytes(images(3)), idx_bytes(np.array([1, 2, 3], np.uint8)), gz=True)
    x, y = load_mnist(tmp_path)
    assert x.shape == (3, 784) and x.dtype == np.float32 and y.tolist() == [1, 2, 3]

    write_pair(tmp_path, idx_bytes(images(3)), idx_bytes(np.array([1, 2], np.uint8)), gz=True)
    with pytest.raises(InputError, match=r"has 3 images but .* has 2 labels"):
        load_mnist(tmp_path)
    write_pair(
        tmp_path,
        idx_bytes(np.zeros((3, 8, 8), np.uint8)),
        idx_bytes(np.zeros(3, np.uint8)),
        gz=True,
    )
    with pytest.raises(InputError, match=r"shape \(3, 8, 8\); expected uint8 images"):
        load_mnist(tmp_path)
    write_pair(tmp_path, idx_bytes(images(1)), idx_bytes(np.array([1], np.uint8)), gz=True)
    with pytest.raises(InputError, match="has 1 images; at least 2"):
        load_mnist(tmp_path)


def test_missing_directory_is_not_found(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_mnist(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataNotFoundError, match="is not a directory"):
        load_mnist(tmp_path / "file")


def test_constant_images_cannot_be_standardized():
    with pytest.raises(InputError, match="zero standard deviation") as e:
        standardize_split(np.ones((10, 4), np.float32), np.zeros(10, np.int32))
    assert e.value.kind == "data"
