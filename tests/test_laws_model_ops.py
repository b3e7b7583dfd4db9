"""The per-op laws of ``laws.model_ops``: fans against ConvGeometry and a brute-force count,
and the normalization, dropout, residual and attention laws against Monte Carlo (NumPy,
fixed seeds, tolerances from the estimator's standard error)."""

from __future__ import annotations

import contextlib
import itertools
import math

import numpy as np
import pytest
import sympy as sp

from varprop._src.laws import model_ops as M
from varprop._src.laws.conv import ConvGeometry

Z = 4.0  # tolerance in standard errors

try:  # many small matmuls: BLAS threads only contend (10x slower on a loaded 2-core box)
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None


def _one_blas_thread():
    return threadpool_limits(1) if threadpool_limits else contextlib.nullcontext()


# --- fans ------------------------------------------------------------------------------
def test_dense_fans():
    f = M.dense_fans([8, 64], [4, 128])
    assert (f.fan_in, f.fan_out) == (512.0, 512.0)
    assert float(f.fan_in_expr.subs(dict(f.values))) == f.fan_in
    assert float(f.fan_out_expr.subs(dict(f.values))) == f.fan_out
    assert M.dense_fans([784], [10]).fan_out == 10.0
    with pytest.raises(ValueError):
        M.dense_fans([0], [3])


