"""Normalizations and dropout in a traced model: found by their arithmetic, and their own
forward laws tested given the actual input (varprop/_src/model/tails.py)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import varprop
from varprop._src.model.rows import _dropout_row
from varprop._src.model.tails import DropoutSite
from varprop._src.model.trace import find_layers

KEY = jax.random.key(0)


def _found(fn, params, x):
    return find_layers(fn, params, x)


def _dense_then(tail):
    """params -> dense -> tail(y, params)."""

    def fn(p, x):
        return tail(x @ p["w"], p)

    return fn


P = {"w": jnp.ones((8, 16)), "g": jnp.ones((1, 16)), "b": jnp.zeros((1, 16))}
X = jnp.ones((32, 8))


def _mean_var(y, axes):
    m = jnp.mean(y, axis=axes, keepdims=True)
    return m, jnp.mean(jnp.square(y - m), axis=axes, keepdims=True)


def test_a_handwritten_batchnorm_with_sqrt_and_div_is_found():
    def tail(y, p):
        m, v = _mean_var(y, 0)
        return (y - m) / jnp.sqrt(v + 1e-3) * p["g"] + p["b"]

    (n,) = _found(_dense_then(tail), P, X).norms
    assert (n.mode, n.kind, n.root, n.center is not None) == ("train", "batchnorm", True, True)
    assert n.eps == pytest.approx(1e-3)
    assert n.scale is not None and n.shift is not None


def test_layernorm_and_groupnorm_axes_give_their_kind():
    def ln(y, p):
        m, v = _mean_var(y, -1)
        return (y - m) * jax.lax.rsqrt(v + 1e-6) * p["g"]

    def gn(y, p):
        g = y.reshape(32, 4, 4)
        m, v = _mean_var(g, -1)
        r = jnp.broadcast_to(jax.lax.rsqrt(v + 1e-6), g.shape).reshape(32, 16)
        c = jnp.broadcast_to(m, g.shape).reshape(32, 16)
        return (y - c) * r

    assert [n.kind for n in _found(_dense_then(ln), P, X).norms] == ["layernorm"]
    # GroupNorm's statistics broadcast back to every unit: r has the output's shape.
    assert [n.kind for n in _found(_dense_then(gn), P, X).norms] == ["groupnorm"]


def test_an_l2_normalization_or_a_constant_rsqrt_is_not_a_normalization():
    def l2(y, p):  # a sum, not a mean: no law of a normalization applies
        return y * jax.lax.rsqrt(jnp.sum(y * y, axis=-1, keepdims=True) + 1e-6)

    def scaled(y, p):  # attention-style 1/sqrt(d) with no centering
        return y * jax.lax.rsqrt(jnp.float32(16.0))

    assert _found(_dense_then(l2), P, X).norms == ()
    assert _found(_dense_then(scaled), P, X).norms == ()


def test_dropout_is_found_with_its_keep_and_draws():
    def fn(p, x, key):
        y = x @ p["w"]
        mask = jax.random.bernoulli(key, 0.75, (1, 16))  # shared across the batch
        return jnp.where(mask, y / 0.75, 0.0)

    (d,) = find_layers(fn, P, X, KEY, data=(True, False)).dropouts
    assert d.keep == pytest.approx(0.75)
    assert (d.shape, d.draws) == ((32, 16), 16)


# ----------------------------------------------------------------------------------------
# Rows of check_model.
# ----------------------------------------------------------------------------------------


class _Net(nnx.Module):
    def __init__(self, norm: str, *, rngs: nnx.Rngs, keep_scale: float | None = None):
        self.dense = nnx.Linear(32, 64, rngs=rngs)
        self.norm = norm
        if norm == "batch":
            self.bn = nnx.BatchNorm(64, rngs=rngs)
        elif norm == "layer":
            self.bn = nnx.LayerNorm(64, rngs=rngs)
        self.head = nnx.Linear(64, 64, rngs=rngs)
        self.keep_scale = keep_scale
        self.rngs = rngs

    def __call__(self, x):
        y = self.dense(x)
        if self.norm == "uncentered":  # a "normalization" that forgets to subtract the mean
            v = jnp.var(y, axis=0, keepdims=True)
            y = y * jax.lax.rsqrt(v + 1e-5)
        elif self.norm != "none":
            y = self.bn(y)
        if self.keep_scale is not None:  # dropout with p = 0.5 that rescales by 1/keep_scale
            mask = jax.random.bernoulli(self.rngs.dropout(), 0.5, y.shape)
            y = jnp.where(mask, y / self.keep_scale, 0.0)
        return self.head(jax.nn.relu(y))


def _rows(model, x, kind, **kw):
    r = varprop.check_model(model, x, **kw)
    return r, [row for row in r.layers if row.kind == kind]


XS = jax.random.normal(jax.random.key(1), (64, 32)) * 2.0 + 1.0


@pytest.mark.parametrize(("norm", "kind"), [("batch", "batchnorm"), ("layer", "layernorm")])
def test_train_mode_norm_rows_agree(norm, kind):
    _, rows = _rows(lambda rngs: _Net(norm, rngs=rngs), XS, kind)
    (row,) = rows
    assert row.verdict == "agrees"
    # At init gamma = 1, beta = 0: E[z^2] = v/(v + eps), within float32 rounding of 1.
    assert row.predicted == pytest.approx(1.0, abs=1e-3)
    assert row.ratio == pytest.approx(1.0, abs=1e-4)


def test_eval_mode_batchnorm_row_is_the_input_over_one_plus_eps():
    """At init the running statistics are (0, 1): E[z^2] = E[y^2]/(1 + eps), computed here
    independently from the weights and the input."""
    model = _Net("batch", rngs=nnx.Rngs(3))
    r, (row,) = _rows(model, XS, "batchnorm", mode="eval")
    y = np.asarray(XS, np.float64) @ np.asarray(model.dense.kernel[...], np.float64)
    y += np.asarray(model.dense.bias[...], np.float64)
    assert row.verdict == "agrees"
    assert row.predicted == pytest.approx(np.mean(y * y) / (1 + 1e-5), rel=1e-4)
    assert "does not normalize" in row.note
    assert r.verdict != "disagrees"


def test_a_normalization_without_centering_is_detected():
    """E[z^2] = E[y^2]/(v + eps) > v/(v + eps) when the input has a mean: the train law of
    a normalization fails, and the row says so."""
    r, (row,) = _rows(lambda rngs: _Net("uncentered", rngs=rngs), XS, "batchnorm")
    assert row.verdict == "disagrees"
    assert row.ratio > 1.2
    assert r.verdict == "disagrees"


def test_dropout_rows_agree_and_a_wrong_rescale_is_detected():
    _, (ok,) = _rows(lambda rngs: _Net("none", rngs=rngs, keep_scale=0.5), XS, "dropout")
    assert ok.verdict == "agrees"
    # The rescale says keep = 0.9 while the mask keeps half: E[z^2] = 0.5 E[y^2] / 0.81,
    # the law (keep 0.9) predicts E[y^2]/0.9: ratio 0.9 * 0.5 / 0.81 = 0.556.
    r, (bad,) = _rows(lambda rngs: _Net("none", rngs=rngs, keep_scale=0.9), XS, "dropout")
    assert bad.verdict == "disagrees"
    assert bad.ratio == pytest.approx(0.9 * 0.5 / 0.81, rel=0.05)
    assert r.verdict == "disagrees"


def test_dropout_interval_has_the_variance_of_the_masked_sum():
    """The row's interval half-width over z is the estimator's standard deviation: checked
    against the spread of 2000 masks on a fixed input (its relative standard error
    1/sqrt(2 * 1999) = 1.6%, so 5% is > 3 of them)."""
    rng = np.random.default_rng(0)
    n, keep = 400, 0.7
    u = rng.standard_normal(n) * np.exp(rng.standard_normal(n) / 2)
    ratios = []
    for _ in range(2000):
        z = np.where(rng.random(n) < keep, u / keep, 0.0)
        ratios.append(np.mean(z * z) / (np.mean(u * u) / keep))
    site = DropoutSite(0, (0,), 0, (1,), keep, frozenset(), (n,), n)
    st = {
        "dropout": {
            0: {
                "z_m2": np.array([np.mean(u * u) / keep]),
                "u_m2": np.array([np.mean(u * u)]),
                "u_m4": np.array([np.mean(u**4)]),
            }
        }
    }
    from scipy.stats import norm

    row = _dropout_row(site, st, [], 0.1, 0.05)
    sd = (row.ratio_high - row.ratio_low) / 2 / norm.ppf(0.975)
    assert sd == pytest.approx(np.std(ratios, ddof=1), rel=0.05)
    assert math.isclose(row.ratio, 1.0)
