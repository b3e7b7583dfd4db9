"""Experiment 14, ``transformer_ln``: the laws against independent computations (autodiff
Jacobians, Monte Carlo over weights), and the quick run's numbers recomputed from its data."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp
from scipy import stats

from varprop._src.experiments import transformer_ln as T


def test_sympy_laws():
    sym = T.sympy_laws()
    d, L = T._d, T._L
    assert sym["mlp"] == sp.Rational(8, 25) and sym["mlp_back"] == sp.Rational(8, 25)
    assert sym["attn_max"] == 1 and sym["post_var"] == sp.Rational(33, 25)
    assert sp.simplify(sym["pre_lo"] - (1 + sp.Rational(8, 25) * L)) == 0
    assert sp.simplify(sym["pre_hi"] - (1 + sp.Rational(33, 25) * L)) == 0
    assert sp.simplify(sym["tr_j2_limit"] - (d - 2) / T._sigma2) == 0
    assert sym["ratio_lo_sqrt"] == sp.sqrt(sp.Rational(8, 33)) and sym["ratio_hi_sqrt"] == 1
    lo = sp.lambdify(L, sym["ratio_lo"])
    assert lo(192) == pytest.approx(math.sqrt((25 + 8 * 192) / 33), rel=1e-12)


def test_factors_from_the_xavier_scheme():
    attn, mlp = T._factors()
    assert attn == pytest.approx(1 / 4)  # d Var(w_O) d_h Var(w_V) = 64 (1/64) 16 (1/64)
    assert mlp == pytest.approx(8 / 25)


def test_layernorm_jacobian_trace_against_autodiff():
    u = (
        jax.random.normal(jax.random.key(0), (5, 64))
        * jnp.array([1e-3, 0.1, 1.0, 3.0, 30.0])[:, None]
        + jnp.array([0.0, 1.0, -2.0, 0.5, 4.0])[:, None]
    )
    tr, var = T._ln_jacobian_trace(u)
    for i in range(u.shape[0]):
        j = jax.jacfwd(T._ln)(u[i])
        assert float(tr[i]) == pytest.approx(float(jnp.trace(j @ j)), rel=2e-4)
        assert float(tr[i]) == pytest.approx(float(jnp.sum(j * j)), rel=2e-4)  # J symmetric
    assert np.allclose(var, jnp.var(u, axis=-1))


def test_mlp_law_by_monte_carlo_over_weights():
    """E_W |relu(x W1) W2|^2 = (8/25)|x|^2 for Xavier weights, over 4096 draws, within 4.5
    standard errors of the draws."""
    x = jax.random.normal(jax.random.key(1), (3, 64)) * jnp.array([[0.5], [1.0], [2.0]])
    sh = T._shapes()
    xavier = T.I.glorot_normal()

    def energy(k):
        k1, k2 = jax.random.split(k)
        f = jax.nn.relu(x @ xavier(k1, sh["w1"])) @ xavier(k2, sh["w2"])
        return jnp.sum(jnp.square(f))

    e = np.asarray(jax.jit(jax.vmap(energy))(jax.random.split(jax.random.key(2), 4096)))
    law = 8 / 25 * float(jnp.sum(jnp.square(x)))
    assert abs(e.mean() - law) <= 4.5 * e.std(ddof=1) / math.sqrt(e.size), (e.mean(), law)


def _crit(n, tests=22):
    return stats.t.ppf(1 - 1e-3 / (2 * tests), n - 1)


def test_quick_run(quick_result):
    res = quick_result("transformer_ln")
    assert res.claims and all(c.held for c in res.claims), [c for c in res.claims if not c.held]
    assert res.figures and res.figures[0].png.startswith(b"\x89PNG") and res.laws and res.rows
    d = res.data
    depths = [int(x) for x in d["depths"]]
    assert depths == [2, 8, 32]
    i = T.STATS.index
    st = {L: d["stats"][L] for L in depths}  # (seeds, 2 archs, L, stats)
    seeds = st[2].shape[0]
    # post-LN block outputs are LayerNorm outputs: E[x^2] = var/(var + eps) = 1 - O(1e-6)
    assert np.all(np.abs(st[32][:, 1, :, i("x2")] - 1) < 1e-4)
    # the shallower nets are the first blocks of the deeper ones (common draws)
    np.testing.assert_allclose(st[8][:, :, :2, i("x2")], st[32][:, :, :2, i("x2")], rtol=1e-5)
    # pre-LN: each block adds at least the MLP's 8/25 and at most 33/25 to E[x^2], on average
    x2 = np.concatenate([d["x0_second_moment"][32][:, None], st[32][:, 0, :, i("x2")]], 1)
    inc = np.diff(x2, axis=1)  # (seeds, blocks)
    tol = _crit(seeds, 32) * inc.std(0, ddof=1) / math.sqrt(seeds)
    assert np.all(inc.mean(0) >= 8 / 25 - tol) and np.all(inc.mean(0) <= 33 / 25 + tol)
    # the last layer's gradient against its law, per depth and architecture
    for L in depths:
        for a in (0, 1):
            r = st[L][:, a, -1, i("grad_w2")] / st[L][:, a, -1, i("grad_law")]
            assert abs(r.mean() - 1) <= _crit(seeds) * r.std(ddof=1) / math.sqrt(seeds), (L, a)
    # R(L) from the raw gradients, inside the band computed here, and growing with L
    g = d["grad_last"]
    ratio = np.sqrt(g["post"].mean(0) / g["pre"].mean(0))
    np.testing.assert_allclose(ratio, d["ratio"], rtol=1e-12)
    for L, r in zip(depths, ratio, strict=True):
        assert math.sqrt((25 + 8 * L) / 33) < r < math.sqrt((25 + 33 * L) / 33), (L, r)
    assert ratio[2] / ratio[0] > 3
    # post-LN's last-layer gradient does not depend on the depth (within the seeds' spread)
    post = g["post"]
    se = post.std(0, ddof=1) / math.sqrt(seeds)
    assert abs(post[:, 2].mean() - post[:, 0].mean()) <= _crit(seeds) * math.hypot(se[0], se[2])
