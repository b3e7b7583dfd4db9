"""BatchNorm's laws: SymPy statements, the symbolic proof, and numerical checks."""

from __future__ import annotations

import ast
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp
from flax import nnx

from varprop._src.core import normalizers as N
from varprop._src.laws import normalization as L
from varprop._src.nn import norm_linen as VL
from varprop._src.nn import norm_nnx as VN

B, D_IN, C = 16, 16, 8  # batch, inputs, features (shapes shared with the other test files)


def pre_activations(alpha: float = 1.0, seed: int = 0):
    kx, kw = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (B, D_IN))
    w = jax.random.normal(kw, (D_IN, C)) / np.sqrt(D_IN)
    return x, w, x @ (alpha * w)


def gamma_beta():
    k1, k2 = jax.random.split(jax.random.key(5))
    return 1.0 + 0.5 * jax.random.normal(k1, (C,)), 0.5 * jax.random.normal(k2, (C,))


def train_bn(z, gamma, beta, epsilon):
    zeros, ones = jnp.zeros(C), jnp.ones(C)
    return N.batch_norm(z, gamma, beta, zeros, ones, train=True, epsilon=epsilon).y


def test_laws_module_does_not_import_jax():
    tree = ast.parse(inspect.getsource(L))
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] in ("jax", "flax", "jaxlib")], names


def test_symbolic_expressions():
    m = L.train_output_moments()
    assert m.mean == L.beta
    assert sp.simplify(m.var - L.gamma**2 * L.batch_var / (L.batch_var + L.epsilon)) == 0
    assert sp.simplify(m.second_moment - m.var - L.beta**2) == 0
    assert L.train_output_second_moment() == m.second_moment
    assert m.var.subs(L.epsilon, 0) == L.gamma**2  # ε = 0: variance exactly γ²
    assert sp.simplify(L.scale_deviation_ratio().subs(L.epsilon, 0)) == 1
    assert L.gradient_scale_factor() == 1 / L.alpha
    gain, shift = L.eval_mode_affine(L.INITIAL_RUNNING_MEAN, L.INITIAL_RUNNING_VAR)
    assert gain == L.gamma / sp.sqrt(1 + L.epsilon) and shift == L.beta
    assert L.unbiased_factor(L.count) == L.count / (L.count - 1)


def test_symbolic_proof_of_scale_invariance():
    proof = L.prove_scale_invariance(3)
    assert proof.invariant_when_eps_zero
    assert proof.deviation_law_holds
    assert proof.gradient_scales_inverse
    assert proof.holds


def _np_bn(z, g, b, e):
    """Training-mode BatchNorm of one feature, written out in NumPy (biased variance)."""
    z = np.asarray(z, np.float64)
    mu = z.mean()
    return g * (z - mu) / np.sqrt(np.mean((z - mu) ** 2) + e) + b


def test_proof_evidence_is_batchnorm_and_its_residuals_vanish():
    """Checks the proof's evidence, not its booleans: a proof that just returned True (or
    residuals of 0 for the wrong expressions) fails here."""
    proof = L.prove_scale_invariance(3)
    zs = proof.batch
    assert len(zs) == 3 and len(proof.bn_plain) == len(proof.bn_scaled) == 3
    # 1. The expressions are BatchNorm of z and of alpha*z: compare with NumPy at random
    #    points (values of order 1, so a relative 1e-12 means they agree).
    rng = np.random.default_rng(7)
    syms = (*zs, L.alpha, L.gamma, L.beta, L.epsilon)
    plain = sp.lambdify(syms, list(proof.bn_plain))
    scaled = sp.lambdify(syms, list(proof.bn_scaled))
    for _ in range(5):
        z = rng.normal(size=3)
        a, g, b = rng.uniform(0.1, 5), rng.normal(), rng.normal()
        for e in (0.0, 0.3):
            args = (*z, a, g, b, e)
            np.testing.assert_allclose(plain(*args), _np_bn(z, g, b, e), rtol=1e-12)
            np.testing.assert_allclose(scaled(*args), _np_bn(a * z, g, b, e), rtol=1e-12)
            diff = np.asarray(scaled(*args)) - np.asarray(plain(*args))
            if e == 0.0:
                assert np.max(np.abs(diff)) <= 1e-12 * (abs(g) + 1)
            else:  # negative control: with epsilon > 0 the scale matters
                assert np.max(np.abs(diff)) > 1e-6 * abs(g)
    # 2. The residuals are exactly 0 ...
    for res in (proof.invariance_residuals, proof.deviation_residuals):
        assert len(res) == 3 and all(r == 0 for r in res)
    assert len(proof.gradient_residuals) == 2 and all(r == 0 for r in proof.gradient_residuals)
    # ... and the test re-derives the first from the evidence (exact zero at epsilon = 0,
    # not zero at symbolic epsilon).
    d0 = (proof.bn_scaled[0] - proof.bn_plain[0]).subs(L.epsilon, 0)
    assert d0.has(L.alpha) and sp.simplify(d0) == 0
    assert sp.simplify(proof.bn_scaled[0] - proof.bn_plain[0]) != 0
    # 3. The gradients are those of L = sum_i c_i BN(w1 x_i1 + w2 x_i2)_i (gamma 1, beta 0,
    #    epsilon 0): central differences of the NumPy loss at random W, and at alpha*W.
    point = {str(k): float(v) for k, v in proof.point}
    xs = [(point[f"x{i}_1"], point[f"x{i}_2"]) for i in (1, 2, 3)]
    cs = [point[f"c{i}"] for i in (1, 2, 3)]

    def loss(w1, w2):
        z = np.array([w1 * x1 + w2 * x2 for x1, x2 in xs])
        return float(np.dot(cs, _np_bn(z, 1.0, 0.0, 0.0)))

    w1s, w2s = sp.symbols("w1 w2", real=True)
    gp = sp.lambdify((w1s, w2s, L.alpha), list(proof.gradient_plain))
    ga = sp.lambdify((w1s, w2s, L.alpha), list(proof.gradient_scaled))
    h = 1e-6
    for _ in range(3):
        w1, w2, a = rng.normal(), rng.normal(), rng.uniform(0.2, 4)
        for (u1, u2), got in (((w1, w2), gp(w1, w2, a)), ((a * w1, a * w2), ga(w1, w2, a))):
            fd = [
                (loss(u1 + h, u2) - loss(u1 - h, u2)) / (2 * h),
                (loss(u1, u2 + h) - loss(u1, u2 - h)) / (2 * h),
            ]
            np.testing.assert_allclose(got, fd, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.asarray(ga(w1, w2, a)) * a, gp(w1, w2, a), rtol=1e-10)


