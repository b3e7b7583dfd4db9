r"""Example models in Flax NNX, shaped like the Flax examples: a small CNN (MNIST), a ResNet
with basic blocks, a MobileNet-v2-style net and an lm1b-style decoder-only Transformer.

They exist to exercise :func:`varprop.check_model` and the ``varprop check`` CLI on models
people actually write: every factory runs with zero arguments, with small defaults so that
a forward and backward pass on CPU is fast. :mod:`varprop._src.nn.example_models_linen`
holds the Linen twins (same architectures, same parameter shapes).

Initializers. Every factory takes ``inits``, a map from a layer's *name* (its attribute
name, listed in each factory's docstring) to a ``jax.nn.initializers``-style callable
``init(key, shape, dtype)`` that replaces Flax's default kernel (or embedding) initializer
of every layer with that name, and ``kernel_init``, applied to every other Dense/Conv (and
attention projection) kernel. Without them the layers keep Flax's own defaults. An unknown
name in ``inits`` is an error, not a silent no-op. Biases, normalization scales and
offsets always keep Flax's defaults (except ResNet's ``zero_gamma``).

Example:
    >>> import jax, jax.numpy as jnp
    >>> model = cnn(inits={"head": jax.nn.initializers.zeros})
    >>> model(jnp.ones((2, 28, 28, 1))).shape
    (2, 10)
    >>> float(jnp.abs(model.head.kernel[...]).max())
    0.0
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = [
    "CNN",
    "DecoderBlock",
    "InvertedResidual",
    "MobileNet",
    "ResNet",
    "ResNetBlock",
    "Transformer",
    "cnn",
    "mobilenet",
    "resnet",
    "transformer",
]

Init = Callable[..., Any]
Array = jax.Array

#: BatchNorm settings of every example model (NNX and Linen alike): the Flax ImageNet
#: example's momentum and epsilon.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

#: The names ``inits`` accepts, per model.
RESNET_NAMES = ("stem", "conv1", "conv2", "proj", "head")
MOBILENET_NAMES = ("stem", "expand", "depthwise", "project", "head")
QKV = ("query", "key", "value")
TRANSFORMER_NAMES = ("embed", "pos_embed", *QKV, "out", "mlp_in", "mlp_out", "head")


class Inits:
    """The initializer of each named layer: ``inits[name]``, else ``kernel_init`` (for
    kernels, not embeddings), else Flax's default (no keyword passed at all)."""

    def __init__(
        self,
        model: str,
        names: Sequence[str],
        inits: Mapping[str, Init] | None,
        kernel_init: Init | None,
    ):
        self.inits = dict(inits or {})
        self.kernel_init = kernel_init
        unknown = sorted(set(self.inits) - set(names))
        if unknown:
            raise ValueError(
                f"{model}: no layer named {', '.join(map(repr, unknown))}; the names inits "
                f"accepts are {', '.join(map(repr, names))}"
            )
        for name, init in self.inits.items():
            if not callable(init):
                raise TypeError(f"{model}: inits[{name!r}] must be callable; got {init!r}")
        if kernel_init is not None and not callable(kernel_init):
            raise TypeError(f"{model}: kernel_init must be callable; got {kernel_init!r}")

    def get(self, name: str) -> Init | None:
        """The kernel initializer of the layer ``name`` (None: Flax's default)."""
        return self.inits.get(name, self.kernel_init)

    def kernel(self, name: str) -> dict[str, Any]:
        """``{"kernel_init": ...}`` for the layer ``name``, or ``{}`` (Flax's default)."""
        init = self.get(name)
        return {} if init is None else {"kernel_init": init}

    def embedding(self, name: str) -> dict[str, Any]:
        """``{"embedding_init": inits[name]}``, or ``{}``: ``kernel_init`` does not apply."""
        init = self.inits.get(name)
        return {} if init is None else {"embedding_init": init}


def cnn_names(n_convs: int) -> tuple[str, ...]:
    return (*(f"conv{i + 1}" for i in range(n_convs)), "dense", "head")


