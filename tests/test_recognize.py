"""recognize(): the varprop law of the jax.nn / Flax initializers users pass, and the
variance of a scheme at a layer's true fans.

Every recognized initializer is drawn by JAX itself with a fixed key and its sample moments
are compared with the recognized scheme's ``variance(shape)`` and ``mean(shape)``; the law is
also written out here (from JAX's documented formulas, not read from varprop) and compared
exactly. Tolerances come from the estimator's variance: for N i.i.d. entries with variance v
and kurtosis k, the sample variance has standard error v sqrt((k - 1)/N) and the mean
sqrt(v/N); we allow Z = 5 of them.
"""

import functools
import math

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.linen import linear as linen_linear
from flax.nnx.nn import linear as nnx_linear
from scipy import stats

import varprop
from varprop import initializers as I
from varprop._src.recognize import recognize

Z = 5.0
KEY = jax.random.key(20261201)
J = jax.nn.initializers

DENSE = (256, 128)  # fan_in 256, fan_out 128
CONV = (3, 3, 16, 32)  # fan_in 144, fan_out 288
DG = (64, 4, 16)  # DenseGeneral kernel
EMBED = (1000, 64)


def _tn(lo=-2.0, hi=2.0):
    """(mean, variance) of N(0, 1) truncated to [lo, hi], from scipy."""
    d = stats.truncnorm(lo, hi)
    return float(d.mean()), float(d.var())


_TN = _tn()
_TN13 = _tn(-1.0, 3.0)

# (id, jax/flax initializer, shape, distribution, E[w], Var(w)): the law from JAX's docs.
# variance_scaling: Var = scale / n(mode), JAX's truncated normal corrected to exactly that;
# truncated_normal(s, lower, upper): s z with z ~ N(0, 1) on [lower, upper], uncorrected;
# uniform(s): U[0, s); orthogonal(g): g^2 min(r, c)/(r c); delta: g^2 in / (out * 9 * in).
CASES = [
    ("he_normal", J.he_normal(), DENSE, "truncated_normal", 0.0, 2 / 256),
    ("he_uniform_conv", J.he_uniform(), CONV, "uniform", 0.0, 2 / 144),
    ("kaiming_normal_conv", J.kaiming_normal(), CONV, "truncated_normal", 0.0, 2 / 144),
    ("glorot_normal", J.glorot_normal(), DENSE, "truncated_normal", 0.0, 2 / 384),
    ("glorot_uniform_conv", J.glorot_uniform(), CONV, "uniform", 0.0, 2 / 432),
    ("xavier_uniform", J.xavier_uniform(), DENSE, "uniform", 0.0, 2 / 384),
    ("lecun_normal_conv", J.lecun_normal(), CONV, "truncated_normal", 0.0, 1 / 144),
    ("lecun_uniform", J.lecun_uniform(), DENSE, "uniform", 0.0, 1 / 256),
    (
        "vs_fan_out_normal_conv",
        J.variance_scaling(2.0, "fan_out", "normal"),
        CONV,
        "normal",
        0.0,
        2 / 288,
    ),
    (
        "vs_geo_uniform",
        J.variance_scaling(0.5, "fan_geo_avg", "uniform"),
        DENSE,
        "uniform",
        0.0,
        0.5 / math.sqrt(256 * 128),
    ),
    (
        "dg_in01",
        J.variance_scaling(1.0, "fan_in", "normal", in_axis=(0, 1), out_axis=-1),
        DG,
        "normal",
        0.0,
        1 / 256,
    ),
    (
        "dg_out12_avg",
        J.variance_scaling(1.0, "fan_avg", "truncated_normal", in_axis=0, out_axis=(1, 2)),
        DG,
        "truncated_normal",
        0.0,
        1 / 64,
    ),
    (
        "dg_batch0_fan_out",
        J.variance_scaling(3.0, "fan_out", "uniform", in_axis=1, out_axis=2, batch_axis=0),
        DG,
        "uniform",
        0.0,
        3 / 16,
    ),
    (
        "dg_lecun_in0",
        J.lecun_normal(in_axis=0, out_axis=(1, 2)),
        DG,
        "truncated_normal",
        0.0,
        1 / 64,
    ),
    ("linen_embed", linen_linear.default_embed_init, EMBED, "normal", 0.0, 1 / 64),
    ("nnx_embed", nnx_linear.default_embed_init, EMBED, "normal", 0.0, 1 / 64),
    ("normal", J.normal(0.05), DENSE, "normal", 0.0, 0.0025),
    ("normal_conv", J.normal(), CONV, "normal", 0.0, 1e-4),
    ("truncated_normal", J.truncated_normal(0.5), DENSE, "truncated_normal", 0.0, 0.25 * _TN[1]),
    (
        "truncated_normal_asym",
        J.truncated_normal(0.5, lower=-1.0, upper=3.0),
        DENSE,
        "truncated_normal",
        0.5 * _TN13[0],
        0.25 * _TN13[1],
    ),
    (
        "truncated_normal_neg",
        J.truncated_normal(-0.5, lower=-1.0, upper=3.0),
        DENSE,
        "truncated_normal",
        -0.5 * _TN13[0],
        0.25 * _TN13[1],
    ),
    ("uniform", J.uniform(0.4), DENSE, "uniform", 0.2, 0.16 / 12),
    ("uniform_embed", J.uniform(), EMBED, "uniform", 0.005, 1e-4 / 12),
    ("zeros", J.zeros, CONV, "constant", 0.0, 0.0),
    ("ones", J.ones, DENSE, "constant", 1.0, 0.0),
    ("constant", J.constant(-0.7), DG, "constant", -0.7, 0.0),
    ("orthogonal", J.orthogonal(2.0), DENSE, "orthogonal", 0.0, 4 / 256),
    ("orthogonal_col0_conv", J.orthogonal(1.0, column_axis=0), CONV, "orthogonal", 0.0, 1 / 1536),
    (
        "delta_orthogonal",
        J.delta_orthogonal(1.5),
        CONV,
        "delta_orthogonal",
        0.0,
        2.25 * 16 / (32 * 144),
    ),
]
IDS = [c[0] for c in CASES]


