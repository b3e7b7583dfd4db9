"""Flax MLPs (NNX and Linen) and Probe points."""

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import varprop
from varprop import initializers as I


def _numpy_mlp(Ws, bs, x, act):
    h = np.asarray(x, np.float64)
    for i, (W, b) in enumerate(zip(Ws, bs, strict=True)):
        z = h @ np.asarray(W, np.float64) + np.asarray(b, np.float64)
        h = z if i == len(Ws) - 1 else act(z)
    return h


def test_nnx_mlp_matches_numpy_and_scans_homogeneous_layers():
    widths = [20, 32, 32, 32, 32, 5]
    m = varprop.nn.MLP(
        widths, "tanh", kernel_init=I.glorot_normal(), bias_init=I.normal(0.1), rngs=nnx.Rngs(0)
    )
    # 20->32, three 32->32 layers stacked in one scanned segment, 32->5.
    assert [k[...].shape for k in m.kernels] == [(1, 20, 32), (3, 32, 32), (1, 32, 5)]
    x = jax.random.normal(jax.random.key(1), (7, 20))
    Ws = [w for k in m.kernels for w in np.asarray(k[...])]
    bs = [b for k in m.biases for b in np.asarray(k[...])]
    np.testing.assert_allclose(
        np.asarray(m(x)), _numpy_mlp(Ws, bs, x, np.tanh), rtol=2e-5, atol=2e-5
    )


def test_linen_mlp_matches_numpy():
    widths = [12, 16, 16, 3]
    model = varprop.nn.LinenMLP(widths, "relu", kernel_init=I.he_uniform())
    v = model.init(jax.random.key(0), jnp.ones((1, 12)))
    x = jax.random.normal(jax.random.key(2), (4, 12))
    segs = [v["params"][f"segment{i}"] for i in range(3)]
    Ws = [w for s in segs for w in np.asarray(s["W"])]
    bs = [b for s in segs for b in np.asarray(s["b"])]
    ref = _numpy_mlp(Ws, bs, x, lambda z: np.maximum(z, 0))
    np.testing.assert_allclose(np.asarray(model.apply(v, x)), ref, rtol=2e-5, atol=2e-5)


def test_mlp_jitted_forward_backward():
    m = varprop.nn.MLP([8, 16, 16, 2], "relu", rngs=nnx.Rngs(0))

    @nnx.jit
    def step(model, x):
        return nnx.grad(lambda mm: jnp.sum(mm(x) ** 2))(model)

    g = step(m, jnp.ones((4, 8)))
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(g))


class _Net(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(16, 32, kernel_init=I.he_normal(), rngs=rngs)
        self.p1 = varprop.nn.Probe()
        self.l2 = nnx.Linear(32, 4, kernel_init=I.lecun_normal(), rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.p1(self.l1(x))))


def test_probe_statistics_equal_manual_computation():
    model = _Net(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(3), (8, 16))
    r = varprop.nn.probe_statistics(model, x, lambda y: jnp.sum(y))
    z = np.asarray(model.l1(x), np.float64)
    W2 = np.asarray(model.l2.kernel[...], np.float64)
    g = (z > 0) * (np.ones((8, 4)) @ W2.T)  # dL/dz at the probe
    np.testing.assert_allclose(float(r["p1"]["forward"][0]), np.log(np.mean(z**2)), rtol=1e-5)
    np.testing.assert_allclose(float(r["p1"]["backward"][0]), np.log(np.mean(g**2)), rtol=1e-5)
    assert float(r["p1"]["forward"][2]) == 1.0


def test_linen_probe_sows_and_perturbs():
    class Net(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.Dense(3)(varprop.nn.LinenProbe()(linen.Dense(5)(x)))

    x = jnp.ones((2, 4))
    v = Net().init(jax.random.key(0), x)
    _, state = Net().apply(v, x, mutable=["intermediates"])
    stats = jax.tree_util.tree_leaves(state["intermediates"])[0]
    assert stats.shape == (4,)
    grads = jax.grad(lambda p: jnp.sum(Net().apply({**v, "perturbations": p}, x)))(
        v["perturbations"]
    )
    assert jax.tree_util.tree_leaves(grads)[0].shape == (2, 5)


def test_mlp_rejects_bad_widths():
    with pytest.raises(ValueError, match="every width must be an int >= 1"):
        varprop.nn.MLP([8, 0, 2], rngs=nnx.Rngs(0))
