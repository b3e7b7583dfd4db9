"""Initializers: sampled moments against each scheme's law, bounds, exact cases, errors.

Tolerances come from the estimator's own variance. For N i.i.d. entries with variance v and
kurtosis k, the mean of squares has standard error v * sqrt((k - 1) / N) and the mean has
standard error sqrt(v / N); we allow Z = 5 standard errors (two-sided p ~ 6e-7 per check).
"""

import math

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import integrate, stats

import varprop
from varprop import initializers as I

Z = 5.0
KEY = jax.random.key(20261123)


def _tn(lo=-2.0, hi=2.0):
    """(mean, variance, kurtosis) of N(0, 1) truncated to [lo, hi], from scipy."""
    d = stats.truncnorm(lo, hi)
    return float(d.mean()), float(d.var()), float(d.stats(moments="k")) + 3.0


def _tanh_m2():
    """E[tanh(z)^2], z ~ N(0, 1), by scipy quad (0.394294...)."""
    f = lambda z: math.tanh(z) ** 2 * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    return integrate.quad(f, -math.inf, math.inf, epsabs=0, epsrel=1e-13)[0]


# (builder, shape, E[w], Var(w), kurtosis): every sampling initializer, on shapes whose fans
# differ, with the law written out here from the papers, not read from the scheme:
# He et al. 2015: Var = g^2/n_in (g^2 = 2 for ReLU, 2/(1 + a^2) leaky, 1/E[tanh^2] tanh);
# Glorot & Bengio 2010: 2/(n_in + n_out); LeCun 1998: 1/n_in; uniform U[-s, s): s^2/3;
# Fixup (Zhang et al. 2019): g^2 L^(-1/(m-1))/n_in; truncated normal: scipy.stats.truncnorm.
_TN = _tn()
_TN13 = _tn(-1.0, 3.0)
SAMPLED = [
    (I.normal(0.01), (400, 300), 0.0, 1e-4, 3.0),
    (I.normal(1.0), (400, 300), 0.0, 1.0, 3.0),
    (I.uniform(0.5), (400, 300), 0.0, 0.25 / 3, 1.8),
    (I.truncated_normal(0.3), (400, 300), 0.0, 0.09 * _TN[1], _TN[2]),
    (I.truncated_normal(1.0, -1.0, 3.0), (400, 300), _TN13[0], _TN13[1], _TN13[2]),
    (I.variance_scaling(2.0, "fan_in", "normal"), (400, 300), 0.0, 2 / 400, 3.0),
    (I.variance_scaling(0.5, "fan_out", "truncated_normal"), (400, 300), 0.0, 0.5 / 300, _TN[2]),
    (I.variance_scaling(1.0, "fan_avg", "uniform"), (400, 300), 0.0, 1 / 350, 1.8),
    (
        I.variance_scaling(3.0, "fan_geo_avg", "truncated_normal"),
        (400, 300),
        0.0,
        3 / math.sqrt(400 * 300),
        _TN[2],
    ),
    (
        I.variance_scaling(1.0, "fan_in", "normal", in_axis=0, out_axis=1),
        (300, 400),
        0.0,
        1 / 300,
        3.0,
    ),
    (I.glorot_normal(), (400, 300), 0.0, 2 / 700, 3.0),
    (I.glorot_uniform(), (400, 300), 0.0, 2 / 700, 1.8),
    (I.xavier_fan_in_normal(), (400, 300), 0.0, 1 / 400, 3.0),
    (I.xavier_fan_in_uniform(), (400, 300), 0.0, 1 / 400, 1.8),
    (I.lecun_normal(), (400, 300), 0.0, 1 / 400, 3.0),
    (I.lecun_uniform(), (400, 300), 0.0, 1 / 400, 1.8),
    (I.he_normal(), (400, 300), 0.0, 2 / 400, 3.0),
    (I.he_uniform(), (400, 300), 0.0, 2 / 400, 1.8),
    (I.he_normal(mode="fan_out"), (400, 300), 0.0, 2 / 300, 3.0),
    (I.he_normal(gain=1.7), (400, 300), 0.0, 1.7**2 / 400, 3.0),
    (I.he_normal(gain="tanh"), (400, 300), 0.0, 1 / (_tanh_m2() * 400), 3.0),
    (
        I.he_uniform(gain="leaky_relu:negative_slope=0.2"),
        (400, 300),
        0.0,
        2 / (1.04 * 400),
        1.8,
    ),
    (I.he_normal(), (3, 3, 32, 64), 0.0, 2 / (9 * 32), 3.0),
    (I.fixup(depth=16, layers_per_branch=2), (400, 300), 0.0, 2 / 16 / 400, 3.0),
    (
        I.fixup(depth=100, layers_per_branch=3, gain=1.0),
        (400, 300),
        0.0,
        100**-0.5 / 400,
        3.0,
    ),
]