def _decorated(fn):
    @functools.wraps(fn)
    def wrapper(key, shape, dtype=jnp.float32):
        return fn(key, shape, dtype)

    return wrapper


WRAPPERS = {
    "bare": lambda f: f,
    "partial_dtype": lambda f: functools.partial(f, dtype=jnp.float32),
    "functools_wraps": _decorated,
    "linen_with_partitioning": lambda f: linen.with_partitioning(f, ("a", None)),
    "linen_with_logical_partitioning": lambda f: linen.with_logical_partitioning(f, ("a", "b")),
    "nnx_with_partitioning": lambda f: nnx.with_partitioning(f, (None, "b")),
    "nnx_with_metadata": lambda f: nnx.with_metadata(f, sharding_names=("a", "b")),
    "nested": lambda f: linen.with_partitioning(functools.partial(_decorated(f)), ("a", None)),
}


def _sample_moments(w) -> tuple[float, float, int]:
    x = np.asarray(w, np.float64).ravel()
    return float(x.mean()), float(x.var()), x.size


def _check_moments(scheme, shape, w):
    """The draws ``w`` against the scheme's Var(w) and E[w] for ``shape``."""
    m, v, n = _sample_moments(w)
    var, mu = scheme.variance(shape), scheme.mean(shape)
    d = scheme.distribution
    if d.is_constant:
        assert var == 0.0
        np.testing.assert_allclose(np.asarray(w, np.float64), mu, rtol=1e-6, atol=0)
        return
    if d.is_orthogonal:  # sum of squares exact: E[w^2] = Var(w) up to float32 rounding
        m2 = float(np.mean(np.asarray(w, np.float64) ** 2))
        assert m2 == pytest.approx(var, rel=1e-4)
    else:
        kurt = float(scheme.kurtosis)
        assert abs(v - var) <= Z * var * math.sqrt((kurt - 1) / n), (v, var)
    assert abs(m - mu) <= Z * math.sqrt(var / n), (m, mu)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_recognized_law_matches_jax_draws(case):
    _, init, shape, dist, mean, var = case
    found = recognize(init)
    assert isinstance(found, I.Initializer)
    s = found.scheme
    # The law written out above, exactly (and the distribution's name).
    assert s.distribution == dist
    assert s.variance(shape) == pytest.approx(var, rel=1e-9, abs=0)
    assert s.mean(shape) == pytest.approx(mean, rel=1e-9, abs=1e-15)
    # JAX's draws against the recognized scheme.
    w = init(jax.random.fold_in(KEY, IDS.index(case[0])), shape, jnp.float32)
    assert w.shape == shape
    _check_moments(s, shape, w)
    if mean != 0.0 and not s.distribution.is_constant:
        # varprop's own sampler draws the same law with its mean (the zero-mean laws'
        # sampling is tested in test_initializers).
        _check_moments(s, shape, found(jax.random.fold_in(KEY, 1000 + IDS.index(case[0])), shape))


