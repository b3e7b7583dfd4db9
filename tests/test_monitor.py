"""varprop's training monitor (``varprop._src.model.monitor``): per-layer statistics and
update sizes recorded inside a user's jitted train step, every k steps.

Expected values are computed here, independently: E[y^2] and the laws of a hand-written
MLP from its weights with jnp, the update sizes from the parameters before and after each
step, and the conv models' statistics from ``varprop.check_model`` on the same weights and
batch. Fixed seeds throughout.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import varprop
from varprop import example_models
from varprop._src.errors import InputError
from varprop._src.model.monitor import MonitorSeries, monitor
from varprop._src.model.monitor_plot import plot_series

HE = nnx.initializers.he_normal()
B, D_IN, D_H, D_OUT = 32, 16, 64, 4


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(D_IN, D_H, kernel_init=HE, rngs=rngs)
        self.l2 = nnx.Linear(D_H, D_OUT, kernel_init=HE, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.l1(x)))


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(D_H, kernel_init=HE, name="l1")(x))
        return nn.Dense(D_OUT, kernel_init=HE, name="l2")(h)


def xent(out, y):
    return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()


def batch(step: int = 0):
    k = jax.random.fold_in(jax.random.key(7), step)
    return jax.random.normal(k, (B, D_IN)), jnp.arange(B) % D_OUT


def nnx_step(mon):
    @nnx.jit
    def step(model, opt, mstate, x, y):
        mstate = mon.record(mstate, model, x, y)
        grads = nnx.grad(lambda m: xent(m(x), y))(model)
        opt.update(model, grads)
        return mstate

    return step


# ----------------------------------------------------------------------------------------
# What is recorded.
# ----------------------------------------------------------------------------------------


def test_step_zero_records_the_mlps_moments_and_laws_computed_by_hand():
    x, y = batch()
    mon = monitor(lambda rngs: MLP(rngs), x, loss=xent, every=3, capacity=4)
    model = MLP(nnx.Rngs(1))
    w1, b1 = model.l1.kernel[...], model.l1.bias[...][None]
    w2, b2 = model.l2.kernel[...], model.l2.bias[...][None]
    opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    s = mon.series(nnx_step(mon)(model, opt, mon.init(), x, y))
    l1, l2 = s.layer("l1"), s.layer("l2")
    assert l1.steps.tolist() == l2.steps.tolist() == [0]

    z1 = x @ w1
    h = jax.nn.relu(z1 + b1)
    z2 = h @ w2
    g_out = jax.grad(lambda o: xent(o, y))(z2 + b2)  # dL/dz2: the bias add passes it on
    g_h = g_out @ w2.T
    m2 = lambda a: float(jnp.mean(a * a))  # noqa: E731
    # He normal: Var(w) = 2 / fan_in; the law given x is Var(w) * sum_i E_b[x_i^2].
    expect = {
        "l1": (m2(x), m2(z1), 2 / D_IN * D_IN * m2(x), math.nan, math.nan, math.nan),
        "l2": (m2(h), m2(z2), 2 / D_H * D_H * m2(h), m2(g_out), m2(g_h),
               2 / D_H * D_OUT * m2(g_out)),
    }  # fmt: skip
    # l1's input is the data: no gradient flows to it, but its backward row is dL/dz1's.
    g_z1 = jnp.where(z1 + b1 > 0, g_h, 0.0)
    expect["l1"] = (*expect["l1"][:3], m2(g_z1), m2(g_z1 @ w1.T), 2 / D_IN * D_H * m2(g_z1))
    for r, want in ((l1, expect["l1"]), (l2, expect["l2"])):
        got = (r.x_m2[0], r.y_m2[0], r.y_law[0], r.gy_m2[0], r.gx_m2[0], r.gx_law[0])
        np.testing.assert_allclose(got, want, rtol=2e-5, err_msg=r.path)


def test_records_appear_every_k_steps_in_a_ring_of_capacity_rows():
    x, y = batch()
    mon = monitor(lambda rngs: MLP(rngs), x, loss=xent, every=3, capacity=2)
    model = MLP(nnx.Rngs(1))
    opt = nnx.Optimizer(model, mon.track_updates(optax.sgd(0.1)), wrt=nnx.Param)
    step = nnx_step(mon)
    mstate = mon.init()
    seen = []
    for _ in range(8):
        mstate = step(model, opt, mstate, x, y)
        seen.append((int(mstate.step), int(mstate.count)))
    # Records at steps 0, 3, 6: the count rises right after those steps only.
    assert seen == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2), (7, 3), (8, 3)]
    s = mon.series(mstate, opt.opt_state)
    assert s.dropped == 1 and s.dropped_updates == 1  # capacity 2 keeps the last two
    assert [r.steps.tolist() for r in s.layers] == [[3, 6], [3, 6]]
    assert [u.steps.tolist() for u in s.updates] == [[3, 6], [3, 6]]
    assert sorted(np.asarray(mstate.steps).tolist()) == [3, 6]
    assert all(np.all(np.isfinite(r.y_m2)) for r in s.layers)


def test_a_fresh_state_is_empty_and_unwritten_rows_are_nan():
    x, y = batch()
    mon = monitor(lambda rngs: MLP(rngs), x, loss=xent, every=5, capacity=3)
    model = MLP(nnx.Rngs(1))
    opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    assert mon.series(mon.init()).layers[0].steps.size == 0
    mstate = nnx_step(mon)(model, opt, mon.init(), x, y)
    assert np.asarray(mstate.steps).tolist() == [0, -1, -1]
    assert np.all(np.isnan(np.asarray(mstate.moments.y_m2)[1:]))


def _linen_runs(static: bool):
    """Five Adam steps of the Linen MLP with a record and the update sizes every 2 steps,
    decided by ``lax.cond`` (``static=False``) or by a static Python bool from the loop.
    Returns the series, the primitives of each compiled step (keyed by the switch), and
    each kernel's ‖W_{t+1} − W_t‖/‖W_t‖ at the recorded steps, computed here."""
    x, _ = batch()
    model = LinenMLP()
    mon = monitor(model, x, loss=xent, every=2, capacity=8)
    variables = model.init(jax.random.key(3), x)
    tx = mon.track_updates(optax.adam(1e-2))
    opt_state = tx.init(variables["params"])

    def step(variables, opt_state, mstate, x, y, rec=None):
        mstate = mon.record(mstate, variables, x, y, now=rec)
        grads = jax.grad(lambda p: xent(model.apply({"params": p}, x), y))(variables["params"])
        updates, opt_state = tx.update(grads, opt_state, variables["params"], record_now=rec)
        return {"params": optax.apply_updates(variables["params"], updates)}, opt_state, mstate

    jitted = jax.jit(step, static_argnames="rec")
    mstate = mon.init()
    prims = {}
    expect: dict[str, list[float]] = {"l1": [], "l2": []}
    for t in range(5):
        rec = (t % 2 == 0) if static else None
        before = variables["params"]
        args = (variables, opt_state, mstate, *batch(t))
        with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes int and float
            eqns = jax.make_jaxpr(step, static_argnums=5)(*args, rec).eqns
            prims[rec] = [e.primitive.name for e in eqns]
            variables, opt_state, mstate = jitted(*args, rec=rec)
        if t % 2 == 0:
            for name in expect:
                w0, w1 = before[name]["kernel"], variables["params"][name]["kernel"]
                expect[name].append(float(jnp.linalg.norm(w1 - w0) / jnp.linalg.norm(w0)))
    return mon.series(mstate, opt_state), prims, expect


