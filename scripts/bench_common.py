"""Helpers the benchmark scripts share (``bench_check.py``, ``bench_check_model.py``,
``bench_solve_init.py``): medians, ratios and the numbers of their tables."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def median(xs: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    if not xs:
        raise ValueError("median of no values")
    return float(statistics.median(xs))


def ratio(num: float | None, den: float | None) -> float | None:
    """``num / den``, or None when either is missing or ``den`` is not positive."""
    if num is None or den is None or den <= 0:
        return None
    return num / den


def fmt(x: float | None, digits: int = 3) -> str:
    """A number with ``digits`` decimals, or an em dash for a missing one."""
    return "—" if x is None else f"{x:.{digits}f}"
