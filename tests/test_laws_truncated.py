"""Truncated-normal moments for any bounds, against scipy.stats.truncnorm and sampled draws.

Sampling tolerances come from the estimator's variance: for N i.i.d. draws with variance v
and kurtosis k, the sample mean has standard error sqrt(v / N) and the mean of squared
deviations around the known mean has standard error v sqrt((k - 1) / N); Z = 5 of them.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from varprop import initializers as I
from varprop._src.errors import InputError
from varprop._src.laws.catalog import scheme_from_spec
from varprop._src.laws.schemes import truncated_normal_moments, truncated_normal_std

Z = 5.0
KEY = jax.random.key(20261201)

BOUNDS = [(0.5, 1.7), (-1.0, 3.0), (0.0, 5.0), (-4.0, 0.0), (-3.0, -0.5), (1.0, 2.0), (-0.3, 0.9)]


@pytest.mark.parametrize(("lo", "hi"), BOUNDS)
def test_moments_match_scipy(lo, hi):
    m = truncated_normal_moments(lo, hi)
    mean, var, _, ex_kurt = stats.truncnorm(lo, hi).stats(moments="mvsk")
    assert float(m["mean"]) == pytest.approx(float(mean), rel=1e-12, abs=1e-14)
    assert float(m["variance"]) == pytest.approx(float(var), rel=1e-11)
    # scipy's excess kurtosis + 3 is E[(t - mu)^4] / Var^2.
    assert float(m["kurtosis"]) == pytest.approx(float(ex_kurt) + 3.0, rel=1e-9)
    assert float(m["mass"]) == pytest.approx(stats.norm.cdf(hi) - stats.norm.cdf(lo), rel=1e-12)


def test_symmetric_default_is_exact_sympy():
    m = truncated_normal_moments()
    assert not m["variance"].atoms(__import__("sympy").Float)  # exact: erf, exp, pi
    assert truncated_normal_std() == pytest.approx(stats.truncnorm(-2, 2).std(), rel=1e-14)
    k = float(m["kurtosis"])
    assert k == pytest.approx(float(stats.truncnorm(-2, 2).stats(moments="k")) + 3, rel=1e-12)


def test_far_tail_keeps_digits():
    # Mills-ratio asymptotics, independent of the code: for t ~ N(0,1) | t > a, a large,
    # E[t] = a + 1/a - 2/a^3 + 10/a^5 - 74/a^7 + O(a^-9) (the inverse Mills ratio),
    # Var(t) = 1 - E[t] (E[t] - a) = 1/a^2 - 6/a^4 + 50/a^6 + O(a^-8).
    a = 30.0
    m = truncated_normal_moments(a, 40.0)
    assert float(m["mean"]) == pytest.approx(
        a + 1 / a - 2 / a**3 + 10 / a**5 - 74 / a**7, rel=1e-11
    )
    assert float(m["variance"]) == pytest.approx(1 / a**2 - 6 / a**4 + 50 / a**6, rel=1e-5)


@pytest.mark.parametrize(
    ("lo", "hi", "msg"),
    [
        (2.0, -2.0, "lower < upper"),
        (1.0, 1.0, "lower < upper"),
        (float("nan"), 1.0, "finite"),
        (50.0, 60.0, "lower=50.0"),
        (-60.0, -50.0, "upper=-50.0"),
    ],
)
def test_bad_bounds_raise_input_error(lo, hi, msg):
    with pytest.raises(InputError, match=msg):
        truncated_normal_moments(lo, hi)


def test_spec_string_asymmetric_bounds():
    s = scheme_from_spec("truncated_normal:stddev=0.5,lower=0.5,upper=1.7")
    m = stats.truncnorm(0.5, 1.7)
    assert s.mean((3, 3)) == pytest.approx(0.5 * m.mean(), rel=1e-12)
    assert s.variance((3, 3)) == pytest.approx(0.25 * m.var(), rel=1e-11)
    assert s.bound((3, 3)) == pytest.approx(0.5 * 1.7, rel=1e-12)


@pytest.mark.parametrize(("lo", "hi"), [(0.5, 1.7), (0.0, 5.0), (-3.0, -0.5), (-1.0, 3.0)])
def test_sampled_draws_follow_law(lo, hi):
    init = I.truncated_normal(0.7, lo, hi)
    shape = (500, 400)
    w = np.asarray(init(KEY, shape, jnp.float32), dtype=np.float64)
    n = w.size
    # Reference from scipy, not from the scheme.
    ref = stats.truncnorm(lo, hi, scale=0.7)
    mean, var = float(ref.mean()), float(ref.var())
    kurt = float(ref.stats(moments="k")) + 3.0
    assert abs(w.mean() - mean) <= Z * math.sqrt(var / n)
    m2 = np.mean((w - mean) ** 2)
    assert abs(m2 / var - 1.0) <= Z * math.sqrt((kurt - 1.0) / n)
    assert w.min() >= 0.7 * lo * (1 + 1e-6) - 1e-7 and w.max() <= 0.7 * hi * (1 + 1e-6) + 1e-7