def test_linen_update_ratio_equals_the_parameters_change_over_their_norm():
    s, _, expect = _linen_runs(static=False)
    assert [u.path for u in s.updates] == ["l1", "l2"]
    for u in s.updates:
        assert u.steps.tolist() == [0, 2, 4]
        np.testing.assert_allclose(u.ratio, expect[u.path], rtol=1e-4, err_msg=u.path)
    # Linen: the layers' forward statistics at every record, on that step's batch.
    assert s.layer("l1").steps.tolist() == [0, 2, 4]
    for i, t in enumerate((0, 2, 4)):
        np.testing.assert_allclose(s.layer("l1").x_m2[i], jnp.mean(batch(t)[0] ** 2), rtol=1e-5)


def test_a_static_switch_records_the_same_without_the_conditional():
    """``now=`` / ``record_now=`` as Python bools: the same records as the ``lax.cond``
    (same steps, same values), and neither compiled step has a conditional; the one that
    does not record has the plain step's 5 dot_generals (2 layers: 2 forward, 3 backward:
    two kernels' gradients and the hidden layer's),
    the recording one more (the tapped second pass)."""
    dynamic, prims_dyn, _ = _linen_runs(static=False)
    static, prims, expect = _linen_runs(static=True)
    assert "cond" in prims_dyn[None]
    assert "cond" not in prims[True] and "cond" not in prims[False]
    assert prims[False].count("dot_general") == 5 < prims[True].count("dot_general")
    for a, b in zip(dynamic.layers, static.layers, strict=True):
        assert a.path == b.path and a.steps.tolist() == b.steps.tolist() == [0, 2, 4]
        np.testing.assert_allclose(a.y_m2, b.y_m2, rtol=1e-5)
        np.testing.assert_allclose(a.gx_m2, b.gx_m2, rtol=1e-5)
    for a, b in zip(dynamic.updates, static.updates, strict=True):
        assert a.steps.tolist() == b.steps.tolist() == [0, 2, 4]
        np.testing.assert_allclose(a.ratio, b.ratio, rtol=1e-5)
        np.testing.assert_allclose(b.ratio, expect[b.path], rtol=1e-4)


