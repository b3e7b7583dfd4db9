"""Data for checks and experiments: synthetic Gaussian inputs, the MNIST IDX loader, and
:func:`load_classification` (MNIST, else scikit-learn's digits with a note saying so).

MNIST is read from a directory given as an argument or by the ``VARPROP_MNIST_DIR``
environment variable; files may be gzipped (``t10k-images-idx3-ubyte.gz``) or raw. Nothing
is downloaded. Standardization uses the *training split's* mean and std only, and the same
numbers are applied to the validation split.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from varprop._src.errors import InputError

ENV_VAR = "VARPROP_MNIST_DIR"

_IMAGE_NAMES = ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
_LABEL_NAMES = ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte")


class DataNotFoundError(FileNotFoundError):
    """MNIST files are missing; the message says where we looked and how to get them."""


#: IDX type codes and the NumPy dtypes they hold (big-endian on disk).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(p: Path) -> bytes:
    """The file's bytes (gunzipped when the name ends in ``.gz``), or an ``InputError``."""

    def bad(what: str) -> InputError:
        return InputError(f"MNIST file {str(p)!r} {what}", kind="data")

    try:
        if p.suffix != ".gz":
            return p.read_bytes()
        with gzip.open(p, "rb") as fh:
            return fh.read()
    except EOFError:
        raise bad(
            "is a truncated gzip file (it ends before the compressed stream does); "
            "download it again"
        ) from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise bad(
            f"is not a valid gzip file ({e}); a .gz name needs a gzipped IDX file, "
            "a raw IDX file must not end in .gz"
        ) from None
    except OSError as e:
        raise bad(f"cannot be read: {e.strerror or e}") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped when its name ends in ``.gz``, else raw) into an array.

    Raises:
        InputError: (``kind="data"``) the file cannot be read or is not a complete IDX file:
            empty, truncated, corrupt gzip, wrong magic number, unknown type code, or a
            size that does not match its header. The message names the file and what is
            wrong.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "tiny-idx1-ubyte"
        >>> _ = f.write_bytes(bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 8, 9]))
        >>> read_idx(f)
        array([7, 8, 9], dtype=uint8)
        >>> _ = f.write_bytes(bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7]))
        >>> read_idx(f)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        varprop._src.errors.InputError: MNIST file '...tiny-idx1-ubyte' is truncated: ...
    """
    p = Path(path)
    raw = _read_bytes(p)

    def bad(what: str) -> InputError:
        return InputError(f"MNIST file {str(p)!r} {what}", kind="data")

    if not raw:
        raise bad("is empty; expected an IDX file (2 zero bytes, type code, dimension count)")
    if raw[:2] == b"\x1f\x8b":
        raise bad("is gzipped but its name does not end in .gz; rename it to end in .gz")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise bad(
            f"is not an IDX file: it starts with bytes {raw[:4].hex(' ')}, an IDX file starts "
            "with 00 00, a type code and the number of dimensions"
        )
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code not in _IDX_DTYPES:
        allowed = ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
        raise bad(f"has unknown IDX data type 0x{dtype_code:02x}; allowed: {allowed}")
    if ndim == 0:
        raise bad("declares 0 dimensions; an IDX file has at least 1")
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise bad(
            f"is truncated: its header declares {ndim} dimensions ({offset} header bytes) "
            f"but the file has {len(raw)} bytes"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:offset])
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    count = math.prod(dims)
    expected = count * dtype.itemsize
    got = len(raw) - offset
    if got != expected:
        what = "is truncated" if got < expected else "has trailing bytes"
        raise bad(
            f"{what}: its header says shape {tuple(dims)} ({expected} data bytes) but it "
            f"holds {got} data bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    return data.reshape(dims).astype(dtype.newbyteorder("="))


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def mnist_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The directory to read MNIST from: the argument, else ``$VARPROP_MNIST_DIR``."""
    d = data_dir if data_dir is not None else os.environ.get(ENV_VAR)
    if d is None:
        raise DataNotFoundError(
            f"no MNIST directory given: pass --data-dir DIR (or data_dir=...) or set {ENV_VAR} "
            "to a directory holding the IDX files (t10k-images-idx3-ubyte[.gz], "
            "t10k-labels-idx1-ubyte[.gz], and optionally the train-* files), as published on "
            "Yann LeCun's MNIST page"
        )
    return Path(d)


