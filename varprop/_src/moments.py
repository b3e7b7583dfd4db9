r"""Second moments that stay finite as long as the values do (jittable, no host calls).

``mean(v**2)`` overflows float32 once ``|v|`` passes about 1.8e19, half-way (in log scale) to
the point where ``v`` itself overflows, and underflows to 0 for tiny ``v``. Every statistic
of the probe and of the experiments is therefore computed as

.. math:: \log E[v^2] = 2e\log 2 + \log E[(v\,2^{-e})^2],

with ``2^e`` the power of two just above ``max|v|`` over the finite entries. The scaling is
applied in two halves: ``2^{-e}`` itself is subnormal for ``e > 126`` and CPUs flush
subnormals to zero.

Example:
    >>> import jax.numpy as jnp
    >>> v = jnp.array([[3e25, -4e25]], jnp.float32)      # v**2 overflows float32
    >>> round(float(log_mean_square(v)), 3)              # log(12.5e50)
    117.655
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

_LN2 = 0.6931471805599453


def pow2_scale(v: Array, axis: Any = None) -> tuple[Array, Array]:
    """``(u, e)`` with ``u = v * 2**-e`` and ``2**e`` just above ``max|v|`` over the finite
    entries (reduced over ``axis``, kept as a broadcastable dimension); ``v`` as float32.

    Non-finite entries of ``v`` stay non-finite in ``u``; an all-zero ``v`` gives ``e = 0``.
    """
    v = v.astype(jnp.float32)
    big = jnp.max(jnp.where(jnp.isfinite(v), jnp.abs(v), 0.0), axis=axis, keepdims=True)
    e = jnp.frexp(big)[1]
    e1 = e // 2
    u = v * jnp.exp2(-e1.astype(jnp.float32)) * jnp.exp2(-(e - e1).astype(jnp.float32))
    return u, e


def log_mean_square(v: Array, axis: Any = None) -> Array:
    """``log mean(v**2)`` over ``axis`` (all axes by default), finite while ``v`` is.

    ``-inf`` when the values are all zero; NaN or inf when one of them is not finite.
    """
    u, e = pow2_scale(v, axis)
    m = jnp.mean(u * u, axis=axis, keepdims=True)
    out = jnp.log(m) + 2.0 * _LN2 * e.astype(jnp.float32)
    return jnp.squeeze(out, axis=axis) if axis is not None else out.reshape(())


def unit_log_moments(
    v: Array, *, ignore_nonfinite: bool = False, ddof: int = 0, center: bool = False
) -> tuple[Array, Array, Array]:
    """``(log m2, rel_unit_var, mean)`` of a ``(batch, units)`` array.

    - ``log m2``: log of the mean of ``v**2`` over all entries;
    - ``rel_unit_var``: variance across units of the per-unit second moments (with ``ddof``
      delta degrees of freedom: 1 gives the unbiased estimate, NaN for a single unit) over
      their mean squared (0 when that mean is 0): the squared relative standard error of
      ``m2`` is this over the number of units;
    - ``mean``: the mean of ``v``.

    With ``ignore_nonfinite`` the non-finite entries count as zeros (the statistics of the
    finite part); otherwise they make the results non-finite. With ``center`` the second
    moments are of ``v`` minus its mean over the batch (axis 0), per unit; centering is done
    after the power-of-two scaling, so it cannot overflow.
    """
    u, e = pow2_scale(v)
    if ignore_nonfinite:
        u = jnp.where(jnp.isfinite(u), u, 0.0)
    if center:
        u = u - jnp.mean(u, axis=0, keepdims=True)
    return scaled_unit_moments(u, e, ddof=ddof)


def scaled_unit_moments(u: Array, e: Array, *, ddof: int = 0) -> tuple[Array, Array, Array]:
    """:func:`unit_log_moments` of ``v = u * 2**e`` given its scaled form (from
    :func:`pow2_scale`), so that callers who need several statistics of one array scale it
    once."""
    e = e.reshape(()).astype(jnp.float32)
    per_unit = jnp.mean(u * u, axis=0)
    m = jnp.mean(per_unit)
    lm2 = jnp.log(m) + 2.0 * _LN2 * e
    units = per_unit.shape[0]
    if ddof and units <= ddof:
        spread = jnp.full((), jnp.nan, jnp.float32)
    else:
        spread = jnp.var(per_unit) * (units / (units - ddof))
    rv = jnp.where(m > 0, spread / jnp.where(m > 0, m * m, 1.0), 0.0)
    # 2**e in two halves, as in pow2_scale.
    e1 = jnp.floor(e / 2)
    mean = jnp.mean(u) * jnp.exp2(e1) * jnp.exp2(e - e1)
    return lm2, rv, mean
