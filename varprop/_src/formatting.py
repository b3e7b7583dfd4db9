"""Numbers as the checkers print them, and results as JSON can hold them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def fmt(v: float | None, digits: int = 3) -> str:
    """``-`` for None, ``0`` for 0, else ``digits`` significant digits.

    >>> fmt(None), fmt(0.0), fmt(1.23456), fmt(float("inf"))
    ('-', '0', '1.23', 'inf')
    """
    if v is None:
        return "-"
    if v == 0:
        return "0"
    if not math.isfinite(v):
        return str(v)
    return f"{v:.{digits}g}"


def clean(x: Any) -> Any:
    """A result as plain JSON values: non-finite floats become None (JSON has no NaN),
    NumPy scalars become Python ones, tuples become lists.

    >>> clean({"a": (1.5, float("nan")), "b": np.float32(2.0), "c": np.bool_(True)})
    {'a': [1.5, None], 'b': 2.0, 'c': True}
    """
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [clean(v) for v in x]
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, float | np.floating):
        f = float(x)
        return f if math.isfinite(f) else None
    if isinstance(x, np.integer):
        return int(x)
    return x
