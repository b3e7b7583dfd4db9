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
    with pytest.raises(ValueError, match=r"widths must be whole numbers in \[1, "):
        varprop.nn.MLP([8, 0, 2], rngs=nnx.Rngs(0))


# -- the normalization slot ------------------------------------------------------------------
#
# Tolerances: the MLP and the layer-by-layer references run the same float32 operations
# (matmul, then the same normalization core) in a different program layout (scanned and
# stacked vs one layer at a time), so they may differ by a few float32 ulps per layer,
# amplified by at most the normalization's 1/sigma (sigma ~ 1 after the first layer):
# rtol 1e-5 (~100 ulps) with atol 1e-5 for entries near 0. The float64 NumPy computation of
# the running statistics differs from the float32 one by the float32 rounding of z (rel.
# ~1e-7 per operation over a 24-wide dot product): rtol 1e-5 again.

BN_WIDTHS = [12, 24, 24, 24, 5]  # segments: 12->24 (k=1), two 24->24 (k=2), 24->5
MOMENTUM = 0.9


def _x(seed=1, batch=64, width=12):
    # Not standardized: mean 2, std 3, so batch and running statistics differ.
    return 2.0 + 3.0 * jax.random.normal(jax.random.key(seed), (batch, width))


def _norm_mlp(norm, widths=BN_WIDTHS, activation="tanh", **kw):
    m = varprop.nn.MLP(
        widths,
        activation,
        kernel_init=I.glorot_normal(),
        bias_init=I.normal(0.1),
        norm=norm,
        momentum=MOMENTUM,
        rngs=nnx.Rngs(0),
        **kw,
    )
    # Scale and bias away from their initial 1 and 0, so that the test sees them used.
    for i, (s, b) in enumerate(zip(m.norm_scales, m.norm_biases, strict=True)):
        k1, k2 = jax.random.split(jax.random.key(10 + i))
        s[...] = 1.0 + 0.3 * jax.random.normal(k1, s[...].shape)
        b[...] = 0.2 * jax.random.normal(k2, b[...].shape)
    return m


def _flat(lst):
    """Per-layer arrays from per-segment stacked nnx variables."""
    return [a for v in lst for a in np.asarray(v[...])]


def _reference(m, norm_layers, x, act=jnp.tanh):
    """Dense + norm layer + activation, one layer at a time, with the MLP's weights."""
    Ws, bs = _flat(m.kernels), _flat(m.biases)
    h = x
    for i, (W, b) in enumerate(zip(Ws, bs, strict=True)):
        z = h @ jnp.asarray(W) + jnp.asarray(b)[None, :]
        h = z if i == len(Ws) - 1 else act(norm_layers[i](z))
    return h


def _reference_bns(m, **kw):
    bns = []
    for s, b in zip(_flat(m.norm_scales), _flat(m.norm_biases), strict=True):
        bn = varprop.nn.BatchNorm(
            s.shape[0], momentum=MOMENTUM, epsilon=1e-5, rngs=nnx.Rngs(0), **kw
        )
        bn.scale[...] = jnp.asarray(s)
        bn.bias[...] = jnp.asarray(b)
        bns.append(bn)
    return bns


def test_batchnorm_mlp_train_mode_matches_layerwise_reference_and_updates_stats():
    m = _norm_mlp("batchnorm")
    assert [v[...].shape for v in m.norm_scales] == [(1, 24), (2, 24)]
    assert [v[...].shape for v in m.norm_means] == [(1, 24), (2, 24)]
    x = _x()
    bns = _reference_bns(m)
    y = m(x)
    ref = _reference(m, bns, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-5)

    # Running statistics: the momentum rule on every hidden layer's batch statistics,
    # computed here in float64 from the weights alone.
    Ws, bs = _flat(m.kernels), _flat(m.biases)
    scales, biases = _flat(m.norm_scales), _flat(m.norm_biases)
    h = np.asarray(x, np.float64)
    exp_mean, exp_var = [], []
    for W, b, g, beta in zip(Ws[:-1], bs[:-1], scales, biases, strict=True):
        z = h @ W.astype(np.float64) + b
        mu, var = z.mean(0), z.var(0)
        exp_mean.append(MOMENTUM * 0.0 + (1 - MOMENTUM) * mu)
        exp_var.append(MOMENTUM * 1.0 + (1 - MOMENTUM) * var)
        h = np.tanh(g * (z - mu) / np.sqrt(var + 1e-5) + beta)
    np.testing.assert_allclose(_flat(m.norm_means), exp_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_flat(m.norm_vars), exp_var, rtol=1e-5, atol=1e-6)
    # ... and the reference layers agree.
    np.testing.assert_allclose(
        _flat(m.norm_means), [bn.mean[...] for bn in bns], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        _flat(m.norm_vars), [bn.var[...] for bn in bns], rtol=1e-5, atol=1e-6
    )