def test_a_static_switch_that_is_not_a_bool_is_an_input_error():
    x, y = batch()
    mon = monitor(lambda rngs: MLP(rngs), x, loss=xent)
    model = MLP(nnx.Rngs(0))
    with pytest.raises(InputError, match=r"now=.*allowed: None .* or a Python bool") as e:
        mon.record(mon.init(), model, x, y, now=jnp.asarray(True))
    assert e.value.param == "now"
    tx = mon.track_updates(optax.sgd(0.1))
    params = nnx.state(model, nnx.Param)
    with pytest.raises(InputError, match=r"record_now=1") as e:
        tx.update(params, tx.init(params), params, record_now=1)
    assert e.value.param == "record_now"


def _conv_step_zero(model, variables, x, loss):
    """The record at step 0 and check_model's rows on the same weights and batch."""
    mon = monitor(model, x, loss=loss, every=1, capacity=1, variables=variables)
    weights = model if variables is None else variables
    got = mon.series(jax.jit(lambda m, w: mon.record(m, w, x))(mon.init(), weights))
    r = varprop.check_model(model, x, variables=variables, reinit=False, loss=loss)
    return got, r


@pytest.mark.parametrize(
    "framework", [pytest.param("nnx", marks=pytest.mark.slow), "linen"]
)  # NNX: the MLP and scan tests run by default
def test_conv_models_step_zero_equals_check_models_measurements(framework):
    x = jax.random.normal(jax.random.key(1), (8, 12, 12, 1))
    labels = jnp.arange(8) % 10

    def loss(out):
        return xent(out, labels)

    small = dict(features=(8, 16), hidden=32)
    if framework == "nnx":
        model, variables = example_models.cnn(image_size=12, **small), None
    else:
        model = example_models.cnn_linen(**small)
        variables = model.init(jax.random.key(2), x)
    got, r = _conv_step_zero(model, variables, x, loss)
    measured = {
        (row.path, row.direction): row.measured
        for row in r.layers
        if row.kind in ("dense", "conv", "embed")
    }
    assert [s.path for s in got.layers] == list(dict.fromkeys(p for p, _ in measured))
    for s in got.layers:
        np.testing.assert_allclose(s.y_m2[0], measured[s.path, "forward"], rtol=1e-5)
        np.testing.assert_allclose(s.gx_m2[0], measured[s.path, "backward"], rtol=1e-5)