def test_symbolic_proof_can_fail():
    """Negative controls: the same machinery does not 'prove' false statements."""
    zs = list(sp.symbols("z1:4", real=True))
    az = [L.alpha * z for z in zs]
    ys = L._bn_batch(zs, L.gamma, L.beta, L.epsilon)
    ya = L._bn_batch(az, L.gamma, L.beta, L.epsilon)
    assert sp.simplify(ya[0] - ys[0]) != 0  # ε > 0: not invariant
    ys0 = L._bn_batch(zs, L.gamma, L.beta, 0)
    ya_neg = L._bn_batch([-z for z in zs], L.gamma, L.beta, 0)
    assert sp.simplify(ya_neg[0] - ys0[0]) != 0  # α = −1 flips the sign


@pytest.mark.parametrize("epsilon", [0.0, 1e-5, 0.5])
def test_train_mode_output_moments_exact(epsilon):
    """Per feature: batch mean β and batch variance γ²σ²_B/(σ²_B+ε), σ²_B of this batch."""
    _, _, z = pre_activations()
    gamma, beta = gamma_beta()
    y = np.asarray(train_bn(z, gamma, beta, epsilon), np.float64)
    var_b = np.asarray(z, np.float64).var(0)
    law = sp.lambdify((L.gamma, L.beta, L.batch_var, L.epsilon), L.train_output_moments())
    mean_law, var_law, m2_law = law(
        np.asarray(gamma, np.float64), np.asarray(beta, np.float64), var_b, epsilon
    )
    np.testing.assert_allclose(y.mean(0), mean_law, atol=2e-6)
    np.testing.assert_allclose(y.var(0), var_law, rtol=2e-5)
    np.testing.assert_allclose(np.mean(y**2, 0), m2_law, rtol=2e-5)
    if epsilon == 0.5:  # the ε factor is visible, not lost in the tolerance
        assert np.all(np.abs(y.var(0) / np.asarray(gamma, np.float64) ** 2 - 1) > 0.1)


@pytest.mark.parametrize("alpha", [1e-3, 1.0, 1e3])
def test_scale_invariance_numerically(alpha):
    _, _, z = pre_activations()
    _, _, za = pre_activations(alpha)
    gamma, beta = gamma_beta()
    # ε = 0: BN(αWx) = BN(Wx) to float32 precision.
    np.testing.assert_allclose(
        train_bn(za, gamma, beta, 0.0), train_bn(z, gamma, beta, 0.0), atol=5e-5
    )
    # ε > 0: the exact law BN(αz) − β = r(α)(BN(z) − β), r from the batch's own σ²_B.
    eps = 1e-5
    y, ya = train_bn(z, gamma, beta, eps), train_bn(za, gamma, beta, eps)
    var_b = np.asarray(z, np.float64).var(0)
    r = sp.lambdify((L.alpha, L.batch_var, L.epsilon), L.scale_deviation_ratio())(alpha, var_b, eps)
    centred = np.asarray(y, np.float64) - np.asarray(beta, np.float64)
    np.testing.assert_allclose(
        np.asarray(ya, np.float64) - np.asarray(beta), r * centred, atol=5e-5
    )
    # ... so the deviation from invariance is bounded by |r − 1|·|BN(z) − β|: tiny for
    # α ≥ 1, large at α = 1e-3 where α²σ²_B is comparable to ε.
    bound = np.abs(r - 1) * np.abs(centred) + 5e-5
    assert np.all(np.abs(np.asarray(ya) - np.asarray(y)) <= bound)
    if alpha == 1e-3:
        assert np.max(np.abs(r - 1)) > 0.05


