"""The propagation's softmax rule against direct sampling through ``jax.nn.softmax``.

``softmax_moments`` and ``softmax_backward`` estimate E[p²], E[p] and E[(∂L/∂t)²] for
Gaussian logits; here the same expectations are sampled independently (another generator,
more draws, JAX's own softmax and its VJP with independent Gaussian cotangents, which is
what the rule assumes of the gradients). The tolerance is 5 standard errors of the
difference of the two estimates, each estimated from its own draws.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varprop._src.model import softmax as S

N = 20_000


def _direct(mu, sd, rho, mask, g_var):
    """(E[p^2], its standard error, E[(dL/dt)^2], its standard error) per element."""
    rng = np.random.default_rng(123)
    n = mu.shape[-1]
    z = np.sqrt(rho) * rng.standard_normal((N, 1)) + np.sqrt(1 - rho) * rng.standard_normal((N, n))
    t = jnp.asarray(np.where(mask, mu + sd * z, -1e9), jnp.float32)
    g = jnp.asarray(rng.standard_normal((N, n)) * np.sqrt(g_var), jnp.float32)
    p, pull = jax.vjp(lambda t: jax.nn.softmax(t, axis=-1), t)
    (gt,) = pull(g)
    p2, gt2 = np.asarray(p, np.float64) ** 2, np.asarray(gt, np.float64) ** 2
    return p2.mean(0), p2.std(0) / np.sqrt(N), gt2.mean(0), gt2.std(0) / np.sqrt(N)


CASES = [
    # (n keys, logit mean, logit sd, correlation, keys masked from)
    (8, 0.0, 1.0, 0.0, 8),
    (16, 0.3, 2.0, 0.4, 16),
    (6, 0.0, 1.0, 0.0, 2),  # a causal row: two keys visible
]


@pytest.mark.parametrize("n, m, s, rho, visible", CASES)
def test_softmax_moments_and_backward_match_sampling(n, m, s, rho, visible):
    mask = np.arange(n) < visible
    mu = np.where(mask, m, -1e9)[None]
    sd = np.where(mask, s, 0.0)[None]
    g_var = np.linspace(0.5, 2.0, n)[None]
    want_p2, se_p2, want_g, se_g = _direct(mu, sd, rho, mask, g_var)

    gauss = (mu, sd, np.full((1, n), rho))
    m2, _, _ = S.softmax_moments(np.exp, gauss, (1, n), (1,))
    got_g = S.softmax_backward(np.exp, gauss, (1, n), (1,), g_var)
    # The rule's own standard error: its draws (S.softmax's budget) are fewer.
    draws = S._MAX_DRAWS
    tol_p2 = 5 * np.hypot(se_p2, se_p2 * np.sqrt(N / draws)) + 1e-12
    tol_g = 5 * np.hypot(se_g, se_g * np.sqrt(N / draws)) + 1e-12
    np.testing.assert_array_less(np.abs(m2[0] - want_p2), tol_p2)
    np.testing.assert_array_less(np.abs(got_g[0] - want_g), tol_g)


def test_a_row_with_one_visible_key_passes_no_gradient():
    # p = 1 whatever the logit: the softmax is constant and its Jacobian zero.
    mu = np.array([[0.0, -1e9, -1e9]])
    gauss = (mu, np.array([[1.0, 0.0, 0.0]]), np.zeros((1, 3)))
    got = S.softmax_backward(np.exp, gauss, (1, 3), (1,), np.ones((1, 3)))
    np.testing.assert_allclose(got, 0.0, atol=1e-12)


def test_the_centring_is_what_the_independent_rule_misses():
    # Small logits, n keys: the exact factor is E[p^2](1 - 2p + sum p^2) = (1/n^2)(1 - 1/n);
    # adding the numerator's and the sum's paths as independent gives about twice that.
    n = 32
    gauss = (np.zeros((1, n)), np.full((1, n), 1e-4), np.zeros((1, n)))
    got = S.softmax_backward(np.exp, gauss, (1, n), (1,), np.ones((1, 1)))
    np.testing.assert_allclose(got, (1 / n**2) * (1 - 1 / n), rtol=1e-3)