def test_batchnorm_mlp_eval_mode_uses_running_stats():
    m = _norm_mlp("batchnorm")
    x = _x()
    bns = _reference_bns(m)
    y_train = m(x)  # one training step: running statistics now away from (0, 1)
    _reference(m, bns, x)
    for bn in bns:
        bn.eval()
    means, vars_ = _flat(m.norm_means), _flat(m.norm_vars)

    m.eval()
    assert m.use_running_average is True
    y_eval = m(x)
    # Eval mode does not touch the running statistics.
    np.testing.assert_array_equal(_flat(m.norm_means), means)
    np.testing.assert_array_equal(_flat(m.norm_vars), vars_)
    assert float(jnp.max(jnp.abs(y_eval - y_train))) > 0.1
    ref = _reference(m, bns, x)
    np.testing.assert_allclose(np.asarray(y_eval), np.asarray(ref), rtol=1e-5, atol=1e-5)

    # The other ways to ask for eval mode agree; train() switches back.
    m.train()
    assert m.use_running_average is False
    np.testing.assert_array_equal(np.asarray(m(x, use_running_average=True)), np.asarray(y_eval))
    view = nnx.view(m, use_running_average=True)
    np.testing.assert_array_equal(np.asarray(view(x)), np.asarray(y_eval))
    np.testing.assert_array_equal(_flat(m.norm_means), means)
    m.set_attributes(use_running_average=True)
    np.testing.assert_array_equal(np.asarray(m(x)), np.asarray(y_eval))


def test_norm_mlp_at_init_equals_the_probes_forward():
    # At init (scale 1, bias 0, training mode) the slot is exactly the probe's
    # normalization: Network.norm and forward() of varprop._src.probe.
    from varprop._src.core.network import forward

    x = _x()
    for norm in ("batchnorm", "layernorm"):
        m = varprop.nn.MLP(BN_WIDTHS, "relu", norm=norm, rngs=nnx.Rngs(0))
        assert m.network.norm == norm
        np.testing.assert_allclose(
            np.asarray(m(x)),
            np.asarray(forward(m.network, m.params_list(), x)),
            rtol=1e-6,
            atol=1e-6,
        )


def test_layernorm_mlp_matches_layerwise_reference():
    m = _norm_mlp("layernorm")
    assert not hasattr(m, "norm_means")
    assert jax.tree_util.tree_leaves(nnx.state(m, nnx.BatchStat)) == []
    x = _x()
    lns = []
    for s, b in zip(_flat(m.norm_scales), _flat(m.norm_biases), strict=True):
        ln = nnx.LayerNorm(s.shape[0], epsilon=1e-6, rngs=nnx.Rngs(0))  # flax's own
        ln.scale[...] = jnp.asarray(s)
        ln.bias[...] = jnp.asarray(b)
        lns.append(ln)
    y = m(x)
    np.testing.assert_allclose(
        np.asarray(y), np.asarray(_reference(m, lns, x)), rtol=1e-5, atol=1e-5
    )
    lns_vp = []
    for s, b in zip(_flat(m.norm_scales), _flat(m.norm_biases), strict=True):
        ln = varprop.nn.LayerNorm(s.shape[0], rngs=nnx.Rngs(0))
        ln.scale[...] = jnp.asarray(s)
        ln.bias[...] = jnp.asarray(b)
        lns_vp.append(ln)
    np.testing.assert_allclose(
        np.asarray(y), np.asarray(_reference(m, lns_vp, x)), rtol=1e-5, atol=1e-5
    )
    # No running statistics: train and eval mode agree.
    np.testing.assert_array_equal(np.asarray(m(x, use_running_average=True)), np.asarray(y))


def _linen_variables_from(m, v):
    params = {
        f"segment{i}": {"W": w[...], "b": b[...]}
        for i, (w, b) in enumerate(zip(m.kernels, m.biases, strict=True))
    }
    for i, (s, b) in enumerate(zip(m.norm_scales, m.norm_biases, strict=True)):
        params[f"norm{i}"] = {"scale": s[...], "bias": b[...]}
    out = {"params": params}
    if m.norm == "batchnorm":
        out["batch_stats"] = {
            f"norm{i}": {"mean": mu[...], "var": var[...]}
            for i, (mu, var) in enumerate(zip(m.norm_means, m.norm_vars, strict=True))
        }
    assert jax.tree.structure(out) == jax.tree.structure(v)
    return out


