r"""The Linen twins of :mod:`varprop._src.nn.example_models_nnx`: the same CNN, ResNet,
MobileNet and Transformer, with the same parameter shapes and the same layer names.

Every factory returns an unbound ``flax.linen.Module``; initialize it the Linen way,
``variables = model.init(key, x)``. The models with BatchNorm (and the Transformer, for
dropout) take ``train`` as a call argument, ``model.apply(variables, x, train=True,
mutable=["batch_stats"])``, as the Flax examples do; ``train=True`` by default.

Parameter paths mirror the NNX attribute paths, with a list index ``blocks[i]`` written
``blocks_i`` (Linen's own naming of list members): ``params["blocks_0"]["conv1"]["kernel"]``.
``inits`` and ``kernel_init`` work as in the NNX factories (same names).

Example:
    >>> import jax, jax.numpy as jnp
    >>> model = resnet_linen()
    >>> x = jnp.ones((2, 32, 32, 3))
    >>> variables = model.init(jax.random.key(0), x)
    >>> logits, state = model.apply(variables, x, mutable=["batch_stats"])
    >>> logits.shape
    (2, 10)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from varprop._src.nn.example_models_nnx import (
    BN_EPSILON,
    BN_MOMENTUM,
    MOBILENET_NAMES,
    QKV,
    RESNET_NAMES,
    TRANSFORMER_NAMES,
    Inits,
    avg_pool2,
    check_cnn,
    check_mobilenet,
    check_transformer,
    cnn_names,
)

__all__ = [
    "LinenCNN",
    "LinenDecoderBlock",
    "LinenInvertedResidual",
    "LinenMobileNet",
    "LinenResNet",
    "LinenResNetBlock",
    "LinenTransformer",
    "cnn_linen",
    "mobilenet_linen",
    "resnet_linen",
    "transformer_linen",
]

Init = Callable[..., Any]
Array = jax.Array


def _inits(module: nn.Module, model: str, names: Sequence[str]) -> Inits:
    return Inits(model, names, getattr(module, "inits", None), getattr(module, "kernel_init", None))


def _conv(
    inits: Inits,
    name: str,
    cout: int,
    size: int,
    *,
    strides: int = 1,
    groups: int = 1,
    bias: bool = False,
) -> nn.Conv:
    return nn.Conv(
        cout,
        (size, size),
        strides=strides,
        padding="SAME",
        feature_group_count=groups,
        use_bias=bias,
        name=name,
        **inits.kernel(name),
    )


def _bn(name: str, train: bool, *, zero_scale: bool = False) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
        name=name,
    )


# -- CNN -----------------------------------------------------------------------------------


class LinenCNN(nn.Module):
    """Linen version of :class:`varprop._src.nn.example_models_nnx.CNN` (see
    :func:`cnn_linen`)."""

    features: Sequence[int] = (32, 64)
    hidden: int = 256
    classes: int = 10
    inits: Mapping[str, Init] | None = None
    kernel_init: Init | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = check_cnn(self.features)
        inits = _inits(self, "cnn", cnn_names(len(features)))
        for i, cout in enumerate(features):
            x = _conv(inits, f"conv{i + 1}", cout, 3, bias=True)(x)
            x = avg_pool2(nn.relu(x))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.hidden, name="dense", **inits.kernel("dense"))(x))
        return nn.Dense(self.classes, name="head", **inits.kernel("head"))(x)


def cnn_linen(
    *,
    features: Sequence[int] = (32, 64),
    hidden: int = 256,
    classes: int = 10,
    inits: Mapping[str, Init] | None = None,
    kernel_init: Init | None = None,
) -> LinenCNN:
    """The Flax examples' MNIST CNN (Linen): Conv(32, 3x3) -> relu -> avg_pool 2x2 ->
    Conv(64, 3x3) -> relu -> avg_pool -> flatten -> Dense(256) -> relu -> Dense(10).

    Input ``(B, 28, 28, 1)``; output ``(B, classes)``. Layer names (for ``inits``, and the
    parameter paths): ``conv1``, ``conv2`` (one per entry of ``features``), ``dense``,
    ``head``. Call: ``model.apply(variables, x)``.
    """
    features = check_cnn(features)
    Inits("cnn", cnn_names(len(features)), inits, kernel_init)  # fail now, not at init
    return LinenCNN(
        features=features, hidden=hidden, classes=classes, inits=inits, kernel_init=kernel_init
    )


# -- ResNet --------------------------------------------------------------------------------


class LinenResNetBlock(nn.Module):
    """Linen version of :class:`varprop._src.nn.example_models_nnx.ResNetBlock`."""

    features: int
    strides: int = 1
    norm: bool = True
    zero_gamma: bool = True
    inits: Mapping[str, Init] | None = None
    kernel_init: Init | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        inits = _inits(self, "resnet", RESNET_NAMES)
        bias, cout = not self.norm, self.features
        y = _conv(inits, "conv1", cout, 3, strides=self.strides, bias=bias)(x)
        if self.norm:
            y = _bn("bn1", train)(y)
        y = _conv(inits, "conv2", cout, 3, bias=bias)(nn.relu(y))
        if self.norm:
            y = _bn("bn2", train, zero_scale=self.zero_gamma)(y)
        if self.strides != 1 or x.shape[-1] != cout:
            x = _conv(inits, "proj", cout, 1, strides=self.strides, bias=bias)(x)
            if self.norm:
                x = _bn("proj_bn", train)(x)
        return nn.relu(x + y)


class LinenResNet(nn.Module):
    """Linen version of :class:`varprop._src.nn.example_models_nnx.ResNet` (see
    :func:`resnet_linen`)."""

    stage_sizes: Sequence[int] = (1, 1)
    width: int = 16
    classes: int = 10
    norm: bool = True
    zero_gamma: bool = True
    inits: Mapping[str, Init] | None = None
    kernel_init: Init | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        inits = _inits(self, "resnet", RESNET_NAMES)
        x = _conv(inits, "stem", self.width, 3, bias=not self.norm)(x)
        if self.norm:
            x = _bn("stem_bn", train)(x)
        x = nn.relu(x)
        k = 0
        for stage, size in enumerate(self.stage_sizes):
            for i in range(size):
                x = LinenResNetBlock(
                    self.width * 2**stage,
                    strides=2 if stage > 0 and i == 0 else 1,
                    norm=self.norm,
                    zero_gamma=self.zero_gamma,
                    inits=self.inits,
                    kernel_init=self.kernel_init,
                    name=f"blocks_{k}",
                )(x, train)
                k += 1
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.classes, name="head", **inits.kernel("head"))(x)


def resnet_linen(
    *,
    stage_sizes: Sequence[int] = (1, 1),
    width: int = 16,
    classes: int = 10,
    norm: bool = True,
    zero_gamma: bool = True,
    inits: Mapping[str, Init] | None = None,
    kernel_init: Init | None = None,
) -> LinenResNet:
    """A ResNet with basic blocks (He et al. 2016), Linen; the architecture of
    :func:`varprop._src.nn.example_models_nnx.resnet` (zero-gamma: Goyal et al. 2017).

    Input ``(B, 32, 32, 3)``; output ``(B, classes)``. Call: ``model.apply(variables, x,
    train=True, mutable=["batch_stats"])`` (``train=False``: running statistics). Layer
    names (for ``inits``): ``stem``, ``conv1``, ``conv2``, ``proj`` (in every block),
    ``head``. Parameter paths: ``stem``, ``stem_bn``, ``blocks_{i}/{conv1, bn1, conv2,
    bn2, proj, proj_bn}``, ``head``.
    """
    Inits("resnet", RESNET_NAMES, inits, kernel_init)
    return LinenResNet(
        stage_sizes=tuple(stage_sizes),
        width=width,
        classes=classes,
        norm=norm,
        zero_gamma=zero_gamma,
        inits=inits,
        kernel_init=kernel_init,
    )


# -- MobileNet -----------------------------------------------------------------------------


class LinenInvertedResidual(nn.Module):
    """Linen version of :class:`varprop._src.nn.example_models_nnx.InvertedResidual`."""

    features: int
    strides: int = 1
    expansion: int = 4
    inits: Mapping[str, Init] | None = None
    kernel_init: Init | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        inits = _inits(self, "mobilenet", MOBILENET_NAMES)
        hidden = x.shape[-1] * self.expansion
        y = _conv(inits, "expand", hidden, 1, groups=2)(x)
        y = nn.relu6(_bn("expand_bn", train)(y))
        y = _conv(inits, "depthwise", hidden, 3, strides=self.strides, groups=hidden)(y)
        y = nn.relu6(_bn("depthwise_bn", train)(y))
        y = _bn("project_bn", train)(_conv(inits, "project", self.features, 1)(y))
        return x + y if self.strides == 1 and x.shape[-1] == self.features else y


class LinenMobileNet(nn.Module):
    """Linen version of :class:`varprop._src.nn.example_models_nnx.MobileNet` (see
    :func:`mobilenet_linen`)."""

    width: int = 16
    blocks: Sequence[tuple[int, int]] = ((16, 1), (24, 2))
    expansion: int = 4
    classes: int = 10
    inits: Mapping[str, Init] | None = None
    kernel_init: Init | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        check_mobilenet(self.width, self.blocks, self.expansion)
        inits = _inits(self, "mobilenet", MOBILENET_NAMES)
        x = _conv(inits, "stem", self.width, 3, strides=2)(x)
        x = nn.relu6(_bn("stem_bn", train)(x))
        for i, (cout, stride) in enumerate(self.blocks):
            x = LinenInvertedResidual(
                cout,
                strides=stride,
                expansion=self.expansion,
                inits=self.inits,
                kernel_init=self.kernel_init,
                name=f"blocks_{i}",
            )(x, train)
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.classes, name="head", **inits.kernel("head"))(x)


def mobilenet_linen(
    *,
    width: int = 16,
    blocks: Sequence[tuple[int, int]] = ((16, 1), (24, 2)),
    expansion: int = 4,
    classes: int = 10,
    inits: Mapping[str, Init] | None = None,
    kernel_init: Init | None = None,
) -> LinenMobileNet:
    """A MobileNet-v2-style net (Sandler et al. 2018), Linen; the architecture of
    :func:`varprop._src.nn.example_models_nnx.mobilenet`.

    Input ``(B, 32, 32, 3)``; output ``(B, classes)``. Call: ``model.apply(variables, x,
    train=True, mutable=["batch_stats"])``. Layer names (for ``inits``): ``stem``,
    ``expand``, ``depthwise``, ``project`` (in every block), ``head``. Parameter paths:
    ``stem``, ``stem_bn``, ``blocks_{i}/{expand, expand_bn, depthwise, depthwise_bn,
    project, project_bn}``, ``head``.
    """
    blocks = tuple((int(c), int(s)) for c, s in blocks)
    check_mobilenet(width, blocks, expansion)
    Inits("mobilenet", MOBILENET_NAMES, inits, kernel_init)
    return LinenMobileNet(
        width=width,
        blocks=blocks,
        expansion=expansion,
        classes=classes,
        inits=inits,
        kernel_init=kernel_init,
    )


# -- Transformer ---------------------------------------------------------------------------


def _qkv_interceptor(overrides: Mapping[str, Init]):
    """A method interceptor that gives the ``query``/``key``/``value`` projections of the
    attention it wraps their own kernel initializer: ``MultiHeadDotProductAttention`` takes
    one initializer for all three. It sets the field before the projection's first call,
    the only one that reads it (at ``init``)."""

    def intercept(next_fun, args, kwargs, context):
        module = context.module
        init = overrides.get(module.name or "")
        if (
            init is not None
            and context.method_name == "__call__"
            and isinstance(module, nn.DenseGeneral)
            and isinstance(module.parent, nn.MultiHeadDotProductAttention)
        ):
            object.__setattr__(module, "kernel_init", init)
        return next_fun(*args, **kwargs)

    return intercept


class LinenDecoderBlock(nn.Module):
    """Linen version of :class:`varprop._src.nn.example_models_nnx.DecoderBlock`."""

    heads: int = 4
    pre_ln: bool = True
    dropout: float = 0.0
    inits: Mapping[str, Init] | None = None
    kernel_init: Init | None = None

    @nn.compact
    def __call__(self, x: Array, mask: Array, train: bool = True) -> Array:
        inits = _inits(self, "transformer", TRANSFORMER_NAMES)
        d = x.shape[-1]
        attn_kw: dict[str, Any] = {}
        if inits.kernel_init is not None:
            attn_kw["kernel_init"] = inits.kernel_init
        if inits.get("out") is not None:
            attn_kw["out_kernel_init"] = inits.get("out")
        attn = nn.MultiHeadDotProductAttention(
            num_heads=self.heads,
            qkv_features=d,
            out_features=d,
            dropout_rate=self.dropout,
            deterministic=not train,
            decode=False,
            name="attn",
            **attn_kw,
        )
        drop = nn.Dropout(self.dropout, deterministic=not train)
        ln1, ln2 = nn.LayerNorm(name="ln1"), nn.LayerNorm(name="ln2")
        mlp_in = nn.Dense(4 * d, name="mlp_in", **inits.kernel("mlp_in"))
        mlp_out = nn.Dense(d, name="mlp_out", **inits.kernel("mlp_out"))
        overrides = {n: inits.inits[n] for n in QKV if n in inits.inits}

        def attend(h: Array) -> Array:
            with nn.intercept_methods(_qkv_interceptor(overrides)):
                return drop(attn(h, mask=mask))

        def mlp(h: Array) -> Array:
            return drop(mlp_out(nn.gelu(mlp_in(h))))

        if self.pre_ln:
            x = x + attend(ln1(x))
            return x + mlp(ln2(x))
        x = ln1(x + attend(x))
        return ln2(x + mlp(x))


class LinenTransformer(nn.Module):
    """Linen version of :class:`varprop._src.nn.example_models_nnx.Transformer` (see
    :func:`transformer_linen`)."""

    vocab: int = 256
    d_model: int = 64
    heads: int = 4
    layers: int = 2
    max_len: int = 64
    pre_ln: bool = True
    dropout: float = 0.0
    inits: Mapping[str, Init] | None = None
    kernel_init: Init | None = None

    @nn.compact
    def __call__(self, tokens: Array, train: bool = True) -> Array:
        check_transformer(self.d_model, self.heads, tokens.shape[-1], self.max_len)
        inits = _inits(self, "transformer", TRANSFORMER_NAMES)
        embed = nn.Embed(self.vocab, self.d_model, name="embed", **inits.embedding("embed"))
        pos_embed = nn.Embed(
            self.max_len, self.d_model, name="pos_embed", **inits.embedding("pos_embed")
        )
        x = embed(tokens) + pos_embed(jnp.arange(tokens.shape[-1]))[None]
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        mask = nn.make_causal_mask(tokens)
        for i in range(self.layers):
            x = LinenDecoderBlock(
                self.heads,
                pre_ln=self.pre_ln,
                dropout=self.dropout,
                inits=self.inits,
                kernel_init=self.kernel_init,
                name=f"blocks_{i}",
            )(x, mask, train)
        if self.pre_ln:
            x = nn.LayerNorm(name="final_ln")(x)
        return nn.Dense(self.vocab, name="head", **inits.kernel("head"))(x)


def transformer_linen(
    *,
    vocab: int = 256,
    d_model: int = 64,
    heads: int = 4,
    layers: int = 2,
    max_len: int = 64,
    pre_ln: bool = True,
    dropout: float = 0.0,
    inits: Mapping[str, Init] | None = None,
    kernel_init: Init | None = None,
) -> LinenTransformer:
    """An lm1b-style decoder-only Transformer (Vaswani et al. 2017), Linen; the
    architecture of :func:`varprop._src.nn.example_models_nnx.transformer`, attention by
    ``nn.MultiHeadDotProductAttention`` with ``nn.make_causal_mask``.

    Input int32 token ids ``(B, T)``, ``T <= max_len``; output ``(B, T, vocab)`` logits.
    Call: ``model.apply(variables, tokens)`` (``train=True`` by default; with
    ``dropout > 0`` pass ``rngs={"dropout": key}``, or ``train=False``). Layer names (for
    ``inits``): ``embed``, ``pos_embed``, ``query``, ``key``, ``value``, ``out``,
    ``mlp_in``, ``mlp_out``, ``head``. Parameter paths: ``embed``, ``pos_embed``,
    ``blocks_{i}/{ln1, attn/{query, key, value, out}, ln2, mlp_in, mlp_out}``,
    ``final_ln`` (pre-LN only), ``head``.
    """
    check_transformer(d_model, heads, 0, max_len)
    Inits("transformer", TRANSFORMER_NAMES, inits, kernel_init)
    return LinenTransformer(
        vocab=vocab,
        d_model=d_model,
        heads=heads,
        layers=layers,
        max_len=max_len,
        pre_ln=pre_ln,
        dropout=dropout,
        inits=inits,
        kernel_init=kernel_init,
    )