def _ids(params):
    return [f"{p[0]!r}-{p[1]}" for p in params]


@pytest.mark.parametrize(("init", "shape", "mean", "var", "kurt"), SAMPLED, ids=_ids(SAMPLED))
def test_sampled_moments_match_law(init, shape, mean, var, kurt):
    s = init.scheme
    # The scheme's law is the textbook one ...
    assert s.variance(shape) == pytest.approx(var, rel=1e-12)
    assert s.mean(shape) == pytest.approx(mean, rel=1e-12, abs=1e-15)
    # ... and the draws follow it.
    w = np.asarray(init(KEY, shape, jnp.float32), dtype=np.float64)
    assert w.shape == shape
    n = w.size
    # Mean: standard error sqrt(var / N).
    assert abs(w.mean() - mean) <= Z * math.sqrt(var / n)
    # Central second moment around the known mean: s.e. var * sqrt((k - 1) / N).
    m2 = np.mean((w - mean) ** 2)
    assert abs(m2 / var - 1.0) <= Z * math.sqrt((kurt - 1.0) / n)


@pytest.mark.parametrize(("init", "shape"), [p[:2] for p in SAMPLED], ids=_ids(SAMPLED))
def test_bounds_hold(init, shape):
    s = init.scheme
    bound = s.bound(shape)
    w = np.asarray(init(KEY, shape))
    if bound is None:
        assert s.distribution == "normal"
        return
    assert np.abs(w).max() <= bound * (1 + 1e-6)
    # The bound is tight: a large draw comes within 2% of it.
    assert np.abs(w).max() >= 0.98 * bound


def test_truncated_constant_is_derived_not_typed():
    # The constant JAX and Keras divide by: sqrt(1 - 4 phi(2) / (2 Phi(2) - 1)), from scipy.
    from scipy import stats

    from varprop.laws import truncated_normal_std

    assert truncated_normal_std() == pytest.approx(stats.truncnorm(-2, 2).std(), rel=1e-14)
    assert truncated_normal_std(-1, 3) == pytest.approx(stats.truncnorm(-1, 3).std(), rel=1e-14)
    k = float(varprop.laws.distribution_kurtosis("truncated_normal"))
    assert k == pytest.approx(stats.truncnorm(-2, 2).stats(moments="k") + 3, rel=1e-12)


@pytest.mark.parametrize("shape", [(64, 64), (100, 40), (40, 100), (3, 3, 16, 8)])
@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_orthogonal_is_exact(shape, gain):
    init = I.orthogonal(gain)
    w = np.asarray(init(KEY, shape), dtype=np.float64)
    rows, cols = math.prod(shape[:-1]), shape[-1]
    m = w.reshape(rows, cols)
    assert np.sum(m**2) == pytest.approx(gain**2 * min(rows, cols), rel=1e-5)
    gram = m.T @ m if rows >= cols else m @ m.T
    np.testing.assert_allclose(gram, gain**2 * np.eye(min(rows, cols)), atol=1e-5 * gain**2)
    # The law's per-entry E[w^2] is the same number.
    assert init.scheme.variance(shape) * m.size == pytest.approx(gain**2 * min(rows, cols))