def _central(a: np.ndarray, period: tuple[int, ...]) -> np.ndarray:
    """The central window of ``a``, a whole number of periods along each dim."""
    sl = []
    for size, per in zip(a.shape, period, strict=True):
        length = per * max(1, (size // 3) // per)
        start = (size - length) // 2
        sl.append(slice(start, start + length))
    return a[tuple(sl)]


GEOMETRIES = [  # kernel, c_in, c_out, groups, strides
    ((3, 3), 16, 32, 1, (1, 1)),
    ((3, 3), 16, 32, 1, (2, 2)),
    ((5, 3), 8, 12, 4, (2, 3)),
    ((1, 1), 4, 8, 1, (2, 2)),  # k < s: some inputs are never read
    ((7,), 6, 6, 6, (3,)),  # depthwise, 1-D
    ((4, 4), 3, 9, 3, (4, 2)),
]


@pytest.mark.parametrize(("k", "ci", "co", "g", "s"), GEOMETRIES)
def test_conv_fans_match_convgeometry_interior(k, ci, co, g, s):
    f = M.conv_fans(k, ci, co, groups=g, strides=s)
    geom = ConvGeometry.make(tuple(40 for _ in k), k, ci, co, strides=s, padding="SAME", groups=g)
    assert f.fan_in == geom.fan_in
    interior_reads = float(np.mean(_central(geom.reads(), s)))
    assert f.fan_out == pytest.approx(interior_reads * co / g, rel=1e-12)
    # The whole map has fewer reads (borders): the factor border_factor reports.
    assert geom.backward_fan <= f.fan_out + 1e-12
    assert float(f.fan_out_expr.subs(dict(f.values))) == f.fan_out


@pytest.mark.parametrize(("k", "d"), [((4, 4), (2, 2)), ((3, 5), (2, 3)), ((5,), (2,))])
def test_transposed_conv_fan_in_is_the_strided_convs_reads(k, d):
    # A conv with lhs dilation D reads the input the way the transpose of a stride-D conv
    # does: its taps per output are the stride-D conv's reads per input.
    f = M.conv_fans(k, 6, 10, lhs_dilation=d)
    geom = ConvGeometry.make(tuple(48 for _ in k), k, 1, 1, strides=d)
    assert f.fan_in == pytest.approx(6 * float(np.mean(_central(geom.reads(), d))))


def _brute_force(k, s, d, n=30):
    """Interior mean taps per output reading a real input, and (output, tap) pairs per real
    input, of a conv with strides s and lhs dilation d, by enumerating positions (no
    padding; the interior is taken far from both ends)."""
    nd = len(k)
    dil = tuple((n - 1) * di + 1 for di in d)  # dilated input extent
    outs = tuple((m - ki) // si + 1 for m, ki, si in zip(dil, k, s, strict=True))
    taps = np.zeros(outs)
    reads = np.zeros((n,) * nd)
    for o in itertools.product(*(range(x) for x in outs)):
        for t in itertools.product(*(range(x) for x in k)):
            pos = [oi * si + ti for oi, si, ti in zip(o, s, t, strict=True)]
            if all(pi % di == 0 for pi, di in zip(pos, d, strict=True)):
                taps[o] += 1
                reads[tuple(pi // di for pi, di in zip(pos, d, strict=True))] += 1
    period = tuple(si * di for si, di in zip(s, d, strict=True))
    return float(np.mean(_central(taps, period))), float(np.mean(_central(reads, period)))


@pytest.mark.parametrize(
    ("k", "s", "d"),
    [((3, 3), (1, 1), (1, 1)), ((3, 3), (2, 2), (1, 1)), ((4, 3), (1, 2), (2, 1)),
     ((5,), (3,), (2,)), ((2, 2), (2, 1), (3, 2))],
)  # fmt: skip
def test_conv_fans_match_a_brute_force_count(k, s, d):
    taps, reads = _brute_force(k, s, d)
    f = M.conv_fans(k, 8, 12, groups=2, strides=s, lhs_dilation=d)
    assert f.fan_in == pytest.approx(taps * 8 / 2, rel=1e-12)
    assert f.fan_out == pytest.approx(reads * 12 / 2, rel=1e-12)


@pytest.mark.parametrize(("n", "k"), [(7, 3), (28, 3), (8, 5), (16, 7)])
def test_border_factor_closed_forms(n, k):
    # SAME, stride 1, odd kernel: (k^2 - 1)/4 taps missing per border, both ways.
    one = 1 - (k * k - 1) / (4 * n * k)
    f = M.border_factor((n, n), (k, k))
    assert f.forward == pytest.approx(one**2) and f.backward == pytest.approx(one**2)
    # VALID: every tap valid; edge inputs are read less.
    v = M.border_factor((n,), (k,), padding="VALID")
    assert v.forward == 1.0 and v.backward == pytest.approx((n - k + 1) / n)


def test_border_factor_strided():
    f = M.border_factor((8, 8), (3, 3), strides=2)  # 11 of 12 taps and reads per dim
    assert f == pytest.approx(((11 / 12) ** 2, (11 / 12) ** 2))


# --- embedding -------------------------------------------------------------------------
def test_embedding():
    assert M.embedding_law(0.25) == sp.Float(0.25)
    assert "vocabulary size 50000" in (M.embedding_fan_warning(50000, 50000, 64) or "")
    assert M.embedding_fan_warning(64, 50000, 64) is None
    assert M.embedding_fan_warning(64, 64, 64) is None


# --- normalization (item 3) ------------------------------------------------------------
def _norm(z, gamma, beta, eps):
    mu, v = z.mean(), z.var()
    return gamma * (z - mu) / np.sqrt(v + eps) + beta


@pytest.mark.parametrize(("m", "v", "eps"), [(8, 1.0, 0.0), (8, 1e-3, 1e-3), (32, 0.05, 0.1)])
def test_norm_train_laws_against_finite_differences(m, v, eps):
    rng = np.random.default_rng(1)
    z = rng.standard_normal(m)
    z = (z - z.mean()) / z.std() * math.sqrt(v) + 3.0
    gamma, beta = 1.7, 0.3
    y = _norm(z, gamma, beta, eps)
    assert np.mean(y**2) == pytest.approx(float(M.norm_train_forward(gamma, beta, v, eps)))
    h = 1e-6 * math.sqrt(v)
    jac = np.stack(
        [(_norm(z + h * e, gamma, beta, eps) - _norm(z - h * e, gamma, beta, eps)) / (2 * h)
         for e in np.eye(m)]
    )  # fmt: skip
    # E|J g|^2 for isotropic g of unit second moment is tr(J^T J); per value: / m.
    law = float(M.norm_train_backward(gamma, v, eps, m))
    assert np.sum(jac**2) / m == pytest.approx(law, rel=1e-6)
    assert law != pytest.approx(gamma**2 / (v + eps), rel=1e-3)  # the projection matters


def test_norm_eval_laws():
    rng = np.random.default_rng(2)
    x = 2.0 + 3.0 * rng.standard_normal(10_000)
    gamma, beta, eps = 1.5, -0.4, 1e-2
    y = gamma * x / math.sqrt(1 + eps) + beta  # running statistics (0, 1)
    law = M.norm_eval_forward(gamma, beta, np.mean(x**2), np.mean(x), eps)
    assert np.mean(y**2) == pytest.approx(float(law), rel=1e-12)
    assert float(M.norm_eval_backward(gamma, eps)) == pytest.approx(gamma**2 / (1 + eps))


# --- the factor on the layer before a normalization (item 4) ---------------------------
def _ratio(true: np.ndarray, plain: np.ndarray) -> tuple[float, float]:
    """sum(true)/sum(plain) over the draws and its delta-method standard error."""
    r = true.sum() / plain.sum()
    resid = true - r * plain
    return float(r), float(resid.std(ddof=1) / math.sqrt(len(true)) / plain.mean())


def _normalize_backward(z, gy, axis):
    """g_z of y = (z - mean)/std over ``axis`` (ε = 0, γ = 1) given g_y."""
    v = z.var(axis, keepdims=True)
    xh = (z - z.mean(axis, keepdims=True)) / np.sqrt(v)
    proj = gy - gy.mean(axis, keepdims=True) - xh * (gy * xh).mean(axis, keepdims=True)
    return proj / np.sqrt(v)


def _dense_mc(n, kind, draws, rows=256, units=32, seed=0, relu=False):
    rng = np.random.default_rng(seed)
    true, plain = np.empty(draws), np.empty(draws)
    axis = 0 if kind == "batchnorm" else 1
    sigma = 0.7
    with _one_blas_thread():
        for i in range(draws):
            x = rng.standard_normal((rows, n))
            if relu:  # inputs with a mean and a non-Gaussian law: the factor does not care
                x = np.maximum(x + 0.3, 0.0)
            w = sigma * rng.standard_normal((n, units))
            gz = _normalize_backward(x @ w, rng.standard_normal((rows, units)), axis)
            true[i] = np.sum((gz @ w.T) ** 2)
            plain[i] = sigma**2 * n * np.sum(gz**2)  # sigma^2 op^T(g_z^2, 1), summed
    return _ratio(true, plain)


DENSE_CASES = [(4, 1500), (9, 600), (36, 400), (144, 400)]


@pytest.mark.parametrize("kind", ["batchnorm", "layernorm"])
@pytest.mark.parametrize(("n", "draws"), DENSE_CASES)
def test_normalized_backward_factor_dense(kind, n, draws):
    r, se = _dense_mc(n, kind, draws, relu=(n == 36))
    law = float(M.normalized_backward_factor(n, kind))
    assert abs(r - law) < Z * se, (r, se, law)
    # The alternatives are rejected: the plain law (1) and the other normalization's factor.
    other = float(
        M.normalized_backward_factor(n, "layernorm" if kind == "batchnorm" else "batchnorm")
    )
    for alt in (1.0, other):
        assert abs(r - alt) > Z * se, (r, se, alt)


def _patches(x, k):
    """VALID 2-D patches of x (batch, h, w, c) -> (batch, h-k+1, w-k+1, k*k*c)."""
    h, w = x.shape[1:3]
    oh, ow = h - k + 1, w - k + 1
    cols = [x[:, i : i + oh, j : j + ow, :] for i in range(k) for j in range(k)]
    return np.concatenate(cols, axis=-1)


def _unpatch(g, k, shape):
    """The transpose of ``_patches``: add each patch's gradient back into the map."""
    out = np.zeros(shape)
    c = shape[-1]
    oh, ow = g.shape[1:3]
    for t, (i, j) in enumerate((i, j) for i in range(k) for j in range(k)):
        out[:, i : i + oh, j : j + ow, :] += g[..., t * c : (t + 1) * c]
    return out


def _conv_mc(c_in, draws, seed=3):
    """3x3 VALID conv on spatially correlated maps, then BatchNorm over (batch, h, w)."""
    rng = np.random.default_rng(seed)
    k, c_out, shape = 3, 16, (8, 12, 12, c_in)
    n = k * k * c_in
    true, plain = np.empty(draws), np.empty(draws)
    with _one_blas_thread():
        for i in range(draws):
            x = rng.standard_normal(shape)
            x = np.cumsum(x, axis=1) / 2 + np.cumsum(x, axis=2) / 2  # correlated patches
            p = _patches(x, k)
            w = rng.standard_normal((n, c_out))
            z = (p @ w).reshape(-1, c_out)
            gz = _normalize_backward(z, rng.standard_normal(z.shape), 0)
            gx = _unpatch((gz @ w.T).reshape(*p.shape[:3], n), k, shape)
            true[i] = np.sum(gx**2)
            plain[i] = n * np.sum(gz**2)  # every output of a VALID conv has n real inputs
    return _ratio(true, plain)


@pytest.mark.parametrize(("c_in", "draws"), [(1, 400), (4, 200)])
def test_normalized_backward_factor_conv_batchnorm(c_in, draws):
    n = 9 * c_in
    r, se = _conv_mc(c_in, draws)
    law = float(M.normalized_backward_factor(n, "batchnorm"))
    assert abs(r - law) < Z * se, (r, se, law)
    assert abs(r - 1.0) > Z * se and abs(r - (1 - 1 / n)) > Z * se, (r, se)


def test_normalized_backward_factor_symbolic():
    assert M.normalized_backward_factor() == 1 - 2 / M.n
    assert M.normalized_backward_factor(kind="layernorm") == 1 - 1 / M.n
    with pytest.raises(ValueError):
        M.normalized_backward_factor(9, "groupnorm")


# --- dropout, residual, attention (items 5, 6) -----------------------------------------
def test_dropout_factor():
    rng = np.random.default_rng(4)
    rate, size = 0.3, 200_000
    x = rng.standard_normal(size) + 0.5
    keep = rng.random(size) >= rate
    y = np.where(keep, x / (1 - rate), 0.0)
    # Estimator: mean(y^2)/mean(x^2); its SE from the per-element terms.
    r, se = _ratio(y**2, x**2)
    law = float(M.dropout_factor(rate))
    assert abs(r - law) < Z * se and abs(r - 1.0) > Z * se


def test_residual_add():
    rng = np.random.default_rng(5)
    a = rng.standard_normal(50_000)
    b = 0.6 * a + 0.8 * rng.standard_normal(50_000) + 0.1
    ea2, eb2, eab = np.mean(a * a), np.mean(b * b), np.mean(a * b)
    assert np.mean((a + b) ** 2) == pytest.approx(float(M.residual_add(ea2, eb2, eab)))
    rho = float(M.residual_correlation(ea2, eb2, eab))
    assert rho == pytest.approx(0.6, abs=0.02)
    assert M.residual_add(1, 1, 0) == 2


def test_attention_logits():
    rng = np.random.default_rng(6)
    d, draws = 64, 20_000
    q = 1.5 * rng.standard_normal((draws, d))
    k = 0.5 * rng.standard_normal((draws, d)) + rng.choice([-0.2, 0.2], (draws, 1))
    s = np.sum(q * k, axis=1) / math.sqrt(d)
    law = float(M.attention_logit_second_moment(d, np.mean(q**2), np.mean(k**2), math.sqrt(d)))
    se = np.std(s**2, ddof=1) / math.sqrt(draws)
    assert abs(np.mean(s**2) - law) < Z * se
    assert abs(np.mean(s**2) - law / d) > Z * se


@pytest.mark.parametrize("causal", [False, True])
def test_attention_output_uniform_weights(causal):
    rng = np.random.default_rng(7)
    t, width, draws = 16, 32, 400
    p = np.tril(np.ones((t, t))) if causal else np.ones((t, t))
    p /= p.sum(1, keepdims=True)  # logits -> 0: uniform over the visible keys
    o2, v2 = np.empty(draws), np.empty(draws)
    for i in range(draws):
        x = rng.standard_normal((t, width))
        v = x @ (rng.standard_normal((width, width)) / math.sqrt(width))
        o2[i], v2[i] = np.mean((p @ v) ** 2), np.mean(v**2)
    r, se = _ratio(o2, v2)
    law = float(M.attention_mean_square_weight(t, causal))
    assert abs(r - law) < Z * se, (r, se, law)
    assert abs(r - float(M.attention_mean_square_weight(t, not causal))) > Z * se


if __name__ == "__main__":  # the table of docs/model_laws.md (5x the tests' draws)
    print("op                     n   measured/plain   SE      1-2/n   1-1/n")
    for kind in ("batchnorm", "layernorm"):
        for n, draws in DENSE_CASES:
            r, se = _dense_mc(n, kind, 5 * draws, relu=(n == 36))
            print(
                f"dense+{kind:<10} {n:8d}   {r:.4f}         {se:.4f}  {1 - 2 / n:.4f}  {1 - 1 / n:.4f}"
            )
    for c_in, draws in [(1, 400), (4, 200)]:
        n = 9 * c_in
        r, se = _conv_mc(c_in, 5 * draws)
        print(
            f"conv3x3+batchnorm {n:8d}   {r:.4f}         {se:.4f}  {1 - 2 / n:.4f}  {1 - 1 / n:.4f}"
        )
