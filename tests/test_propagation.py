"""`varprop.laws.propagate`: the end-to-end law, against values computed independently here
(closed forms, SciPy quadrature, the float32 rules solved by hand)."""

import dataclasses
import math

import numpy as np
import pytest

from varprop import laws
from varprop.laws import Propagation, propagate, scheme_from_spec


def _gauss_mean(h, q):
    """E[h(z)], z ~ N(0, q), by SciPy quad (independent of varprop's moments)."""
    import scipy.integrate as si

    f = lambda t: h(math.sqrt(q) * t) * math.exp(-t * t / 2)  # noqa: E731
    parts = (
        si.quad(f, a, b, epsabs=0, epsrel=1e-13)[0] for a, b in ((-math.inf, 0), (0, math.inf))
    )
    return sum(parts) / math.sqrt(2 * math.pi)


def test_public_and_frozen():
    p = propagate([8, 8], "relu", scheme_from_spec("he_normal"))
    assert isinstance(p, Propagation) and laws.propagate is propagate
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.first_nonfinite = 3  # type: ignore[misc]


@pytest.mark.parametrize("n", [16, 512])
def test_he_relu_constant_width_preserves_every_layer(n):
    # q_1 = n (2/n) E[x^2] from a raw input, then q_l = n (2/n) q_{l-1}/2 = q_{l-1}; backward
    # g_L = 1 (linear output) and g_l = (1/2) n (2/n) g_{l+1} = g_{l+1}.
    p = propagate([n] * 11, "relu", scheme_from_spec("he_normal"), input_second_moment=0.7)
    np.testing.assert_allclose(p.forward, 1.4, rtol=1e-14)
    np.testing.assert_allclose(p.backward, 1.0, rtol=1e-14)
    np.testing.assert_allclose(p.post_activation[:-1], 0.7, rtol=1e-14)
    assert p.post_activation[-1] == p.forward[-1]  # linear output: h_L = z_L
    np.testing.assert_allclose(p.grad_activation, [0.5] * 9 + [1.0])
    assert p.forward_factor == pytest.approx(1, rel=1e-14)
    assert (p.forward_health, p.backward_health) == ("preserved", "preserved")
    assert p.first_nonfinite is None and p.first_underflow is None
    assert p.fixed_point is None  # relu is homogeneous: no fixed point to speak of
    assert p.steps == 7  # hidden-to-hidden layers 2..9


def test_linear_net_is_a_power():
    # Var(w) = s/n, phi = identity: q_l = s^l and g_l = s^(L-l).
    s, n, L = 0.9, 100, 12
    p = propagate([n] * (L + 1), "linear", scheme_from_spec(f"normal:stddev={math.sqrt(s / n)}"))
    np.testing.assert_allclose(p.forward, [s**layer for layer in range(1, L + 1)], rtol=1e-12)
    np.testing.assert_allclose(p.backward, [s ** (L - layer) for layer in range(1, L + 1)])
    assert p.input_gradient == pytest.approx(s**L, rel=1e-12)
    assert p.forward_factor == pytest.approx(s, rel=1e-12)
    assert p.backward_factor == pytest.approx(s, rel=1e-12)
    # |ln 0.9| * 9 steps = 0.95 > ln 2: the stack loses more than half.
    assert p.forward_health == p.backward_health == "vanishing"


def test_tanh_fixed_point():
    # sigma_w^2 = n Var(w) = 2: q* solves q = 2 E[tanh(sqrt(q) z)^2], found by brentq on SciPy
    # quadrature; chi_1 = 2 E[sech^4] there (Poole et al. 2016).
    from scipy.optimize import brentq

    q_ref = brentq(
        lambda q: 2.0 * _gauss_mean(lambda z: math.tanh(z) ** 2, q) - q, 0.1, 2.0, xtol=1e-14
    )
    chi_ref = 2.0 * _gauss_mean(lambda z: (1.0 - math.tanh(z) ** 2) ** 2, q_ref)
    p = propagate([256] * 61, "tanh", scheme_from_spec(f"normal:stddev={math.sqrt(2 / 256)}"))
    assert p.fixed_point is not None
    assert p.fixed_point.q_star == pytest.approx(q_ref, rel=1e-8)
    assert p.fixed_point.chi == pytest.approx(chi_ref, rel=1e-8)
    assert p.forward[-1] == pytest.approx(q_ref, rel=1e-6)  # the recurrence reaches it
    assert p.forward_health == "preserved" and p.backward_health == "exploding"  # chi > 1


def test_no_fixed_point_where_it_does_not_apply():
    tanh_mean = scheme_from_spec("truncated_normal:stddev=0.05,lower=0.5,upper=1.7")
    assert propagate([64] * 6, "tanh", tanh_mean).fixed_point is None  # weights with a mean
    he = scheme_from_spec("he_normal")
    assert propagate([64, 64], "tanh", he).fixed_point is None  # no hidden-to-hidden layer
    pyramid = propagate([64, 128, 256, 512, 10], "tanh", scheme_from_spec("normal:stddev=0.1"))
    assert pyramid.fixed_point is None  # n_in Var(w) changes from layer to layer
    assert propagate([64] * 6, "tanh", he, norm="layernorm").fixed_point is None


def test_float32_overflow_of_standard_normal_weights():
    # N(0, 1) weights at width 512, linear: q_l = 512^l. The largest of B n = 128 x 512 values
    # is sqrt(2 ln(128 * 512) q_l): it passes 3.4028e38 first at the smallest l with
    # l ln 512 + ln(2 ln 65536) > 2 ln(3.4028e38).
    limit = 2 * math.log(float(np.finfo(np.float32).max))
    by_hand = next(
        layer
        for layer in range(1, 100)
        if layer * math.log(512) + math.log(2 * math.log(128 * 512)) > limit
    )
    p = propagate([512] * 41, "linear", scheme_from_spec("normal:stddev=1"), batch=128)
    assert p.first_nonfinite == by_hand == 28
    assert laws.float32_limit_layer(512.0, count=128 * 512) == ("overflow", by_hand)
    assert p.first_underflow is None and p.forward_health == "exploding"


