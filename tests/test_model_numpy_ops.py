"""The propagation's NumPy primitives against JAX's own: pooling windows, the transposes of
the shape-only ops and of dot_general, with moment arrays that are constant (size 1) along
some axes, as the interpreter stores them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varprop._src.model.numpy_ops import dot_transpose, linear_transpose, reduce_window

RTOL = 2e-5  # float32 XLA against float64 NumPy


def _eqn(fn, *args):
    """The single equation of ``fn``'s jaxpr (and its closed jaxpr)."""
    closed = jax.make_jaxpr(fn)(*args)
    (eqn,) = [e for e in closed.jaxpr.eqns if e.primitive.name not in ("pjit", "jit")]
    return eqn


POOLS = [
    # (name, window, strides, padding, base dilation, window dilation)
    ("reduce_window_max", (1, 3, 3, 1), (1, 2, 2, 1), "SAME", None, None),
    ("reduce_window_sum", (1, 2, 2, 1), (1, 2, 2, 1), "VALID", None, None),
    ("reduce_window_min", (1, 3, 2, 1), (1, 1, 2, 1), ((0, 0), (1, 2), (0, 1), (0, 0)), None, None),
    (
        "reduce_window_sum",
        (1, 3, 3, 1),
        (1, 1, 1, 1),
        ((0, 0), (2, 2), (2, 2), (0, 0)),
        (1, 2, 1, 1),
        (1, 1, 2, 1),
    ),
]


@pytest.mark.parametrize("case", POOLS, ids=range(len(POOLS)))
@pytest.mark.parametrize("channels_vary", [False, True])
def test_reduce_window_matches_lax(case, channels_vary):
    name, win, strides, pad, base, wdil = case
    shape = (2, 9, 8, 3)
    a = np.random.default_rng(0).uniform(0.5, 2.0, (1, 9, 8, 3 if channels_vary else 1))
    op, init = {
        "reduce_window_max": (jax.lax.max, -jnp.inf),
        "reduce_window_min": (jax.lax.min, jnp.inf),
        "reduce_window_sum": (jax.lax.add, 0.0),
    }[name]

    def f(x):
        return jax.lax.reduce_window(x, init, op, win, strides, pad, base, wdil)

    full = jnp.asarray(np.broadcast_to(a, shape), jnp.float32)
    want = np.asarray(f(full), np.float64)
    eqn = _eqn(f, full)
    assert eqn.primitive.name == name
    got = reduce_window(name, eqn.params, a, shape)
    assert got is not None
    np.testing.assert_allclose(np.broadcast_to(got, want.shape), want, rtol=RTOL)


LINEAR = [
    (lambda x: x.reshape(4, 6, 5), (4, 30)),
    (lambda x: jnp.transpose(x, (2, 0, 1)), (3, 4, 5)),
    (lambda x: jnp.sum(x, axis=(0, 2)), (3, 4, 5)),
    (lambda x: jax.lax.broadcast_in_dim(x, (3, 6, 5), (0, 2)), (3, 5)),
    (lambda x: jnp.broadcast_to(x, (3, 4, 5)), (3, 1, 5)),
    (lambda x: jnp.squeeze(x, axis=1), (3, 1, 5)),
    (lambda x: jax.lax.pad(x, 0.0, ((1, 2, 0), (0, 3, 0))), (4, 5)),
    (lambda x: jax.lax.pad(x, 0.0, ((-1, 2, 0), (1, -2, 0))), (4, 5)),
]


@pytest.mark.parametrize("case", LINEAR, ids=range(len(LINEAR)))
def test_linear_transposes_match_jax_vjp(case):
    fn, shape = case
    x = jnp.zeros(shape, jnp.float32)
    y, pull = jax.vjp(fn, x)
    rng = np.random.default_rng(1)
    for keep in (True, False):  # a cotangent varying everywhere, or constant along axis 0
        g_shape = list(y.shape)
        if not keep and g_shape:
            g_shape[0] = 1
        g = rng.uniform(0.5, 2.0, g_shape)
        (want,) = pull(jnp.asarray(np.broadcast_to(g, y.shape), jnp.float32))
        eqn = _eqn(fn, x)
        got = linear_transpose(eqn, 0, g, [shape, *([()] * (len(eqn.invars) - 1))])
        assert got is not None, eqn.primitive.name
        np.testing.assert_allclose(np.broadcast_to(got, shape), want, rtol=RTOL, atol=1e-6)


def test_concatenate_transpose_gives_each_operand_its_part():
    a, b = jnp.zeros((2, 3)), jnp.zeros((2, 4))
    fn = lambda a, b: jnp.concatenate([a, b], axis=1)  # noqa: E731
    _, pull = jax.vjp(fn, a, b)
    g = np.arange(14.0).reshape(2, 7)
    want = pull(jnp.asarray(g, jnp.float32))
    eqn = _eqn(fn, a, b)
    for i in (0, 1):
        got = linear_transpose(eqn, i, g, [(2, 3), (2, 4)])
        np.testing.assert_allclose(got, want[i])


@pytest.mark.parametrize(
    "shapes, dims",
    [
        (((4, 6, 8), (8, 5)), (((2,), (0,)), ((), ()))),
        (((2, 3, 8, 4), (2, 3, 5, 4)), (((3,), (3,)), ((0, 1), (0, 1)))),
    ],
)
def test_dot_transpose_matches_jax_vjp(shapes, dims):
    rng = np.random.default_rng(2)
    a, b = (rng.uniform(0.5, 2.0, s) for s in shapes)
    fn = lambda a, b: jax.lax.dot_general(a, b, dims)  # noqa: E731
    y, pull = jax.vjp(fn, jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    g = rng.uniform(0.5, 2.0, y.shape)
    want = pull(jnp.asarray(g, jnp.float32))
    np.testing.assert_allclose(dot_transpose(dims, 0, g, b, list(shapes)), want[0], rtol=RTOL)
    np.testing.assert_allclose(dot_transpose(dims, 1, g, a, list(shapes)), want[1], rtol=RTOL)
