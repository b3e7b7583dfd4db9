"""varprop's normalization layers against Flax's (NNX and Linen) and against NumPy
references of PyTorch's BatchNorm update rule.

Tolerances: float32 outputs and all running statistics (always float32) to rtol 1e-6.
Outputs in bfloat16 (bfloat16 parameters) to one bfloat16 unit in the last place
(rtol 2**-7): both implementations compute in float32 and round once at the end, so a
last-bit difference in the float32 value can flip that rounding by one bfloat16 step
(relative spacing 2**-8 to 2**-7); nothing finer is meaningful for a bfloat16 result.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from varprop._src.core import normalizers as N
from varprop._src.nn import norm_linen as VL
from varprop._src.nn import norm_nnx as VN

# (input dtype, parameter dtype). bf16 input with float32 parameters gives float32 output
# in Flax and here; bf16 parameters give bf16 output (Linen) — see the module docstring.
DTYPES = {
    "f32": (jnp.float32, jnp.float32),
    "bf16_in": (jnp.bfloat16, jnp.float32),
    "bf16": (jnp.bfloat16, jnp.bfloat16),
}
SHAPE = (4, 3, 5, 8)  # axis=1: 3 features (NCHW-like); axis=-1: 8 features (NHWC-like)


def flax_call(fn, *args, **kwargs):
    """Call into Flax with standard dtype promotion.

    Flax mixes bfloat16 inputs with float32 statistics and parameters through implicit
    promotion, which the suite's strict mode (tests/conftest.py) forbids; varprop casts
    explicitly and runs under strict mode. Only the Flax call is relaxed.
    """
    with jax.numpy_dtype_promotion("standard"):
        return fn(*args, **kwargs)


def assert_close(ours, ref, *, rtol: float = 1e-6, atol: float = 1e-6) -> None:
    ours, ref = jnp.asarray(ours), jnp.asarray(ref)
    assert ours.dtype == ref.dtype, (ours.dtype, ref.dtype)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    if ours.dtype == jnp.bfloat16:
        rtol, atol = 2.0**-7, 1e-6
    np.testing.assert_allclose(
        np.asarray(ours, np.float32), np.asarray(ref, np.float32), rtol=rtol, atol=atol
    )


def inputs(dtype, n: int = 4, shape=SHAPE, seed: int = 0):
    keys = jax.random.split(jax.random.key(seed), n)
    return [(2.0 + 3.0 * jax.random.normal(k, shape)).astype(dtype) for k in keys]


def random_mask(shape=SHAPE, seed: int = 7):
    return jax.random.bernoulli(jax.random.key(seed), 0.75, shape)


def affine(n: int, dtype, seed: int = 3):
    k1, k2 = jax.random.split(jax.random.key(seed))
    scale = (1.0 + 0.5 * jax.random.normal(k1, (n,))).astype(dtype)
    bias = (0.5 * jax.random.normal(k2, (n,))).astype(dtype)
    return scale, bias


# ---------------------------------------------------------------------------------------
# BatchNorm
# ---------------------------------------------------------------------------------------


def _bn_grid():
    """The full product of options; half of it (one momentum per combination of the
    others, alternating, so each momentum meets every other option) runs by default, the
    other half is marked slow."""
    params = []
    for i, (d, a, k, alg) in enumerate(
        (d, a, k, alg)
        for d in DTYPES
        for a in (-1, 1)
        for k in (False, True)
        for alg in ("stable", "fast")
    ):
        for j, m in enumerate((0.99, 0.9)):
            marks = [pytest.mark.slow] if (i + j) % 2 else []
            params.append(pytest.param(d, a, m, k, alg, marks=marks))
    return params


BN_GRID = pytest.mark.parametrize("dtype,axis,momentum,masked,algorithm", _bn_grid())


@BN_GRID
def test_batchnorm_nnx_matches_flax(dtype, axis, momentum, masked, algorithm):
    xdt, pdt = DTYPES[dtype]
    c = SHAPE[axis]
    kw = dict(axis=axis, momentum=momentum, param_dtype=pdt, rngs=nnx.Rngs(0))
    ours = VN.BatchNorm(c, algorithm=algorithm, **kw)
    ref = nnx.BatchNorm(c, use_fast_variance=algorithm == "fast", **kw)
    scale, bias = affine(c, pdt)
    for m in (ours, ref):
        m.scale[...] = scale
        m.bias[...] = bias
    mask = random_mask() if masked else None
    *train_xs, eval_x = inputs(xdt)
    for x in train_xs:
        assert_close(ours(x, mask=mask), flax_call(ref, x, mask=mask))
        assert_close(ours.mean[...], ref.mean[...])
        assert_close(ours.var[...], ref.var[...])
    ours.eval()
    ref.eval()
    assert ours.use_running_average and ref.use_running_average
    assert_close(ours(eval_x), flax_call(ref, eval_x))
    assert_close(ours.var[...], ref.var[...])


@BN_GRID
def test_batchnorm_linen_matches_flax(dtype, axis, momentum, masked, algorithm):
    xdt, pdt = DTYPES[dtype]
    c = SHAPE[axis]
    kw = dict(axis=axis, momentum=momentum, param_dtype=pdt)
    ours = VL.BatchNorm(algorithm=algorithm, **kw)
    ref = nn.BatchNorm(use_fast_variance=algorithm == "fast", **kw)
    mask = random_mask() if masked else None
    *train_xs, eval_x = inputs(xdt)
    v_ours = ours.init(jax.random.key(0), train_xs[0], use_running_average=False)
    v_ref = flax_call(ref.init, jax.random.key(0), train_xs[0], use_running_average=False)
    jax.tree.map(assert_close, v_ours, v_ref)  # same tree, shapes, dtypes, values
    scale, bias = affine(c, pdt)
    v_ours = {**v_ours, "params": {"scale": scale, "bias": bias}}
    v_ref = {**v_ref, "params": {"scale": scale, "bias": bias}}
    for x in train_xs:
        y, upd = ours.apply(
            v_ours, x, use_running_average=False, mask=mask, mutable=["batch_stats"]
        )
        y_ref, upd_ref = flax_call(
            ref.apply, v_ref, x, use_running_average=False, mask=mask, mutable=["batch_stats"]
        )
        assert_close(y, y_ref)
        jax.tree.map(assert_close, upd, upd_ref)
        v_ours = {**v_ours, **upd}
        v_ref = {**v_ref, **upd_ref}
    assert_close(
        ours.apply(v_ours, eval_x, use_running_average=True),
        flax_call(ref.apply, v_ref, eval_x, use_running_average=True),
    )


def test_batchnorm_nnx_train_eval_toggle_and_view():
    bn = VN.BatchNorm(3, rngs=nnx.Rngs(0))
    assert bn.use_running_average is False
    bn.eval()
    assert bn.use_running_average is True
    bn.train()
    assert bn.use_running_average is False
    view = nnx.view(bn, use_running_average=True)
    assert view.use_running_average is True
    x = inputs(jnp.float32, 1, (16, 3))[0]
    before = bn.mean[...]
    view(x)  # eval: the running statistics are not touched
    np.testing.assert_array_equal(bn.mean[...], before)
    bn(x)
    assert not np.array_equal(bn.mean[...], before)


def test_batchnorm_linen_statistics_not_updated_while_initializing():
    x = inputs(jnp.float32, 1, (16, 3))[0]
    v = VL.BatchNorm(use_running_average=False).init(jax.random.key(0), x)
    np.testing.assert_array_equal(v["batch_stats"]["mean"], np.zeros(3, np.float32))
    np.testing.assert_array_equal(v["batch_stats"]["var"], np.ones(3, np.float32))
    # init accepts a batch of one (a common idiom); applying one in training does not.
    v1 = VL.BatchNorm(use_running_average=False).init(jax.random.key(0), x[:1])
    with pytest.raises(ValueError, match="more than 1 value per feature"):
        VL.BatchNorm(use_running_average=False).apply(v1, x[:1], mutable=["batch_stats"])


# ---------------------------------------------------------------------------------------
# LayerNorm, GroupNorm, InstanceNorm, RMSNorm
# ---------------------------------------------------------------------------------------

NORM_SHAPE = SHAPE  # channels last: 8 (one shape everywhere: fewer XLA compilations)


def _fast(alg: str) -> bool:
    return alg == "fast"


# name -> (ours nnx, flax nnx, ours linen, flax linen, number of parameters); the factories
# take (algorithm, param_dtype).
NORMS = {
    "layer": (
        lambda a, p: VN.LayerNorm(8, algorithm=a, param_dtype=p, rngs=nnx.Rngs(0)),
        lambda a, p: nnx.LayerNorm(8, use_fast_variance=_fast(a), param_dtype=p, rngs=nnx.Rngs(0)),
        lambda a, p: VL.LayerNorm(algorithm=a, param_dtype=p),
        lambda a, p: nn.LayerNorm(use_fast_variance=_fast(a), param_dtype=p),
    ),
    "layer_all_axes": (
        lambda a, p: VN.LayerNorm(
            8, reduction_axes=(1, 2, 3), algorithm=a, param_dtype=p, rngs=nnx.Rngs(0)
        ),
        lambda a, p: nnx.LayerNorm(
            8,
            reduction_axes=(1, 2, 3),
            use_fast_variance=_fast(a),
            param_dtype=p,
            rngs=nnx.Rngs(0),
        ),
        lambda a, p: VL.LayerNorm(reduction_axes=(1, 2, 3), algorithm=a, param_dtype=p),
        lambda a, p: nn.LayerNorm(
            reduction_axes=(1, 2, 3), use_fast_variance=_fast(a), param_dtype=p
        ),
    ),
    "group": (
        lambda a, p: VN.GroupNorm(8, num_groups=4, algorithm=a, param_dtype=p, rngs=nnx.Rngs(0)),
        lambda a, p: nnx.GroupNorm(
            8, num_groups=4, use_fast_variance=_fast(a), param_dtype=p, rngs=nnx.Rngs(0)
        ),
        lambda a, p: VL.GroupNorm(num_groups=4, algorithm=a, param_dtype=p),
        lambda a, p: nn.GroupNorm(num_groups=4, use_fast_variance=_fast(a), param_dtype=p),
    ),
    "group_size": (
        lambda a, p: VN.GroupNorm(
            8, num_groups=None, group_size=2, algorithm=a, param_dtype=p, rngs=nnx.Rngs(0)
        ),
        lambda a, p: nnx.GroupNorm(
            8,
            num_groups=None,
            group_size=2,
            use_fast_variance=_fast(a),
            param_dtype=p,
            rngs=nnx.Rngs(0),
        ),
        lambda a, p: VL.GroupNorm(num_groups=None, group_size=2, algorithm=a, param_dtype=p),
        lambda a, p: nn.GroupNorm(
            num_groups=None, group_size=2, use_fast_variance=_fast(a), param_dtype=p
        ),
    ),
    "instance": (
        lambda a, p: VN.InstanceNorm(8, algorithm=a, param_dtype=p, rngs=nnx.Rngs(0)),
        lambda a, p: nnx.InstanceNorm(
            8, use_fast_variance=_fast(a), param_dtype=p, rngs=nnx.Rngs(0)
        ),
        lambda a, p: VL.InstanceNorm(algorithm=a, param_dtype=p),
        lambda a, p: nn.InstanceNorm(use_fast_variance=_fast(a), param_dtype=p),
    ),
    # RMSNorm has no fast/stable choice (no centring); the algorithm is ignored.
    "rms": (
        lambda a, p: VN.RMSNorm(8, param_dtype=p, rngs=nnx.Rngs(0)),
        lambda a, p: nnx.RMSNorm(8, param_dtype=p, rngs=nnx.Rngs(0)),
        lambda a, p: VL.RMSNorm(param_dtype=p),
        lambda a, p: nn.RMSNorm(param_dtype=p),
    ),
}

NORM_GRID = pytest.mark.parametrize(
    "name,dtype,masked,algorithm",
    [
        (n, d, k, alg)
        for n in NORMS
        for d in DTYPES
        for k in (False, True)
        for alg in ("stable", "fast")
        if not (n == "rms" and alg == "fast")
    ],
)


def _set_affine_nnx(m, pdt):
    scale, bias = affine(8, pdt)
    m.scale[...] = scale
    if getattr(m, "bias", None) is not None:
        m.bias[...] = bias


@NORM_GRID
def test_norm_nnx_matches_flax(name, dtype, masked, algorithm):
    xdt, pdt = DTYPES[dtype]
    make_ours, make_ref, _, _ = NORMS[name]
    ours, ref = make_ours(algorithm, pdt), make_ref(algorithm, pdt)
    _set_affine_nnx(ours, pdt)
    _set_affine_nnx(ref, pdt)
    mask = random_mask(NORM_SHAPE) if masked else None
    (x,) = inputs(xdt, 1, NORM_SHAPE)
    assert_close(ours(x, mask=mask), flax_call(ref, x, mask=mask))


@NORM_GRID
def test_norm_linen_matches_flax(name, dtype, masked, algorithm):
    xdt, pdt = DTYPES[dtype]
    _, _, make_ours, make_ref = NORMS[name]
    ours, ref = make_ours(algorithm, pdt), make_ref(algorithm, pdt)
    mask = random_mask(NORM_SHAPE) if masked else None
    (x,) = inputs(xdt, 1, NORM_SHAPE)
    v = ours.init(jax.random.key(0), x)
    v_ref = flax_call(ref.init, jax.random.key(0), x)
    jax.tree.map(assert_close, v, v_ref)
    scale, bias = affine(8, pdt)
    params = {"scale": scale, "bias": bias} if "bias" in v["params"] else {"scale": scale}
    assert_close(
        ours.apply({"params": params}, x, mask=mask),
        flax_call(ref.apply, {"params": params}, x, mask=mask),
    )


# ---------------------------------------------------------------------------------------
# PyTorch conventions, against NumPy references of PyTorch's BatchNorm
# ---------------------------------------------------------------------------------------


def torch_batchnorm_reference(xs, gamma, beta, *, momentum=0.1, eps=1e-5, axis=1):
    """NumPy (float64) transcription of PyTorch's training-mode BatchNorm, step by step.

    Normalizes with the biased batch variance; running statistics start at (0, 1) and
    move by ``r ← (1 − f)·r + f·s`` with ``f = momentum`` (PyTorch weights the new batch),
    or ``f = 1/t`` at step t when ``momentum is None`` (cumulative average). The running
    variance stores the *unbiased* batch variance ``var·n/(n − 1)``, n = values per
    channel (numel / C).
    """
    c = xs[0].shape[axis]
    running_mean, running_var = np.zeros(c), np.ones(c)
    ys = []
    for t, x in enumerate(xs, start=1):
        xt = np.moveaxis(np.asarray(x, np.float64), axis, -1)
        flat = xt.reshape(-1, c)
        n = flat.shape[0]
        mean, var = flat.mean(0), flat.var(0)
        y = (xt - mean) / np.sqrt(var + eps) * np.asarray(gamma, np.float64) + np.asarray(
            beta, np.float64
        )
        ys.append(np.moveaxis(y, -1, axis))
        f = 1.0 / t if momentum is None else momentum
        running_mean = (1 - f) * running_mean + f * mean
        running_var = (1 - f) * running_var + f * var * n / (n - 1)
    return ys, running_mean, running_var


# float32 results against a float64 reference: a few float32 roundings per value.
REF_TOL = dict(rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("cumulative", [False, True])
@pytest.mark.parametrize("api", ["core", "nnx", "linen"])
def test_torch_convention_matches_numpy_reference(api, cumulative):
    xs = inputs(jnp.float32, 4, SHAPE, seed=11)
    c = SHAPE[1]
    gamma, beta = affine(c, jnp.float32)
    ys_ref, rm_ref, rv_ref = torch_batchnorm_reference(
        xs, gamma, beta, momentum=None if cumulative else 0.1
    )
    opts = dict(
        axis=1,
        momentum=N.momentum_from_torch(0.1),
        epsilon=1e-5,
        running_var_mode="unbiased",
        cumulative=cumulative,
    )
    ys = []
    if api == "core":
        rm, rv, count = jnp.zeros(c), jnp.ones(c), None
        for x in xs:
            y, rm, rv, count = N.batch_norm(x, gamma, beta, rm, rv, train=True, count=count, **opts)
            ys.append(y)
        assert int(count) == len(xs)
    elif api == "nnx":
        bn = VN.BatchNorm(c, rngs=nnx.Rngs(0), **opts)
        bn.scale[...], bn.bias[...] = gamma, beta
        ys = [bn(x) for x in xs]
        rm, rv = bn.mean[...], bn.var[...]
        if cumulative:
            assert int(bn.count[...]) == len(xs)
        else:
            assert bn.count is None
    else:
        bn = VL.BatchNorm(use_running_average=False, **opts)
        v = bn.init(jax.random.key(0), xs[0])
        assert ("count" in v["batch_stats"]) == cumulative
        v = {**v, "params": {"scale": gamma, "bias": beta}}
        for x in xs:
            y, upd = bn.apply(v, x, mutable=["batch_stats"])
            v = {**v, **upd}
            ys.append(y)
        rm, rv = v["batch_stats"]["mean"], v["batch_stats"]["var"]
    for y, y_ref in zip(ys, ys_ref, strict=True):
        np.testing.assert_allclose(np.asarray(y), y_ref, **REF_TOL)
    np.testing.assert_allclose(np.asarray(rm), rm_ref, **REF_TOL)
    np.testing.assert_allclose(np.asarray(rv), rv_ref, **REF_TOL)
    # The test can tell the conventions apart: Flax's biased running variance differs.
    rm_b, rv_b, count = jnp.zeros(c), jnp.ones(c), None
    for x in xs:
        _, rm_b, rv_b, count = N.batch_norm(
            x,
            gamma,
            beta,
            rm_b,
            rv_b,
            train=True,
            count=count,
            **{**opts, "running_var_mode": "biased"},
        )
    assert not np.allclose(np.asarray(rv_b), rv_ref, rtol=1e-4, atol=0)


def test_momentum_conversion_round_trip():
    assert N.momentum_from_torch(0.1) == 0.9
    assert N.momentum_to_torch(0.9) == pytest.approx(0.1)
    for m in (0.0, 0.01, 0.5, 1.0):
        assert N.momentum_to_torch(N.momentum_from_torch(m)) == pytest.approx(m)
