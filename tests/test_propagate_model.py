"""Predicting a model's second moments from its jaxpr (varprop/_src/model/propagate.py):
rules against independent computations, and whole models against measurement."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import integrate

import varprop
from varprop._src.model.propagate import _dot_general
from varprop.laws import propagate_model


def test_dot_general_in_numpy_is_laxs():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 3, 4, 5))
    b = rng.standard_normal((2, 5, 6, 4))
    dims = (((2, 3), (3, 1)), ((0,), (0,)))
    want = np.asarray(jax.lax.dot_general(jnp.asarray(a), jnp.asarray(b), dims))
    np.testing.assert_allclose(_dot_general(a, b, dims), want, rtol=1e-5)


class _MLP(nnx.Module):
    def __init__(self, act, *, rngs: nnx.Rngs, width: int = 64):
        he = jax.nn.initializers.he_normal()
        self.l1 = nnx.Linear(width, width, kernel_init=he, rngs=rngs)
        self.l2 = nnx.Linear(width, width, kernel_init=he, rngs=rngs)
        self.act = act

    def __call__(self, x):
        return self.l2(self.act(self.l1(x)))


X = jax.ShapeDtypeStruct((16, 64), jnp.float32)  # standard normal data


def test_relu_mlp_is_the_he_law():
    """He normal at fan 64 on standard normal data: E[y1^2] = 2, E[relu^2] = 1, E[y2^2] = 2.
    Backward from E[(dL/d out)^2] = 1: through l2, (2/64) 64 = 2; through relu, half of it
    (relu'(y)^2 = 1 on half the values), so through l1 (2/64) 64 (2/2) = 2."""
    p = propagate_model(lambda rngs: _MLP(jax.nn.relu, rngs=rngs), X)
    assert p.get("l1").predicted == pytest.approx(2.0, rel=1e-9)
    assert p.get("l1").how == "exact"
    # Gauss-Hermite on relu's kink: 48 nodes are good to ~1e-3.
    assert p.get("l2").predicted == pytest.approx(2.0, rel=3e-3)
    assert p.get("l2").how == "mean-field"
    assert p.get("l2", "backward").predicted == pytest.approx(2.0, rel=1e-9)
    assert p.get("l1", "backward").predicted == pytest.approx(2.0, rel=3e-3)


def test_gelu_is_one_function_of_its_input():
    """jax.nn.gelu is x * Phi(x) (several ops on the same value): E[gelu(z)^2] for z ~ N(0, 2),
    integrated here with scipy, not x^2 times Phi^2 as if the factors were independent."""

    def gelu_exact(x):
        return jax.nn.gelu(x, approximate=False)

    p = propagate_model(lambda rngs: _MLP(gelu_exact, rngs=rngs), X)
    q = 2.0
    dens = lambda z: math.exp(-z * z / (2 * q)) / math.sqrt(2 * math.pi * q)  # noqa: E731
    g2 = integrate.quad(
        lambda z: (z * 0.5 * (1 + math.erf(z / math.sqrt(2)))) ** 2 * dens(z), -40, 40
    )[0]
    assert p.get("l2").predicted == pytest.approx(2.0 / 64 * 64 * g2, rel=1e-6)


def test_an_op_without_a_rule_makes_what_follows_unknown():
    class Sorted(nnx.Module):
        def __init__(self, *, rngs):
            self.l1 = nnx.Linear(64, 64, rngs=rngs)
            self.l2 = nnx.Linear(64, 64, rngs=rngs)

        def __call__(self, x):
            return self.l2(jnp.cumprod(self.l1(x), axis=-1))

    p = propagate_model(lambda rngs: Sorted(rngs=rngs), X)
    assert p.get("l1").predicted is not None
    assert (p.get("l2").predicted, p.get("l2").how) == (None, "unknown")


def _agree_with_measurement(model, x, seeds=8, only=lambda path, direction: True):
    """Every predicted forward row against check_model's measured seed mean: within 10%
    (the issue's bar) plus three standard errors of the measurement (from its interval)."""
    pred = propagate_model(model, x)
    r = varprop.check_model(model, x, seeds=seeds, max_seeds=seeds)
    rows = {(row.path, row.direction): row for row in r.layers}
    checked = 0
    for p in pred.rows:
        m = rows.get((p.path, p.direction))
        if m is None or m.measured is None or p.predicted is None or m.measured == 0:
            continue
        if not only(p.path, p.direction):
            continue
        se = 0.0
        if m.ratio_low is not None and m.ratio_high is not None and m.ratio:
            se = (m.ratio_high - m.ratio_low) / (2 * 1.96) / m.ratio
        assert abs(p.predicted / m.measured - 1) <= 0.1 + 3 * se, (p, m.measured, se)
        checked += 1
    return pred, checked


class _BatchNormMLP(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(64, 128, rngs=rngs)
        self.bn = nnx.BatchNorm(128, rngs=rngs)
        self.l2 = nnx.Linear(128, 128, rngs=rngs)
        self.l3 = nnx.Linear(128, 64, rngs=rngs)

    def __call__(self, x):
        return self.l3(jax.nn.relu(self.l2(jax.nn.relu(self.bn(self.l1(x))))))


def test_batchnorm_mlp_is_predicted_both_ways():
    x = jax.random.normal(jax.random.key(2), (256, 64))
    pred, checked = _agree_with_measurement(lambda rngs: _BatchNormMLP(rngs=rngs), x, seeds=4)
    assert checked == 7  # 3 layers forward and backward, and the BatchNorm
    assert {r.direction for r in pred.rows} == {"forward", "backward"}


@pytest.mark.slow
def test_resnet_with_batchnorm_is_predicted_within_ten_percent_both_ways():
    from varprop import example_models

    x = jax.random.normal(jax.random.key(0), (16, 32, 32, 3))
    pred, checked = _agree_with_measurement(lambda rngs: example_models.resnet(rngs=rngs), x)
    # 13 forward rows and 7 backward; the zero-gamma BatchNorms and the branches behind
    # them are exactly 0 (no ratio).
    assert checked >= 14
    assert all(r.predicted is not None for r in pred.rows)


@pytest.mark.slow
def test_transformer_first_block_is_predicted_within_ten_percent():
    """The embeddings and the first block (attention over uncorrelated positions: the
    softmax of small logits averages E[v^2] down by the mask's mixing factor). After it,
    positions share what attention averaged, and the independence rule under-predicts the
    next attention's output (0.14 against 0.42 measured): not yet modelled."""
    from varprop import example_models

    x = jax.random.randint(jax.random.key(0), (8, 64), 0, 256)
    pred, checked = _agree_with_measurement(
        lambda rngs: example_models.transformer(rngs=rngs),
        x,
        only=lambda path, d: d == "forward" and ("embed" in path or path.startswith("blocks/0/")),
    )
    assert checked >= 9
    assert all(r.predicted is not None for r in pred.rows if r.direction == "forward")


def test_the_first_non_finite_layer_is_predicted_within_one_layer():
    """Standard normal weights (normal(1.0)) on 45 relu layers of width 256: E[y^2] grows
    128-fold per layer, in float64 in the propagation; the real float32 forward overflows
    where the predicted root mean square passes float32's maximum, or a layer earlier (its
    largest values)."""
    width, depth = 256, 45
    std = jax.nn.initializers.normal(1.0)

    def deep(rngs):
        layers = []
        for _ in range(depth):
            layers += [nnx.Linear(width, width, kernel_init=std, use_bias=False, rngs=rngs)]
            layers += [jax.nn.relu]
        return nnx.Sequential(*layers)

    x = jax.random.normal(jax.random.key(0), (64, width))
    row = propagate_model(deep, x).first_nonfinite()
    assert row is not None
    predicted = int(row.path.split("/")[1]) // 2
    for seed in range(3):
        model, h, first = deep(nnx.Rngs(seed)), x, None
        for i, layer in enumerate(model.layers):
            h = layer(h)
            if not bool(jnp.all(jnp.isfinite(h))):
                first = i // 2
                break
        assert first is not None and abs(first - predicted) <= 1, (seed, first, predicted)
    healthy = propagate_model(lambda rngs: _MLP(jax.nn.relu, rngs=rngs), X)
    assert healthy.first_nonfinite() is None


class _Block(nnx.Module):
    def __init__(self, rngs):
        self.l = nnx.Linear(64, 64, kernel_init=jax.nn.initializers.he_normal(), rngs=rngs)

    def __call__(self, x):
        return x + 0.5 * self.l(jax.nn.relu(x))


class _Scanned(nnx.Module):
    def __init__(self, rngs, depth=6):
        @nnx.split_rngs(splits=depth)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return _Block(rngs)

        self.blocks = make(rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
        def step(block, x):
            return block(x)

        return step(self.blocks, x)


class _Unrolled(nnx.Module):
    def __init__(self, rngs, depth=6):
        self.blocks = nnx.List([_Block(rngs) for _ in range(depth)])

    def __call__(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def test_a_scan_is_unrolled_and_predicted_as_the_unrolled_model():
    """Six residual blocks under nnx.scan: one row per iteration (``blocks/l[3]``), equal to
    the same blocks written as a Python loop."""
    x = jax.ShapeDtypeStruct((32, 64), jnp.float32)  # standard normal data
    scanned = propagate_model(lambda rngs: _Scanned(rngs), x)
    unrolled = propagate_model(lambda rngs: _Unrolled(rngs), x)
    for i in range(6):
        for d in ("forward", "backward"):
            a = scanned.get(f"blocks/l[{i}]", d).predicted
            b = unrolled.get(f"blocks/{i}/l", d).predicted
            assert a == pytest.approx(b, rel=1e-9), (i, d)
    # The first block's layer reads relu of standard normal data (E = 1/2) with He weights:
    # E[y^2] = (2/64) 64 (1/2) = 1, to the quadrature's error on relu's kink.
    assert scanned.get("blocks/l[0]").predicted == pytest.approx(1.0, rel=3e-3)


class _VmapStack(nnx.Module):
    """Blocks created by ``nnx.vmap`` (stacked weights, one initializer call per slice)."""

    def __init__(self, rngs, n=3, d=32):
        @nnx.split_rngs(splits=n)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return nnx.Linear(d, d, kernel_init=jax.nn.initializers.he_normal(), rngs=rngs)

        self.blocks = make(rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
        def step(block, h):
            return h + block(jax.nn.relu(h))

        return step(self.blocks, x)


def _linen_cases():
    import functools

    import flax.linen as nn

    class Wrapped(nn.Module):
        """Initializers behind Flax's partitioning wrapper and functools.partial."""

        @nn.compact
        def __call__(self, x):
            part = nn.with_logical_partitioning(nn.initializers.he_normal(), ("a", "b"))
            x = nn.relu(nn.Dense(32, kernel_init=part)(x))
            vs = functools.partial(nn.initializers.variance_scaling, mode="fan_avg")
            return nn.Dense(8, kernel_init=vs(1.0, distribution="uniform"))(x)

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            return x + nn.Dense(16, kernel_init=nn.initializers.he_normal())(nn.relu(x)), None

    class Scanned(nn.Module):
        """Blocks under linen.scan (stacked parameters, one call per slice)."""

        @nn.compact
        def __call__(self, x):
            scan = nn.scan(
                Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=3
            )
            return scan(name="blocks")(x, None)[0]

    return {"linen_wrapped": Wrapped(), "linen_scan": Scanned()}


def _traced_init_case(name):
    from varprop import example_models as em

    if name.startswith("linen_"):
        return _linen_cases()[name], jnp.ones((4, 16))

    images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    tokens = jnp.ones((4, 16), jnp.int32)
    return {
        "resnet_linen": (em.resnet_linen(), images),
        "transformer_linen": (em.transformer_linen(), tokens),
        "resnet": (lambda rngs: em.resnet(rngs=rngs), images),
        "transformer": (lambda rngs: em.transformer(rngs=rngs), tokens),
        "mobilenet": (lambda rngs: em.mobilenet(rngs=rngs), images),
        "nnx_vmap_stack": (lambda rngs: _VmapStack(rngs), jnp.ones((4, 32))),
    }[name]


@pytest.mark.parametrize(
    "name",
    [
        "resnet_linen",
        "transformer_linen",
        "linen_wrapped",
        "linen_scan",
        "resnet",
        "transformer",
        "mobilenet",
        "nnx_vmap_stack",
    ],
)
def test_a_traced_init_predicts_what_a_run_init_does(name, monkeypatch):
    # propagate_model traces the init (Linen's init, an NNX factory) instead of running it
    # (no XLA program) and computes only the non-layer parameters from its jaxpr: the
    # predictions must be those of the init run for real, to float rounding.
    from varprop._src.model import expected

    model, x = _traced_init_case(name)
    traced = propagate_model(model, x)
    real_trace = expected.trace_model
    monkeypatch.setattr(
        expected,
        "trace_model",
        lambda *a, **k: real_trace(*a, **{**k, "abstract": False}),
    )
    run = propagate_model(model, x)
    assert [r.path for r in traced.rows] == [r.path for r in run.rows]
    assert any(r.how != "no law" for r in run.rows)
    for a, b in zip(traced.rows, run.rows, strict=True):
        assert a.how == b.how, a.path
        if b.predicted is None:
            assert a.predicted is None, a.path
        else:
            assert a.predicted == pytest.approx(b.predicted, rel=1e-9), (a.path, a.direction)


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_data_shares_only_what_its_pairs_share(offset):
    # An average over positions keeps c, E[x_i x_j] of two distinct elements of a feature.
    # Data drawn iid has c = 0 (the squared sample mean over 16 examples, about 1/16, is
    # noise, not a shared part); a per-feature offset s shared by every element has c = s^2.
    # After the mean over T positions and a lecun-normal Linear: E[y^2] = 1/T + s^2 (the
    # offset's own variance, 0, plus the iid part's 1/T).
    b, t, d = 16, 32, 64
    x = jax.random.normal(jax.random.key(0), (b, t, d)) + offset

    class M(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(d, d, rngs=rngs)

        def __call__(self, x):
            return self.lin(jnp.mean(x, axis=1))

    p = propagate_model(lambda rngs: M(rngs), x).get("lin")
    # The sample's own moments: E[x^2] and the pairs' mean over this draw.
    x64 = np.asarray(x, np.float64)
    m2 = float(np.mean(x64**2))
    n = b * t
    s = x64.sum(axis=(0, 1))
    c = float(np.mean((s**2 - (x64**2).sum(axis=(0, 1))) / (n * (n - 1))))
    want = m2 / t + (1 - 1 / t) * c
    assert p.predicted == pytest.approx(want, rel=1e-6)
    # Against the population value: 4 standard errors of the two estimates over n elements
    # of d features (E[x^2]: Var = 2(1 + 2s^2)/(n d); the pair statistic: about
    # (4 s^2 / n + 2 / n^2) / d), the first scaled by 1/t.
    se_m2 = np.sqrt(2 * (1 + 2 * offset**2) / (n * d)) / t
    se_c = np.sqrt((4 * offset**2 / n + 2 / n**2) / d)
    assert p.predicted == pytest.approx(1 / t + offset**2, abs=4 * (se_m2 + se_c))
