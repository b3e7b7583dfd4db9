"""Data for checks and experiments: synthetic Gaussian inputs and the MNIST IDX loader.

MNIST is read from a directory given as an argument or by the ``VARPROP_MNIST_DIR``
environment variable; files may be gzipped (``t10k-images-idx3-ubyte.gz``) or raw. Nothing
is downloaded. Standardization uses the *training split's* mean and std only, and the same
numbers are applied to the validation split.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ENV_VAR = "VARPROP_MNIST_DIR"

_IMAGE_NAMES = ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
_LABEL_NAMES = ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte")


class DataNotFoundError(FileNotFoundError):
    """MNIST files are missing; the message says where we looked and how to get them."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or raw) into a NumPy array.

    Raises:
        ValueError: the file is not an IDX file (bad magic number or size).
    """
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{p} is not an IDX file (bad magic number)")
    dtype_code, ndim = raw[2], raw[3]
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if dtype_code not in dtypes:
        raise ValueError(f"{p}: unknown IDX data type 0x{dtype_code:02x}")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(
            f"{p}: expected {int(np.prod(dims))} values for shape {dims}, got {data.size}"
        )
    return data.reshape(dims).astype(dtypes[dtype_code][1:])


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
    """
    d = mnist_dir(data_dir)
    if not d.is_dir():
        raise DataNotFoundError(f"MNIST directory {str(d)!r} does not exist")
    for img_name, lab_name in zip(_IMAGE_NAMES, _LABEL_NAMES, strict=True):
        img, lab = _find(d, img_name), _find(d, lab_name)
        if img is not None and lab is not None:
            x = read_idx(img).reshape(-1, 28 * 28).astype(np.float32) / 255.0
            y = read_idx(lab).astype(np.int32)
            if len(x) != len(y):
                raise ValueError(f"{img} has {len(x)} images but {lab} has {len(y)} labels")
            return x, y
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
        raise ValueError("the training split has zero standard deviation")
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