def check_cnn(features: Sequence[int]) -> tuple[int, ...]:
    features = tuple(features)
    if not features:
        raise ValueError("cnn: features must hold at least one conv width")
    return features


def check_mobilenet(width: int, blocks: Sequence[tuple[int, int]], expansion: int) -> None:
    cin = width
    for i, (cout, stride) in enumerate(blocks):
        if cin % 2 or (cin * expansion) % 2:
            raise ValueError(
                f"mobilenet: block {i} has {cin} input and {cin * expansion} expanded "
                f"channels; the grouped expand conv (2 groups) needs both even"
            )
        if stride not in (1, 2):
            raise ValueError(f"mobilenet: block {i} has stride {stride}; use 1 or 2")
        cin = cout


def check_transformer(d_model: int, heads: int, length: int, max_len: int) -> None:
    if d_model % heads:
        raise ValueError(f"transformer: d_model={d_model} is not divisible by heads={heads}")
    if length > max_len:
        raise ValueError(f"transformer: sequence length {length} exceeds max_len={max_len}")


def _conv(
    inits: Inits,
    name: str,
    cin: int,
    cout: int,
    size: int,
    *,
    rngs: nnx.Rngs,
    strides: int = 1,
    groups: int = 1,
    bias: bool = False,
) -> nnx.Conv:
    return nnx.Conv(
        cin,
        cout,
        (size, size),
        strides=strides,
        padding="SAME",
        feature_group_count=groups,
        use_bias=bias,
        rngs=rngs,
        **inits.kernel(name),
    )


def _bn(n: int, rngs: nnx.Rngs, *, zero_scale: bool = False) -> nnx.BatchNorm:
    scale_init = nnx.initializers.zeros if zero_scale else nnx.initializers.ones  # Flax's default
    return nnx.BatchNorm(
        n, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, scale_init=scale_init, rngs=rngs
    )


def avg_pool2(x: Array) -> Array:
    """2x2 average pool, stride 2, VALID, on NHWC (Flax's ``avg_pool`` divides by an int
    window size, which strict dtype promotion rejects)."""
    window = (1, 2, 2, 1)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, window, "VALID")
    return total * 0.25


# -- CNN -----------------------------------------------------------------------------------


class CNN(nnx.Module):
    """The MNIST CNN of the Flax examples: for each width in ``features`` a 3x3 SAME conv
    (``conv1``, ``conv2``, ...), relu and a 2x2 average pool; flatten; ``dense`` (``hidden``
    units), relu; ``head`` (``classes`` logits)."""

    def __init__(
        self,
        *,
        features: Sequence[int],
        hidden: int,
        classes: int,
        in_channels: int,
        image_size: int,
        inits: Inits,
        rngs: nnx.Rngs,
    ):
        features = check_cnn(features)
        self.n_convs = len(features)
        cin = in_channels
        for i, cout in enumerate(features):
            name = f"conv{i + 1}"
            setattr(self, name, _conv(inits, name, cin, cout, 3, bias=True, rngs=rngs))
            cin = cout
        side = image_size // 2**self.n_convs
        self.dense = nnx.Linear(side * side * cin, hidden, rngs=rngs, **inits.kernel("dense"))
        self.head = nnx.Linear(hidden, classes, rngs=rngs, **inits.kernel("head"))

    def __call__(self, x: Array) -> Array:
        for i in range(self.n_convs):
            x = avg_pool2(nnx.relu(getattr(self, f"conv{i + 1}")(x)))
        x = x.reshape((x.shape[0], -1))
        return self.head(nnx.relu(self.dense(x)))


