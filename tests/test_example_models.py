"""The example models (varprop.example_models): every factory runs with no argument, gives
the documented output shape with finite values and finite gradients; the NNX and Linen
twins have the same parameter shapes; zero-gamma, ``inits`` and ``kernel_init`` land on
exactly the layers they name; the Transformer is causal."""

from __future__ import annotations

import re
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from varprop import example_models as E

zeros = jax.nn.initializers.zeros

# (nnx factory, linen factory, input, output shape)
IMAGE = jnp.linspace(-1.0, 1.0, 2 * 32 * 32 * 3, dtype=jnp.float32).reshape(2, 32, 32, 3)
MNIST = jnp.linspace(-1.0, 1.0, 2 * 28 * 28, dtype=jnp.float32).reshape(2, 28, 28, 1)
TOKENS = (jnp.arange(16, dtype=jnp.int32).reshape(2, 8) * 37) % 256
MODELS = {
    "cnn": (E.cnn, E.cnn_linen, MNIST, (2, 10)),
    "resnet": (E.resnet, E.resnet_linen, IMAGE, (2, 10)),
    "mobilenet": (E.mobilenet, E.mobilenet_linen, IMAGE, (2, 10)),
    "transformer": (E.transformer, E.transformer_linen, TOKENS, (2, 8, 256)),
}


def loss(y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.sin(y) * y)


def nnx_params(model) -> list[tuple[str, jax.Array]]:
    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
    return [(jax.tree_util.keystr(p), v) for p, v in leaves]


def linen_params(model, x) -> dict:
    return model.init(jax.random.key(0), x)["params"]


def linen_forward(model, variables, x):
    out, _ = model.apply(variables, x, mutable=["batch_stats"])
    return out


def all_finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree_util.tree_leaves(tree))


#: The CNN in the default suite; the others (3-6 s of compilation each) in the slow one.
HEAVY = [pytest.param(m, marks=pytest.mark.slow) if m != "cnn" else m for m in MODELS]


@pytest.mark.parametrize("name", HEAVY)
def test_nnx_zero_argument_forward_and_grad(name):
    factory, _, x, shape = MODELS[name]
    model = factory()

    @nnx.jit  # one compilation for the forward and the backward pass; tests tracing too
    def run(model, x):
        return nnx.value_and_grad(lambda m: (loss(y := m(x)), y), has_aux=True)(model)

    (_, y), grads = run(model, x)
    assert y.shape == shape and all_finite(y)
    assert float(jnp.std(y)) > 0  # not a constant output
    assert all_finite(grads)
    assert len(jax.tree_util.tree_leaves(grads)) == len(nnx_params(model))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(grads))


@pytest.mark.parametrize("name", HEAVY)
def test_linen_zero_argument_forward_and_grad(name):
    _, factory, x, shape = MODELS[name]
    model = factory()
    variables = model.init(jax.random.key(0), x)

    @jax.jit
    def run(params):
        def f(params):
            y = linen_forward(model, {**variables, "params": params}, x)
            return loss(y), y

        return jax.value_and_grad(f, has_aux=True)(params)

    (_, y), grads = run(variables["params"])
    assert y.shape == shape and all_finite(y)
    assert float(jnp.std(y)) > 0
    assert all_finite(grads)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(grads))


@pytest.mark.parametrize("name", MODELS)
def test_nnx_and_linen_have_the_same_parameter_shapes(name):
    nnx_factory, linen_factory, x, _ = MODELS[name]
    a = Counter(v.shape for _, v in nnx_params(nnx_factory()))
    b = Counter(v.shape for v in jax.tree_util.tree_leaves(linen_params(linen_factory(), x)))
    assert a == b and sum(a.values()) > 4


def test_parameter_paths_mirror_each_other():
    # The Linen path is the NNX path with ``[i]`` written ``_i``.
    nnx_paths = {p.removesuffix(".value") for p, _ in nnx_params(E.resnet())}
    leaves = jax.tree_util.tree_leaves_with_path(linen_params(E.resnet_linen(), IMAGE))
    linen_paths = {jax.tree_util.keystr(p) for p, _ in leaves}
    assert {re.sub(r"\['blocks'\]\[(\d+)\]", r"['blocks_\1']", p) for p in nnx_paths} == linen_paths
    assert "['blocks_1']['proj']['kernel']" in linen_paths


# -- ResNet: zero-gamma and norm=False -------------------------------------------------------


def _scales(params_by_path: dict[str, jax.Array]) -> dict[str, float]:
    """path of each BatchNorm scale -> max |scale|."""
    return {
        p: float(jnp.abs(v).max())
        for p, v in params_by_path.items()
        if p.removesuffix(".value").endswith("['scale']")
    }


@pytest.mark.parametrize("api", ["nnx", "linen"])
@pytest.mark.parametrize("zero_gamma", [True, False])
def test_zero_gamma_zeroes_exactly_the_last_bn_of_each_block(api, zero_gamma):
    kw = {"stage_sizes": (2, 1), "zero_gamma": zero_gamma}
    if api == "nnx":
        params = dict(nnx_params(E.resnet(**kw)))
    else:
        leaves = jax.tree_util.tree_leaves_with_path(linen_params(E.resnet_linen(**kw), IMAGE))
        params = {jax.tree_util.keystr(p): v for p, v in leaves}
    scales = _scales(params)
    last = {p for p in scales if "['bn2']" in p}
    assert len(last) == 3 and len(scales) == 1 + 3 * 2 + 1  # stem, bn1+bn2 per block, proj
    for path, s in scales.items():
        assert s == (0.0 if zero_gamma and path in last else 1.0), path


def test_zero_gamma_block_starts_as_its_shortcut():
    # With bn2's scale and bias 0 an identity block computes relu(x); x >= 0 after the stem.
    block = E.resnet(stage_sizes=(1,)).blocks[0]
    x = jax.nn.relu(jnp.broadcast_to(IMAGE[..., :1], (2, 32, 32, 16)))
    np.testing.assert_allclose(nnx.jit(lambda b, x: b(x))(block, x), x, atol=1e-6)


def test_resnet_without_norm_has_no_batchnorm_and_biased_convs():
    model = E.resnet(norm=False)
    paths = [p for p, _ in nnx_params(model)]
    assert not any("bn" in p for p in paths)
    assert "['blocks'][1]['proj']['bias'].value" in paths
    assert model(IMAGE).shape == (2, 10)
    linen = E.resnet_linen(norm=False)
    variables = linen.init(jax.random.key(0), IMAGE)
    assert "batch_stats" not in variables
    a = Counter(v.shape for _, v in nnx_params(model))
    assert a == Counter(v.shape for v in jax.tree_util.tree_leaves(variables["params"]))


def test_batchnorm_train_and_eval():
    model = E.resnet()
    assert model.stem_bn is not None and model.stem_bn.use_running_average is False
    model.eval()
    assert model.stem_bn.use_running_average is True
    linen = E.resnet_linen()
    variables = linen.init(jax.random.key(0), IMAGE)
    y = linen.apply(variables, IMAGE, train=False)  # no mutable state needed
    assert y.shape == (2, 10)


# -- initializers by layer name --------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_inits_head_zero(name):
    nnx_factory, linen_factory, x, _ = MODELS[name]
    model = nnx_factory(inits={"head": zeros})
    assert float(jnp.abs(model.head.kernel[...]).max()) == 0.0
    assert float(jnp.abs(nnx_factory().head.kernel[...]).max()) > 0.0
    others = [v for p, v in nnx_params(model) if "kernel" in p and "head" not in p]
    assert others and all(float(jnp.abs(v).max()) > 0 for v in others)
    params = linen_params(linen_factory(inits={"head": zeros}), x)
    assert float(jnp.abs(params["head"]["kernel"]).max()) == 0.0
    assert float(jnp.abs(linen_params(linen_factory(), x)["head"]["kernel"]).max()) > 0.0


@pytest.mark.parametrize(
    ("name", "layer"),
    [("resnet", "conv2"), ("mobilenet", "depthwise"), ("mobilenet", "expand"), ("cnn", "conv1")],
)
def test_inits_reach_every_layer_of_that_name(name, layer):
    nnx_factory, linen_factory, x, _ = MODELS[name]
    nnx_kernels = {p: v for p, v in nnx_params(nnx_factory(inits={layer: zeros})) if "kernel" in p}
    leaves = jax.tree_util.tree_leaves_with_path(
        linen_params(linen_factory(inits={layer: zeros}), x)
    )
    linen_kernels = {jax.tree_util.keystr(p): v for p, v in leaves if "kernel" in str(p)}
    for kernels in (nnx_kernels, linen_kernels):
        named = [p for p in kernels if f"['{layer}']" in p]
        assert named
        for p, v in kernels.items():
            assert (float(jnp.abs(v).max()) == 0.0) == (p in named), p


@pytest.mark.parametrize("layer", ["query", "key", "value", "out", "mlp_in", "embed"])
def test_transformer_inits_by_name(layer):
    def zeroed(paths_values):
        return {p for p, v in paths_values if field in p and float(jnp.abs(v).max()) == 0.0}

    field = "embedding" if layer == "embed" else "kernel"
    want = 1 if layer == "embed" else 2  # one per block
    a = zeroed(nnx_params(E.transformer(inits={layer: zeros})))
    leaves = jax.tree_util.tree_leaves_with_path(
        linen_params(E.transformer_linen(inits={layer: zeros}), TOKENS)
    )
    b = zeroed((jax.tree_util.keystr(p), v) for p, v in leaves)
    for zero in (a, b):
        assert len(zero) == want and all(f"['{layer}']['{field}']" in p for p in zero), zero


def test_kernel_init_applies_to_every_unnamed_kernel():
    ones = jax.nn.initializers.ones
    model = E.transformer(kernel_init=zeros, inits={"head": ones})
    for p, v in nnx_params(model):
        if "kernel" in p:
            assert float(jnp.abs(v).min()) == (1.0 if "head" in p else 0.0), p
        if "embedding" in p:  # embeddings are not kernels
            assert float(jnp.abs(v).max()) > 0, p
    params = linen_params(E.transformer_linen(kernel_init=zeros, inits={"head": ones}), TOKENS)
    for p, v in jax.tree_util.tree_leaves_with_path(params):
        if "kernel" in str(p):
            assert float(jnp.abs(v).min()) == (1.0 if "head" in str(p) else 0.0), p


@pytest.mark.parametrize("name", MODELS)
def test_unknown_layer_name_is_an_error(name):
    nnx_factory, linen_factory, _, _ = MODELS[name]
    for factory in (nnx_factory, linen_factory):
        with pytest.raises(ValueError, match="no layer named 'hed'"):
            factory(inits={"hed": zeros})


# -- Transformer ---------------------------------------------------------------------------


@pytest.mark.parametrize("pre_ln", [True, False])
def test_transformer_is_causal(pre_ln):
    changed = TOKENS.at[:, 5].set((TOKENS[:, 5] + 1) % 256)
    model = E.transformer(pre_ln=pre_ln, layers=1)
    linen = E.transformer_linen(pre_ln=pre_ln, layers=1)
    variables = linen.init(jax.random.key(0), TOKENS)
    nnx_run = nnx.jit(lambda m, t: m(t))
    for run in (lambda t: nnx_run(model, t), jax.jit(lambda t: linen.apply(variables, t))):
        before, after = run(TOKENS), run(changed)
        np.testing.assert_array_equal(before[:, :5], after[:, :5])
        assert float(jnp.abs(before[:, 5:] - after[:, 5:]).min()) > 0


def test_transformer_rejects_too_long_input():
    with pytest.raises(ValueError, match="exceeds max_len=4"):
        E.transformer(max_len=4)(TOKENS)


def test_transformer_dropout():
    model = E.transformer(dropout=0.5, layers=1)
    run = nnx.jit(lambda m, t: m(t))
    assert not bool(jnp.allclose(run(model, TOKENS), run(model, TOKENS)))
    model.eval()
    np.testing.assert_array_equal(run(model, TOKENS), run(model, TOKENS))
