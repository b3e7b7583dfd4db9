"""The checker's statistics in isolation: band, Bonferroni, intervals, the small-sample law.

Expected values come from closed forms or Monte Carlo written here, not from the module.
"""

import math

import numpy as np
import pytest
from scipy import stats as sstats

from varprop._src.check import look_schedule
from varprop._src.stats import (
    DISAGREE_ALPHA_FRACTION,
    Interval,
    band,
    band_verdict,
    chi2_dof_needed,
    chi2_interval,
    clopper_pearson,
    law_relvar,
    spread_interval,
    two_level_verdict,
    two_sided_level,
)


def test_band_is_ten_percent_by_default_and_inclusive():
    assert band(0.1) == (1 / 1.1, 1.1)
    assert band_verdict(1 / 1.1, 1.1, 0.1) == "agrees"  # the edges belong to the band
    assert band_verdict(0.95, 1.1000001, 0.1) == "inconclusive"
    assert band_verdict(1.1000001, 1.3, 0.1) == "disagrees"
    assert band_verdict(0.5, 0.909, 0.1) == "disagrees"
    # A ratio of 1.15 is outside a 10% band, inside a 20% one: a widened band is caught.
    assert band_verdict(1.12, 1.18, 0.1) == "disagrees"
    assert band_verdict(1.12, 1.18, 0.2) == "agrees"


def test_bonferroni_level_divides_by_tests_and_sides():
    assert two_sided_level(0.05, 1) == 0.025
    assert two_sided_level(0.05, 20) == 0.05 / 40


def test_spread_interval_uses_bonferroni_t_quantile():
    r = np.array([1.0, 1.02, 0.98, 1.01])
    rv = np.array([0.5, 0.4, 0.6, 0.5])
    units = 100
    iv = spread_interval(r, rv, units, 0.05, 10)
    se = math.sqrt(np.sum(r**2 * rv / units)) / 4
    t = sstats.t.isf(0.05 / 20, 4 * 99)  # alpha / (2 m), dof S (n - 1)
    assert iv.mean == pytest.approx(r.mean())
    assert iv.high - iv.mean == pytest.approx(t * se, rel=1e-12)
    # Without the correction the interval would be visibly narrower.
    assert t > 1.3 * sstats.t.isf(0.025, 4 * 99)


def test_chi2_interval_is_exact_for_one_gaussian_unit_on_a_rank_one_input():
    # One unit, rank-one input: r = w^2 / Var(w) ~ chi2_1, relative variance 2 per seed.
    r = np.array([0.3, 1.7, 0.9])
    iv = chi2_interval(r, np.full(3, 2.0), 0.05, 1)
    nu = 3  # the mean of 3 chi2_1 / 1 is chi2_3 / 3
    assert iv.dof == pytest.approx(nu)
    m = r.mean()
    assert iv.low == pytest.approx(m * nu / sstats.chi2.isf(0.025, nu))
    assert iv.high == pytest.approx(m * nu / sstats.chi2.ppf(0.025, nu))


def test_chi2_interval_covers_at_the_nominal_rate():
    # r_s = c * chi2_k / k for S seeds; the interval must cover c with probability >= 1 - a.
    rng = np.random.default_rng(0)
    c, k, S, reps, alpha = 1.7, 3, 4, 4000, 0.1
    cover = 0
    for _ in range(reps):
        r = c * rng.chisquare(k, size=S) / k
        iv = chi2_interval(r, np.full(S, 2.0 / k), alpha, 1)
        cover += iv.low <= c <= iv.high
    # Binomial s.e. of the coverage at 0.9 over 4000 repetitions is 0.0047; allow 4 of them.
    assert cover / reps >= 1 - alpha - 4 * math.sqrt(alpha * (1 - alpha) / reps)


def test_zero_relative_variance_gives_a_point_interval():
    iv = chi2_interval(np.array([1.0, 1.0]), np.zeros(2), 0.05, 3)
    assert (iv.low, iv.high) == (1.0, 1.0)


@pytest.mark.parametrize("dist,kurtosis", [("normal", 3.0), ("uniform", 1.8)])
def test_law_relvar_matches_monte_carlo_per_unit_second_moments(dist, kurtosis):
    # Given a fixed input X (B x n), the per-unit second moment m = mean_b (x_b . w)^2 of
    # i.i.d. weights w has the relative variance law_relvar says.
    rng = np.random.default_rng(1)
    B, n, draws = 6, 3, 400_000
    X = rng.normal(size=(B, n)) * np.array([1.0, 0.5, 2.0])
    if dist == "normal":
        w = rng.normal(size=(draws, n))
    else:
        w = rng.uniform(-math.sqrt(3), math.sqrt(3), size=(draws, n))
    m = np.mean((w @ X.T) ** 2, axis=1)
    measured = m.var() / m.mean() ** 2
    tot = np.sum(X**2)
    gram = np.sum((X.T @ X) ** 2) / tot**2
    diag = np.sum(np.sum(X**2, axis=0) ** 2) / tot**2
    predicted = float(law_relvar(np.array(gram), np.array(diag), kurtosis, np.array(1.0)))
    # The sample relative variance of `draws` values has a relative s.e. of about
    # sqrt((kurt_m - 1) / draws) with kurt_m the kurtosis of m (< 15 here): 0.6%; allow 5%.
    assert measured == pytest.approx(predicted, rel=0.05)