def load_mnist(data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All MNIST images found in the directory as ``(N, 784)`` float32 in [0, 1], and labels.

    Uses the train files when present, else the t10k ones (the test set: 10,000 images).

    Raises:
        DataNotFoundError: no image/label file pair in the directory.
        InputError: (``kind="data"``) a file is not a valid IDX file, or the images are not
            ``(N, 28, 28)`` uint8, the labels not ``(N,)`` uint8, or their counts differ.
    """
    d = mnist_dir(data_dir)
    if not d.is_dir():
        what = "is not a directory" if d.exists() else "does not exist"
        raise DataNotFoundError(f"MNIST directory {str(d)!r} {what}")
    for img_name, lab_name in zip(_IMAGE_NAMES, _LABEL_NAMES, strict=True):
        img, lab = _find(d, img_name), _find(d, lab_name)
        if img is not None and lab is not None:
            images, labels = read_idx(img), read_idx(lab)
            if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
                raise InputError(
                    f"MNIST file {str(img)!r} holds {images.dtype} values of shape "
                    f"{images.shape}; expected uint8 images of shape (N, 28, 28)",
                    kind="data",
                )
            if labels.ndim != 1 or labels.dtype != np.uint8:
                raise InputError(
                    f"MNIST file {str(lab)!r} holds {labels.dtype} values of shape "
                    f"{labels.shape}; expected uint8 labels of shape (N,)",
                    kind="data",
                )
            if len(images) != len(labels):
                raise InputError(
                    f"MNIST file {str(img)!r} has {len(images)} images but {str(lab)!r} has "
                    f"{len(labels)} labels; they must be the same split",
                    kind="data",
                )
            if len(images) < 2:
                raise InputError(
                    f"MNIST file {str(img)!r} has {len(images)} images; at least 2 are needed",
                    kind="data",
                )
            x = images.reshape(-1, 28 * 28).astype(np.float32) / np.float32(255.0)
            return x, labels.astype(np.int32)
    raise DataNotFoundError(
        f"no MNIST IDX files in {str(d)!r}: expected t10k-images-idx3-ubyte[.gz] and "
        "t10k-labels-idx1-ubyte[.gz] (or the train-* pair)"
    )


@dataclass(frozen=True)
class Split:
    """Standardized train/validation split; ``mean``/``std`` are the training split's."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    mean: float
    std: float


def standardize_split(
    x: np.ndarray, y: np.ndarray, valid_fraction: float = 0.2, seed: int = 0
) -> Split:
    """Shuffle, split, and standardize both parts with the training part's mean and std.

    The validation data is standardized with the *training* statistics, so both live on
    the same scale (fast.ai, "Deep learning from the foundations", lesson 8).
    """
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))
    n_valid = round(len(x) * valid_fraction)
    vi, ti = idx[:n_valid], idx[n_valid:]
    mean = float(np.mean(x[ti], dtype=np.float64))
    std = float(np.std(x[ti], dtype=np.float64))
    if std == 0:
        raise InputError(
            f"the training split ({len(ti)} examples) has zero standard deviation (every value "
            "is the same), so it cannot be standardized",
            kind="data",
        )
    xt = ((x[ti] - mean) / std).astype(np.float32)
    xv = ((x[vi] - mean) / std).astype(np.float32)
    return Split(xt, y[ti], xv, y[vi], mean, std)


def standardized_mnist(data_dir: str | os.PathLike | None = None) -> np.ndarray:
    """MNIST images standardized with the training split's mean and std (the train part)."""
    x, y = load_mnist(data_dir)
    return standardize_split(x, y).x_train


def near(value: float, target: float, tol: float = 1e-1) -> bool:
    """Whether ``value`` is within ``tol`` of ``target`` ("close to zero / one" test)."""
    return abs(value - target) <= tol


# -- classification data for the training experiments ---------------------------------------

#: Where the MNIST IDX files are published (any mirror with the same four file names works).
MNIST_URL = "https://yann.lecun.com/exdb/mnist/"


@dataclass(frozen=True)
class Dataset:
    """A labelled image data set, flattened, with where it came from.

    Attributes:
        x: ``(N, D)`` float32 images in [0, 1], flattened.
        y: ``(N,)`` int32 labels in ``0 .. n_classes - 1``.
        source: ``"mnist"`` or ``"digits"`` (scikit-learn's 8x8 digits, the fallback).
        note: one sentence for a report: what was loaded, or why MNIST was not and how to
            get it.
        image_shape: the unflattened shape of one image, ``(28, 28)`` or ``(8, 8)``.
        n_classes: number of classes (10 for both).
    """

    x: np.ndarray
    y: np.ndarray
    source: str
    note: str
    image_shape: tuple[int, int]
    n_classes: int = 10


def _how_to_get_mnist(reason: str) -> str:
    return (
        f"{reason}. To use MNIST, download the IDX files (t10k-images-idx3-ubyte.gz and "
        f"t10k-labels-idx1-ubyte.gz, optionally the train-* pair) from {MNIST_URL} or a mirror "
        f"into a directory and pass --data-dir DIR (data_dir=DIR) or set {ENV_VAR}=DIR"
    )


def load_digits_dataset(note: str = "") -> Dataset:
    """scikit-learn's digits (1,797 8x8 images, shipped with the package), scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    data, target = load_digits(return_X_y=True)
    x = (np.asarray(data, np.float32) / np.float32(16.0)).astype(np.float32)
    y = np.asarray(target, np.int32)
    return Dataset(x, y, "digits", note or "scikit-learn digits (1,797 8x8 images)", (8, 8))


def load_classification(
    data_dir: str | os.PathLike | None = None, *, allow_fallback: bool = True
) -> Dataset:
    """MNIST from ``data_dir`` (else ``$VARPROP_MNIST_DIR``), else scikit-learn's digits.

    Never falls back to noise: when MNIST is missing the returned :attr:`Dataset.note` says
    so and how to get it, and the images are scikit-learn's real 8x8 digits.

    Args:
        data_dir: directory of the MNIST IDX files (gzipped or raw).
        allow_fallback: when False, a missing MNIST raises instead of falling back.

    Raises:
        DataNotFoundError: MNIST is missing and ``allow_fallback`` is False; the message names
            the directory looked at (or says none was given) and how to get the files.
        InputError: (a ``ValueError``, ``kind="data"``) the directory holds files that are
            not valid MNIST IDX files (never masked by the fallback).
    """
    try:
        x, y = load_mnist(data_dir)
    except DataNotFoundError as err:
        if not allow_fallback:
            raise DataNotFoundError(_how_to_get_mnist(str(err))) from err
        d = data_dir if data_dir is not None else os.environ.get(ENV_VAR)
        where = f"in {str(d)!r}" if d is not None else f"(no --data-dir and no ${ENV_VAR})"
        note = _how_to_get_mnist(
            f"MNIST not found {where}; fell back to scikit-learn's digits (1,797 real 8x8 "
            "images shipped with scikit-learn)"
        )
        return load_digits_dataset(note)
    d = mnist_dir(data_dir)
    return Dataset(x, y, "mnist", f"MNIST: {len(x):,} 28x28 images read from {str(d)!r}", (28, 28))
