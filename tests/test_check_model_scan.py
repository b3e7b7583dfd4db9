"""varprop.check_model on models whose blocks run in a ``lax.scan`` over stacked weights
(``nnx.scan``, ``linen.scan``, a plain ``jax.lax.scan``): every layer of the body is tested
at every iteration, one row per (layer, iteration, direction).

The expected ratios of the wrong initializers are computed here from the shapes, and the
scanned model's numbers are compared with those of the same model unrolled (the same
weights, no scan), which the checker measures without any loop. Fixed seeds throughout.
"""

from __future__ import annotations

import json
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import varprop
from varprop._src.model.loops import earlier
from varprop._src.model.trace import find_layers

HE = jax.nn.initializers.he_normal()
L, D = 4, 128


class Block(nnx.Module):
    def __init__(self, rngs, init_a=HE, init_b=HE):
        self.a = nnx.Linear(D, D, kernel_init=init_a, rngs=rngs)
        self.b = nnx.Linear(D, D, kernel_init=init_b, rngs=rngs)

    def __call__(self, x):
        return x + self.b(jax.nn.relu(self.a(jax.nn.relu(x))))


class Stack(nnx.Module):
    """L residual blocks created by ``nnx.vmap`` (stacked weights) and run by ``nnx.scan``."""

    def __init__(self, rngs, init_a=HE, init_b=HE, n=L):
        @nnx.split_rngs(splits=n)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return Block(rngs, init_a, init_b)

        self.blocks = make(rngs)
        self.out = nnx.Linear(D, 64, rngs=rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
        def step(block, h):
            return block(h)

        return self.out(step(self.blocks, x))


class Unrolled(nnx.Module):
    """The same model with its blocks in a list, run one after another."""

    def __init__(self, rngs, n=L):
        self.blocks = nnx.List([Block(rngs) for _ in range(n)])
        self.out = nnx.Linear(D, 64, rngs=rngs)

    def __call__(self, x):
        h = x
        for block in self.blocks:
            h = block(h)
        return self.out(h)


def vectors(key):
    return jax.random.normal(key, (64, D))


def row(result, path, direction):
    (r,) = [x for x in result.layers if x.path == path and x.direction == direction]
    return r


def disagreeing(result):
    return sorted({(r.path, r.direction) for r in result.layers if r.verdict == "disagrees"})


# ----------------------------------------------------------------------------------------
# Where the layers are.
# ----------------------------------------------------------------------------------------


def test_layers_in_a_scan_body_are_found_with_the_fans_of_one_slice():
    def f(p, x):
        def block(h, w):  # w: one slice of each stacked leaf
            return h + jax.nn.relu(h @ w["a"]) @ w["b"], None

        h, _ = jax.lax.scan(block, x @ p["inp"], p["blocks"])

        def recur(h, _):  # p["tied"] is a const of the scan: the same at every step
            return jnp.tanh(h @ p["tied"]), None

        h, _ = jax.lax.scan(recur, h, None, length=3, reverse=True)
        h = jax.lax.while_loop(lambda c: c[0] < 2, lambda c: (c[0] + 1, c[1] @ p["w"]), (0, h))
        return h[1]

    p = {
        "inp": jnp.ones((8, 16)),
        "blocks": {"a": jnp.ones((5, 16, 32)), "b": jnp.ones((5, 32, 16))},
        "tied": jnp.ones((16, 16)),
        "w": jnp.ones((16, 16)),
    }
    found = find_layers(f, p, jnp.ones((2, 8)))
    got = [(s.path, s.w_shape, s.fan_in, s.fan_out, s.tied) for s in found.layers]
    assert got == [
        ("['inp']", (8, 16), 8.0, 16.0, False),
        ("['blocks']['a']", (16, 32), 16.0, 32.0, False),  # the slice's fans, not 5 x 16
        ("['blocks']['b']", (32, 16), 32.0, 16.0, False),
        ("['tied']", (16, 16), 16.0, 16.0, True),
    ]
    inp, a, b, tied = found.layers
    assert [found.iterations(s.eqn) for s in found.layers] == [(), (5,), (5,), (3,)]
    assert [(lp.length, lp.reverse) for lp in found.loops] == [(5, False), (3, True)]
    # Through the carry, a block's input depends on the previous iteration's layers.
    assert a.x_deps == {-1, inp.index, earlier(a.index), earlier(b.index)}
    assert earlier(tied.index) in tied.x_deps
    (merge,) = found.merges  # the residual add in the body, with its branch
    assert merge.right - merge.left == {a.index, b.index}
    assert found.skipped == ("while",)  # still not followed


# ----------------------------------------------------------------------------------------
# The law at every iteration.
# ----------------------------------------------------------------------------------------


def test_nnx_scan_of_dense_blocks_agrees_at_every_iteration():
    r = varprop.check_model(lambda rngs: Stack(rngs), vectors)
    assert r.verdict == "agrees", r.summary()
    for name in ("a", "b"):
        for i in range(L):
            for d in ("forward", "backward"):
                x = row(r, f"blocks/{name}[{i}]", d)
                assert x.verdict == "agrees" and x.iteration == [i], x
                assert x.fan_in == D and x.fan_out == D
    # Rows run in the order of the computation: a[0], b[0], a[1], ...
    order = [x.path for x in r.layers if x.kind == "dense" and x.direction == "forward"]
    assert order == [*[f"blocks/{n}[{i}]" for i in range(L) for n in "ab"], "out"]
    # The previous layer of a block's first layer is the previous block's last one.
    assert row(r, "blocks/b[0] -> blocks/a[1]", "forward").kind == "between"
    assert row(r, f"blocks/b[{L - 1}] -> out", "forward").kind == "between"  # the last one
    assert [x.path for x in r.layers if x.kind == "residual"] == [
        f"skip + blocks/b[{i}]" for i in range(L)
    ]


@pytest.mark.slow
def test_a_wrong_gain_in_the_stacked_initializer_is_named_with_its_iterations():
    """The blocks should be He (``expect``); the second layer's stacked kernel is drawn with
    a quarter of He's variance (scale 0.5 where He's is 2)."""
    quarter = jax.nn.initializers.variance_scaling(0.5, "fan_in", "truncated_normal")
    r = varprop.check_model(
        lambda rngs: Stack(rngs, init_b=quarter), vectors, expect={"blocks/*": "he_normal"}
    )
    assert r.verdict == "disagrees" and r.exit_code() == 1
    expected = sorted((f"blocks/b[{i}]", d) for i in range(L) for d in ("backward", "forward"))
    assert disagreeing(r) == expected
    for path, d in expected:  # He's gain is 2: 0.5 draws a quarter of its variance
        x = row(r, path, d)
        assert x.ratio_low <= 0.25 <= x.ratio_high, x
    assert f"blocks/b[0-{L - 1}] (forward): {L} of {L} iterations disagree" in "\n".join(
        r.diagnosis
    )


class Manual(nnx.Module):
    """A stacked kernel drawn in one call with the stacked shape, run by a plain lax.scan."""

    def __init__(self, rngs, batch_axis=()):
        init = jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal", batch_axis=batch_axis)
        self.w = nnx.Param(init(rngs.params(), (L, D, D)))

    def __call__(self, x):
        def step(h, w):
            return jax.nn.relu(h) @ w, None

        return jax.lax.scan(step, x, self.w[...])[0]


@pytest.mark.slow
def test_an_initializer_called_with_the_stacked_shape_reads_the_stack_as_a_window():
    """Without ``batch_axis`` JAX reads a (L, n, n) kernel's leading axis as a receptive
    field: fan_in L n, so each slice gets 1/L of the variance its own fan-in calls for."""
    inputs = lambda k: jax.random.normal(k, (64, D))  # noqa: E731
    bad = varprop.check_model(lambda rngs: Manual(rngs), inputs)
    assert disagreeing(bad) == sorted(
        (f"w[{i}]", d) for i in range(L) for d in ("backward", "forward")
    )
    for x in bad.layers:
        if x.kind == "dense":
            assert x.ratio_low <= 1 / L <= x.ratio_high, x
    # With batch_axis=(0,) each slice is drawn at its own fans. (varprop does not read a
    # variance_scaling with a batch_axis as a law: He is named with expect.)
    good = varprop.check_model(
        lambda rngs: Manual(rngs, batch_axis=(0,)), inputs, expect={"w": "he_normal"}
    )
    assert good.verdict == "agrees", good.summary()


def test_scanned_and_unrolled_models_measure_the_same_numbers():
    """The same weights, once stacked and scanned, once in a list run one after another:
    every iteration's statistics equal those of the unrolled model's layer (float32)."""
    n = 2  # the unrolled model compiles each block: two are enough
    scanned = Stack(nnx.Rngs(0), n=n)
    unrolled = Unrolled(nnx.Rngs(1), n=n)
    for i, block in enumerate(unrolled.blocks):
        for name in ("a", "b"):
            src, dst = getattr(scanned.blocks, name), getattr(block, name)
            src.bias[...] = src.bias[...].at[i].set(0.1 * (i + 1))  # a mean to carry through
            dst.kernel[...] = src.kernel[...][i]
            dst.bias[...] = src.bias[...][i]
    for name in ("out",):
        for leaf in ("kernel", "bias"):
            v = getattr(getattr(scanned, name), leaf)[...]
            getattr(getattr(unrolled, name), leaf)[...] = v
    x = vectors(jax.random.key(5))
    kw = dict(expect={"*": "he_normal"}, reinit=False)
    rs = varprop.check_model(scanned, x, **kw)
    ru = varprop.check_model(unrolled, x, **kw)
    assert len(rs.layers) == len(ru.layers)
    for i in range(n):
        for name in ("a", "b"):
            for d in ("forward", "backward"):
                s, u = row(rs, f"blocks/{name}[{i}]", d), row(ru, f"blocks/{i}/{name}", d)
                for field in ("measured", "predicted", "border_factor", "ratio"):
                    assert getattr(s, field) == pytest.approx(getattr(u, field), rel=2e-5), (
                        s.path,
                        d,
                        field,
                    )
        s, u = (
            row(rs, f"skip + blocks/b[{i}]", "forward"),
            row(ru, f"skip + blocks/{i}/b", "forward"),
        )
        assert s.measured == pytest.approx(u.measured, rel=2e-5)


def test_weights_shared_by_the_iterations_are_tested_where_the_law_holds():
    """A const of the scan (an RNN's recurrent weights): the input depends on them from the
    second iteration on, the gradient until the last one; those rows are measured."""

    class RNN(nnx.Module):
        def __init__(self, rngs):
            init = jax.nn.initializers.lecun_normal()
            self.w = nnx.Linear(D, D, kernel_init=init, use_bias=False, rngs=rngs)

        def __call__(self, x):
            w = self.w
            return jax.lax.scan(lambda h, _: (jnp.tanh(w(h)), None), x, length=3)[0]

    r = varprop.check_model(lambda rngs: RNN(rngs), lambda k: jax.random.normal(k, (64, D)))
    tested = {(x.path, x.direction) for x in r.layers if x.verdict == "agrees"}
    assert tested == {("w[0]", "forward"), ("w[2]", "backward")}, r.summary()
    assert row(r, "w[1]", "forward").verdict == "measured"
    assert "shared by the iterations" in row(r, "w[0]", "backward").note


class ConvBlock(nn.Module):
    init2: Any = HE

    @nn.compact
    def __call__(self, x, _):
        h = nn.Conv(32, (3, 3), kernel_init=HE, name="conv1")(nn.relu(x))
        h = nn.Conv(32, (3, 3), kernel_init=self.init2, name="conv2")(nn.relu(h))
        return x + h, None


class ConvStack(nn.Module):
    """Three residual conv blocks run by ``linen.scan`` (stacked parameters)."""

    init2: Any = HE
    reverse: bool = False

    @nn.compact
    def __call__(self, x):
        scan = nn.scan(
            ConvBlock,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=3,
            reverse=self.reverse,
        )
        return scan(self.init2, name="blocks")(x, None)[0]


def images(key):
    return jax.random.normal(key, (8, 8, 8, 32))


def test_linen_scan_of_conv_blocks_a_wrong_gain_is_named_with_its_iterations():
    """conv2's stacked kernel has a quarter of He's variance (scale 0.5, He's is 2), in a
    scan run in reverse: the iteration reading slice 2 runs first."""
    quarter = jax.nn.initializers.variance_scaling(0.5, "fan_in", "truncated_normal")
    r = varprop.check_model(
        ConvStack(init2=quarter, reverse=True), images, expect={"blocks/*": "he_normal"}
    )
    assert r.config["framework"] == "linen" and r.config["reinit"] and r.verdict == "disagrees"
    expected = sorted((f"blocks/conv2[{i}]", d) for i in range(3) for d in ("backward", "forward"))
    assert disagreeing(r) == expected
    for i in range(3):
        for d in ("forward", "backward"):
            x = row(r, f"blocks/conv2[{i}]", d)
            assert x.ratio_low <= 0.25 <= x.ratio_high, x
            assert x.fan_in == 9 * 32 and x.border_factor < 1  # a SAME 3x3 on 8x8
            assert row(r, f"blocks/conv1[{i}]", d).verdict == "agrees", r.summary()
    named = {line.split(" (")[0] for line in r.diagnosis if "measured/predicted" in line}
    assert named == {f"blocks/conv2[{i}]" for i in range(3)}  # three: one line each
    order = [x.path for x in r.layers if x.kind == "conv" and x.direction == "forward"]
    assert order == [f"blocks/{n}[{i}]" for i in (2, 1, 0) for n in ("conv1", "conv2")]


@pytest.mark.slow
def test_linen_scan_of_conv_blocks_agrees_at_every_iteration():
    r = varprop.check_model(ConvStack(), images)
    assert r.verdict == "agrees", r.summary()
    for name in ("conv1", "conv2"):
        for i in range(3):
            for d in ("forward", "backward"):
                assert row(r, f"blocks/{name}[{i}]", d).verdict == "agrees"


# ----------------------------------------------------------------------------------------
# A thousand iterations.
# ----------------------------------------------------------------------------------------


class Deep(nnx.Module):
    """``n`` residual dense blocks scaled by 1/sqrt(n) (E[h^2] grows by e over the stack)."""

    def __init__(self, rngs, n):
        @nnx.split_rngs(splits=n)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return nnx.Linear(64, 64, kernel_init=HE, use_bias=False, rngs=rngs)

        self.blocks = make(rngs)
        self.scale = 1 / math.sqrt(n)

    def __call__(self, x):
        @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
        def step(block, h):
            return h + self.scale * block(jax.nn.relu(h))

        return step(self.blocks, x)


@pytest.mark.slow
def test_a_thousand_iterations_every_row_in_json_a_readable_summary():
    n = 1000
    r = varprop.check_model(
        lambda rngs: Deep(rngs, n), lambda k: jax.random.normal(k, (64, 64)), seeds=2, max_seeds=2
    )
    fwd = [x for x in r.layers if x.kind == "dense" and x.direction == "forward"]
    assert [(x.path, x.iteration) for x in fwd] == [(f"blocks[{i}]", [i]) for i in range(n)]
    data = json.loads(r.to_json())
    assert sum(x["kind"] == "dense" for x in data["layers"]) == 2 * n
    assert data["layers"][-1]["iteration"] == [n - 1]
    assert "disagrees" not in {x.verdict for x in r.layers}
    summary = r.summary()
    lines = summary.splitlines()
    assert len(lines) < 30, summary
    sites = [" ".join(line.split()[:4]) for line in lines if "iterations:" in line]
    assert sites == [
        "blocks[*] dense forward 1000",
        "blocks[*] dense backward 1000",
        "skip + blocks[*] residual",
        "blocks[*] -> blocks[*] between",
    ]
    assert f"{4 * n - 1 - 12} of {4 * n - 1} rows (iterations) not shown" in summary
    # The health compounds E[y^2] over the iterations, in the order they run.
    assert r.health["forward"]["steps"] == n - 1


def test_the_summary_shows_the_worst_iterations_first():
    from varprop._src.model.check_model import _disagreements
    from varprop._src.model.result import ModelCheckResult, ModelRow, SiteLine

    def mk(i, ratio, verdict):
        return ModelRow(
            f"w[{i}]",
            "dense",
            "forward",
            64,
            64,
            1,
            1,
            ratio,
            ratio,
            ratio,
            ratio,
            verdict,
            law="he_normal()",
            iteration=[i],
        )

    rows = [mk(i, 1.0 + 0.001 * i, "agrees") for i in range(20)]
    rows[7] = mk(7, 0.5, "disagrees")
    res = ModelCheckResult("disagrees", 4, rows, {}, [], {})
    shown = res.shown()
    assert [x.path for x in shown if isinstance(x, ModelRow)] == ["w[7]", "w[19]", "w[18]"]
    (line,) = [x for x in shown if isinstance(x, SiteLine)]
    assert (line.path, line.direction) == ("w[*]", "forward")
    assert line.text.startswith("20 iterations: 19 agrees, 1 disagrees; ratio 0.5 to 1.019")
    assert len(res.table().splitlines()) == 2 + 4
    # The diagnosis: a line per disagreeing row, one line for a site's iterations past 3.
    assert _disagreements(rows) == [
        "w[7] (forward): measured/predicted 0.5 [0.5, 0.5] against he_normal()"
    ]
    for i in (3, 4, 5, 9, 12):
        rows[i] = mk(i, 0.25 + 0.01 * i, "disagrees")
    assert _disagreements(rows) == [
        "w[3-5, 7, 9, 12] (forward): 6 of 20 iterations disagree, measured/predicted "
        "0.28 to 0.5 against he_normal()"
    ]
