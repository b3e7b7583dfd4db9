"""Training-time claims (``varprop._src.experiments.training_laws``): the law functions by
hand (default run), and the quick runs of both experiments (``slow``: they take the
``quick_result`` fixture)."""

import math

import numpy as np
import pytest

from varprop import initializers as I
from varprop._src.experiments import training_laws as T

MNIST = (784,) + (128,) * 29 + (10,)
DIGITS = (64,) + (128,) * 29 + (10,)


@pytest.mark.parametrize("widths", [MNIST, DIGITS])
def test_depth_ratio_law_he_and_xavier(widths):
    # He: forward factor 1 per layer; backward the first layer's fans n_1/n_0 only.
    fan = math.log2(128 / widths[0])
    f, b = T.depth_ratio_law(widths, I.he_normal().scheme)
    assert f == pytest.approx(0.0, abs=1e-9) and b == pytest.approx(fan, abs=1e-9)
    # Xavier (1/fan_in): each of the 29 ReLUs halves both directions.
    f, b = T.depth_ratio_law(widths, I.xavier_fan_in_normal().scheme)
    assert f == pytest.approx(-29.0, abs=1e-9) and b == pytest.approx(fan - 29.0, abs=1e-9)


def test_depth_ratio_log_variance_counts_the_masks_and_layers():
    fwd, bwd = T.depth_ratio_log_variance(DIGITS)
    assert fwd == pytest.approx(3 / 128 + 28 * 5 / 128 + 2 / 10)
    assert bwd == pytest.approx(3 / 128 + 28 * 5 / 128 + 2 / 64)


def test_log_band():
    assert T.log_band(1.0, 4) == pytest.approx(3 * 0.5 + 0.5)
    assert T.log_band(0.16, 1, z=2.0) == pytest.approx(0.8 + 0.08)


def test_one_pair_has_log_variance_5_over_n():
    """The 5/n of one (mask, layer) factor, (2/n) sum B_j g_j^2, by sampling."""
    rng = np.random.default_rng(0)
    n, reps = 128, 20000
    g = rng.standard_normal((reps, n))
    factor = (2 / n) * np.sum(np.maximum(g, 0) ** 2, axis=1)
    # the variance of a sample variance over 20000 draws: relative sd sqrt(2/reps) ~ 1 %
    assert np.var(np.log(factor)) == pytest.approx(5 / n, rel=0.05)


def test_running_stat_law_is_the_ema_of_a_linear_drift():
    m, a, b = 0.9, 0.3, 0.01
    r = 1.0
    for t in range(1, 61):
        r = m * r + (1 - m) * (a + b * t)
        assert T.running_stat_law(t, 1.0, a + b * t, b, m) == pytest.approx(r, rel=1e-12)
    # without drift: s + m^t (r0 - s); the lag tends to m / (1 - m)
    assert T.running_stat_law(10, 0.0, 2.0, 0.0, 0.5) == pytest.approx(2.0 - 2.0 * 0.5**10)
    assert T.ema_lag(0, 0.9) == 0.0 and T.ema_lag(1, 0.9) == pytest.approx(0.0)
    assert T.ema_lag(500, 0.9) == pytest.approx(9.0)


def test_eval_second_moment():
    # running statistics (0, 1): no normalization, E[z^2] / (1 + eps)
    assert T.eval_second_moment(0.5, 2.0, 0.0, 1.0, 0.0) == pytest.approx(2.25)
    assert T.eval_second_moment(0.5, 2.0, 0.5, 2.0, 0.0) == pytest.approx(1.0)


def _figures_written(r):
    assert r.figures
    for f in r.figures:
        assert f.png[:4] == b"\x89PNG", f.name


def test_deep_relu_training_quick(quick_result):
    r = quick_result("deep_relu_training")
    assert r.ran and len(r.claims) == 5
    for c in r.claims:
        assert c.held, f"{c.statement}: {c.evidence}"
    _figures_written(r)
    b, f, steps = r.data["log2_backward"], r.data["log2_forward"], r.data["steps"]
    assert b.shape[:2] == (2, 4) and steps[0] == 0
    # At init Xavier's ratios are 2^-29 of He's (same normals): tolerance two bands of 4 seeds,
    # 3 sd / 2 + var / 2 of (3 + 140)/128 + 2/10 (forward) in natural log, ~3.4 octaves each.
    he0, xa0 = b[:, :, 0].mean(1), f[:, :, 0].mean(1)
    assert b[1, :, 0].mean() - b[0, :, 0].mean() == pytest.approx(-29, abs=2 * 3.2)
    assert xa0[1] - xa0[0] == pytest.approx(-29, abs=2 * 3.5)
    # He's backward ratio in the first 100 steps stays 25+ octaves above Xavier's.
    early = steps <= 100
    assert np.all(b[0].mean(0)[early] - b[1].mean(0)[early] > 20)
    assert he0[0] > -3  # n_1/n_0 >= 128/784, minus the band


def test_batchnorm_train_eval_quick(quick_result):
    r = quick_result("batchnorm_train_eval")
    assert r.ran and len(r.claims) == 3
    for c in r.claims:
        assert c.held, f"{c.statement}: {c.evidence}"
    _figures_written(r)
    gap = r.data["gap"]
    # t = 0: layer l's eval E[z_hat^2] is 2^-(l-1) of layer 1's (ReLU, 1/fan_in), train 1:
    # layer 6 at ln(2^-5) = -3.47, within the 3-sigma width band sqrt(27/128) * 3 + 0.1
    assert gap[0, -1] == pytest.approx(5 * math.log(0.5), abs=1.5)
    # the gap closes: at the end every layer within 0.1 (vs up to 3.5 at init)
    assert np.all(np.abs(gap[-1]) < 0.1)
    assert np.all(np.abs(gap[-1]) < np.abs(gap[0]))
