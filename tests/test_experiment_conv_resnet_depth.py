"""Experiment 13, ``conv_resnet_depth``: the laws against independent computations (the conv
law of :class:`~varprop._src.laws.conv.ConvGeometry`, matrix exponentials, Monte Carlo over
kernels), and the quick run's numbers recomputed from its data."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import sympy as sp
from scipy import stats

from varprop._src.experiments import conv_resnet_depth as C
from varprop._src.laws.conv import ConvGeometry

HE_CVAR2 = (2 / 9) ** 2 / 2  # (c Var(w))^2 E[relu^2]/E[z^2] with He: 2/81


def _profile_law(n, blocks, factor=HE_CVAR2):
    """ln mean(p_l), l = 0..blocks, from a uniform profile through ConvGeometry's law (zero
    padding): p <- p + F(F(p) / 2), F the He conv's forward law, scaled by the factor."""
    g = ConvGeometry.make((n, n), (3, 3), in_channels=16, out_channels=16)
    var = 2 / (9 * 16)
    scale = math.sqrt(factor / HE_CVAR2)  # each conv's share of the factor
    p, out, log_scale = np.ones((n, n)), [0.0], 0.0
    for _ in range(blocks):
        p = p + g.forward_second_moment(g.forward_second_moment(p, var * scale) / 2, var * scale)
        s = p.mean()
        log_scale += math.log(s)
        p = p / s
        out.append(log_scale)
    return np.array(out)


def test_sympy_laws():
    sym = C.sympy_laws()
    c, L, n = C._c, C.S.depth, C._n
    assert sym["he_var"] == 2 / (9 * c)
    assert sym["relu_m2"] == sp.Rational(1, 2)
    assert sym["branch"] == 2 and sym["cv2"] == sp.Rational(2, 81)
    assert sym["block"].subs(C._alpha, 1) == 3 and sym["block"].subs(C._alpha, 0) == 1
    assert sym["fixup_var"] == 2 / (9 * c * L) and sym["fixup_branch"] == 2 / L
    assert sym["fixup_block_limit"] == sp.exp(2) and sym["lambda_limit"] == 3
    lam8 = 1 + 2 / 81 * (1 + 2 * math.cos(math.pi / 9)) ** 4
    assert float(sym["lambda"].subs(n, 8)) == pytest.approx(lam8, rel=1e-14)
    assert lam8 == pytest.approx(2.6972, abs=1e-4)


def test_same_padding_law_three_ways():
    """The spectral formula, the module's matrix iteration and ConvGeometry's law agree."""
    blocks = 120
    ref = _profile_law(8, blocks)
    spectral = C.spectral_log_law(8, np.arange(blocks + 1), HE_CVAR2)
    matrix = C.log_mean_law(np.ones((1, 8, 8)), HE_CVAR2, blocks, circular=False)[0]
    np.testing.assert_allclose(spectral, ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(matrix, ref, rtol=1e-10, atol=1e-10)
    # asymptotically one factor lambda_8 per block, below the interior 3
    lam8 = 1 + 2 / 81 * (1 + 2 * math.cos(math.pi / 9)) ** 4
    assert ref[-1] - ref[-2] == pytest.approx(math.log(lam8), abs=1e-9)
    # the SymPy expression itself (its sums as Python loops)
    law = sp.lambdify((C._n, C.S.depth), C.sympy_laws()["mean_law"], "math")
    for depth in (1, 5, 40):
        assert math.log(law(8, depth)) == pytest.approx(ref[depth], rel=1e-10)


def test_circular_law_is_three_per_block_for_any_profile():
    p0 = np.random.default_rng(0).uniform(0.5, 2.0, (3, 8, 8))
    law = C.log_mean_law(p0, HE_CVAR2, 50, circular=True)
    expected = np.log(p0.mean((1, 2)))[:, None] + np.arange(51) * math.log(3)
    np.testing.assert_allclose(law, expected, rtol=1e-12)


def test_fixup_bound_is_the_matrix_exponential():
    a = C.tap_operator(8, circular=False)
    b = HE_CVAR2 * a @ a
    expm = scipy.linalg.expm(b).sum() / 64  # mean(exp(B) 1)
    assert math.exp(C.spectral_log_limit(8, HE_CVAR2)) == pytest.approx(expm, rel=1e-10)
    # below it at every depth: mean((I + B/L)^L 1)
    for blocks in (1, 10, 100, 1000):
        law = C.log_mean_law(np.ones((1, 8, 8)), HE_CVAR2 / blocks, blocks, circular=False)[0, -1]
        assert law < math.log(expm)
    assert math.log(expm) - law < 2e-3  # and close to it at L = 1000


def test_conv_padding_matches_lax_same():
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 16))
    w = jax.random.normal(jax.random.key(2), (3, 3, 16, 16))
    dims = ("NHWC", "HWIO", "NHWC")
    ref = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dims)
    np.testing.assert_allclose(C._conv(x, w, jnp.float32(0.0)), ref, rtol=1e-5, atol=1e-4)
    wrapped = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="wrap")
    ref_c = jax.lax.conv_general_dilated(wrapped, w, (1, 1), "VALID", dimension_numbers=dims)
    np.testing.assert_allclose(C._conv(x, w, jnp.float32(1.0)), ref_c, rtol=1e-5, atol=1e-4)