def test_orthogonal_column_axis():
    w = np.asarray(I.orthogonal(column_axis=0)(KEY, (5, 20)), dtype=np.float64)
    np.testing.assert_allclose(w @ w.T, np.eye(5), atol=1e-5)


def test_delta_orthogonal_is_exact():
    shape = (3, 3, 8, 16)
    w = np.asarray(I.delta_orthogonal(1.5)(KEY, shape), dtype=np.float64)
    centre = w[1, 1]
    np.testing.assert_allclose(centre @ centre.T, 1.5**2 * np.eye(8), atol=1e-5)
    w[1, 1] = 0
    assert not w.any()
    s = I.delta_orthogonal(1.5).scheme
    assert s.variance(shape) * math.prod(shape) == pytest.approx(1.5**2 * 8)
    with pytest.raises(ValueError, match="out channels >= in channels"):
        I.delta_orthogonal()(KEY, (3, 3, 16, 8))


@pytest.mark.parametrize(
    ("init", "value"), [(I.zeros, 0.0), (I.ones, 1.0), (I.constant(-0.25), -0.25)]
)
def test_constants_exact(init, value):
    w = init(KEY, (7, 5), jnp.bfloat16)
    assert w.dtype == jnp.bfloat16
    assert np.all(np.asarray(w, dtype=np.float32) == value)
    assert init.scheme.law == 0
    assert float(init.scheme.mean_law) == value


def test_fixup_law_symbolic():
    import sympy as sp

    from varprop.laws import symbols as S

    s = I.fixup(depth=16, layers_per_branch=3).scheme
    # He's 2/n_in times L^(-1/(m-1)) = 16^(-1/2).
    assert sp.simplify(s.law - 2 / (4 * S.fan_in)) == 0
    assert S.depth in s.variance_expr.free_symbols


def test_he_relu_gain_is_exactly_sqrt2():
    import sympy as sp

    from varprop.laws import symbols as S

    assert I.he_normal().scheme.law == 2 / S.fan_in
    assert I.he_normal(mode="fan_out").scheme.law == 2 / S.fan_out
    assert I.glorot_normal().scheme.law == 2 / (S.fan_in + S.fan_out)
    assert I.lecun_uniform().scheme.law == 1 / S.fan_in
    assert sp.simplify(I.variance_scaling(3, "fan_geo_avg", "normal").scheme.law) == sp.simplify(
        3 / sp.sqrt(S.fan_in * S.fan_out)
    )


def test_fans_layout():
    from varprop.laws import compute_fans

    assert compute_fans((3, 5)) == (3, 5)
    assert compute_fans((3, 3, 16, 32)) == (3 * 3 * 16, 3 * 3 * 32)
    assert compute_fans((5, 7), in_axis=-1, out_axis=-2) == (7, 5)
    assert compute_fans((4, 3, 5), batch_axis=0) == (3, 5)
    assert compute_fans((2, 3, 4, 5), in_axis=(0, 1), out_axis=-1) == (6 * 4, 5 * 4)


# -- keys, dtypes, jit -------------------------------------------------------------------