def cnn(
    *,
    features: Sequence[int] = (32, 64),
    hidden: int = 256,
    classes: int = 10,
    in_channels: int = 1,
    image_size: int = 28,
    inits: Mapping[str, Init] | None = None,
    kernel_init: Init | None = None,
    rngs: nnx.Rngs | None = None,
) -> CNN:
    """The Flax examples' MNIST CNN (NNX): Conv(32, 3x3) -> relu -> avg_pool 2x2 ->
    Conv(64, 3x3) -> relu -> avg_pool -> flatten -> Dense(256) -> relu -> Dense(10).

    Input ``(B, image_size, image_size, in_channels)``, default ``(B, 28, 28, 1)``; output
    ``(B, classes)`` logits. Layer names (for ``inits``): ``conv1``, ``conv2`` (one per entry
    of ``features``), ``dense``, ``head``.
    """
    features = check_cnn(features)
    spec = Inits("cnn", cnn_names(len(features)), inits, kernel_init)
    return CNN(
        features=features,
        hidden=hidden,
        classes=classes,
        in_channels=in_channels,
        image_size=image_size,
        inits=spec,
        rngs=nnx.Rngs(0) if rngs is None else rngs,
    )


# -- ResNet --------------------------------------------------------------------------------


class ResNetBlock(nnx.Module):
    """A basic block (He et al. 2016): ``conv1`` (3x3, ``strides``) - ``bn1`` - relu -
    ``conv2`` (3x3) - ``bn2``, plus the shortcut, then relu. The shortcut is the identity, or
    ``proj`` (1x1, ``strides``) - ``proj_bn`` when the stride or the width changes. Without
    normalization the ``bn*`` attributes are None and the convs have a bias."""

    def __init__(
        self,
        cin: int,
        cout: int,
        *,
        strides: int,
        norm: bool,
        zero_gamma: bool,
        inits: Inits,
        rngs: nnx.Rngs,
    ):
        bias = not norm
        self.conv1 = _conv(inits, "conv1", cin, cout, 3, strides=strides, bias=bias, rngs=rngs)
        self.bn1 = _bn(cout, rngs) if norm else None
        self.conv2 = _conv(inits, "conv2", cout, cout, 3, bias=bias, rngs=rngs)
        self.bn2 = _bn(cout, rngs, zero_scale=zero_gamma) if norm else None
        if strides != 1 or cin != cout:
            self.proj = _conv(inits, "proj", cin, cout, 1, strides=strides, bias=bias, rngs=rngs)
            self.proj_bn = _bn(cout, rngs) if norm else None
        else:
            self.proj = None
            self.proj_bn = None

    def __call__(self, x: Array) -> Array:
        y = self.conv1(x)
        if self.bn1 is not None:
            y = self.bn1(y)
        y = self.conv2(nnx.relu(y))
        if self.bn2 is not None:
            y = self.bn2(y)
        if self.proj is not None:
            x = self.proj(x)
            if self.proj_bn is not None:
                x = self.proj_bn(x)
        return nnx.relu(x + y)


class ResNet(nnx.Module):
    """``stem`` (3x3 conv) - ``stem_bn`` - relu, ``blocks`` (an ``nnx.List`` of
    :class:`ResNetBlock`), global average pool, ``head``."""

    def __init__(
        self,
        *,
        stage_sizes: Sequence[int],
        width: int,
        classes: int,
        norm: bool,
        zero_gamma: bool,
        in_channels: int,
        inits: Inits,
        rngs: nnx.Rngs,
    ):
        self.stem = _conv(inits, "stem", in_channels, width, 3, bias=not norm, rngs=rngs)
        self.stem_bn = _bn(width, rngs) if norm else None
        blocks = []
        cin = width
        common = {"norm": norm, "zero_gamma": zero_gamma, "inits": inits, "rngs": rngs}
        for stage, size in enumerate(stage_sizes):
            for i in range(size):
                strides = 2 if stage > 0 and i == 0 else 1
                blocks.append(ResNetBlock(cin, width * 2**stage, strides=strides, **common))
                cin = width * 2**stage
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(cin, classes, rngs=rngs, **inits.kernel("head"))

    def __call__(self, x: Array) -> Array:
        x = self.stem(x)
        if self.stem_bn is not None:
            x = self.stem_bn(x)
        x = nnx.relu(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(axis=(1, 2)))