# ----------------------------------------------------------------------------------------
# No host round-trip in the step.
# ----------------------------------------------------------------------------------------


def test_the_jitted_step_runs_under_a_transfer_guard():
    x, y = batch()
    mon = monitor(lambda rngs: MLP(rngs), x, loss=xent, every=2, capacity=4)
    model = MLP(nnx.Rngs(1))
    opt = nnx.Optimizer(model, mon.track_updates(optax.sgd(0.1)), wrt=nnx.Param)
    graphdef, state = nnx.split((model, opt))

    @jax.jit
    def step(state, mstate, x, y):
        model, opt = nnx.merge(graphdef, state)
        mstate = mon.record(mstate, model, x, y)
        loss, grads = nnx.value_and_grad(lambda m: xent(m(x), y))(model)
        opt.update(model, grads)
        return nnx.state((model, opt)), mstate, loss

    state, mstate, x, y = jax.device_put((state, mon.init(), x, y))
    with jax.transfer_guard("disallow"):
        for _ in range(5):  # recording steps (0, 2, 4) and the others, compiled inside
            state, mstate, _ = step(state, mstate, x, y)
    model, opt = nnx.merge(graphdef, state)
    s = mon.series(mstate, opt.opt_state)
    assert s.layers[0].steps.tolist() == [0, 2, 4] and s.updates[0].steps.tolist() == [0, 2, 4]


# ----------------------------------------------------------------------------------------
# Bad arguments.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "name"),
    [({"every": 0}, "every=0"), ({"capacity": 0}, "capacity=0"), ({"every": 2.5}, "every=2.5"),
     ({"capacity": True}, "capacity=True")],
)  # fmt: skip
def test_bad_every_or_capacity_is_an_input_error_naming_the_value(kw, name):
    with pytest.raises(InputError, match=rf"{name}.*allowed: a whole number >= 1") as e:
        monitor(lambda rngs: MLP(rngs), batch()[0], **kw)
    assert isinstance(e.value, ValueError)


def test_wrong_inputs_or_model_are_input_errors():
    x, y = batch()
    mon = monitor(lambda rngs: MLP(rngs), x, loss=xent)
    model = MLP(nnx.Rngs(0))
    with pytest.raises(InputError, match=r"inputs of shapes \[\(4, 16\)\]; allowed"):
        mon.record(mon.init(), model, x[:4], y[:4])
    with pytest.raises(InputError, match="not those of the monitored model"):
        mon.record(mon.init(), {"w": jnp.ones((3, 3))}, x, y)
    no_loss = monitor(lambda rngs: MLP(rngs), x)
    with pytest.raises(InputError, match="loss=None"):
        no_loss.record(no_loss.init(), model, x, y)
    tx = mon.track_updates(optax.sgd(0.1))
    params = nnx.state(model, nnx.Param)
    with pytest.raises(InputError, match="needs the parameters"):
        tx.update(params, tx.init(params))


# ----------------------------------------------------------------------------------------
# The figure.
# ----------------------------------------------------------------------------------------


def test_plot_draws_every_series(tmp_path):
    x, y = batch()
    mon = monitor(lambda rngs: MLP(rngs), x, loss=xent, every=1, capacity=4)
    model = MLP(nnx.Rngs(1))
    opt = nnx.Optimizer(model, mon.track_updates(optax.sgd(0.1)), wrt=nnx.Param)
    step = nnx_step(mon)
    mstate = mon.init()
    for _ in range(3):
        mstate = step(model, opt, mstate, x, y)
    out = tmp_path / "monitor.png"
    fig = mon.plot(mstate, opt.opt_state, path=str(out))
    assert out.read_bytes()[:4] == b"\x89PNG"
    lines = [len(ax.get_lines()) for ax in fig.axes]
    assert lines == [2, 2, 5, 2]  # 2 layers; ratios forward + backward + the line at 1
    assert plot_series(MonitorSeries([], [])).axes  # nothing recorded: empty panels


# ----------------------------------------------------------------------------------------
# Models check_model handles: scans, BatchNorm (slow).
# ----------------------------------------------------------------------------------------