@pytest.mark.parametrize("key", [jax.random.key(0), jax.random.PRNGKey(0)], ids=["typed", "legacy"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_keys_and_dtypes(key, dtype):
    for init in (I.he_normal(), I.glorot_uniform(), I.orthogonal(), I.truncated_normal()):
        w = init(key, (16, 8), dtype)
        assert w.dtype == dtype
        assert w.shape == (16, 8)
        assert bool(jnp.all(jnp.isfinite(w)))


def test_works_under_jit_and_is_deterministic():
    init = I.he_uniform()
    f = jax.jit(lambda k: init(k, (32, 16)))
    a, b = f(KEY), init(KEY, (32, 16))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(init(jax.random.key(1), (32, 16))), np.asarray(a))


# -- drop-in use in Flax -------------------------------------------------------------------


def test_dropin_flax_nnx_linear():
    layer = nnx.Linear(
        784, 256, kernel_init=I.he_normal(), bias_init=I.zeros, rngs=nnx.Rngs(params=0)
    )
    k = np.asarray(layer.kernel[...], dtype=np.float64)
    assert k.shape == (784, 256)
    var = 2 / 784  # He et al. 2015: Var(w) = 2 / n_in for ReLU (not read from the scheme)
    assert abs(np.mean(k**2) / var - 1) <= Z * math.sqrt(2 / k.size)
    assert not np.asarray(layer.bias[...]).any()


def test_dropin_flax_linen_dense():
    model = linen.Dense(256, kernel_init=I.glorot_uniform(), bias_init=I.constant(0.1))
    params = model.init(jax.random.key(3), jnp.ones((1, 784)))["params"]
    k = np.asarray(params["kernel"], dtype=np.float64)
    assert k.shape == (784, 256)
    var = 2 / (784 + 256)
    assert abs(np.mean(k**2) / var - 1) <= Z * math.sqrt(0.8 / k.size)
    assert np.abs(k).max() <= math.sqrt(3 * var) * (1 + 1e-6)
    np.testing.assert_allclose(np.asarray(params["bias"]), 0.1, rtol=1e-6)


# -- same law as jax.nn.initializers where the names are shared ------------------------------

SHARED_NAMES = [
    ("glorot_normal", {}),
    ("glorot_uniform", {}),
    ("xavier_normal", {}),
    ("xavier_uniform", {}),
    ("lecun_normal", {}),
    ("lecun_uniform", {}),
    ("he_normal", {}),
    ("he_uniform", {}),
    ("kaiming_normal", {}),
    ("kaiming_uniform", {}),
    ("normal", {"stddev": 0.3}),
    ("truncated_normal", {"stddev": 0.3}),
    ("orthogonal", {"scale": 1.5}),
]


@pytest.mark.parametrize(("name", "kwargs"), SHARED_NAMES, ids=[n for n, _ in SHARED_NAMES])
def test_same_variance_law_as_jax(name, kwargs):
    shape = (500, 300)
    ours_kwargs = {"gain": kwargs["scale"]} if name == "orthogonal" else kwargs
    ours = getattr(I, name)(**ours_kwargs)
    theirs = getattr(jax.nn.initializers, name)(**kwargs)
    w = np.asarray(theirs(KEY, shape, jnp.float32), dtype=np.float64)
    law = ours.scheme.variance(shape)
    if name == "orthogonal":
        assert np.sum(w**2) == pytest.approx(law * w.size, rel=1e-5)
        return
    # JAX's *_normal schemes truncate at +-2 std: use that kurtosis for its draw.
    jax_dist = (
        "normal" if name == "normal" else ("truncated_normal" if "normal" in name else "uniform")
    )
    kurt = float(varprop.laws.distribution_kurtosis(jax_dist))
    assert abs(np.mean(w**2) / law - 1) <= Z * math.sqrt((kurt - 1) / w.size)


def test_uniform_differs_from_jax_as_documented():
    shape = (500, 300)
    theirs = np.asarray(jax.nn.initializers.uniform(0.5)(KEY, shape), dtype=np.float64)
    ours = np.asarray(I.uniform(0.5)(KEY, shape), dtype=np.float64)
    se = math.sqrt((0.5**2 / 12) / theirs.size)
    assert abs(theirs.mean() - 0.25) <= Z * se  # JAX: U[0, scale)
    assert abs(ours.mean()) <= Z * math.sqrt((0.5**2 / 3) / ours.size)  # ours: U[-scale, scale)


# -- scheme objects ------------------------------------------------------------------------


def test_scheme_of_and_attribute_agree():
    init = I.he_normal()
    assert varprop.scheme_of(init) is init.scheme
    with pytest.raises(TypeError, match="not a varprop initializer"):
        varprop.scheme_of(lambda key, shape: 0)  # no readable law


def test_scheme_describes_itself():
    s = I.glorot_uniform().scheme
    assert "Glorot" in s.description and "2010" in s.description
    assert s.distribution == "uniform"
    assert s.bound((10, 20)) == pytest.approx(math.sqrt(6 / 30))
    assert float(s.kurtosis) == pytest.approx(1.8)


def test_from_spec_builds_the_same_law():
    a = I.from_spec("variance_scaling:scale=2.0,mode=fan_in,distribution=uniform")
    assert a.scheme.law == I.he_uniform().scheme.law
    assert (
        I.from_spec("he_normal:mode=fan_out").scheme.law == I.he_normal(mode="fan_out").scheme.law
    )


# -- bad input -----------------------------------------------------------------------------


def test_bad_mode_distribution_activation():
    with pytest.raises(ValueError, match=r"unknown mode 'fan_sum'.*fan_in"):
        I.variance_scaling(1.0, "fan_sum", "normal")
    with pytest.raises(ValueError, match=r"unknown distribution 'cauchy'.*truncated_normal"):
        I.variance_scaling(1.0, "fan_in", "cauchy")
    with pytest.raises(ValueError, match=r"'swishy'.*relu"):
        I.he_normal(gain="swishy")
    with pytest.raises(ValueError, match=r"mode must be 'fan_in' or 'fan_out', got 'fan_avg'"):
        I.he_normal(mode="fan_avg")


@pytest.mark.parametrize("shape", [(10,), ()])
def test_low_rank_shape_for_fan_schemes(shape):
    with pytest.raises(ValueError, match=r"at least (2|1) dim"):
        I.he_normal()(KEY, shape)


@pytest.mark.parametrize("shape", [(0, 5), (3, 3, 0, 4)])
def test_zero_size_shape(shape):
    with pytest.raises(ValueError, match="zero-size shape"):
        I.glorot_normal()(KEY, shape)
    with pytest.raises(ValueError, match="zero-size shape"):
        I.orthogonal()(KEY, shape)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.uint8])
