"""varprop.layer_verdict on statistics built by hand: the interval, the band, the notes.

Expected intervals are computed here from the Student-t quantile with SciPy, not read from
the code under test.
"""

import math

import numpy as np
import pytest
from scipy import stats

import varprop
from varprop import ExpectedLaw, LayerMeasurement, ProductStatistics, layer_verdict

S, FAN, UNITS = 8, 256, 256
LAW = ExpectedLaw(variance=2.0 / FAN)


def _measure(ratio: float, rv: float = 2.0 / 64, **kw) -> LayerMeasurement:
    v_lm2 = np.linspace(-0.2, 0.3, S)  # E[v^2] differs from seed to seed
    y_lm2 = v_lm2 + math.log(FAN * LAW.variance) + math.log(ratio)
    plain = ProductStatistics(
        v_lm2=v_lm2, v_lrs2=v_lm2 + math.log(FAN), y_lm2=y_lm2, y_rv=np.full(S, rv)
    )
    return LayerMeasurement("forward", FAN, UNITS, 64 * UNITS, plain, **kw)


def test_interval_is_the_pooled_student_t():
    t = layer_verdict(_measure(1.0), LAW, alpha=0.05, tests=3)
    se = math.sqrt(S * (2.0 / 64) / UNITS) / S  # ratios all 1
    q = stats.t.isf(0.05 / 2 / 3, S * (UNITS - 1))
    assert t.ratio == pytest.approx(1.0, rel=1e-12)
    assert (t.ratio_low, t.ratio_high) == pytest.approx((1 - q * se, 1 + q * se), rel=1e-12)
    assert t.verdict == "agrees" and t.test == "spread" and t.dof == S * (UNITS - 1)


@pytest.mark.parametrize(
    ("ratio", "verdict"), [(1.0, "agrees"), (1.5, "disagrees"), (1 / 1.5, "disagrees")]
)
def test_band_decides(ratio, verdict):
    assert layer_verdict(_measure(ratio), LAW).verdict == verdict


def test_straddling_the_band_is_inconclusive_and_says_so():
    t = layer_verdict(_measure(1.1, rv=2.0), LAW)  # a wide interval around the band's edge
    assert t.verdict == "inconclusive"
    assert "overlaps the edge of the ±10% band" in t.note


def test_exact_zeros_agree_and_a_nonzero_against_zero_disagrees():
    zero = ExpectedLaw(variance=0.0)
    m = _measure(1.0)
    both = ProductStatistics(
        v_lm2=m.plain.v_lm2,
        v_lrs2=m.plain.v_lrs2,
        y_lm2=np.full(S, -np.inf),
        y_rv=np.zeros(S),
    )
    assert layer_verdict(LayerMeasurement("forward", FAN, UNITS, 1, both), zero).verdict == "agrees"
    t = layer_verdict(m, zero)
    assert t.verdict == "disagrees" and "exactly 0" in t.note


def test_nonfinite_output_disagrees_and_inputs_beyond_float32_are_not_tested():
    t = layer_verdict(_measure(1.0, output_finite=np.array([True] * (S - 1) + [False])), LAW)
    assert t.verdict == "disagrees" and "non-finite" in t.note
    t = layer_verdict(_measure(1.0, input_finite=np.zeros(S, bool)), LAW)
    assert t.verdict == "float32_limit" and "before this layer" in t.note


def test_values_the_law_puts_beyond_float32_are_not_tested():
    m = _measure(1.0)
    huge = ProductStatistics(
        v_lm2=m.plain.v_lm2 + 170.0,  # E[y^2] ~ e^170: the largest values pass 3.4e38
        v_lrs2=m.plain.v_lrs2 + 170.0,
        y_lm2=m.plain.y_lm2 + 170.0,
        y_rv=m.plain.y_rv,
    )
    t = layer_verdict(LayerMeasurement("forward", FAN, UNITS, 64 * UNITS, huge), LAW)
    assert t.verdict == "float32_limit" and "float32's limit" in t.note


def test_narrow_layer_uses_the_small_sample_law_and_says_how_many_seeds():
    # One unit of a Gaussian layer on a rank-one input: Var(m)/E[m]^2 = 2 (gram = diag = 1
    # for a single input unit; kurtosis 3), so the interval is a chi-square with S dof.
    ones = np.ones(S)
    plain = ProductStatistics(
        v_lm2=np.zeros(S),
        v_lrs2=np.zeros(S),
        y_lm2=np.log(2.0 * ones),
        y_rv=np.full(S, np.nan),
        v_gram=ones,
        v_diag=ones,
        v_sumfrac=ones,
    )
    law = ExpectedLaw(variance=2.0)
    t = layer_verdict(LayerMeasurement("forward", 1, 1, 64, plain), law, alpha=0.05, tests=1)
    assert t.test == "small-sample law" and t.dof == pytest.approx(S, rel=1e-9)
    # chi2_S / S at two-sided 5%: the interval of the ratio 1.
    lo, hi = S / stats.chi2.isf(0.025, S), S / stats.chi2.ppf(0.025, S)
    assert (t.ratio_low, t.ratio_high) == pytest.approx((lo, hi), rel=1e-9)
    assert t.verdict == "inconclusive" and t.seeds_needed is not None and t.seeds_needed > 100
    assert f"about {t.seeds_needed} seeds needed" in t.note


def test_expected_law_of_a_spec_and_an_initializer():
    he = ExpectedLaw.of("he_normal", (512, 256))
    assert he == ExpectedLaw.of(varprop.initializers.he_normal(), (512, 256))
    assert he.variance == pytest.approx(2 / 512) and he.mean == 0.0 and he.kurtosis == 3.0
    ones = ExpectedLaw.of("ones", (4, 4))
    assert ones.variance == 0.0 and ones.mean == 1.0