def resnet(
    *,
    stage_sizes: Sequence[int] = (1, 1),
    width: int = 16,
    classes: int = 10,
    norm: bool = True,
    zero_gamma: bool = True,
    in_channels: int = 3,
    inits: Mapping[str, Init] | None = None,
    kernel_init: Init | None = None,
    rngs: nnx.Rngs | None = None,
) -> ResNet:
    """A ResNet with basic blocks (He et al. 2016), NNX, CIFAR-sized.

    Stem 3x3 conv (stride 1) + BatchNorm + relu; stage ``s`` has ``stage_sizes[s]`` basic
    blocks of width ``width * 2**s``, the first block of every stage after the first with
    stride 2 and a projection shortcut (1x1 conv, stride 2, + BatchNorm); global average
    pool; Dense head. ``zero_gamma=True`` initializes the scale of every block's last
    BatchNorm (``bn2``) to zero, so each block starts as its shortcut (Goyal et al. 2017,
    "Accurate, Large Minibatch SGD"; He et al. 2019, "Bag of Tricks"). ``norm=False`` drops
    every BatchNorm and gives the convs a bias. BatchNorm is in training mode
    (``model.eval()`` switches to the running statistics).

    Input ``(B, 32, 32, in_channels)``; output ``(B, classes)``. Layer names (for
    ``inits``): ``stem``, ``conv1``, ``conv2``, ``proj`` (in every block), ``head``.
    Attributes: ``stem``, ``stem_bn``, ``blocks[i]`` with ``conv1``, ``bn1``, ``conv2``,
    ``bn2``, ``proj``, ``proj_bn``; ``head``.
    """
    return ResNet(
        stage_sizes=tuple(stage_sizes),
        width=width,
        classes=classes,
        norm=norm,
        zero_gamma=zero_gamma,
        in_channels=in_channels,
        inits=Inits("resnet", RESNET_NAMES, inits, kernel_init),
        rngs=nnx.Rngs(0) if rngs is None else rngs,
    )


# -- MobileNet -----------------------------------------------------------------------------


class InvertedResidual(nnx.Module):
    """A MobileNet-v2 inverted residual (Sandler et al. 2018): ``expand`` (1x1, 2 groups) -
    ``expand_bn`` - relu6 - ``depthwise`` (3x3, one group per channel, ``strides``) -
    ``depthwise_bn`` - relu6 - ``project`` (1x1) - ``project_bn`` (linear bottleneck), plus
    the input when the stride is 1 and the widths agree."""

    def __init__(
        self,
        cin: int,
        cout: int,
        *,
        strides: int,
        expansion: int,
        inits: Inits,
        rngs: nnx.Rngs,
    ):
        hidden = cin * expansion
        self.residual = strides == 1 and cin == cout
        self.expand = _conv(inits, "expand", cin, hidden, 1, groups=2, rngs=rngs)
        self.expand_bn = _bn(hidden, rngs)
        self.depthwise = _conv(
            inits, "depthwise", hidden, hidden, 3, strides=strides, groups=hidden, rngs=rngs
        )
        self.depthwise_bn = _bn(hidden, rngs)
        self.project = _conv(inits, "project", hidden, cout, 1, rngs=rngs)
        self.project_bn = _bn(cout, rngs)

    def __call__(self, x: Array) -> Array:
        y = nnx.relu6(self.expand_bn(self.expand(x)))
        y = nnx.relu6(self.depthwise_bn(self.depthwise(y)))
        y = self.project_bn(self.project(y))
        return x + y if self.residual else y


class MobileNet(nnx.Module):
    """``stem`` (3x3, stride 2) - ``stem_bn`` - relu6, ``blocks`` (an ``nnx.List`` of
    :class:`InvertedResidual`), global average pool, ``head``."""

    def __init__(
        self,
        *,
        width: int,
        blocks: Sequence[tuple[int, int]],
        expansion: int,
        classes: int,
        in_channels: int,
        inits: Inits,
        rngs: nnx.Rngs,
    ):
        self.stem = _conv(inits, "stem", in_channels, width, 3, strides=2, rngs=rngs)
        self.stem_bn = _bn(width, rngs)
        layers, cin = [], width
        for cout, stride in blocks:
            kw = {"strides": stride, "expansion": expansion, "inits": inits, "rngs": rngs}
            layers.append(InvertedResidual(cin, cout, **kw))
            cin = cout
        self.blocks = nnx.List(layers)
        self.head = nnx.Linear(cin, classes, rngs=rngs, **inits.kernel("head"))

    def __call__(self, x: Array) -> Array:
        x = nnx.relu6(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(axis=(1, 2)))


