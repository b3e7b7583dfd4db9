"""The pure normalization functions: statistics, numerics, options and bad input."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from varprop._src.core import example_norms as E
from varprop._src.core import normalizers as N
from varprop._src.laws import normalization as laws_normalization
from varprop._src.nn import norm_linen as VL
from varprop._src.nn import norm_nnx as VN

# Few distinct shapes: eager JAX compiles every operation once per shape, and that, not
# the arithmetic, is what these tests spend their time on.
X2 = (16, 8)
X4 = (4, 3, 5, 8)


def normal(shape, seed=0, loc=0.0, scale=1.0, dtype=jnp.float32):
    return (loc + scale * jax.random.normal(jax.random.key(seed), shape)).astype(dtype)


# ---------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["stable", "fast"])
@pytest.mark.parametrize("axes", [(0, 1, 2), (0, 2, 3), 3])
def test_batch_stats_match_numpy_float64(algorithm, axes):
    x = normal(X4, loc=1.5, scale=2.0)
    m = N.batch_stats(x, axes, algorithm=algorithm)
    x64 = np.asarray(x, np.float64)
    np.testing.assert_allclose(m.mean, x64.mean(axis=axes), rtol=1e-5, atol=1e-6)
    # fast: E[x²] − E[x]² loses absolute precision ~ eps32 · E[x²] (cancellation).
    atol = 0.0 if algorithm == "stable" else 8 * 2.0**-23 * float(np.mean(x64**2))
    np.testing.assert_allclose(m.var, x64.var(axis=axes), rtol=1e-5, atol=atol)
    n = np.prod([x.shape[a] for a in np.atleast_1d(axes)])
    np.testing.assert_array_equal(m.count, np.full(m.mean.shape, n))


@pytest.mark.parametrize("algorithm", ["stable", "fast"])
def test_masked_stats_count_each_feature_separately(algorithm):
    x = normal(X2, loc=3.0)
    mask = jax.random.bernoulli(jax.random.key(1), 0.5, x.shape)
    m = N.batch_stats(x, 0, mask=mask, algorithm=algorithm)
    x64, k = np.asarray(x, np.float64), np.asarray(mask)
    for j in range(8):
        col = x64[k[:, j], j]
        assert m.count[j] == col.size
        np.testing.assert_allclose(m.mean[j], col.mean(), rtol=1e-5)
        np.testing.assert_allclose(m.var[j], col.var(), rtol=1e-4)
    # A mask of lower rank broadcasts (rows valid or not).
    rows = jnp.arange(16) < 10
    m2 = N.batch_stats(x, 0, mask=rows[:, None], algorithm=algorithm)
    np.testing.assert_allclose(m2.mean, x64[:10].mean(0), rtol=1e-5)


def test_mean_square_without_centring():
    x = normal(X2, loc=2.0)
    m = N.batch_stats(x, 0, use_mean=False)
    np.testing.assert_array_equal(m.mean, np.zeros(8))
    np.testing.assert_allclose(m.var, np.mean(np.asarray(x, np.float64) ** 2, 0), rtol=1e-5)


def test_large_mean_stable_vs_fast_variance():
    """Mean 1e4, std 1, float32: stable is right to 1e-3 (it reaches ~4e-7); fast is not.

    Recorded (module docstring): fast gives values in {0, 8, 16}, multiples of the float32
    spacing 8 of E[x²] ≈ 1e8 — a relative error up to ~15 — for true variances ≈ 1.
    """
    x = normal((1024, 8), loc=1e4)
    ref = np.asarray(x, np.float64).var(axis=0)
    stable = np.asarray(N.batch_stats(x, 0).var, np.float64)
    fast = np.asarray(N.batch_stats(x, 0, algorithm="fast").var, np.float64)
    assert np.max(np.abs(stable - ref) / ref) < 1e-3
    assert np.max(np.abs(stable - ref) / ref) < 1e-5  # what it actually achieves
    assert np.all(np.mod(fast, 8.0) == 0)  # quantized to the spacing of 1e8
    assert np.max(np.abs(fast - ref) / ref) > 1.0  # useless
    # BatchNorm in fast mode then divides by sqrt(0 + eps) or sqrt(16): garbage outputs.
    ones, zeros = jnp.ones(8), jnp.zeros(8)
    y_fast = N.batch_norm(x, ones, zeros, zeros, ones, train=True, algorithm="fast").y
    y_stable = N.batch_norm(x, ones, zeros, zeros, ones, train=True).y
    np.testing.assert_allclose(np.std(np.asarray(y_stable), 0), 1.0, rtol=1e-3)
    assert np.max(np.abs(np.std(np.asarray(y_fast), 0) - 1.0)) > 0.5


def test_half_precision_inputs_get_float32_statistics():
    x = normal(X2, loc=100.0, dtype=jnp.bfloat16)
    m = N.batch_stats(x, 0)
    assert m.mean.dtype == jnp.float32 and m.var.dtype == jnp.float32
    ref = np.asarray(x.astype(jnp.float32), np.float64)
    np.testing.assert_allclose(m.var, ref.var(0), rtol=1e-5)


def test_output_dtype_rules():
    x = normal(X2, dtype=jnp.bfloat16)
    m = N.batch_stats(x, 0)
    kw = dict(epsilon=1e-5, reduction_axes=0, feature_axes=1)
    assert N.normalize(x, m.mean, m.var, **kw).dtype == jnp.bfloat16
    assert N.normalize(x, m.mean, m.var, jnp.ones(8), **kw).dtype == jnp.float32
    s16 = jnp.ones(8, jnp.bfloat16)
    assert N.normalize(x, m.mean, m.var, s16, s16, **kw).dtype == jnp.bfloat16
    assert N.normalize(x, m.mean, m.var, jnp.ones(8), dtype=jnp.bfloat16, **kw).dtype == (
        jnp.bfloat16
    )
    assert E.layer_norm(jnp.arange(16 * 8).reshape(X2)).dtype == jnp.float32  # ints -> float


# ---------------------------------------------------------------------------------------
# BatchNorm options
# ---------------------------------------------------------------------------------------


def test_eval_mode_uses_running_statistics_and_changes_nothing():
    x = normal(X2, loc=1.0)
    rm, rv = jnp.linspace(-1.0, 2.0, 8), jnp.linspace(0.25, 4.0, 8)
    g, b = jnp.linspace(1.0, 3.0, 8), jnp.linspace(-1.0, 1.0, 8)
    out = N.batch_norm(x, g, b, rm, rv, train=False, epsilon=1e-3, count=jnp.array(5, jnp.int32))
    expect = g[None] * (x - rm[None]) / jnp.sqrt(rv[None] + 1e-3) + b[None]
    np.testing.assert_allclose(out.y, expect, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out.running_mean, rm)
    np.testing.assert_array_equal(out.running_var, rv)
    assert int(out.count) == 5


def test_ema_closed_form_and_cumulative_average():
    # A constant batch statistic s: r_t = s + m^t (r_0 - s) (laws.running_average_after).
    x = jnp.tile(jnp.array([[1.0], [3.0]]), (8, 8))  # X2; mean 2, biased var 1
    rm, rv, count = jnp.zeros(8), jnp.ones(8), None
    for _ in range(5):
        _, rm, rv, count = N.batch_norm(
            x, None, None, rm, rv, train=True, momentum=0.8, count=count
        )
    expect = float(laws_normalization.running_average_after(5, 0, 2, 0.8))
    np.testing.assert_allclose(rm, np.full(8, expect), rtol=1e-6)
    assert int(count) == 5
    # Cumulative: the running mean is the plain mean of the batch means so far.
    rm, rv, count = jnp.zeros(8), jnp.ones(8), None
    means = []
    for seed in range(4):
        xb = normal(X2, seed=seed, loc=seed)
        means.append(np.asarray(xb, np.float64).mean(0))
        _, rm, rv, count = N.batch_norm(
            xb, None, None, rm, rv, train=True, cumulative=True, count=count
        )
        np.testing.assert_allclose(rm, np.mean(means, 0), rtol=1e-5, atol=1e-6)


def test_unbiased_running_variance_uses_count_per_feature():
    x = normal(X4, loc=1.0)  # axis=1: N = 4 * 5 * 8 = 160 values per feature
    out = N.batch_norm(
        x, None, None, jnp.zeros(3), jnp.ones(3), train=True, axis=1, momentum=0.0,
        running_var_mode="unbiased",
    )  # fmt: skip
    flat = np.moveaxis(np.asarray(x, np.float64), 1, -1).reshape(-1, 3)
    np.testing.assert_allclose(out.running_var, flat.var(0, ddof=1), rtol=1e-5)
    # With a mask, N is the number of valid values of each feature.
    mask = jnp.broadcast_to((jnp.arange(4) < 2)[:, None, None, None], x.shape)
    out = N.batch_norm(
        x, None, None, jnp.zeros(3), jnp.ones(3), train=True, axis=1, momentum=0.0,
        running_var_mode="unbiased", mask=mask,
    )  # fmt: skip
    flat = np.moveaxis(np.asarray(x, np.float64)[:2], 1, -1).reshape(-1, 3)
    np.testing.assert_allclose(out.running_var, flat.var(0, ddof=1), rtol=1e-5)


def test_masked_out_feature_keeps_running_statistics_and_stays_finite():
    x = normal(X2, loc=2.0)
    mask = jnp.broadcast_to(jnp.arange(8) < 7, x.shape)  # feature 7: no value
    rm, rv = jnp.linspace(0.1, 0.8, 8), jnp.linspace(1.0, 8.0, 8)
    out = N.batch_norm(x, None, None, rm, rv, train=True, mask=mask, running_var_mode="unbiased")
    assert np.all(np.isfinite(out.y))
    assert out.running_mean[7] == rm[7] and out.running_var[7] == rv[7]
    assert out.running_mean[0] != rm[0]
    # One valid value: variance 0 (output = beta there), the unbiased factor stays finite.
    one = jnp.broadcast_to(jnp.arange(16)[:, None] == 0, x.shape)
    b = jnp.linspace(-0.5, 1.5, 8)
    out = N.batch_norm(x, None, b, rm, rv, train=True, mask=one, running_var_mode="unbiased")
    np.testing.assert_allclose(out.y[0], b, atol=1e-6)
    assert np.all(np.isfinite(out.running_var))


def test_single_example_rules():
    x1 = normal((1, 8))
    ones, zeros = jnp.ones(8), jnp.zeros(8)
    with pytest.raises(ValueError, match=r"more than 1 value per feature.*got 1"):
        N.batch_norm(x1, ones, zeros, zeros, ones, train=True)
    bias = jnp.linspace(1.0, 4.0, 8)
    out = N.batch_norm(x1, ones, bias, zeros, ones, train=True, allow_single_example=True)
    np.testing.assert_allclose(out.y, bias[None], atol=1e-6)  # var 0: y = beta
    N.batch_norm(x1, ones, zeros, zeros, ones, train=False)  # eval: fine
    N.batch_norm(normal(X4)[:1], None, None, zeros, ones, train=True)  # N = 3 * 5 = 15
    with pytest.raises(ValueError, match="more than 1 value per feature"):
        VN.BatchNorm(8, rngs=nnx.Rngs(0))(x1)
    v = VL.BatchNorm(use_running_average=False).init(jax.random.key(0), x1)  # init: fine
    with pytest.raises(ValueError, match="allow_single_example=True"):
        VL.BatchNorm(use_running_average=False).apply(v, x1, mutable=["batch_stats"])
    # A mask does not change the static check.
    with pytest.raises(ValueError, match="more than 1 value per feature"):
        N.batch_norm(x1, None, None, zeros, ones, train=True, mask=jnp.ones((1, 8), bool))


def test_jit_grad_and_running_statistics_are_not_differentiated():
    x = normal(X2, loc=1.0)
    ones, zeros = jnp.ones(8), jnp.zeros(8)

    @jax.jit
    def f(x, scale):
        out = N.batch_norm(x, scale, zeros, zeros, ones, train=True)
        return jnp.sum(out.y**3) + jnp.sum(out.running_mean)

    g = jax.grad(f)(x, ones)
    assert np.all(np.isfinite(g))
    rm_grad = jax.grad(
        lambda x: jnp.sum(N.batch_norm(x, None, None, zeros, ones, train=True).running_mean)
    )(x)
    np.testing.assert_array_equal(rm_grad, np.zeros_like(x))


def test_nnx_batchnorm_needs_a_mode():
    bn = VN.BatchNorm(8, use_running_average=None, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"(?s)use_running_average.*model.train\(\)"):
        bn(normal(X2))
    bn(normal(X2), use_running_average=True)


def test_group_norm_special_cases():
    x = normal(X4, loc=1.0)
    np.testing.assert_allclose(
        E.group_norm(x, num_groups=1), E.layer_norm(x, reduction_axes=(1, 2, 3)), atol=1e-5
    )
    np.testing.assert_allclose(E.group_norm(x, num_groups=8), E.instance_norm(x), atol=1e-5)


def test_masked_per_example_norms_ignore_masked_values():
    x = normal(X2, loc=1.0)
    mask = jnp.arange(8)[None, :] < 5
    y = E.layer_norm(x, mask=jnp.broadcast_to(mask, x.shape), epsilon=0.0)
    y5 = E.layer_norm(x[:, :5], epsilon=0.0)
    np.testing.assert_allclose(y[:, :5], y5, atol=1e-5)


# ---------------------------------------------------------------------------------------
# Bad input: clear errors
# ---------------------------------------------------------------------------------------


def test_feature_axis_mismatch():
    x = normal(X2)  # 8 features
    with pytest.raises(ValueError, match=r"num_features=6.*8 features"):
        VN.BatchNorm(6, rngs=nnx.Rngs(0))(x)
    for cls in (VN.LayerNorm, VN.RMSNorm, VN.InstanceNorm):
        with pytest.raises(ValueError, match=r"num_features=6.*8 features"):
            cls(6, rngs=nnx.Rngs(0))(normal(X4))
    with pytest.raises(ValueError, match=r"num_features=6"):
        VN.GroupNorm(6, num_groups=2, rngs=nnx.Rngs(0))(normal(X4))
    bn = VL.BatchNorm(use_running_average=False)
    v = bn.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"batch_stats have shape \(8,\).*\(5,\)"):
        bn.apply(v, normal(X4)[0, 0].T, mutable=["batch_stats"])
    ln = VL.LayerNorm()
    v = ln.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"'scale' has shape \(8,\).*\(5,\)"):
        ln.apply(v, normal(X4)[0, 0].T)
    m = N.batch_stats(x, 0)
    with pytest.raises(ValueError, match=r"scale has shape \(6,\).*have shape \(8,\)"):
        N.normalize(x, m.mean, m.var, jnp.ones(6), epsilon=0.0, reduction_axes=0, feature_axes=1)
    with pytest.raises(ValueError, match=r"running_mean has shape \(6,\)"):
        N.batch_norm(x, None, None, jnp.zeros(6), jnp.ones(6), train=True)
    with pytest.raises(ValueError, match="out of range"):
        N.batch_stats(x, 2)


def test_group_count_must_divide_features():
    with pytest.raises(ValueError, match=r"num_groups=3 does not divide the 8.*\[1, 2, 4, 8\]"):
        VN.GroupNorm(8, num_groups=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"group_size=3 does not divide the 8"):
        VN.GroupNorm(8, num_groups=None, group_size=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="exactly one of num_groups and group_size"):
        VN.GroupNorm(8, num_groups=2, group_size=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="exactly one of num_groups and group_size"):
        VL.GroupNorm(num_groups=None)
    x = normal(X2)
    with pytest.raises(ValueError, match=r"num_groups=3 does not divide the 8"):
        VL.GroupNorm(num_groups=3).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"num_groups=32 does not divide the 8"):
        VL.GroupNorm().init(jax.random.key(0), x)  # the default 32
    with pytest.raises(ValueError, match=r"group_size=3 does not divide the 8.*\[1, 2, 4, 8\]"):
        VL.GroupNorm(num_groups=None, group_size=3).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"group_size=True does not divide"):
        VN.GroupNorm(8, num_groups=None, group_size=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"num_groups=0 does not divide"):
        E.group_norm(x, num_groups=0)
    with pytest.raises(ValueError, match="must include the last axis"):
        E.group_norm(normal(X4), num_groups=2, reduction_axes=1)


ALL_NNX = [VN.BatchNorm, VN.LayerNorm, VN.GroupNorm, VN.InstanceNorm, VN.RMSNorm]
ALL_LINEN = [VL.BatchNorm, VL.LayerNorm, VL.GroupNorm, VL.InstanceNorm, VL.RMSNorm]


@pytest.mark.parametrize("cls", ALL_NNX)
def test_negative_epsilon_nnx(cls):
    with pytest.raises(ValueError, match=r"epsilon must be a finite number >= 0.*-1e-05"):
        cls(8, epsilon=-1e-5, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("cls", ALL_LINEN)
def test_negative_epsilon_linen(cls):
    with pytest.raises(ValueError, match=r"epsilon must be a finite number >= 0.*-1e-05"):
        cls(epsilon=-1e-5)


def test_negative_epsilon_core():
    x = normal(X2)
    for fn in (E.layer_norm, E.rms_norm, E.instance_norm):
        with pytest.raises(ValueError, match="epsilon must be"):
            fn(x, epsilon=-1.0)
    with pytest.raises(ValueError, match="epsilon must be"):
        E.group_norm(x, num_groups=2, epsilon=-1.0)
    with pytest.raises(ValueError, match="epsilon must be"):
        N.batch_norm(x, None, None, jnp.zeros(8), jnp.ones(8), train=True, epsilon=-1.0)
    with pytest.raises(ValueError, match="epsilon must be"):
        N.batch_norm(x, None, None, jnp.zeros(8), jnp.ones(8), train=True, epsilon=float("nan"))


@pytest.mark.parametrize("momentum", [-0.1, 1.5])
def test_momentum_outside_unit_interval(momentum):
    pattern = rf"momentum must be in \[0, 1\].*momentum={momentum}"
    with pytest.raises(ValueError, match=pattern):
        VN.BatchNorm(8, momentum=momentum, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=pattern):
        VL.BatchNorm(momentum=momentum)
    with pytest.raises(ValueError, match=pattern):
        N.batch_norm(
            normal(X2), None, None, jnp.zeros(8), jnp.ones(8), train=True, momentum=momentum
        )
    with pytest.raises(ValueError, match=pattern):
        N.momentum_from_torch(momentum)


def test_other_bad_options():
    with pytest.raises(ValueError, match="cumulative=True"):
        N.momentum_from_torch(None)
    with pytest.raises(ValueError, match=r"algorithm must be one of \('stable', 'fast'\)"):
        VN.BatchNorm(8, algorithm="welford", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"running_var_mode must be one of"):
        VL.BatchNorm(running_var_mode="bessel")
    with pytest.raises(ValueError, match="cannot include axis 0"):
        E.instance_norm(normal(X2), feature_axes=0)
    with pytest.raises(ValueError, match="num_features must be a positive int"):
        VN.LayerNorm(0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="only real inputs"):
        N.batch_stats(jnp.ones((2, 2), jnp.complex64), 0)


def test_linen_merge_param_still_requires_a_mode():
    with pytest.raises(Exception, match="use_running_average"):
        VL.BatchNorm().init(jax.random.key(0), normal(X2))
    assert isinstance(VL.BatchNorm(), nn.Module)


# ---------------------------------------------------------------------------------------
# Edge cases: epsilon = 0, an empty mask, bad epsilon (InputError)
# ---------------------------------------------------------------------------------------

from varprop._src.errors import InputError  # noqa: E402

CONST = jnp.full(X2, 3.0)


def _core_fns(**kw):
    """Every pure normalization as f(x) (bias 0.5 where the layer has one)."""
    b = jnp.full(8, 0.5)
    return {
        "batch_norm": lambda x: (
            N.batch_norm(x, None, b, jnp.zeros(8), jnp.ones(8), train=True, **kw).y
        ),
        "layer_norm": lambda x: E.layer_norm(x, None, b, **kw),
        "rms_norm": lambda x: E.rms_norm(x, None, **kw) + 0.5,
        "group_norm": lambda x: E.group_norm(x, None, b, num_groups=2, **kw),
        "instance_norm": lambda x: E.instance_norm(x[:, None, :], None, b, **kw)[:, 0, :],
    }


@pytest.mark.parametrize("name", list(_core_fns()))
def test_zero_epsilon_zero_variance_gives_bias(name):
    """ε = 0 on a constant group (all-zero for RMSNorm): output β, finite gradient."""
    f = _core_fns(epsilon=0.0)[name]
    x = jnp.zeros(X2) if name == "rms_norm" else CONST
    y = f(x)
    np.testing.assert_array_equal(np.asarray(y), 0.5)
    g = jax.grad(lambda v: jnp.sum(f(v) * jnp.arange(8.0)[None, :]))(x)
    assert bool(jnp.all(jnp.isfinite(g)))


@pytest.mark.parametrize("name", list(_core_fns()))
def test_zero_epsilon_normalizes_exactly(name):
    """ε = 0 on a non-degenerate batch: the usual result (no change from the guard)."""
    x = normal(X2, loc=1.0)
    np.testing.assert_allclose(
        _core_fns(epsilon=0.0)[name](x), _core_fns(epsilon=1e-30)[name](x), rtol=1e-6
    )


@pytest.mark.parametrize("name", list(_core_fns()))
def test_all_false_mask_is_an_input_error(name):
    f = _core_fns(mask=jnp.zeros(X2, bool))[name]
    if name == "instance_norm":
        f = _core_fns(mask=jnp.zeros((16, 1, 8), bool))[name]
    with pytest.raises(InputError, match=r"mask \(shape .*\) is all False.*allowed"):
        f(normal(X2))


def test_all_false_mask_under_jit_is_defined():
    """Traced masks cannot be inspected: the group is output as β, running stats kept."""
    x = normal(X2, loc=2.0)
    b = jnp.full(8, 0.5)
    rm, rv = jnp.full(8, 0.25), jnp.full(8, 2.0)

    @jax.jit
    def run(x, m):
        return N.batch_norm(x, None, b, rm, rv, train=True, mask=m)

    out = run(x, jnp.zeros(X2, bool))
    np.testing.assert_array_equal(np.asarray(out.y), 0.5)
    np.testing.assert_array_equal(np.asarray(out.running_mean), 0.25)
    np.testing.assert_array_equal(np.asarray(out.running_var), 2.0)
    ln = jax.jit(lambda x, m: E.layer_norm(x, None, b, mask=m))(x, jnp.zeros(X2, bool))
    np.testing.assert_array_equal(np.asarray(ln), 0.5)


def test_feature_without_valid_element_gives_bias():
    """One feature fully masked, the others valid: that feature is β, the others as usual."""
    x = normal(X2, loc=2.0)
    b = jnp.full(8, 0.5)
    mask = jnp.broadcast_to(jnp.arange(8) != 3, X2)
    out = N.batch_norm(x, None, b, jnp.zeros(8), jnp.ones(8), train=True, mask=mask)
    np.testing.assert_array_equal(np.asarray(out.y[:, 3]), 0.5)
    ref = N.batch_norm(x, None, b, jnp.zeros(8), jnp.ones(8), train=True).y
    np.testing.assert_allclose(out.y[:, :3], ref[:, :3], rtol=1e-6)
    assert float(out.running_mean[3]) == 0.0 and float(out.running_var[3]) == 1.0


@pytest.mark.parametrize("bad", [-1e-5, float("nan"), float("inf"), "1e-5", None, True])
def test_bad_epsilon_is_input_error_everywhere(bad):
    x = normal(X2)
    for f in _core_fns(epsilon=bad).values():
        with pytest.raises(InputError, match="epsilon must be a finite number >= 0"):
            f(x)
    for cls in ALL_NNX:
        with pytest.raises(InputError, match="epsilon must be a finite number >= 0"):
            cls(8, epsilon=bad, rngs=nnx.Rngs(0))
    for cls in ALL_LINEN:
        with pytest.raises(InputError, match="epsilon must be a finite number >= 0"):
            cls(epsilon=bad)


def test_modules_zero_epsilon_and_empty_mask():
    x = CONST
    bn = VN.BatchNorm(8, epsilon=0.0, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(bn(x)), 0.0)  # β = 0 at init
    ln = VN.LayerNorm(8, epsilon=0.0, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(ln(x)), 0.0)
    with pytest.raises(InputError, match="all False"):
        VN.BatchNorm(8, rngs=nnx.Rngs(0))(normal(X2), mask=jnp.zeros(X2, bool))
    with pytest.raises(InputError, match="all False"):
        VN.LayerNorm(8, rngs=nnx.Rngs(0))(normal(X2), mask=jnp.zeros(X2, bool))
    lbn = VL.BatchNorm(use_running_average=False, epsilon=0.0)
    v = lbn.init(jax.random.key(0), x)
    y, _ = lbn.apply(v, x, mutable=["batch_stats"])
    np.testing.assert_array_equal(np.asarray(y), 0.0)
    with pytest.raises(InputError, match="all False"):
        lbn.apply(v, normal(X2), mask=jnp.zeros(X2, bool), mutable=["batch_stats"])
    lln = VL.LayerNorm(epsilon=0.0)
    vl = lln.init(jax.random.key(0), x)
    np.testing.assert_array_equal(np.asarray(lln.apply(vl, x)), 0.0)
    with pytest.raises(InputError, match="all False"):
        lln.apply(vl, normal(X2), mask=jnp.zeros(X2, bool))