@pytest.mark.parametrize("norm", ["batchnorm", "layernorm"])
def test_nnx_and_linen_norm_mlps_agree(norm):
    m = _norm_mlp(norm)
    lm = varprop.nn.LinenMLP(
        BN_WIDTHS,
        "tanh",
        kernel_init=I.glorot_normal(),
        bias_init=I.normal(0.1),
        norm=norm,
        momentum=MOMENTUM,
    )
    v0 = lm.init(jax.random.key(0), jnp.ones((1, 12)))  # a batch of one is fine for init
    if norm == "batchnorm":
        np.testing.assert_array_equal(v0["batch_stats"]["norm1"]["var"], np.ones((2, 24)))
    v = _linen_variables_from(m, v0)
    x = _x()
    y_lin, upd = lm.apply(v, x, mutable=["batch_stats"])
    y_nnx = m(x)
    np.testing.assert_allclose(np.asarray(y_lin), np.asarray(y_nnx), rtol=1e-6, atol=1e-6)
    if norm == "batchnorm":
        for i in range(2):
            np.testing.assert_allclose(
                upd["batch_stats"][f"norm{i}"]["mean"], m.norm_means[i][...], rtol=1e-6, atol=1e-7
            )
            np.testing.assert_allclose(
                upd["batch_stats"][f"norm{i}"]["var"], m.norm_vars[i][...], rtol=1e-6, atol=1e-7
            )
        v = {**v, **upd}
    else:
        assert upd == {} or jax.tree_util.tree_leaves(upd) == []
    y_lin_eval = lm.apply(v, x, use_running_average=True)
    y_nnx_eval = m(x, use_running_average=True)
    np.testing.assert_allclose(np.asarray(y_lin_eval), np.asarray(y_nnx_eval), rtol=1e-6, atol=1e-6)


def test_norm_mlp_jit_and_grad():
    m = _norm_mlp("batchnorm")
    x = _x()

    @nnx.jit
    def step(model, xx):
        return nnx.grad(lambda mm: jnp.sum(mm(xx) ** 2))(model)

    eager = _norm_mlp("batchnorm")
    eager(x)
    g = step(m, x)
    leaves = jax.tree_util.tree_leaves(g)
    assert leaves and all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
    assert float(jnp.sum(jnp.abs(g["norm_scales"][1][...]))) > 0
    # The running statistics were updated through jit + grad, as by an eager call.
    np.testing.assert_allclose(_flat(m.norm_means), _flat(eager.norm_means), rtol=1e-6, atol=1e-7)

    lm = varprop.nn.LinenMLP(BN_WIDTHS, "tanh", norm="batchnorm")
    v = lm.init(jax.random.key(0), x)

    @jax.jit
    def lstep(params, stats, xx):
        def loss(p):
            y, upd = lm.apply({"params": p, "batch_stats": stats}, xx, mutable=["batch_stats"])
            return jnp.sum(y**2), upd

        return jax.grad(loss, has_aux=True)(params)

    lg, upd = lstep(v["params"], v["batch_stats"], x)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(lg))
    assert float(jnp.max(jnp.abs(upd["batch_stats"]["norm0"]["mean"]))) > 0


@pytest.mark.parametrize("norm", ["batchnorm", "layernorm"])
def test_norm_mlp_program_size_does_not_grow_with_depth(norm):
    x = jnp.ones((4, 8))

    def program_chars(depth):
        m = varprop.nn.MLP([8] + [16] * depth + [2], "relu", norm=norm, rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(m)

        def run(st, xx):
            mm = nnx.merge(graphdef, st)
            return mm(xx), nnx.state(mm)

        return len(jax.jit(run).lower(state, x).as_text())

    short, deep = program_chars(10), program_chars(50)
    # Unrolled, 5x the layers would be ~5x the text; scanned, only constants change.
    assert deep < 1.2 * short, (short, deep)


def test_norm_mlp_rejects_bad_options():
    with pytest.raises(ValueError, match=r"unknown norm 'groupnorm'.*'batchnorm', 'layernorm'"):
        varprop.nn.MLP([8, 4, 2], norm="groupnorm", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"unknown norm 'groupnorm'.*'batchnorm', 'layernorm'"):
        varprop.nn.LinenMLP([8, 4, 2], norm="groupnorm")
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\)"):
            varprop.nn.MLP([8, 4, 2], norm="batchnorm", momentum=bad, rngs=nnx.Rngs(0))
        with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\)"):
            varprop.nn.LinenMLP([8, 4, 2], norm="batchnorm", momentum=bad)
    for bad in (0.0, -1e-5, float("nan")):
        with pytest.raises(ValueError, match="epsilon must be a finite number > 0"):
            varprop.nn.MLP([8, 4, 2], norm="layernorm", epsilon=bad, rngs=nnx.Rngs(0))
        with pytest.raises(ValueError, match="epsilon must be a finite number > 0"):
            varprop.nn.LinenMLP([8, 4, 2], norm="layernorm", epsilon=bad)