def mobilenet(
    *,
    width: int = 16,
    blocks: Sequence[tuple[int, int]] = ((16, 1), (24, 2)),
    expansion: int = 4,
    classes: int = 10,
    in_channels: int = 3,
    inits: Mapping[str, Init] | None = None,
    kernel_init: Init | None = None,
    rngs: nnx.Rngs | None = None,
) -> MobileNet:
    """A MobileNet-v2-style net (Sandler et al. 2018), NNX.

    Stem 3x3 conv, stride 2, + BatchNorm + relu6; one inverted-residual block per
    ``(out_channels, stride)`` in ``blocks``: 1x1 expand conv to ``expansion`` times the
    width with ``feature_group_count=2`` (a grouped conv), BN, relu6, 3x3 depthwise conv
    (``feature_group_count`` = channels) with the block's stride, BN, relu6, 1x1 linear
    projection, BN; residual add when the stride is 1 and the widths agree. Global average
    pool, Dense head. BatchNorm is in training mode.

    Input ``(B, 32, 32, in_channels)``; output ``(B, classes)``. Layer names (for
    ``inits``): ``stem``, ``expand``, ``depthwise``, ``project`` (in every block),
    ``head``. Attributes: ``stem``, ``stem_bn``, ``blocks[i]`` with ``expand``,
    ``expand_bn``, ``depthwise``, ``depthwise_bn``, ``project``, ``project_bn``; ``head``.
    """
    blocks = tuple((int(c), int(s)) for c, s in blocks)
    check_mobilenet(width, blocks, expansion)
    return MobileNet(
        width=width,
        blocks=blocks,
        expansion=expansion,
        classes=classes,
        in_channels=in_channels,
        inits=Inits("mobilenet", MOBILENET_NAMES, inits, kernel_init),
        rngs=nnx.Rngs(0) if rngs is None else rngs,
    )


# -- Transformer ---------------------------------------------------------------------------


class DecoderBlock(nnx.Module):
    """A decoder block: ``ln1``, causal self-attention ``attn`` (its projections ``query``,
    ``key``, ``value``, ``out``), ``ln2``, MLP ``mlp_in`` (4 d) - gelu - ``mlp_out``. Pre-LN:
    ``x + f(LN(x))`` for each sublayer; post-LN: ``LN(x + f(x))``."""

    def __init__(
        self,
        d_model: int,
        heads: int,
        *,
        pre_ln: bool,
        dropout: float,
        inits: Inits,
        rngs: nnx.Rngs,
    ):
        self.pre_ln = pre_ln
        self.ln1 = nnx.LayerNorm(d_model, rngs=rngs)
        attn_kw: dict[str, Any] = {}
        if inits.kernel_init is not None:
            attn_kw["kernel_init"] = inits.kernel_init
        if inits.get("out") is not None:
            attn_kw["out_kernel_init"] = inits.get("out")
        self.attn = nnx.MultiHeadAttention(
            heads,
            d_model,
            decode=False,
            dropout_rate=dropout,
            deterministic=False,
            rngs=rngs,
            **attn_kw,
        )
        for name in QKV:  # MultiHeadAttention takes one initializer for all three
            if name in inits.inits:
                kernel = getattr(self.attn, name).kernel
                kernel[...] = inits.inits[name](rngs.params(), kernel.shape, kernel.dtype)
        self.ln2 = nnx.LayerNorm(d_model, rngs=rngs)
        self.mlp_in = nnx.Linear(d_model, 4 * d_model, rngs=rngs, **inits.kernel("mlp_in"))
        self.mlp_out = nnx.Linear(4 * d_model, d_model, rngs=rngs, **inits.kernel("mlp_out"))
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def _attend(self, x: Array, mask: Array) -> Array:
        return self.dropout(self.attn(x, mask=mask))

    def _mlp(self, x: Array) -> Array:
        return self.dropout(self.mlp_out(nnx.gelu(self.mlp_in(x))))

    def __call__(self, x: Array, mask: Array) -> Array:
        if self.pre_ln:
            x = x + self._attend(self.ln1(x), mask)
            return x + self._mlp(self.ln2(x))
        x = self.ln1(x + self._attend(x, mask))
        return self.ln2(x + self._mlp(x))