class Block(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(32, 32, kernel_init=HE, rngs=rngs)

    def __call__(self, x):
        return x + self.a(jax.nn.relu(x))


class Stack(nnx.Module):
    def __init__(self, rngs, n=3):
        @nnx.split_rngs(splits=n)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return Block(rngs)

        self.blocks = make(rngs)
        self.out = nnx.Linear(32, 4, kernel_init=HE, rngs=rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
        def step(block, h):
            return block(h)

        return self.out(step(self.blocks, x))


def test_scanned_layers_get_one_row_per_iteration_equal_to_the_unrolled_computation():
    x = jax.random.normal(jax.random.key(4), (B, 32))
    y = jnp.arange(B) % 4
    mon = monitor(lambda rngs: Stack(rngs), x, loss=xent, every=1, capacity=2)
    model = Stack(nnx.Rngs(5))
    opt = nnx.Optimizer(model, mon.track_updates(optax.sgd(0.1)), wrt=nnx.Param)
    w = model.blocks.a.kernel[...]
    bias = model.blocks.a.bias[...]
    s = mon.series(nnx_step(mon)(model, opt, mon.init(), x, y), opt.opt_state)
    assert [r.path for r in s.layers] == ["blocks/a[0]", "blocks/a[1]", "blocks/a[2]", "out"]
    h = x
    for i in range(3):
        z = jax.nn.relu(h) @ w[i]
        np.testing.assert_allclose(s.layers[i].y_m2[0], jnp.mean(z * z), rtol=1e-5)
        h = h + z + bias[i][None]
    assert [u.path for u in s.updates] == ["blocks/a", "out"]  # the stacked kernel as one


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["nnx", "linen"])
def test_resnet_with_batchnorm_trains_and_records(framework):
    x = jax.random.normal(jax.random.key(1), (8, 16, 16, 3))
    y = jnp.arange(8) % 10
    if framework == "nnx":
        mon = monitor(lambda rngs: example_models.resnet(rngs=rngs), x, loss=xent, every=2)
        model = example_models.resnet(rngs=nnx.Rngs(3))
        opt = nnx.Optimizer(model, mon.track_updates(optax.adam(1e-3)), wrt=nnx.Param)

        @nnx.jit
        def step(model, opt, mstate, x, y):
            mstate = mon.record(mstate, model, x, y)
            grads = nnx.grad(lambda m: xent(m(x), y))(model)
            opt.update(model, grads)
            return mstate

        mstate = mon.init()
        with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes int and float
            for _ in range(5):
                mstate = step(model, opt, mstate, x, y)
        s = mon.series(mstate, opt.opt_state)
    else:
        model = example_models.resnet_linen()
        mon = monitor(model, x, loss=xent, every=2)
        variables = model.init(jax.random.key(3), x, train=False)
        tx = mon.track_updates(optax.adam(1e-3))
        opt_state = tx.init(variables["params"])

        @jax.jit
        def lstep(variables, opt_state, mstate, x, y):
            mstate = mon.record(mstate, variables, x, y)

            def lf(p):
                out, new = model.apply(
                    {**variables, "params": p}, x, train=True, mutable=["batch_stats"]
                )
                return xent(out, y), new

            grads, new = jax.grad(lf, has_aux=True)(variables["params"])
            updates, opt_state = tx.update(grads, opt_state, variables["params"])
            params = optax.apply_updates(variables["params"], updates)
            return {"params": params, **new}, opt_state, mstate

        mstate = mon.init()
        with jax.numpy_dtype_promotion("standard"):
            for _ in range(5):
                variables, opt_state, mstate = lstep(variables, opt_state, mstate, x, y)
        s = mon.series(mstate, opt_state)
    assert all(r.steps.tolist() == [0, 2, 4] for r in s.layers)
    first = s.layers[0]
    assert abs(first.forward_ratio[0] - 1) < 0.2  # the stem conv's He law at init
    assert all(np.all(np.isfinite(u.ratio)) for u in s.updates)
