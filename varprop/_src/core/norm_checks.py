"""Validation of the normalization layers' static configuration: epsilon, momentum,
masks, group counts, choices and axes. Called on Python values (never on tracers) by the
pure functions of :mod:`varprop._src.core.normalizers` and by the Flax modules; each raises
:class:`~varprop._src.errors.InputError` or ``ValueError`` naming the bad value and what is
allowed.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Literal

import jax
import numpy as np

from varprop._src.errors import InputError

Axes = int | Sequence[int]
Algorithm = Literal["stable", "fast"]
RunningVarMode = Literal["biased", "unbiased"]

#: Allowed values of ``algorithm``.
ALGORITHMS: tuple[str, ...] = ("stable", "fast")
#: Allowed values of ``running_var_mode``.
RUNNING_VAR_MODES: tuple[str, ...] = ("biased", "unbiased")


# ---------------------------------------------------------------------------------------
# Validation of static configuration (raises; called on Python values, never on tracers)
# ---------------------------------------------------------------------------------------


def _is_number(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_epsilon(epsilon: object) -> None:
    """Raise ``InputError`` unless ``epsilon`` is a finite number ≥ 0 (JAX arrays pass).

    ``epsilon = 0`` is allowed; a group with zero variance then normalizes to 0 (output β)
    instead of 0/0 (see :func:`normalize`).
    """
    if isinstance(epsilon, jax.Array):
        return  # traced or device values: checked by the caller if at all
    if not _is_number(epsilon):
        raise InputError(
            f"epsilon must be a finite number >= 0 (a Python or NumPy real); got "
            f"epsilon={epsilon!r} of type {type(epsilon).__name__}"
        )
    if not (math.isfinite(epsilon) and epsilon >= 0):  # type: ignore[arg-type]
        raise InputError(
            f"epsilon must be a finite number >= 0 (it is added to the variance before the "
            f"square root); got epsilon={epsilon!r}"
        )


def check_mask_not_empty(mask: object) -> None:
    """Raise ``InputError`` if a concrete ``mask`` selects no element at all.

    A traced mask (under ``jit``) cannot be inspected; then the defined result applies:
    every group without a valid element is normalized to 0 (output β) and BatchNorm keeps
    its running statistics.
    """
    if mask is None:
        return
    try:
        arr = np.asarray(mask)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    if not arr.any():
        shape = arr.shape
        raise InputError(
            f"mask (shape {shape}) is all False: no element enters the statistics, so there "
            "is no mean or variance to normalize with; allowed: a mask with at least one True "
            "element, or mask=None (a feature group without one is output as beta)"
        )


def check_momentum(momentum: object) -> None:
    """Raise ``ValueError`` unless ``momentum`` is in [0, 1] (traced values pass)."""
    if _is_number(momentum) and not (0.0 <= momentum <= 1.0):  # type: ignore[operator]
        raise ValueError(
            f"momentum must be in [0, 1] (Flax convention: the fraction of the running "
            f"statistic kept at each step, running <- m*running + (1-m)*batch; convert a "
            f"PyTorch momentum with momentum_from_torch); got momentum={momentum!r}"
        )


def check_choice(name: str, value: object, allowed: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}; got {name}={value!r}")


def check_num_groups(value: object, num_features: int, name: str = "num_groups") -> None:
    """Raise ``ValueError`` unless ``value`` of the option ``name`` (``num_groups`` or
    ``group_size``) is a positive divisor of ``num_features``."""
    if (
        not isinstance(value, numbers.Integral)
        or isinstance(value, bool)
        or value <= 0
        or num_features % int(value) != 0
    ):
        divisors = [d for d in range(1, num_features + 1) if num_features % d == 0]
        raise ValueError(
            f"{name}={value!r} does not divide the {num_features} features "
            f"(channels): allowed values are the divisors of {num_features}: {divisors}"
        )


def check_group_options(num_groups: object, group_size: object) -> None:
    """Raise ``ValueError`` unless exactly one of ``num_groups`` and ``group_size`` is given."""
    if (num_groups is None) == (group_size is None):
        raise ValueError(
            f"give exactly one of num_groups and group_size (to give group_size, pass "
            f"num_groups=None: its default is 32); got num_groups={num_groups!r}, "
            f"group_size={group_size!r}"
        )


def resolve_num_groups(num_features: int, num_groups: object, group_size: object) -> int:
    """The number of groups from exactly one of ``num_groups`` and ``group_size``.

    Raises ``ValueError`` when both or neither are given, or when the one given does not
    divide ``num_features`` (the message lists the allowed divisors).
    """
    check_group_options(num_groups, group_size)
    if group_size is None:
        check_num_groups(num_groups, num_features)
        return int(num_groups)  # type: ignore[arg-type]
    check_num_groups(group_size, num_features, "group_size")
    return num_features // int(group_size)  # type: ignore[arg-type]


def check_config(
    *,
    epsilon: object,
    algorithm: object = None,
    momentum: object = None,
    running_var_mode: object = None,
) -> None:
    """Validate a normalization layer's static options (those given; ``None`` skips one).

    The one place the NNX and Linen wrappers validate their constructor arguments.
    """
    check_epsilon(epsilon)
    if algorithm is not None:
        check_choice("algorithm", algorithm, ALGORITHMS)
    if momentum is not None:
        check_momentum(momentum)
    if running_var_mode is not None:
        check_choice("running_var_mode", running_var_mode, RUNNING_VAR_MODES)


def canonical_axes(ndim: int, axes: Axes) -> tuple[int, ...]:
    """Sorted, de-duplicated, non-negative axes; ``ValueError`` when one is out of range."""
    seq = tuple(axes) if isinstance(axes, Iterable) else (axes,)
    out = set()
    for a in seq:
        a = int(a)
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for an input with {ndim} dimensions")
        out.add(a % ndim)
    return tuple(sorted(out))