class Transformer(nnx.Module):
    """``embed`` + ``pos_embed``, ``blocks`` (an ``nnx.List`` of :class:`DecoderBlock`),
    ``final_ln`` (pre-LN only), ``head``."""

    def __init__(
        self,
        *,
        vocab: int,
        d_model: int,
        heads: int,
        layers: int,
        max_len: int,
        pre_ln: bool,
        dropout: float,
        inits: Inits,
        rngs: nnx.Rngs,
    ):
        check_transformer(d_model, heads, 0, max_len)
        self.d_model, self.heads, self.max_len = d_model, heads, max_len
        self.embed = nnx.Embed(vocab, d_model, rngs=rngs, **inits.embedding("embed"))
        self.pos_embed = nnx.Embed(max_len, d_model, rngs=rngs, **inits.embedding("pos_embed"))
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        kw = {"pre_ln": pre_ln, "dropout": dropout, "inits": inits, "rngs": rngs}
        self.blocks = nnx.List([DecoderBlock(d_model, heads, **kw) for _ in range(layers)])
        self.final_ln = nnx.LayerNorm(d_model, rngs=rngs) if pre_ln else None
        self.head = nnx.Linear(d_model, vocab, rngs=rngs, **inits.kernel("head"))

    def __call__(self, tokens: Array) -> Array:
        check_transformer(self.d_model, self.heads, tokens.shape[-1], self.max_len)
        positions = jnp.arange(tokens.shape[-1])
        x = self.embed(tokens) + self.pos_embed(positions)[None]
        x = self.dropout(x)
        mask = nnx.make_causal_mask(tokens)
        for block in self.blocks:
            x = block(x, mask)
        if self.final_ln is not None:
            x = self.final_ln(x)
        return self.head(x)


def transformer(
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
    rngs: nnx.Rngs | None = None,
) -> Transformer:
    """An lm1b-style decoder-only Transformer (Vaswani et al. 2017), NNX.

    Token ``embed`` (``vocab`` x ``d_model``) plus a learned positional ``pos_embed``
    (``max_len`` x ``d_model``); ``layers`` decoder blocks of causal multi-head
    self-attention (``nnx.MultiHeadAttention``, ``heads`` heads, ``decode=False``, mask
    from ``nnx.make_causal_mask``) and an MLP (Dense 4 d, gelu, Dense d), each sublayer
    pre-LN (``x + f(LN(x))``, default) or post-LN (``pre_ln=False``: ``LN(x + f(x))``, as
    in the original paper); with pre-LN a final LayerNorm; Dense logits over the vocabulary.
    ``dropout`` is applied to the embeddings, the attention weights and each sublayer's
    output (``model.eval()`` turns it off); 0 by default.

    Input int32 token ids ``(B, T)``, ``T <= max_len``; output ``(B, T, vocab)`` logits.
    Layer names (for ``inits``): ``embed``, ``pos_embed`` (embeddings: ``kernel_init``
    does not apply to them), ``query``, ``key``, ``value``, ``out`` (the attention
    projections of every block), ``mlp_in``, ``mlp_out``, ``head``. Attributes: ``embed``,
    ``pos_embed``, ``blocks[i]`` with ``ln1``, ``attn`` (``query``, ``key``, ``value``,
    ``out``), ``ln2``, ``mlp_in``, ``mlp_out``; ``final_ln``; ``head``.
    """
    return Transformer(
        vocab=vocab,
        d_model=d_model,
        heads=heads,
        layers=layers,
        max_len=max_len,
        pre_ln=pre_ln,
        dropout=dropout,
        inits=Inits("transformer", TRANSFORMER_NAMES, inits, kernel_init),
        rngs=nnx.Rngs(0) if rngs is None else rngs,
    )
