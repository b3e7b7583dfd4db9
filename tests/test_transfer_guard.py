"""No host round-trip inside the checkers' jitted programs.

The probes of :func:`varprop.check` (a varprop MLP) and :func:`varprop.check_model` (a
Flax model) are single jitted programs over the seeds. Run under
``jax.transfer_guard("disallow")`` with their arguments already on the device, any implicit
transfer inside them (a host constant pulled in at run time, a value read back to the host
mid-program) raises; and their jaxprs may hold no host callback. The monitor's step and the
width sweep have the same test in ``test_monitor.py`` and ``test_sweep_multidevice.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import varprop
from varprop import example_models
from varprop._src import initializers as I
from varprop._src.core.network import make_network
from varprop._src.model.expected import trace_model
from varprop._src.model.probe import make_model_probe, model_args
from varprop._src.probe import make_probe

CALLBACKS = ("callback", "io_callback", "pure_callback", "debug_callback", "debug_print")


def _primitive_names(jaxpr) -> set[str]:
    """Every primitive in a (closed) jaxpr, sub-jaxprs (scan, cond, pjit, custom_vjp) too."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    names: set[str] = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    names |= _primitive_names(sub)
    return names


def _run_guarded(program, *args):
    """``program(*args)`` with every argument on the device and every implicit transfer
    refused, its first call (the compile) included; the result stays on the device."""
    args = jax.device_put(args)
    with jax.transfer_guard("disallow"):
        out = program(*args)
        jax.block_until_ready(out)
    return out


def test_the_primitive_scan_sees_a_callback():
    """The jaxpr walk finds a callback nested in a jitted scan (so its silence below means
    something)."""

    def f(x):
        def body(c, _):
            jax.debug.callback(lambda v: None, c)
            return c + 1.0, None

        return jax.jit(lambda x: jax.lax.scan(body, x, None, length=2)[0])(x)

    names = _primitive_names(jax.make_jaxpr(f)(1.0))
    assert any(n in CALLBACKS for n in names), names


@pytest.mark.parametrize(
    "init, data",
    [(I.he_normal(), False), (I.he_normal(), True), (I.orthogonal(), False)],
    ids=["gaussian-inputs", "data-rows", "orthogonal-own-programs"],
)
def test_mlp_probe_runs_on_the_device_alone(init, data):
    net = make_network((16, 32, 32, 4), "relu", init)
    probe = make_probe(net, batch=8)
    keys = jax.random.split(jax.random.key(0), 3)
    rows = jax.random.normal(jax.random.key(1), (40, 16)) if data else None
    stats = _run_guarded(probe, keys, rows)
    assert np.all(np.isfinite(np.asarray(stats.forward.z_lm2)))


def test_varprop_has_no_host_callback():
    """The MLP probe's programs carry XLA options, which ``make_jaxpr`` refuses on a nested
    jit; that no callback is in them is checked at the source: varprop calls none."""
    root = Path(varprop.__file__).parent
    found = [
        f"{path.relative_to(root)}:{i}"
        for path in sorted(root.rglob("*.py"))
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\b(pure_callback|io_callback|debug\.callback|debug\.print)\b", line)
    ]
    assert found == []


_TRACE = {"variables": None, "mode": "train", "call_kwargs": None, "rngs": None}


class _LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.relu(nn.Conv(8, (3, 3), strides=2)(x))
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.Dropout(0.1, deterministic=not train)(x)
        return nn.Dense(3)(x.mean(axis=(1, 2)))


@pytest.mark.parametrize("api", ["nnx-resnet", "linen-cnn"])
def test_model_probe_runs_on_the_device_alone(api):
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    if api == "nnx-resnet":
        model = lambda rngs: example_models.resnet(stage_sizes=(1, 1), width=8, rngs=rngs)  # noqa: E731
        mf, found = trace_model(model, (x,), **_TRACE)
    else:
        mf, found = trace_model(_LinenCNN(), (x,), **_TRACE)
    assert mf.redrawable
    probe = make_model_probe(mf, found, model_args(x, jax.random.key(0)), redraw=True)
    keys = jax.random.split(jax.random.key(2), 2)
    stats = _run_guarded(probe, keys)
    leaves = jax.tree_util.tree_leaves(stats)
    assert leaves and all(isinstance(v, jax.Array) for v in leaves)
    assert not set(CALLBACKS) & _primitive_names(jax.make_jaxpr(probe)(keys))


def test_model_probe_with_fresh_batches_and_a_loss_runs_on_the_device_alone():
    """A callable ``inputs`` (a batch drawn per seed) and a user loss, inside the program."""

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(6, 16, rngs=rngs)
            self.b = nnx.Linear(16, 3, rngs=rngs)

        def __call__(self, x):
            return self.b(jnp.tanh(self.a(x)))

    def inputs(key):
        return jax.random.normal(key, (8, 6))

    mf, found = trace_model(lambda rngs: Net(rngs), model_args(inputs, jax.random.key(0)), **_TRACE)
    probe = make_model_probe(mf, found, inputs, redraw=True, loss=lambda out: jnp.mean(out**2))
    keys = jax.random.split(jax.random.key(3), 2)
    _run_guarded(probe, keys)
    assert not set(CALLBACKS) & _primitive_names(jax.make_jaxpr(probe)(keys))
