r"""The statistics of the checker's conditional test (host side, NumPy/SciPy, no JAX).

A layer's conditional test compares, seed by seed, the measured mean second moment of its
output with the law's prediction *given the layer's actual input*; the ratio ``r`` has mean
``c`` (``c = 1`` when the weights follow the expected scheme). This module turns the per-seed
ratios into an interval for ``c`` and a verdict. The derivations are in
``docs/checker_statistics.md``.

Two intervals, chosen by the layer's shape:

- **Spread** (wide layers): given the input, the per-unit second moments are i.i.d. across
  the ``n`` units, so the relative variance of their mean is estimated by the unbiased
  spread across units over ``n``. Seeds are pooled and a Student-t interval with
  ``S (n - 1)`` degrees of freedom is used. Robust to the weights' distribution, but it
  needs many units.
- **Small-sample law** (narrow layers, fewer than ``NARROW_UNITS`` in either dimension):
  the relative variance of one unit's second moment is *known* from the input's Gram
  matrix and the scheme's kurtosis :math:`\kappa`,

  .. math::

      \frac{\mathrm{Var}(m_j \mid x)}{E[m_j \mid x]^2}
      = f_w^2\,(2\,\mathrm{gram} + (\kappa - 3)\,\mathrm{diag})
        + 4 f_w f_\mu\,\mathrm{sumfrac} + 4 f_w f_b\,\mathrm{meanfrac},

  (:math:`f_w, f_\mu, f_b` the shares of the prediction from the weights' variance, their
  mean and the bias), and the pooled ratio is approximated by a scaled
  :math:`\chi^2_\nu/\nu` with :math:`\nu = 2/\text{relvar}` (Satterthwaite), exact for one
  unit of Gaussian weights on a rank-one input. This holds for one unit and any batch.

Both are compared with the practical band :math:`[1/(1+\delta), 1+\delta]` at level
:math:`\alpha/m` (Bonferroni over the ``m`` layers of a direction).

Example:
    >>> band_verdict(0.95, 1.05, 0.1), band_verdict(1.2, 1.4, 0.1), band_verdict(0.95, 1.2, 0.1)
    ('agrees', 'disagrees', 'inconclusive')
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

VERDICTS = ("agrees", "disagrees", "inconclusive")


#: Layers narrower than this (in either dimension) take the small-sample law's interval:
#: with few units the spread across units is not a usable standard error, and with a
#: narrow contracted dimension the per-unit second moments are far from normal. The probe
#: computes the law's input statistics only for them (their Gram term costs a matmul).
NARROW_UNITS = 64


class Interval(NamedTuple):
    """A pooled ratio and its confidence interval; ``dof`` is the Student-t degrees of
    freedom (spread) or the chi-square :math:`\\nu` (small-sample law)."""

    mean: float
    low: float
    high: float
    dof: float


def band(tolerance: float) -> tuple[float, float]:
    """The practical band ``[1/(1+tolerance), 1+tolerance]`` that a ratio must lie in.

    >>> band(0.1)
    (0.9090909090909091, 1.1)
    """
    return 1.0 / (1.0 + tolerance), 1.0 + tolerance


def band_verdict(low: float, high: float, tolerance: float) -> str:
    """``agrees`` if ``[low, high]`` lies inside the band, ``disagrees`` if it is disjoint
    from it, else ``inconclusive``."""
    band_lo, band_hi = band(tolerance)
    if band_lo <= low and high <= band_hi:
        return "agrees"
    if high < band_lo or low > band_hi:
        return "disagrees"
    return "inconclusive"


#: A "disagrees" verdict is held to a stricter level than "agrees": its interval is taken at
#: ``alpha * DISAGREE_ALPHA_FRACTION``. A false alarm on a correct network costs a user more
#: than a check that stays open, and narrow layers, whose intervals are wide next to the
#: band, have little of the band's slack to protect them (measured: 1 false "disagrees" in
#: 151 narrow configurations with a single level).
DISAGREE_ALPHA_FRACTION = 0.2


def two_level_verdict(agree_iv: Interval, disagree_iv: Interval, tolerance: float) -> str:
    """``agrees`` if the interval at the agree level lies inside the band, ``disagrees`` if
    the wider interval at the disagree level is disjoint from it, else ``inconclusive``.

    >>> two_level_verdict(Interval(1.2, 1.12, 1.28, 9), Interval(1.2, 1.05, 1.35, 9), 0.1)
    'inconclusive'
    """
    if band_verdict(agree_iv.low, agree_iv.high, tolerance) == "agrees":
        return "agrees"
    if band_verdict(disagree_iv.low, disagree_iv.high, tolerance) == "disagrees":
        return "disagrees"
    return "inconclusive"


def two_sided_level(alpha: float, tests: int) -> float:
    """The tail probability of each side of each of ``tests`` intervals so that the
    family-wise error rate is at most ``alpha`` (Bonferroni): ``alpha / (2 tests)``.

    >>> two_sided_level(0.05, 10)
    0.0025
    """
    return alpha / (2 * max(tests, 1))


def spread_interval(
    ratios: np.ndarray, relvar: np.ndarray, units: int, alpha: float, tests: int
) -> Interval:
    """Pooled mean of per-seed ratios with a Bonferroni-corrected Student-t interval.

    ``relvar`` is each seed's unbiased relative variance across units of the per-unit
    second moments; the variance of the pooled mean is :math:`\\sum_s r_s^2 v_s / (n S^2)`.
    """
    from scipy import stats

    r = np.asarray(ratios, np.float64)
    S = len(r)
    mean = float(np.mean(r))
    se = float(np.sqrt(np.sum(r**2 * np.asarray(relvar, np.float64) / units))) / S
    dof = max(S * (units - 1), 1)
    t = float(stats.t.isf(two_sided_level(alpha, tests), dof))
    return Interval(mean, mean - t * se, mean + t * se, float(dof))


def law_relvar(
    gram: np.ndarray,
    diag: np.ndarray,
    kurtosis: float,
    frac_w: np.ndarray,
    frac_mu: np.ndarray | float = 0.0,
    sumfrac: np.ndarray | float = 0.0,
    frac_b: np.ndarray | float = 0.0,
    meanfrac: np.ndarray | float = 0.0,
    crossfrac: np.ndarray | float = 0.0,
    sign_mu_b: np.ndarray | float = 0.0,
) -> np.ndarray:
    """The relative variance of one unit's second moment given the input (module
    docstring), for i.i.d. weights with the given kurtosis; clipped at 0 below. Terms of
    third order in the weights (their skewness) are left out: zero for symmetric schemes.

    >>> float(law_relvar(np.array(1.0), np.array(1.0), 3.0, np.array(1.0)))  # chi2_1
    2.0
    """
    fw = np.asarray(frac_w, np.float64)
    v = fw**2 * (2 * np.asarray(gram) + (kurtosis - 3) * np.asarray(diag))
    v = v + 4 * fw * np.asarray(frac_mu) * np.asarray(sumfrac)
    v = v + 4 * fw * np.asarray(frac_b) * np.asarray(meanfrac)
    cross = np.sqrt(np.asarray(frac_mu) * np.asarray(frac_b)) * np.asarray(crossfrac)
    v = v + 8 * np.asarray(sign_mu_b) * fw * cross
    return np.maximum(v, 0.0)


def chi2_interval(
    ratios: np.ndarray, relvar_of_mean: np.ndarray, alpha: float, tests: int
) -> Interval:
    """Interval for ``c`` from per-seed ratios ``r_s ~ c (1 + eps_s)`` with known relative
    variances (one per seed, of the seed's mean over units).

    The pooled mean has relative variance :math:`\\sum_s v_s / S^2`; it is taken as
    :math:`c\\,\\chi^2_\\nu/\\nu` with :math:`\\nu = 2/\\text{relvar}`. A zero relative
    variance (the law is exact, e.g. constant weights) gives a zero-width interval.
    """
    from scipy import stats

    r = np.asarray(ratios, np.float64)
    S = len(r)
    mean = float(np.mean(r))
    rv = float(np.sum(relvar_of_mean)) / S**2
    if rv <= 0:
        return Interval(mean, mean, mean, math.inf)
    nu = 2.0 / rv
    p = two_sided_level(alpha, tests)
    hi_q = float(stats.chi2.isf(p, nu))
    lo_q = float(stats.chi2.ppf(p, nu))
    low = mean * nu / hi_q
    high = mean * nu / lo_q if lo_q > 0 else math.inf
    return Interval(mean, low, high, nu)


def chi2_dof_needed(tolerance: float, alpha: float, tests: int) -> float:
    """The smallest :math:`\\nu` at which a pooled ratio of exactly 1 gets an interval
    inside the band (bisection in :math:`\\log\\nu`): how much the small-sample test needs.

    >>> round(chi2_dof_needed(0.1, 0.05, 1))
    887
    """
    from scipy import stats

    p = two_sided_level(alpha, tests)
    band_lo, band_hi = band(tolerance)

    def inside(nu: float) -> bool:
        return bool(nu / stats.chi2.isf(p, nu) >= band_lo) and bool(
            nu / stats.chi2.ppf(p, nu) <= band_hi
        )

    lo, hi = 1e-3, 1e12
    if not inside(hi):
        return math.inf
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if inside(mid) else (mid, hi)
        if hi / lo < 1 + 1e-6:
            break
    return hi


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for ``k`` successes in ``n`` trials.

    >>> lo, hi = clopper_pearson(0, 367)
    >>> lo, round(hi, 6)
    (0.0, 0.010001)
    """
    from scipy import stats

    a = 1 - level
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi
