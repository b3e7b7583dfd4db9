"""varprop.check_model on models written as users write them (NNX and Linen).

Each wrong initializer is one a user can write by accident; the expected ratio of each
detection is computed here from the shapes (not by the code under test), and the check
must name the layer by its path. Fixed seeds: every verdict here is deterministic.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import varprop
from varprop._src.errors import InputError

HE = jax.nn.initializers.he_normal()
LECUN = jax.nn.initializers.lecun_normal()
FLAX_EMBED = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)


class ConvNet(nnx.Module):
    """SAME 3x3 convs on a small map (borders matter), a stride-2 conv, BatchNorm, a head."""

    def __init__(self, rngs, *, c1=HE, c2=HE, head=LECUN):
        self.c1 = nnx.Conv(8, 64, (3, 3), kernel_init=c1, rngs=rngs)
        self.bn = nnx.BatchNorm(64, rngs=rngs)
        self.c2 = nnx.Conv(64, 64, (3, 3), strides=2, kernel_init=c2, rngs=rngs)
        self.head = nnx.Linear(64, 10, kernel_init=head, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.bn(self.c1(x)))
        h = jax.nn.relu(self.c2(h))
        return self.head(h.mean(axis=(1, 2)))


def images(key):
    return jax.random.normal(key, (16, 10, 10, 8))


def rows_by(result, verdict):
    return sorted({(r.path, r.direction) for r in result.layers if r.verdict == verdict})


@pytest.mark.slow
def test_correct_conv_net_agrees_in_both_directions_with_exact_borders():
    r = varprop.check_model(lambda rngs: ConvNet(rngs), images)
    assert r.verdict == "agrees", r.summary()
    assert r.exit_code() == 0
    tested = {(x.path, x.direction) for x in r.layers if x.verdict == "agrees"}
    assert {("c1", "forward"), ("c1", "backward"), ("c2", "forward"), ("c2", "backward")} <= tested
    c1 = next(x for x in r.layers if x.path == "c1" and x.direction == "forward")
    # A 3x3 SAME conv on a 10x10 map reads (1 - 2/(3*10))^2 ... of its taps on average:
    # per dimension (10*3 - 2)/(10*3) with unit-variance input, so about 0.871.
    assert c1.fan_in == 72 and c1.border_factor == pytest.approx((28 / 30) ** 2, rel=0.03)
    c2 = next(x for x in r.layers if x.path == "c2" and x.direction == "backward")
    assert c2.fan_out == 9 * 64 / 4  # the true backward fan of a stride-2 conv
    assert "batchnorm" in next(
        x.assumption for x in r.layers if x.path == "c1" and x.direction == "backward"
    )
    assert json.loads(r.to_json())["verdict"] == "agrees"


def test_fan_out_init_on_a_strided_conv_is_detected_and_named():
    fan_out = jax.nn.initializers.variance_scaling(2.0, "fan_out", "truncated_normal")
    r = varprop.check_model(lambda rngs: ConvNet(rngs, c2=fan_out), images)
    assert r.verdict == "disagrees"
    assert r.exit_code() == 1
    assert rows_by(r, "disagrees") == [("c2", "backward"), ("c2", "forward")]
    # He fan_out reads fan_out = 9*64 from the kernel; the conv's true fan_out is 9*64/4.
    for row in r.layers:
        if row.path == "c2" and row.verdict == "disagrees":
            assert row.ratio_low <= 0.25 <= row.ratio_high, row


def test_fan_swap_in_a_dense_layer_is_detected():
    swapped = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=-1, out_axis=-2)

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(64, 256, kernel_init=swapped, rngs=rngs)
            self.b = nnx.Linear(256, 128, rngs=rngs)

        def __call__(self, x):
            return self.b(jnp.tanh(self.a(x)))

    r = varprop.check_model(lambda rngs: Net(rngs), lambda k: jax.random.normal(k, (32, 64)))
    assert rows_by(r, "disagrees") == [("a", "backward"), ("a", "forward")]
    row = next(x for x in r.layers if x.path == "a" and x.direction == "forward")
    assert row.ratio_low <= 64 / 256 <= row.ratio_high


@pytest.mark.slow
def test_expect_glob_names_the_law_and_a_wrong_gain_is_detected():
    lecun = jax.nn.initializers.lecun_normal()
    r = varprop.check_model(
        lambda rngs: ConvNet(rngs, c1=lecun, c2=lecun), images, expect={"c*": "he_normal"}
    )
    assert rows_by(r, "disagrees") == [
        ("c1", "backward"),
        ("c1", "forward"),
        ("c2", "backward"),
        ("c2", "forward"),
    ]
    row = next(x for x in r.layers if x.path == "c2" and x.direction == "forward")
    assert row.ratio_low <= 0.5 <= row.ratio_high
    assert ("head", "forward") not in rows_by(r, "disagrees")


class Tokens(nnx.Module):
    def __init__(
        self,
        rngs,
        embed_init=FLAX_EMBED,
    ):
        self.embed = nnx.Embed(1000, 64, embedding_init=embed_init, rngs=rngs)
        self.out = nnx.Linear(64, 64, rngs=rngs)

    def __call__(self, ids):
        return self.out(self.embed(ids))


def token_ids(key):
    return jax.random.randint(key, (8, 32), 0, 1000)


@pytest.mark.slow
def test_embedding_lookup_law_and_a_fan_in_of_the_vocabulary():
    good = varprop.check_model(lambda rngs: Tokens(rngs), token_ids)
    assert good.verdict == "agrees", good.summary()
    bad = varprop.check_model(lambda rngs: Tokens(rngs, nnx.initializers.lecun_normal()), token_ids)
    assert rows_by(bad, "disagrees") == [("embed", "forward")]
    row = next(x for x in bad.layers if x.path == "embed")
    assert row.ratio_low <= 64 / 1000 <= row.ratio_high
    assert any("vocabulary" in d and d.startswith("embed") for d in bad.diagnosis)


@pytest.mark.slow
def test_the_model_and_its_variables_are_never_mutated():
    model = ConvNet(nnx.Rngs(3))
    before = jax.tree.map(np.array, nnx.state(model))
    r = varprop.check_model(model, images(jax.random.key(0)))
    after = jax.tree.map(np.array, nnx.state(model))
    assert jax.tree.all(jax.tree.map(np.array_equal, before, after))
    assert r.seeds == 1 and any("NNX modules do not keep" in d for d in r.diagnosis)

    class Lin(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = True):
            x = nn.Conv(64, (3, 3), kernel_init=HE)(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            return nn.Dense(10)(nn.relu(x).mean(axis=(1, 2)))

    x = images(jax.random.key(1))
    variables = Lin().init(jax.random.key(0), x)
    frozen = jax.tree.map(np.array, variables)
    lr = varprop.check_model(Lin(), x, variables=variables)
    assert jax.tree.all(jax.tree.map(np.array_equal, frozen, jax.tree.map(np.array, variables)))
    assert lr.config["framework"] == "linen" and lr.seeds == 1
    # Without variables, Linen's init is watched: each seed redraws with the real inits.
    fresh = varprop.check_model(Lin(), images)
    assert fresh.config["reinit"] and fresh.verdict == "agrees", fresh.summary()


def test_inputs_that_cannot_be_used_are_clear_errors():
    with pytest.raises(InputError, match=r"must be an nnx\.Module"):
        varprop.check_model(42, images)
    with pytest.raises(InputError, match="cannot be built or called") as e:
        varprop.check_model(lambda rngs: ConvNet(rngs), jnp.ones((4, 10, 10, 3)))
    assert e.value.kind == "model"
    with pytest.raises(InputError, match="no layer found"):
        varprop.check_model(lambda rngs: nnx.BatchNorm(4, rngs=rngs), jnp.ones((4, 4)))
    with pytest.raises(InputError, match="mode="):
        varprop.check_model(lambda rngs: ConvNet(rngs), images, mode="training")


MODELS = textwrap.dedent(
    """
    import jax
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs, init):
            self.a = nnx.Linear(64, 128, kernel_init=init, rngs=rngs)
            self.b = nnx.Linear(128, 10, rngs=rngs)

        def __call__(self, x):
            return self.b(jax.nn.relu(self.a(x)))

    def good(rngs=None):
        return Net(rngs or nnx.Rngs(0), jax.nn.initializers.he_normal())

    def swapped(rngs=None):
        init = jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal", in_axis=-1,
                                                    out_axis=-2)
        return Net(rngs or nnx.Rngs(0), init)
    """
)


def _cli(tmp_path, *args):
    (tmp_path / "usermodels.py").write_text(MODELS)
    return subprocess.run(
        [sys.executable, "-m", "varprop", "check", *args, "--quiet", "--no-cache"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_cli_model_check_exit_codes(tmp_path):
    wrong = _cli(tmp_path, "--model", "usermodels:good", "--input-shape", "16,32")
    assert wrong.returncode == 2 and "cannot be built or called" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    ok = _cli(tmp_path, "--model", "usermodels:good", "--input-shape", "16,64")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Law: agrees" in ok.stdout
    bad = _cli(tmp_path, "--model", "usermodels:swapped", "--input-shape", "16,64", "--json")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    out = json.loads(bad.stdout)
    assert {(r["path"], r["verdict"]) for r in out["layers"]} >= {("a", "disagrees")}


def test_cli_model_inputs_that_cannot_be_used_exit_2(tmp_path):
    missing = _cli(tmp_path, "--model", "usermodels:nope", "--input-shape", "16,64", "--json")
    assert missing.returncode == 2
    assert json.loads(missing.stdout)["error"].startswith("--model usermodels:nope")
    assert "Traceback" not in missing.stderr
    mixed = _cli(
        tmp_path, "--model", "usermodels:good", "--input-shape", "16,64", "--widths", "8,8"
    )
    assert mixed.returncode == 2 and "--widths" in mixed.stderr
    shape = _cli(tmp_path, "--model", "usermodels:good", "--input-shape", "1,64")
    assert shape.returncode == 2 and "batch" in shape.stderr


class _ZeroEndBranches(nnx.Module):
    """Residual blocks whose branch ends in a zero-initialized layer (Fixup, SkipInit):
    the stream starts as its skip path."""

    def __init__(self, rngs, depth=4, d=128):
        he = jax.nn.initializers.he_normal()
        zeros = jax.nn.initializers.zeros
        self.a = nnx.List([nnx.Linear(d, d, kernel_init=he, rngs=rngs) for _ in range(depth)])
        self.b = nnx.List([nnx.Linear(d, d, kernel_init=zeros, rngs=rngs) for _ in range(depth)])

    def __call__(self, x):
        for a, b in zip(self.a, self.b, strict=True):
            x = x + b(jax.nn.relu(a(x)))
        return x


def test_a_branch_ending_in_a_zero_layer_is_an_identity_branch_not_a_death():
    # Bug (found on a Fixup-solved ResNet): the zero layer's rows (E[y^2] = 0) entered the
    # health, which said "vanishing (-inf)", and the model was called degenerate.
    x = jax.random.normal(jax.random.key(0), (64, 128))
    r = varprop.check_model(lambda rngs: _ZeroEndBranches(rngs), x, seeds=4)
    assert r.health["forward"]["state"] == "preserved", r.health
    assert r.health["backward"]["state"] == "preserved", r.health
    assert not r.health["degenerate"], r.health
    assert sorted(r.health["identity_branches"]) == [f"b/{i}" for i in range(4)]
