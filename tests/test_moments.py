"""The log-domain second moments shared by the probe and the experiments."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from varprop._src.moments import log_mean_square, pow2_scale, unit_log_moments


def _reference(v: np.ndarray):
    """float64 NumPy reference (exact enough: float64 holds these squares)."""
    v = v.astype(np.float64)
    per_unit = np.mean(v * v, axis=0)
    m = per_unit.mean()
    return math.log(m), per_unit.var() / m**2, v.mean()


@pytest.mark.parametrize("scale", [1e-30, 1e-12, 1.0, 1e12, 1e30, 3e37])
def test_unit_log_moments_match_float64_at_every_scale(scale):
    rng = np.random.default_rng(0)
    v = (scale * rng.standard_normal((64, 32))).astype(np.float32)
    lm2, rv, mean = unit_log_moments(jnp.asarray(v))
    ref_lm2, ref_rv, ref_mean = _reference(v)
    # Float32 summation of 2048 terms: relative error of m2 a few 1e-7, so |d log| < 1e-5.
    assert abs(float(lm2) - ref_lm2) < 1e-5
    assert float(rv) == pytest.approx(ref_rv, rel=1e-4)
    assert float(mean) == pytest.approx(ref_mean, rel=1e-4, abs=1e-4 * scale)
    # The naive float32 second moment is not finite, or is flushed, at the extremes.
    with np.errstate(over="ignore", under="ignore"):
        naive = np.mean(np.square(v), dtype=np.float32)
    if scale >= 1e30 or scale <= 1e-30:
        assert naive == 0 or not np.isfinite(naive)


def test_log_mean_square_over_axes_and_all():
    rng = np.random.default_rng(1)
    v = (1e25 * rng.standard_normal((5, 7, 3))).astype(np.float32)
    got = np.asarray(log_mean_square(jnp.asarray(v), axis=(0, 2)))
    ref = np.log(np.mean(v.astype(np.float64) ** 2, axis=(0, 2)))
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert float(log_mean_square(jnp.asarray(v))) == pytest.approx(
        math.log(np.mean(v.astype(np.float64) ** 2)), abs=1e-5
    )


def test_zeros_and_nonfinite():
    lm2, rv, mean = unit_log_moments(jnp.zeros((4, 3)))
    assert float(lm2) == -math.inf and float(rv) == 0.0 and float(mean) == 0.0
    v = jnp.array([[1.0, 2.0], [jnp.inf, 2.0]])
    assert not np.isfinite(float(unit_log_moments(v)[0]))
    # Ignoring the inf: entries 1, 2, 0, 2 -> mean square 9/4.
    lm2, _, _ = unit_log_moments(v, ignore_nonfinite=True)
    assert float(lm2) == pytest.approx(math.log(9 / 4), abs=1e-6)


def test_pow2_scale_is_exact_and_bounded():
    v = jnp.array([[3.0e38, -1.0e30, 0.0]], jnp.float32)
    u, e = pow2_scale(v)
    assert int(e.reshape(())) == 128  # 3e38 = 0.88 * 2**128
    assert float(jnp.max(jnp.abs(u))) < 1.0
    # u * 2**e gives v back (XLA's exp2 may round: a few float32 ulps).
    assert float(u[0, 1]) * 2.0**128 == pytest.approx(-1.0e30, rel=1e-6)