def test_float32_underflow_matches_the_product_rule():
    # N(0, 1e-12) weights at width 64: every product x_i w_ij is flushed once the largest of the
    # B n n products, ln(B n n) sqrt(Var(w) q_{l-1}), is below the smallest normal float32.
    tiny = float(np.finfo(np.float32).tiny)
    m = math.log(128 * 64 * 64)
    by_hand = next(
        layer for layer in range(1, 50) if m * math.sqrt(1e-12 * (64 * 1e-12) ** (layer - 1)) < tiny
    )
    p = propagate([64] * 13, "linear", scheme_from_spec("normal:stddev=1e-6"), batch=128)
    assert p.first_underflow == by_hand
    from varprop._src.laws.layers import FLOAT32_TINY, float32_underflow_layer

    ref = float32_underflow_layer(
        64e-12, 1.0, batch=128, fan_in=64, fan_out=64, weight_variance=1e-12, floor=FLOAT32_TINY
    )
    assert p.first_underflow == ref


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_output_activation_gradient_starts_at_phi_prime(act):
    # A square stack with phi on every layer, the loss gradient at h_L: g_L = E[phi'(z_L)^2].
    phi = {"relu": lambda z: max(z, 0.0), "tanh": math.tanh}[act]
    dphi = {"relu": lambda z: float(z > 0), "tanh": lambda z: 1 - math.tanh(z) ** 2}[act]
    sch = scheme_from_spec(f"normal:stddev={math.sqrt(1.5 / 32)}")
    p = propagate([32] * 5, act, sch, output_activation=True)
    q_l = p.forward[-1]
    assert p.backward[-1] == pytest.approx(_gauss_mean(lambda z: dphi(z) ** 2, q_l), rel=1e-8)
    assert p.grad_activation[-1] == p.backward[-1]
    assert p.post_activation[-1] == pytest.approx(_gauss_mean(lambda z: phi(z) ** 2, q_l), 1e-8)
    # One step back: g_{L-1} = E[phi'(z_{L-1})^2] n Var(w) g_L.
    g_prev = _gauss_mean(lambda z: dphi(z) ** 2, p.forward[-2]) * 1.5 * p.backward[-1]
    assert p.backward[-2] == pytest.approx(g_prev, rel=1e-8)
    linear_out = propagate([32] * 5, act, sch)
    assert linear_out.backward[-1] == 1.0
    np.testing.assert_array_equal(linear_out.forward, p.forward)


def test_per_layer_schemes_biases_and_a_conv_kernel():
    he, lecun = scheme_from_spec("he_normal"), scheme_from_spec("lecun_normal")
    p = propagate(
        [10, 20, 5],
        "relu",
        [he, lecun],
        bias_second_moments=[0.25, 0.5],
        input_second_moment=3.0,
    )
    q1 = 10 * (2 / 10) * 3.0 + 0.25
    assert p.forward.tolist() == pytest.approx([q1, 20 * (1 / 20) * q1 / 2 + 0.5], rel=1e-14)
    np.testing.assert_allclose(p.weight_variance, [2 / 10, 1 / 20])
    # A 3x3 conv 32 -> 64 channels: fans 288 and 576 (He fan_in: Var(w) = 2/288).
    c = propagate([32, 64], "relu", he, kernel=(3, 3))
    assert (c.fan_in, c.fan_out) == ((288,), (576,))
    assert c.forward[0] == pytest.approx(2.0, rel=1e-14)
    assert c.input_gradient == pytest.approx(576 * 2 / 288, rel=1e-14)
    assert c.forward_health == c.backward_health == "preserved"  # one layer compounds nothing


def test_weights_with_a_mean_closed_form():
    # ones, identity: z = sum_i x_i, E[z^2] = n E[x^2] + n (n - 1) E[x_i x_k].
    p = propagate(
        [7, 3], "linear", scheme_from_spec("ones"), input_second_moment=2.0, input_cross=0.5
    )
    assert p.forward[0] == pytest.approx(7 * 2.0 + 7 * 6 * 0.5, rel=1e-14)
    assert p.weight_mean.tolist() == [1.0] and p.weight_variance.tolist() == [0.0]


def test_one_classifier():
    c = laws.classify_factor
    assert c(math.nan) == "undetermined" and c(math.inf) == "exploding" and c(0.0) == "vanishing"
    assert c(1.0) == "preserved" and c(0.5) == "vanishing" and c(2.0) == "exploding"
    assert c(1.01, 0.02) == "preserved"  # within the tolerance
    assert c(1.1, 0.02, steps=7) == "preserved"  # 1.1^7 = 1.95 < 2
    assert c(1.1, 0.02, steps=8) == "exploding"  # 1.1^8 = 2.14 > 2
    from varprop._src import health

    assert not hasattr(health, "classify_state")


def test_inputs_are_checked():
    he = scheme_from_spec("he_normal")
    with pytest.raises(ValueError, match="one per layer"):
        propagate([4, 4, 4], "relu", [he])
    with pytest.raises(
        ValueError, match=r"norm must be one of None, .batchnorm., .layernorm., got .groupnorm."
    ):
        propagate([4, 4], "relu", he, norm="groupnorm")
    with pytest.raises(ValueError, match="at least an input and an output"):
        propagate([4], "relu", he)
    with pytest.raises(ValueError, match="whole numbers"):
        propagate([4, 0], "relu", he)