def _same_law(a, b, shape):
    assert a.name == b.name
    assert a.distribution == b.distribution
    assert a.variance(shape) == b.variance(shape)
    assert a.mean(shape) == b.mean(shape)
    assert (a.in_axis, a.out_axis, a.batch_axis, a.column_axis, a.truncation) == (
        b.in_axis,
        b.out_axis,
        b.batch_axis,
        b.column_axis,
        b.truncation,
    )


# One case per factory and layout kind (each wrapped every way; the laws are checked above).
WRAPPED_IDS = [
    "he_normal",
    "dg_batch0_fan_out",
    "linen_embed",
    "normal",
    "truncated_normal_neg",
    "uniform",
    "zeros",
    "ones",
    "constant",
    "orthogonal_col0_conv",
    "delta_orthogonal",
]


@pytest.mark.parametrize("case", [CASES[IDS.index(i)] for i in WRAPPED_IDS], ids=WRAPPED_IDS)
def test_wrapped_initializers_have_the_same_law(case):
    _, init, shape, *_ = case
    bare = recognize(init)
    assert bare is not None
    for name, wrap in WRAPPERS.items():
        wrapped = recognize(wrap(init))
        assert wrapped is not None, name
        _same_law(bare.scheme, wrapped.scheme, shape)
    _same_law(varprop.scheme_of(WRAPPERS["nested"](init)), bare.scheme, shape)


def test_flax_default_embed_init_is_embed_normal():
    # Flax's own declaration, and its draws: Var = 1/features on a (vocab, features) table.
    for init in (linen_linear.default_embed_init, nnx_linear.default_embed_init):
        found = recognize(init)
        assert found is not None and found.scheme.name == "embed_normal"
    assert nnx.Embed(1000, 64, rngs=nnx.Rngs(0)).embedding.shape == EMBED
    w = np.asarray(nnx.Embed(1000, 64, rngs=nnx.Rngs(3)).embedding[...], np.float64)
    assert abs(w.var() * 64 - 1.0) <= Z * math.sqrt(2 / w.size)
    s = I.embed_normal().scheme
    assert s.variance((1000, 64)) == 1 / 64
    assert s.variance((10, 3, 64)) == 1 / (3 * 64)  # JAX: prod(shape) / shape[0]


def test_varprop_initializers_are_returned_as_they_are():
    init = I.he_normal()
    assert recognize(init) is init
    assert recognize(functools.partial(init, dtype=jnp.float32)) is init


def test_uniform_interval_draws_its_mean():
    init = I.uniform_interval(-1.0, 3.0)
    w = np.asarray(init(KEY, (300, 200)), np.float64)
    assert w.min() >= -1.0 and w.max() < 3.0
    _check_moments(init.scheme, (300, 200), w)
    assert init.scheme.bound((300, 200)) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="lower < upper"):
        I.uniform_interval(1.0, 1.0)


def _own_init(key, shape, dtype=jnp.float32):
    return jnp.full(shape, 0.5, dtype)


