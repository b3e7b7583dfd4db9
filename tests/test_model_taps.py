"""The NumPy tap sums of the propagation against XLA's own conv and dot_general.

``conv_sums``/``dot_sums`` must equal the layer's primitive run on the broadcast moment
array with a kernel of ones, and the ``*_transpose`` kernels its VJP, for every geometry a
layer can have: 1-3 spatial axes, strides, explicit and negative padding, input and kernel
dilation, feature groups (depthwise included), NCHW/NHWC layouts, and moment arrays that
are constant (size 1) along some axes.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varprop._src.model.taps import (
    conv_sums,
    conv_sums_transpose,
    dot_sums,
    dot_sums_transpose,
)

# float32 XLA against float64 NumPy on sums of up to a few hundred O(1) terms.
RTOL = 2e-5

CONVS = [
    # (spatial, kernel, strides, padding, lhs_dil, rhs_dil, c_in, c_out, groups, layout)
    ((9, 9), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1), 4, 6, 1, "NHWC"),
    ((10, 7), (3, 2), (2, 1), ((1, 0), (0, 1)), (1, 1), (1, 1), 4, 4, 4, "NHWC"),
    ((11, 11), (5, 5), (2, 2), ((2, 2), (2, 2)), (1, 1), (2, 1), 6, 6, 3, "NCHW"),
    ((8, 8), (3, 3), (1, 1), ((-1, 2), (1, -1)), (2, 1), (1, 2), 2, 4, 2, "NHWC"),
    ((13,), (4,), (3,), ((0, 2),), (1,), (1,), 3, 5, 1, "NWC"),
    (
        (5, 6, 4),
        (3, 3, 2),
        (1, 2, 1),
        ((1, 1), (0, 0), (1, 0)),
        (1, 1, 1),
        (1, 1, 2),
        2,
        2,
        1,
        "NDHWC",
    ),
    ((7, 7), (7, 7), (2, 2), ((3, 3), (3, 3)), (1, 1), (1, 1), 3, 8, 1, "NHWC"),
]


def _spec(layout: str):
    nsp = len(layout) - 2
    rhs = {1: "WIO", 2: "HWIO", 3: "DHWIO"}[nsp]
    return layout, rhs, layout


def _setup(case):
    sp, k, s, pad, ld, rd, cin, cout, groups, layout = case
    lhs_l, rhs_l, out_l = _spec(layout)
    sp_names = [c for c in lhs_l if c not in "NC"]
    x_dims = {"N": 1, "C": cin, **dict(zip(sp_names, sp, strict=True))}
    x_shape = tuple(x_dims[c] for c in lhs_l)
    w_dims = {"I": cin // groups, "O": cout, **dict(zip(rhs_l[:-2], k, strict=True))}
    w_shape = tuple(w_dims[c] for c in rhs_l)
    dn = jax.lax.conv_dimension_numbers(x_shape, w_shape, (lhs_l, rhs_l, out_l))
    params = dict(
        window_strides=s,
        padding=pad,
        lhs_dilation=ld,
        rhs_dilation=rd,
        dimension_numbers=dn,
        feature_group_count=groups,
        batch_group_count=1,
    )

    def op(x):
        return jax.lax.conv_general_dilated(
            x,
            jnp.ones(w_shape, jnp.float32),
            s,
            pad,
            lhs_dilation=ld,
            rhs_dilation=rd,
            dimension_numbers=dn,
            feature_group_count=groups,
        )

    return x_shape, w_shape, params, op


@pytest.mark.parametrize("case", CONVS, ids=range(len(CONVS)))
@pytest.mark.parametrize("channels_vary", [False, True])
def test_conv_sums_equal_xla(case, channels_vary):
    x_shape, w_shape, params, op = _setup(case)
    lhs = params["dimension_numbers"].lhs_spec
    shape = list(x_shape)
    if not channels_vary:
        shape[lhs[1]] = 1
    a = np.random.default_rng(0).uniform(0.5, 2.0, shape)
    want = np.asarray(op(jnp.asarray(np.broadcast_to(a, x_shape), jnp.float32)), np.float64)
    got = conv_sums(a, x_shape, w_shape, params)
    assert np.broadcast_shapes(got.shape, want.shape) == want.shape
    np.testing.assert_allclose(np.broadcast_to(got, want.shape), want, rtol=RTOL)


@pytest.mark.parametrize("case", CONVS, ids=range(len(CONVS)))
@pytest.mark.parametrize("channels_vary", [False, True])
def test_conv_sums_transpose_equal_vjp(case, channels_vary):
    x_shape, w_shape, params, op = _setup(case)
    y, pull = jax.vjp(op, jnp.zeros(x_shape, jnp.float32))
    out = params["dimension_numbers"].out_spec
    shape = list(y.shape)
    if not channels_vary:
        shape[out[1]] = 1
    g = np.random.default_rng(1).uniform(0.5, 2.0, shape)
    (want,) = pull(jnp.asarray(np.broadcast_to(g, y.shape), jnp.float32))
    want = np.asarray(want, np.float64)
    got = conv_sums_transpose(g, x_shape, w_shape, tuple(y.shape), params)
    np.testing.assert_allclose(np.broadcast_to(got, x_shape), want, rtol=RTOL, atol=1e-6)


DOTS = [
    # (x shape, w shape, ((contract x, contract w), (batch x, batch w)), activation)
    ((4, 6, 8), (8, 5), (((2,), (0,)), ((), ())), 0),
    ((4, 6, 8), (3, 8, 5), (((2,), (1,)), ((), ())), 0),
    ((2, 3, 4, 5), (5, 4, 7), (((2, 3), (1, 0)), ((), ())), 0),
    ((6, 3, 4), (6, 4, 2), (((2,), (1,)), ((0,), (0,))), 0),
    ((8, 5), (4, 6, 8), (((2,), (0,)), ((), ())), 1),  # lhs is the kernel
]


@pytest.mark.parametrize("case", DOTS, ids=range(len(DOTS)))
def test_dot_sums_equal_xla(case):
    x_shape, w_shape, dims, act = case
    shapes = (x_shape, w_shape) if act == 0 else (w_shape, x_shape)
    rng = np.random.default_rng(2)
    for keep in itertools.product([True, False], repeat=len(x_shape)):
        shape = [n if k else 1 for n, k in zip(x_shape, keep, strict=True)]
        a = rng.uniform(0.5, 2.0, shape)
        full = jnp.asarray(np.broadcast_to(a, x_shape), jnp.float32)
        ones = jnp.ones(w_shape, jnp.float32)
        ops = (full, ones) if act == 0 else (ones, full)

        def f(x, ops=ops):
            o = list(ops)
            o[act] = x
            return jax.lax.dot_general(o[0], o[1], dims)

        want, pull = jax.vjp(f, full)
        got = dot_sums(a, shapes, dims, act)
        np.testing.assert_allclose(np.broadcast_to(got, want.shape), want, rtol=RTOL)
        g = rng.uniform(0.5, 2.0, [n if rng.random() < 0.5 else 1 for n in want.shape])
        (gx,) = pull(jnp.asarray(np.broadcast_to(g, want.shape), jnp.float32))
        got_t = dot_sums_transpose(g, shapes, dims, act)
        np.testing.assert_allclose(np.broadcast_to(got_t, x_shape), gx, rtol=RTOL)


def test_batch_group_count_is_refused():
    x_shape, w_shape, params, _ = _setup(CONVS[0])
    with pytest.raises(NotImplementedError, match="batch_group_count"):
        conv_sums(np.ones((1,) * 4), x_shape, w_shape, {**params, "batch_group_count": 2})