def test_non_float_dtype(dtype):
    with pytest.raises(TypeError, match="floating-point dtype"):
        I.he_normal()(KEY, (4, 4), dtype)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: I.variance_scaling(-1.0, "fan_in", "normal"), r"scale must be .*> 0, got -1.0"),
        (lambda: I.variance_scaling(0.0, "fan_in", "normal"), r"scale must be .*> 0, got 0.0"),
        (lambda: I.normal(0.0), r"stddev must be .*> 0, got 0.0"),
        (lambda: I.uniform(float("nan")), r"scale must be .*> 0, got nan"),
        (lambda: I.he_normal(gain=-2.0), r"gain must be .*> 0, got -2.0"),
        (lambda: I.fixup(depth=0), r"depth must be an int >= 1, got 0"),
        (lambda: I.fixup(depth=10, layers_per_branch=1), r"layers_per_branch must be an int >= 2"),
        (lambda: I.truncated_normal(1.0, 2.0, -2.0), r"lower < upper"),
    ],
)
def test_bad_scale_values(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("key", [0, np.arange(3, dtype=np.uint32), jnp.zeros(2), "key"])
def test_non_key_key(key):
    with pytest.raises(TypeError, match="PRNG key"):
        I.he_normal()(key, (4, 4))


def test_bad_axes():
    with pytest.raises(ValueError, match=r"in_axis=5 is out of range"):
        I.he_normal(in_axis=5)(KEY, (4, 4))
    with pytest.raises(ValueError, match="overlap"):
        I.he_normal(in_axis=0, out_axis=0)(KEY, (4, 4))


def test_bad_spec():
    with pytest.raises(
        ValueError, match=r"unknown initializer 'he_nromal'; valid names: .*he_normal"
    ):
        I.from_spec("he_nromal")
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['bogus'\].*allowed: mode, gain"):
        I.from_spec("he_normal:bogus=1")
    with pytest.raises(ValueError, match="expected key=value"):
        I.from_spec("he_normal:mode")