def test_mlp_without_norm_has_only_weights():
    m = varprop.nn.MLP([8, 16, 16, 2], "relu", rngs=nnx.Rngs(0))
    assert set(nnx.to_pure_dict(nnx.state(m))) == {"kernels", "biases"}
    v = varprop.nn.LinenMLP([8, 16, 16, 2]).init(jax.random.key(0), jnp.ones((1, 8)))
    assert set(v) == {"params"} and set(v["params"]) == {"segment0", "segment1", "segment2"}


# -- the Linen probe helper ------------------------------------------------------------------


class _LinenNet(linen.Module):
    @linen.compact
    def __call__(self, x):
        h = varprop.nn.LinenProbe(name="p1")(linen.Dense(32, name="l1")(x))
        return linen.Dense(4, name="l2")(jax.nn.relu(h))


def test_linen_probe_statistics_equal_nnx_probe_statistics():
    model = _Net(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(3), (8, 16))
    params = {
        name: {"kernel": getattr(model, name).kernel[...], "bias": getattr(model, name).bias[...]}
        for name in ("l1", "l2")
    }
    for loss_fn in (None, lambda y: jnp.sum(jnp.sin(y))):
        ours = varprop.nn.linen_probe_statistics(_LinenNet(), {"params": params}, x, loss_fn)
        ref = varprop.nn.probe_statistics(model, x, loss_fn)
        assert set(ours) == set(ref) == {"p1"}
        for k in ("forward", "backward"):
            # Same float32 operations in both frameworks: a few ulps apart.
            np.testing.assert_allclose(ours["p1"][k], ref["p1"][k], rtol=1e-5, atol=1e-6)


def test_linen_probe_statistics_equal_direct_computation():
    from varprop._src.probe import _summary

    net = _LinenNet()
    x = jax.random.normal(jax.random.key(3), (8, 16))
    v = net.init(jax.random.key(0), x)  # includes the perturbations collection

    def loss_fn(y):
        return jnp.sum(y**2)

    r = varprop.nn.linen_probe_statistics(net, v, x, loss_fn)
    p = v["params"]
    z = linen.Dense(32).apply({"params": p["l1"]}, x)
    g = jax.grad(lambda zz: loss_fn(linen.Dense(4).apply({"params": p["l2"]}, jax.nn.relu(zz))))(z)
    np.testing.assert_allclose(r["p1"]["forward"], _summary(z), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(r["p1"]["backward"], _summary(g), rtol=1e-6, atol=1e-7)


def test_linen_probe_statistics_with_batchnorm_mlp_inside():
    class Net(linen.Module):
        @linen.compact
        def __call__(self, x):
            h = varprop.nn.LinenProbe(name="inp")(x)
            return varprop.nn.LinenMLP([6, 16, 16, 3], "relu", norm="batchnorm")(h)

    x = _x(width=6, batch=32)
    v = Net().init(jax.random.key(0), x)
    r = varprop.nn.linen_probe_statistics(
        Net(), {"params": v["params"], "batch_stats": v["batch_stats"]}, x
    )
    assert set(r) == {"inp"}
    assert float(r["inp"]["forward"][2]) == 1.0 and float(r["inp"]["backward"][2]) == 1.0


def test_probe_statistics_leave_nnx_batchnorm_running_statistics_alone():
    """Regression: probe_statistics ran the model twice in training mode (once to find the
    output's shape, once under the gradient) and both runs advanced the BatchNorm running
    statistics of the user's model. Like the Linen version, it must leave the model's
    state as it was."""

    class Wrapped(nnx.Module):
        def __init__(self, mlp):
            self.mlp = mlp
            self.probe = varprop.nn.Probe()

        def __call__(self, x):
            return self.probe(self.mlp(x))

    mlp = varprop.nn.MLP([8, 16, 16, 4], "relu", norm="batchnorm", rngs=nnx.Rngs(0))
    before = [np.asarray(m[...]) for m in mlp.norm_means] + [
        np.asarray(v[...]) for v in mlp.norm_vars
    ]
    x = 3.0 + jax.random.normal(jax.random.key(1), (32, 8))
    r = varprop.nn.probe_statistics(Wrapped(mlp), x)
    assert set(r) == {"probe"}
    after = [np.asarray(m[...]) for m in mlp.norm_means] + [
        np.asarray(v[...]) for v in mlp.norm_vars
    ]
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    # Training mode still used the batch statistics: the forward summary matches one
    # training-mode call of an identical model.
    twin = varprop.nn.MLP([8, 16, 16, 4], "relu", norm="batchnorm", rngs=nnx.Rngs(0))
    y = twin(x)
    np.testing.assert_allclose(
        float(r["probe"]["forward"][0]), float(np.log(np.mean(np.square(y)))), rtol=1e-5
    )