@pytest.mark.parametrize(
    "init",
    [
        _own_init,
        lambda key, shape, dtype=jnp.float32: 2.0 * J.normal(1.0)(key, shape, dtype),
        functools.partial(J.normal(1.0), shape=(3, 3)),  # binds the shape: not an initializer
        functools.partial(J.normal(1.0), KEY),
        # Overlapping axes with fractional fans no varprop layout reproduces.
        J.variance_scaling(1.0, "fan_avg", "normal", out_axis=0),
        J.variance_scaling(1.0, "fan_in", "normal", out_axis=-1, batch_axis=-2),
        "he_normal",
        None,
    ],
    ids=[
        "function",
        "lambda",
        "partial_shape",
        "partial_key",
        "overlap_avg",
        "no_in_axis",
        "str",
        "none",
    ],
)
def test_unrecognized_gives_none_and_scheme_of_raises(init):
    assert recognize(init) is None
    with pytest.raises(TypeError) as err:
        varprop.scheme_of(init)
    assert repr(init) in str(err.value)
    assert "allowed" in str(err.value)


def test_truncated_normal_and_variance_scaling_truncation_differ():
    # Same name of distribution; JAX corrects one and not the other.
    plain = recognize(J.truncated_normal(1.0)).scheme
    scaled = recognize(J.variance_scaling(1.0, "fan_in", "truncated_normal")).scheme
    assert plain.variance(DENSE) == pytest.approx(_TN[1], rel=1e-12)
    assert scaled.variance(DENSE) == pytest.approx(1 / 256, rel=1e-12)


# -- variance_for_fans -------------------------------------------------------------------


def test_variance_for_fans_at_true_fans():
    he = I.he_normal().scheme
    assert he.variance_for_fans(288, 144.0) == 2 / 288
    assert I.he_normal(mode="fan_out").scheme.variance_for_fans(288, 144.0) == 2 / 144.0
    assert I.glorot_uniform().scheme.variance_for_fans(288, 144.0) == pytest.approx(2 / 432)
    vs = I.variance_scaling(3.0, "fan_geo_avg", "normal").scheme
    assert vs.variance_for_fans(288, 144.0) == pytest.approx(3 / math.sqrt(288 * 144))
    assert I.fixup(4, 2).scheme.variance_for_fans(100, 7.5) == pytest.approx(2 / 4 / 100)
    assert he.mean_for_fans(288, 144.0) == 0.0


def test_variance_for_fans_agrees_with_variance_of_a_shape():
    for init in (I.he_uniform(), I.glorot_normal(), I.lecun_normal(), I.embed_normal()):
        s = init.scheme
        for shape in (DENSE, CONV, EMBED):
            assert s.variance_for_fans(*s.fans(shape)) == pytest.approx(s.variance(shape))


def test_variance_for_fans_of_fanless_schemes_is_their_constant():
    assert I.normal(0.1).scheme.variance_for_fans(288, 144.0) == pytest.approx(0.01)
    assert I.constant(0.5).scheme.mean_for_fans(3.5, 1.0) == 0.5
    assert I.constant(0.5).scheme.variance_for_fans(3.5, 1.0) == 0.0
    u = recognize(J.uniform(0.4)).scheme
    assert (u.mean_for_fans(10, 20), u.variance_for_fans(10, 20)) == pytest.approx((0.2, 0.16 / 12))


@pytest.mark.parametrize("init", [I.orthogonal(), I.delta_orthogonal()], ids=["orth", "delta"])
def test_variance_for_fans_refuses_orthogonal(init):
    with pytest.raises(ValueError, match="orthogonal matrix"):
        init.scheme.variance_for_fans(288, 144.0)
    with pytest.raises(ValueError, match="orthogonal matrix"):
        init.scheme.mean_for_fans(288, 144.0)


@pytest.mark.parametrize("fans", [(0, 1), (1, -2.0), (math.inf, 1), (math.nan, 1)])
def test_variance_for_fans_refuses_bad_fans(fans):
    with pytest.raises(ValueError, match="finite number > 0"):
        I.he_normal().scheme.variance_for_fans(*fans)


def test_a_stacked_initializer_with_batch_axis_is_recognized():
    """``variance_scaling(..., batch_axis=0)`` draws each slice of a stacked (L, n, m) kernel
    with the slice's fans; its law is the same (its 2-D probe shapes, where the batch axis
    would fall on a fan axis, are not the layout's and are left out)."""
    import jax

    from varprop.initializers import recognize

    init = recognize(jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal", batch_axis=0))
    assert init is not None
    assert init.scheme.variance((4, 64, 32)) == 2 / 64
    assert init.scheme.variance((4, 3, 3, 16, 8)) == 2 / (3 * 3 * 16)