def test_one_block_law_by_monte_carlo_over_kernels():
    """E_W[f(x)^2] for one fixed (non-uniform) x: the mean over 4096 kernel pairs is the
    ConvGeometry law within 4.5 standard errors of the draws."""
    kx, kw = jax.random.split(jax.random.key(3))
    x = jax.random.normal(kx, (1, 8, 8, 16)) * jnp.linspace(0.3, 2.0, 8)[None, :, None, None]
    dims = ("NHWC", "HWIO", "NHWC")
    std = math.sqrt(2 / (9 * 16))

    def energy(k):
        k1, k2 = jax.random.split(k)
        w1, w2 = (std * jax.random.normal(kk, (3, 3, 16, 16)) for kk in (k1, k2))
        z = jax.lax.conv_general_dilated(x, w1, (1, 1), "SAME", dimension_numbers=dims)
        f = jax.lax.conv_general_dilated(jax.nn.relu(z), w2, (1, 1), "SAME", dimension_numbers=dims)
        return jnp.mean(jnp.square(f)), 2 * jnp.mean(x * f)

    draws = jax.jit(lambda ks: jax.lax.map(energy, ks))(jax.random.split(kw, 4096))
    e, cross = (np.asarray(a, np.float64) for a in draws)
    g = ConvGeometry.make((8, 8), (3, 3), in_channels=16, out_channels=16)
    p = np.asarray(jnp.mean(jnp.square(x), axis=(0, 3)), np.float64)
    law = g.forward_second_moment(g.forward_second_moment(p, std**2) / 2, std**2).mean()
    se = e.std(ddof=1) / math.sqrt(e.size)
    assert abs(e.mean() - law) <= 4.5 * se, (e.mean(), law, se)
    assert abs(cross.mean()) <= 4.5 * cross.std(ddof=1) / math.sqrt(cross.size)
    # the law is below the interior value 2 E[x^2]: the border taps read zeros
    assert law < 2 * p.mean() * 0.9


def test_renormalization_is_exact_and_identity_variants_are_exact():
    """The renormalized He run has the same per-block ratios as the plain one (homogeneity);
    Fixup and SkipInit never change x."""
    blocks, seeds = 6, 2
    v = {x.name: x for x in C.variants(blocks)}
    plain = C.Variant("he_plain", "He, no renormalization", 1.0, 1.0, 1.0, False, False)
    _, st_r = C.measure(v["he_same"], blocks, seeds, 0, 5)
    _, st_p = C.measure(plain, blocks, seeds, 0, 5)
    np.testing.assert_allclose(st_r[..., :4], st_p[..., :4], rtol=2e-4, atol=2e-5)
    for name in ("fixup", "skipinit"):
        _, st = C.measure(v[name], blocks, seeds, 0, 5)
        assert np.all(st[..., C.STATS.index("max_change")] == 0.0)
        assert np.all(st[..., 0] == 0.0)
    assert C.fixup_multiplier(1000) == pytest.approx(1000**-0.5, rel=1e-12)


def test_quick_run(quick_result):
    res = quick_result("conv_resnet_depth")
    assert res.claims and all(c.held for c in res.claims), [c for c in res.claims if not c.held]
    assert res.figures and res.figures[0].png.startswith(b"\x89PNG") and res.laws and res.rows
    d = res.data
    blocks = int(d["blocks"])
    assert blocks == 100
    # the laws it used, recomputed here
    np.testing.assert_allclose(d["log_mean_law"]["he_same"], _profile_law(8, blocks), rtol=1e-10)
    np.testing.assert_allclose(
        d["log_mean_law"]["he_circular"], np.arange(blocks + 1) * math.log(3), rtol=1e-12
    )
    np.testing.assert_allclose(
        d["log_mean_law"]["fixup_he_last"], _profile_law(8, blocks, HE_CVAR2 / blocks), rtol=1e-10
    )
    # Fixup and SkipInit: exactly the identity
    assert np.all(d["log_q"]["fixup"] == 0) and np.all(d["log_q"]["skipinit"] == 0)
    # per block, pooled: E[f^2]/law = 1 and the cross term 0, within the t critical value
    # (Bonferroni over the experiment's 27 tests), recomputed from the raw statistics
    for name in ("he_same", "he_circular", "fixup_he_last"):
        st = d["stats"][name]
        n = st.shape[0] * st.shape[1]
        crit = stats.t.ppf(1 - 1e-3 / (2 * 27), n - 1)
        u = (st[..., 1] / st[..., 2]).ravel()
        assert abs(u.mean() - 1) <= crit * u.std(ddof=1) / math.sqrt(n), name
        cr = st[..., 3].ravel()
        assert abs(cr.mean()) <= crit * cr.std(ddof=1) / math.sqrt(n), name
    # circular He: E[f^2] = 2 E[x^2] per block
    e = d["stats"]["he_circular"][..., 1].ravel()
    assert abs(e.mean() - 2) <= 4.5 * e.std(ddof=1) / math.sqrt(e.size)
    # Fixup + He last: E[x_L^2]/law over its seeds
    r = d["fixup_he_last_ratio"]
    assert r.size == 64 and abs(r.mean() - 1) <= 4.5 * r.std(ddof=1) / math.sqrt(r.size)
    # the bound at any depth is the matrix exponential's
    a = C.tap_operator(8, circular=False)
    assert float(d["fixup_limit"]) == pytest.approx(
        scipy.linalg.expm(HE_CVAR2 * a @ a).sum() / 64, rel=1e-10
    )
    # He SAME against the interior law at block 10: the mean ratio is far below 1
    ri = d["shallow_interior_ratio"]["he_same"][:, -1]
    assert ri.mean() + 4.5 * ri.std(ddof=1) / math.sqrt(ri.size) < 0.5
