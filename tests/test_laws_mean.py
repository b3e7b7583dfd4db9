"""Layer laws with the weights' mean: E_W[z^2 | x] = s^2 sum x^2 + mu^2 (sum x)^2.

References are numpy Monte Carlo over weight draws (fixed seeds), with tolerances from the
estimator's standard error, and hand-written algebra; not the code under test.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp

from varprop import initializers as I
from varprop._src.laws import layers as Ly
from varprop._src.laws import symbols as S
from varprop._src.laws.derivation import derive

Z = 5.0


def test_symbolic_laws_carry_the_mean():
    s2, mu = sp.Rational(3, 100), sp.Rational(1, 7)
    law = Ly.forward_law_given_input().rhs.subs({S.weight_variance: s2, S.weight_mean: mu})
    expected = s2 * S.input_sum_squares + mu**2 * S.input_sum**2 + S.bias_variance
    assert sp.expand(law - expected) == 0
    back = Ly.backward_law_given_gradient(I.ones.scheme).rhs
    assert back == S.grad_sum**2
    # Zero-mean schemes: the mean term vanishes and the law is the usual one.
    he = Ly.forward_law_given_input(I.he_normal().scheme).rhs
    assert sp.simplify(he - 2 * S.input_sum_squares / S.fan_in - S.bias_variance) == 0
    iid = Ly.forward_law_with_mean(I.constant(0.5).scheme).rhs
    n, m2, m1 = S.fan_in, S.input_second_moment, S.input_mean_value
    assert sp.expand(iid - (n * m2 / 4 + n * (n - 1) * m1**2 / 4 + S.bias_variance)) == 0


@pytest.mark.parametrize(
    "init",
    [I.truncated_normal(0.2, 0.5, 1.7), I.truncated_normal(1.0, -3.0, -0.5), I.ones],
    ids=["tn_pos", "tn_neg", "ones"],
)
def test_conditional_forward_law_by_monte_carlo(init):
    """Given one fixed x, draw W many times: mean over draws of z_j^2 vs the law."""
    rng = np.random.default_rng(11)
    n_in, n_out, draws = 64, 32, 400
    x = rng.normal(0.3, 1.0, n_in)  # a non-centred input: the mean term matters
    s = init.scheme
    keys = jax.random.split(jax.random.key(5), draws)
    ws = np.asarray(jax.vmap(lambda k: init(k, (n_in, n_out), jnp.float32))(keys), np.float64)
    z2 = (np.einsum("i,dij->dj", x, ws) ** 2).ravel()
    law = Ly.conditional_second_moment(
        s.variance((n_in, n_out)), s.mean((n_in, n_out)), np.sum(x**2), np.sum(x)
    )
    if s.variance((n_in, n_out)) == 0:
        np.testing.assert_allclose(z2, law, rtol=1e-5)
        return
    se = np.std(z2) / math.sqrt(z2.size)  # units are independent given x
    assert abs(z2.mean() - law) <= Z * se
    # The zero-mean law (s^2 sum x^2) is far off: the test can tell them apart.
    assert abs(z2.mean() - s.variance((n_in, n_out)) * np.sum(x**2)) > Z * se


def test_conditional_backward_law_by_monte_carlo():
    init = I.truncated_normal(0.3, 0.2, 2.5)
    rng = np.random.default_rng(12)
    n_in, n_out, draws = 48, 40, 400
    g = rng.normal(0.5, 1.0, n_out)
    keys = jax.random.split(jax.random.key(6), draws)
    ws = np.asarray(jax.vmap(lambda k: init(k, (n_in, n_out)))(keys), np.float64)
    dx2 = (np.einsum("dij,j->di", ws, g) ** 2).ravel()
    s = init.scheme
    law = Ly.conditional_second_moment(
        s.variance((n_in, n_out)), s.mean((n_in, n_out)), np.sum(g**2), np.sum(g)
    )
    assert abs(dx2.mean() - law) <= Z * np.std(dx2) / math.sqrt(dx2.size)


def test_iid_forward_law_after_relu_by_sampling():
    """E[z^2] over x and W: n (s^2 + mu^2) E[x^2] + n (n - 1) mu^2 E[x]^2 with x = relu(u)."""
    init = I.truncated_normal(0.05, 0.5, 1.7)
    s = init.scheme
    n_in, n_out = 128, 64
    rng = np.random.default_rng(13)
    keys = jax.random.split(jax.random.key(7), 200)
    ws = np.asarray(jax.vmap(lambda k: init(k, (n_in, n_out)))(keys), np.float64)
    x = np.maximum(rng.standard_normal((200, 16, n_in)), 0.0)
    z2 = np.einsum("dbi,dij->dbj", x, ws) ** 2
    per_draw = z2.mean(axis=(1, 2))
    # E[relu(u)^2] = 1/2, E[relu(u)] = 1/sqrt(2 pi) (textbook half-normal moments).
    var, mu = s.variance((n_in, n_out)), s.mean((n_in, n_out))
    law = n_in * (var + mu**2) * 0.5 + n_in * (n_in - 1) * mu**2 / (2 * math.pi)
    got = Ly.forward_law_with_mean(s).rhs.subs(
        {S.input_second_moment: 0.5, S.input_mean_value: 1 / math.sqrt(2 * math.pi)}
    )
    assert float(got.subs({S.fan_in: n_in, S.bias_variance: 0})) == pytest.approx(law, rel=1e-9)
    assert abs(per_draw.mean() - law) <= Z * per_draw.std() / math.sqrt(per_draw.size)


def test_layer_factor_includes_mean_term():
    s = I.truncated_normal(0.05, 0.5, 1.7).scheme
    f = Ly.layer_factors(s, "relu")
    n = 256
    var, mu = float(s.law), float(s.mean_law)
    expected = n * (var + mu**2) * 0.5 + n * (n - 1) * mu**2 / (2 * math.pi)
    assert float(f.forward_square.subs(S.fan_in, n)) == pytest.approx(expected, rel=1e-9)
    assert float(f.backward_square.subs(S.fan_in, n)) == pytest.approx(
        n * (var + mu**2) * 0.5, rel=1e-9
    )


@pytest.mark.parametrize(
    ("init", "shape", "reason"),
    [
        (I.zeros, None, "zero weights"),
        (I.constant(0.0), None, "zero weights"),
        (I.ones, None, "constant weights (every unit identical)"),
        (I.constant(-2.5), (4, 4), "constant weights (every unit identical)"),
        (I.he_normal(), (784, 256), None),
        (I.truncated_normal(1.0, 0.5, 1.7), (8, 8), None),
        (I.normal(1e-300), (8, 8), "weights underflow to zero in float32"),
    ],
)
def test_degenerate_reason(init, shape, reason):
    got = init.scheme.degenerate_reason(shape)
    if reason is None:
        assert got is None
    else:
        assert got is not None and got.startswith(reason)


def test_derive_shows_mean_step():
    d = derive(I.truncated_normal(0.05, 0.5, 1.7).scheme, "relu", 256)
    titles = [st.title for st in d.steps]
    assert "Weights with a mean" in titles
    text = d.render()
    assert "S_1(x)**2" in text
    d1 = derive(I.ones.scheme, "relu")
    assert d1.forward_health == "degenerate"
    assert "Constant weights (every unit identical)" in d1.render()