@pytest.mark.parametrize("alpha", [1e-3, 1.0, 1e3])
def test_gradient_scales_as_inverse_alpha(alpha):
    """With ε = 0, ∇_W L at αW is ∇_W L at W divided by α (L(αW) = L(W))."""
    x, w, _ = pre_activations()
    gamma, beta = gamma_beta()
    v = jax.random.normal(jax.random.key(9), (B, C))

    def loss(w):
        y = train_bn(x @ w, gamma, beta, 0.0)
        return jnp.sum(y * v)

    g = jax.grad(loss)(w)
    ga = jax.grad(loss)(alpha * w)
    assert np.all(np.isfinite(ga))
    factor = float(L.gradient_scale_factor(alpha))
    np.testing.assert_allclose(
        ga, factor * g, rtol=1e-3, atol=1e-4 * factor * float(jnp.max(jnp.abs(g)))
    )


def test_eval_mode_trap_with_initial_running_statistics():
    """A fresh BatchNorm in eval mode is y = γx/√(1+ε) + β: it does not normalize."""
    x = 3.0 + 5.0 * jax.random.normal(jax.random.key(2), (B, C))
    gamma, beta = gamma_beta()
    eps = 1e-5
    gain, shift = L.eval_mode_affine(
        L.INITIAL_RUNNING_MEAN, L.INITIAL_RUNNING_VAR, eps, L.gamma, L.beta
    )
    to_np = sp.lambdify((L.gamma, L.beta), (gain, shift))
    g_np, s_np = to_np(np.asarray(gamma, np.float64), np.asarray(beta, np.float64))
    expect = g_np * np.asarray(x, np.float64) + s_np
    bn = VN.BatchNorm(C, epsilon=eps, rngs=nnx.Rngs(0))
    bn.scale[...], bn.bias[...] = gamma, beta
    bn.eval()
    np.testing.assert_allclose(bn(x), expect, rtol=1e-5, atol=1e-5)
    lin = VL.BatchNorm(use_running_average=True, epsilon=eps)
    v = lin.init(jax.random.key(0), x)
    v = {**v, "params": {"scale": gamma, "bias": beta}}
    np.testing.assert_allclose(lin.apply(v, x), expect, rtol=1e-5, atol=1e-5)
    # The gain a checker warns about: ≈ 1, and the output keeps the input's scale.
    assert float(L.eval_mode_gain(0, 1, eps)) == pytest.approx(1 / np.sqrt(1 + eps))
    # Output moments from the input's (here the batch's own) moments, per feature.
    y = np.asarray(VN.BatchNorm(C, epsilon=eps, use_running_average=True, rngs=nnx.Rngs(0))(x))
    x64 = np.asarray(x, np.float64)
    moments = sp.lambdify(
        (L.input_mean, L.input_var),
        L.eval_mode_output_moments(
            running_mean=L.INITIAL_RUNNING_MEAN,
            running_var=L.INITIAL_RUNNING_VAR,
            epsilon=eps,
            gamma=1,
            beta=0,
        ),
    )
    for j in range(C):
        m = moments(x64[:, j].mean(), x64[:, j].var())
        np.testing.assert_allclose(y[:, j].mean(), m[0], rtol=1e-5)
        np.testing.assert_allclose(y[:, j].var(), m[1], rtol=1e-5)
        np.testing.assert_allclose(np.mean(y[:, j] ** 2), m[2], rtol=1e-5)
    assert np.all(y.var(0) > 5)  # far from normalized (input std 5)


def test_running_statistics_match_their_laws():
    """EMA closed form and the unbiased factor, through the module."""
    x = jnp.tile(jnp.array([[0.0], [1.0], [2.0], [5.0]]), (1, 2))  # N = 4, mean 2, var 3.5
    bn = VN.BatchNorm(2, momentum=0.9, running_var_mode="unbiased", rngs=nnx.Rngs(0))
    for _ in range(3):
        bn(x)
    s_var = 3.5 * float(L.unbiased_factor(4))
    np.testing.assert_allclose(
        bn.mean[...], float(L.running_average_after(3, 0, 2, 0.9)), rtol=1e-6
    )
    np.testing.assert_allclose(
        bn.var[...], float(L.running_average_after(3, 1, s_var, 0.9)), rtol=1e-6
    )
