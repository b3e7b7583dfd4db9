"""Initializers in narrow dtypes: drawn in float32 and rounded, or refused with a clear error.

Tolerance: Z = 5 standard errors of the mean of squares (var * sqrt((k - 1) / N), k the
kurtosis) plus the rounding bound 2^(-2 nmant)/12 (1 + tiny^2 / E[w^2]), computed here from
ml_dtypes' finfo (not by the code under test).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from varprop import initializers as I
from varprop._src.errors import InputError
from varprop._src.initializers import rounding_effect

Z = 5.0
KEY = jax.random.key(424242)


def _bound(dtype, m2):
    fi = jnp.finfo(dtype)
    return 2.0 ** (-2 * int(fi.nmant)) / 12 * (1 + float(fi.tiny) ** 2 / m2)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize(
    ("init", "var", "kurt"),
    [
        (I.he_normal(), 2 / 512, 3.0),  # textbook He: 2 / n_in
        (I.glorot_uniform(), 2 / (512 + 256), 9 / 5),  # Glorot: 2 / (n_in + n_out)
        (
            I.truncated_normal(0.05),
            0.05**2 * stats.truncnorm(-2, 2).var(),
            stats.truncnorm(-2, 2).stats(moments="k") + 3,
        ),
    ],
    ids=["he_normal", "glorot_uniform", "truncated_normal"],
)
def test_narrow_dtype_follows_law(dtype, init, var, kurt):
    shape = (512, 256)
    w = init(KEY, shape, dtype)
    assert w.dtype == dtype
    w64 = np.asarray(w.astype(jnp.float32), np.float64)
    n = w64.size
    m2 = np.mean(w64**2)
    tol = Z * math.sqrt((float(kurt) - 1) / n) + _bound(dtype, var)
    assert abs(m2 / var - 1) <= tol
    assert abs(w64.mean()) <= Z * math.sqrt(var / n)


def test_rounding_is_one_round_of_the_float32_draw():
    """The bfloat16 draw is the float32 draw rounded to nearest, so its change to E[w^2]
    is within the rounding bound (here measured on the same draw)."""
    shape = (512, 256)
    w32 = np.asarray(I.he_normal()(KEY, shape, jnp.float32), np.float64)
    w16 = np.asarray(I.he_normal()(KEY, shape, jnp.bfloat16).astype(jnp.float32), np.float64)
    np.testing.assert_array_equal(
        w16, np.asarray(jnp.asarray(w32, jnp.float32).astype(jnp.bfloat16), np.float64)
    )
    rel = abs(np.mean(w16**2) / np.mean(w32**2) - 1)
    # Realized change: the bias ulp^2/12 plus the fluctuation of 2 w delta (mean 0).
    assert rel <= _bound(jnp.bfloat16, 2 / 512) + Z * 2 * 2.0**-8 / math.sqrt(w16.size)


def test_rounding_effect_values():
    assert rounding_effect(jnp.bfloat16, 1.0) == pytest.approx(2.0**-14 / 12)
    assert rounding_effect(jnp.float16, 1.0) == pytest.approx(2.0**-20 / 12, rel=1e-6)
    # float8_e4m3fn: smallest normal 2^-6, so the subnormal term adds 2^-12.
    assert rounding_effect(jnp.float8_e4m3fn, 1.0) == pytest.approx(2.0**-6 / 12 * (1 + 2.0**-12))


@pytest.mark.parametrize("dtype", [jnp.float8_e4m3fn, jnp.float8_e5m2])
def test_float8_refused_naming_dtype(dtype):
    name = jnp.dtype(dtype).name
    with pytest.raises(InputError, match=rf"dtype {name} .*allowed: float32, float64") as e:
        I.he_normal()(KEY, (64, 64), dtype)
    assert e.value.kind == "numerics"


def test_float16_subnormal_weights_refused():
    with pytest.raises(InputError, match=r"dtype float16 .*mantissa bits"):
        I.normal(1e-7)(KEY, (8, 8), jnp.float16)
    with pytest.raises(InputError, match=r"overflow its largest finite"):
        I.normal(1e4)(KEY, (8, 8), jnp.float16)
    # bfloat16 has float32's exponent range: the same tiny weights are fine there.
    w = I.normal(1e-7)(KEY, (8, 8), jnp.bfloat16)
    assert w.dtype == jnp.bfloat16 and bool(jnp.any(w != 0))


def test_constants_in_narrow_dtypes():
    w = I.ones(KEY, (3, 3), jnp.float8_e4m3fn)
    assert w.dtype == jnp.float8_e4m3fn and np.all(np.asarray(w, np.float32) == 1)
    with pytest.raises(InputError, match="cannot hold the constant"):
        I.constant(1e6)(KEY, (2, 2), jnp.float16)
