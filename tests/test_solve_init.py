"""Scales solved from a model's propagation (varprop.solve_init) and drawn into a copy
(varprop.apply_init): against the closed forms of He and of the backward rule, and checked
by check_model."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import varprop
from varprop._src.errors import InputError

X = jax.ShapeDtypeStruct((32, 64), jnp.float32)  # standard normal data


class _Deep(nnx.Module):
    """A ReLU MLP, widths 64 -> 128 -> 96 -> ... (Flax's default lecun_normal init)."""

    def __init__(self, widths, *, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(widths)])

    def __call__(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = jax.nn.relu(x)
        return x


WIDTHS = (64, 128, 96, 80)


def _variances(inits) -> list[float]:
    # normal(stddev): Var(w) = stddev^2 whatever the fans.
    return [inits[f"layers/{i}"].scheme.variance_for_fans(1, 1) for i in range(len(WIDTHS) - 1)]


def test_forward_target_is_he_for_a_relu_mlp():
    """E[y^2] = 1 everywhere: the first layer reads standard normal data, Var = 1/64; the
    others read relu of a unit-variance Gaussian (E = 1/2), Var = 2/fan_in (He)."""
    inits = varprop.solve_init(lambda rngs: _Deep(WIDTHS, rngs=rngs), X)
    want = [1 / 64, 2 / 128, 2 / 96]
    np.testing.assert_allclose(_variances(inits), want, rtol=3e-3)  # quadrature on the kink


def test_backward_target_is_the_fan_out_rule():
    """E[(dL/dx)^2] = 1 everywhere for E[(dL/d out)^2] = 1: the last layer Var = 1/fan_out;
    the others see relu' (1 on half the values), Var = 2/fan_out."""
    inits = varprop.solve_init(lambda rngs: _Deep(WIDTHS, rngs=rngs), X, target="backward")
    want = [2 / 128, 2 / 96, 1 / 80]
    np.testing.assert_allclose(_variances(inits), want, rtol=3e-3)


def test_both_is_the_geometric_mean():
    model = lambda rngs: _Deep(WIDTHS, rngs=rngs)  # noqa: E731
    f = _variances(varprop.solve_init(model, X))
    b = _variances(varprop.solve_init(model, X, target="backward"))
    both = _variances(varprop.solve_init(model, X, target="both"))
    np.testing.assert_allclose(both, [math.sqrt(x * y) for x, y in zip(f, b, strict=True)])


def test_bad_arguments_are_named():
    with pytest.raises(InputError, match="target='sideways'"):
        varprop.solve_init(lambda rngs: _Deep(WIDTHS, rngs=rngs), X, target="sideways")
    with pytest.raises(InputError, match="residual='skipinit'"):
        varprop.solve_init(lambda rngs: _Deep(WIDTHS, rngs=rngs), X, residual="skipinit")


def test_apply_init_draws_a_copy():
    model = _Deep(WIDTHS, rngs=nnx.Rngs(0))
    before = np.asarray(model.layers[0].kernel[...]).copy()
    inits = {"layers/0": varprop.initializers.normal(0.5)}
    new = varprop.apply_init(model, inits, jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(model.layers[0].kernel[...]), before)
    w = np.asarray(new.layers[0].kernel[...])
    # 64 x 128 draws: the sample variance's relative standard error is sqrt(2/8192) = 1.6%.
    assert np.var(w) == pytest.approx(0.25, rel=5 * math.sqrt(2 / w.size))
    np.testing.assert_array_equal(
        np.asarray(new.layers[1].kernel[...]), np.asarray(model.layers[1].kernel[...])
    )
    with pytest.raises(InputError, match="no layer 'nope'"):
        varprop.apply_init(model, {"nope": varprop.initializers.normal(1.0)}, jax.random.key(0))


def test_apply_init_on_linen_variables():
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(16)(nn.relu(nn.Dense(256)(x)))

    variables = Net().init(jax.random.key(0), jnp.ones((1, 64)))
    new = varprop.apply_init(
        variables, {"Dense_0": varprop.initializers.normal(2.0)}, jax.random.key(1)
    )
    w = np.asarray(new["params"]["Dense_0"]["kernel"])
    assert np.var(w) == pytest.approx(4.0, rel=5 * math.sqrt(2 / w.size))
    np.testing.assert_array_equal(
        np.asarray(new["params"]["Dense_1"]["kernel"]),
        np.asarray(variables["params"]["Dense_1"]["kernel"]),
    )


def test_a_deep_net_with_solved_scales_is_healthy_where_flax_default_is_not():
    """20 ReLU layers of width 128: Flax's default (LeCun) halves E[y^2] per layer; the
    solved scales keep it. check_model tests the weights as drawn against the solved laws."""
    widths = (64,) + (128,) * 20
    factory = lambda rngs: _Deep(widths, rngs=rngs)  # noqa: E731
    x = jax.random.normal(jax.random.key(3), (256, 64))
    default = varprop.check_model(factory, x, seeds=2, max_seeds=2)
    assert default.health["forward"]["state"] == "vanishing"
    inits = varprop.solve_init(factory, x)
    solved = varprop.apply_init(factory(nnx.Rngs(0)), inits, jax.random.key(4))
    r = varprop.check_model(solved, x, expect=inits)
    assert r.health["forward"]["state"] == "preserved"
    assert r.verdict != "disagrees"
    # One draw as given: the spread across units alone (a few rows stay inconclusive).
    assert sum(row.verdict == "agrees" for row in r.layers) >= 10


# -- The example families, deeper: Flax's default against the solved scales --------------
#
# Each solved init is checked through a factory that builds the model and redraws the
# solved layers (apply_init inside the factory): check_model sees those initializer calls
# while it builds, so every seed redraws the solved scales, tested against expect=inits.


class _PlainCNN(nnx.Module):
    """``depth`` SAME 3x3 convs with ReLU, no normalization, global average pool, head."""

    def __init__(self, depth, width, *, kernel_init=None, rngs: nnx.Rngs):
        kw = {} if kernel_init is None else {"kernel_init": kernel_init}
        chans = (4,) + (width,) * depth
        self.convs = nnx.List(
            [
                nnx.Conv(a, b, (3, 3), padding="SAME", rngs=rngs, **kw)
                for a, b in itertools.pairwise(chans)
            ]
        )
        self.head = nnx.Linear(width, 10, rngs=rngs, **kw)

    def __call__(self, x):
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        return self.head(x.mean(axis=(1, 2)))


def _solved(base, inits):
    return lambda rngs: varprop.apply_init(base(rngs), inits, rngs.params())


def _no_disagreement(r):
    bad = [(row.path, row.direction, row.ratio) for row in r.layers if row.verdict == "disagrees"]
    assert not bad, (bad, r.diagnosis)


def test_deep_plain_cnn_solved_forward_is_preserved_where_lecun_vanishes():
    """8 ReLU convs: LeCun (Flax's default) keeps n Var(w) = 1 and the ReLU halves E[y^2]
    per layer, 0.5^7 = 0.008 over the 7 same-shape steps; the forward solve is He's rule
    (the first conv reads unit data, the head the pool) and keeps E[y^2] = 1. With 4 seeds
    of an 8 x 8 x 8 batch some narrow rows stay inconclusive; none may disagree."""
    base = lambda rngs: _PlainCNN(8, 16, rngs=rngs)  # noqa: E731
    x = jax.random.normal(jax.random.key(0), (8, 8, 8, 4))
    default = varprop.check_model(base, x, seeds=2, max_seeds=2)  # the health alone
    assert default.health["forward"]["state"] == "vanishing"
    assert default.health["forward"]["change"] < 0.03
    inits = varprop.solve_init(base, x)
    r = varprop.check_model(_solved(base, inits), x, expect=inits, seeds=4, max_seeds=4)
    _no_disagreement(r)
    assert sum(row.verdict == "agrees" for row in r.layers) >= 3  # the rest inconclusive
    assert r.health["forward"]["state"] == "preserved"
    assert r.health["backward"]["state"] == "preserved"
    assert 0.5 < r.health["forward"]["change"] < 2


@pytest.mark.slow
def test_deep_plain_cnn_solved_backward_keeps_the_gradient():
    """The backward solve on a 10-conv net keeps E[(dL/dx)^2] from the head down."""
    base = lambda rngs: _PlainCNN(10, 16, rngs=rngs)  # noqa: E731
    x = jax.random.normal(jax.random.key(0), (8, 8, 8, 4))
    inits = varprop.solve_init(base, x, target="backward")
    r = varprop.check_model(_solved(base, inits), x, expect=inits, seeds=4, max_seeds=8)
    _no_disagreement(r)
    assert r.health["backward"]["state"] == "preserved"
    assert 0.5 < r.health["backward"]["change"] < 2


def _resnet(kernel_init=None):
    from varprop import example_models as em

    return lambda rngs: em.resnet(  # 8 basic blocks, no BatchNorm
        norm=False, stage_sizes=(4, 4), width=8, kernel_init=kernel_init, rngs=rngs
    )


@pytest.mark.slow
def test_deep_resnet_without_norm_solved_forward_is_preserved_where_he_explodes():
    """He-normal kernels in 8 un-normalized basic blocks: each branch adds about as much as
    the stream holds, so E[y^2] roughly doubles per block (exploding both ways). The forward
    solve gives every conv E[y^2] = 1 whatever the stream it reads."""
    x = jax.random.normal(jax.random.key(0), (8, 12, 12, 3))
    he = varprop.check_model(_resnet(varprop.initializers.he_normal()), x, seeds=4, max_seeds=4)
    assert he.health["forward"]["state"] == "exploding"
    assert he.health["backward"]["state"] == "exploding"
    inits = varprop.solve_init(_resnet(), x)
    r = varprop.check_model(_solved(_resnet(), inits), x, expect=inits, seeds=4, max_seeds=4)
    _no_disagreement(r)
    assert r.health["forward"]["state"] == "preserved"
    assert r.health["backward"]["state"] == "preserved"


@pytest.mark.slow
def test_deep_resnet_fixup_starts_as_the_skip_path():
    """Fixup: every block's conv2 is 0, so the stream is the skip path (every merge row
    measures what the block received) and no row disagrees. check_model's health counts
    the zero conv2 outputs as a death (it leaves out zero rows only for zero norm scales),
    so the health is not asserted here."""
    x = jax.random.normal(jax.random.key(0), (8, 12, 12, 3))
    inits = varprop.solve_init(_resnet(), x, residual="fixup")
    r = varprop.check_model(_solved(_resnet(), inits), x, expect=inits, seeds=4, max_seeds=4)
    _no_disagreement(r)
    conv2 = [
        row
        for row in r.layers
        if row.kind == "conv" and row.path.endswith("conv2") and row.direction == "forward"
    ]
    assert len(conv2) == 8 and all(row.measured == 0 for row in conv2)
    stream = [
        row.measured
        for row in r.layers
        if row.direction == "forward" and row.path.startswith("skip + blocks/")
    ]
    assert len(stream) == 7  # the identity-shortcut blocks (blocks/4 projects)
    assert max(stream) / min(stream) < 1.5


@pytest.mark.slow
def test_deep_mobilenet_solved_forward_is_preserved_where_lecun_vanishes():
    """8 inverted residuals with BatchNorm: under LeCun the 1x1 projections read relu6 of
    the depthwise output and the stem/expand stack shrinks E[y^2] by orders of magnitude;
    the forward solve keeps every conv's output at 1."""
    from varprop import example_models as em

    blocks = ((16, 1),) * 4 + ((24, 2),) + ((24, 1),) * 3
    base = lambda rngs: em.mobilenet(blocks=blocks, rngs=rngs)  # noqa: E731
    x = jax.random.normal(jax.random.key(0), (8, 12, 12, 3))
    default = varprop.check_model(base, x, seeds=4, max_seeds=4)
    assert default.health["forward"]["state"] == "vanishing"
    inits = varprop.solve_init(base, x)
    r = varprop.check_model(_solved(base, inits), x, expect=inits, seeds=4, max_seeds=4)
    _no_disagreement(r)
    assert r.health["forward"]["state"] == "preserved"
