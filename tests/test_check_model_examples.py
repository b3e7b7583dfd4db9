"""check_model on the example models in the shape of the Flax examples, NNX and Linen:
correct initializations agree; one wrong initializer is detected and named by its path.

Slow (each check compiles one model's probe): run with ``pytest -m slow``.
"""

from __future__ import annotations

import jax
import pytest

import varprop
from varprop import example_models as em

pytestmark = pytest.mark.slow


def images(key):
    return jax.random.normal(key, (16, 16, 16, 3))


def tokens(key):
    return jax.random.randint(key, (4, 32), 0, 256)


def mnist(key):
    return jax.random.normal(key, (8, 28, 28, 1))


# Every family in NNX, and the two with the most structure (BatchNorm + a projection;
# embeddings + attention + LayerNorm) in Linen too. The NNX ResNet has zero-gamma blocks
# (their convs get no gradient at init: reported, not tested); the Linen one has not, so its
# block convs' backward laws are tested through BatchNorm's 1 - 2/n factor.
CORRECT = [
    ("cnn", mnist, False, {}),
    ("resnet", images, False, {}),
    ("resnet", images, True, {"zero_gamma": False}),
    ("mobilenet", images, False, {}),
    ("transformer", tokens, False, {}),
    ("transformer", tokens, True, {}),
]


@pytest.mark.parametrize(
    ("name", "inputs", "linen", "kwargs"),
    CORRECT,
    ids=[f"{c[0]}-{'linen' if c[2] else 'nnx'}" for c in CORRECT],
)
def test_flax_default_initializations_agree_in_both_directions(name, inputs, linen, kwargs):
    factory = getattr(em, f"{name}_linen" if linen else name)
    if linen:
        model = factory(**kwargs)
    else:

        def model(rngs):
            return factory(rngs=rngs, **kwargs)

    r = varprop.check_model(model, inputs)
    assert r.verdict == "agrees", r.summary()
    assert r.config["reinit"]
    assert r.exit_code() == 0, r.summary()
    tested = {(x.path, x.direction) for x in r.layers if x.verdict == "agrees"}
    if kwargs.get("zero_gamma", True) and name == "resnet":
        # zero-gamma blocks start as the identity, they are not dead
        assert r.health["identity_branches"] and not r.degenerate
        blocks = [x for x in r.layers if "conv" in x.path and x.direction == "backward"]
        assert blocks and all(x.verdict == "measured" and x.measured == 0 for x in blocks)
    else:
        assert any(d == "backward" for _, d in tested), r.summary()
    if name == "transformer":
        assert any(x.kind == "product" and x.verdict == "measured" for x in r.layers)


FAN_OUT = jax.nn.initializers.variance_scaling(2.0, "fan_out", "truncated_normal")
LECUN = jax.nn.initializers.lecun_normal()

MUTATIONS = [
    # A depthwise conv with He fan_out: the kernel (3, 3, 1, C) says fan_out = 9 C, the
    # conv's true fan_out is 9 (C / groups = 1): variance C = 64 times too small in block 0
    # (and 4 C in the stride-2 block 1).
    (
        "mobilenet",
        {"depthwise": FAN_OUT},
        images,
        False,
        {"blocks/0/depthwise", "blocks/1/depthwise"},
        "blocks/0/depthwise",
        1 / 64,
    ),
    # The stride-2 projection shortcut with fan_out: true fan_out = C_out / 4.
    ("resnet", {"proj": FAN_OUT}, images, True, {"blocks_1/proj"}, "blocks_1/proj", 1 / 4),
    # An embedding drawn with fan_in = vocabulary size (256) instead of d_model (64).
    ("transformer", {"embed": LECUN}, tokens, False, {"embed"}, "embed", 64 / 256),
]


@pytest.mark.parametrize(
    ("name", "inits", "inputs", "linen", "paths", "path", "ratio"),
    MUTATIONS,
    ids=[m[0] for m in MUTATIONS],
)
def test_one_wrong_initializer_is_detected_and_named(
    name, inits, inputs, linen, paths, path, ratio
):
    factory = getattr(em, f"{name}_linen" if linen else name)
    if linen:
        model = factory(inits=inits)
    else:

        def model(rngs):
            return factory(inits=inits, rngs=rngs)

    # No expect=: each layer is tested against its own initializer's law at the op's true
    # fans, which is what the wrong initializer fails to deliver.
    r = varprop.check_model(model, inputs)
    assert r.verdict == "disagrees", r.summary()
    bad = {x.path for x in r.layers if x.verdict == "disagrees"}
    assert bad == paths, r.summary()
    row = next(x for x in r.layers if x.path == path and x.direction == "forward")
    assert row.ratio_low is not None and row.ratio_high is not None
    assert row.ratio_low <= ratio <= row.ratio_high, row


def test_dropout_in_training_and_batchnorm_in_eval_mode_agree():
    """The layer after a dropout sees the dropped input: its law given that input holds
    (E[x^2] gains 1/(1-p), measured in the row before it). In eval mode BatchNorm uses its
    running statistics (at init 0 and 1), no batch statistics: no 1 - 2/n factor."""
    r = varprop.check_model(lambda rngs: em.transformer(dropout=0.2, rngs=rngs), tokens)
    assert r.verdict == "agrees", r.summary()
    between = [x for x in r.layers if x.kind == "between" and "dropout" in x.law]
    assert between, r.summary()
    e = varprop.check_model(
        lambda rngs: em.resnet(zero_gamma=False, rngs=rngs), images, mode="eval"
    )
    assert e.verdict == "agrees", e.summary()
    assert not any("batchnorm" in x.assumption for x in e.layers)