def test_law_relvar_with_mean_and_bias_terms_matches_monte_carlo():
    rng = np.random.default_rng(2)
    B, n, draws = 5, 4, 400_000
    X = rng.normal(size=(B, n)) + 0.3
    mu, s, bias = 0.4, 0.7, 0.9
    w = mu + s * rng.normal(size=(draws, n))
    z = w @ X.T + bias
    m = np.mean(z**2, axis=1)
    measured = m.var() / m.mean() ** 2
    tot = np.sum(X**2)
    rows = X.sum(axis=1)
    gram = np.sum((X.T @ X) ** 2) / tot**2
    diag = np.sum(np.sum(X**2, axis=0) ** 2) / tot**2
    meanfrac = np.sum(X.sum(axis=0) ** 2) / (B * tot)
    sumfrac = np.sum((rows @ X) ** 2) / (tot * np.sum(rows**2))
    crossfrac = np.sum((rows @ X) * X.sum(axis=0)) / (tot * np.sqrt(np.sum(rows**2) * B))
    pw = s**2 * tot / B
    pmu = mu**2 * np.mean(rows**2)
    pb = bias**2
    cross = 2 * mu * np.mean(rows) * bias
    p = pw + pmu + pb + cross
    assert m.mean() == pytest.approx(p, rel=0.01)
    predicted = float(
        law_relvar(gram, diag, 3.0, pw / p, pmu / p, sumfrac, pb / p, meanfrac, crossfrac, 1.0)
    )
    # Monte Carlo relative s.e. of a relative variance from 4e5 draws: about 0.5%; allow 3%.
    assert measured == pytest.approx(predicted, rel=0.03)


def test_dof_needed_puts_an_interval_of_one_at_the_band_edge():
    nu = chi2_dof_needed(0.1, 0.05, 4)
    p = 0.05 / 8
    assert nu / sstats.chi2.ppf(p, nu) == pytest.approx(1.1, rel=1e-4)
    assert chi2_dof_needed(0.2, 0.05, 4) < nu < chi2_dof_needed(0.1, 0.01, 4)


def test_look_schedule_doubles_and_ends_at_the_budget():
    assert look_schedule(4, 64) == [4, 8, 16, 32, 64]
    assert look_schedule(3, 20) == [3, 6, 12, 18]
    assert look_schedule(2, 2) == [2]


def test_clopper_pearson_matches_closed_form_for_zero_successes():
    # For k = 0 the upper bound solves (1 - p)^n = a/2.
    for n in (200, 367, 368):
        assert clopper_pearson(0, n)[1] == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-9)
    assert clopper_pearson(0, 368)[1] < 0.01 < clopper_pearson(0, 367)[1]


def test_disagrees_needs_the_stricter_interval():
    assert DISAGREE_ALPHA_FRACTION == 0.2
    # The agree-level interval is disjoint from the band, the disagree-level one is not.
    narrow, wide = Interval(1.2, 1.12, 1.28, 9), Interval(1.2, 1.05, 1.35, 9)
    assert band_verdict(narrow.low, narrow.high, 0.1) == "disagrees"
    assert two_level_verdict(narrow, wide, 0.1) == "inconclusive"
    assert two_level_verdict(narrow, Interval(1.2, 1.11, 1.3, 9), 0.1) == "disagrees"
    assert two_level_verdict(Interval(1.0, 0.95, 1.05, 9), wide, 0.1) == "agrees"


def test_disagree_interval_is_wider_by_the_level_ratio():
    r, rv = np.array([1.0, 1.1, 0.9]), np.array([0.5, 0.5, 0.5])
    a = spread_interval(r, rv, 200, 0.05, 5)
    d = spread_interval(r, rv, 200, 0.05 * DISAGREE_ALPHA_FRACTION, 5)
    ta = sstats.t.isf(0.05 / 10, 3 * 199)
    td = sstats.t.isf(0.01 / 10, 3 * 199)
    assert (d.high - d.mean) / (a.high - a.mean) == pytest.approx(td / ta, rel=1e-9)
