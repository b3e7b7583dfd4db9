r"""The network: an MLP as pure JAX functions, below the probe and the Flax modules.

Layer l (1-based) maps its input x (width n_{l-1}) to the pre-activation z = x W_l + b_l
(width n_l) and, except for a linear output layer, to h = phi(norm(z)). Everything that
runs this network uses these functions: the probe (:mod:`varprop._src.probe`, which adds
its taps to :func:`dense`), the NNX and Linen MLPs (:mod:`varprop._src.nn.mlp`) and the
experiments.

Consecutive layers of the same shape, initializer and role form a *segment*; a segment's
weights are stored stacked, ``{"W": (k, n_in, n_out), "b": (k, n_out)}``, and run with
``lax.scan``, so that compile time does not grow with depth.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from varprop._src.initializers import he_normal
    >>> net = make_network((8, 16, 16, 16, 2), "relu", he_normal())
    >>> net.segments()                   # two 16->16 layers scan together
    [(0, 1), (1, 3), (3, 4)]
    >>> params = init_params(net, jax.random.key(0))
    >>> forward(net, params, jnp.ones((4, 8))).shape
    (4, 2)
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp

from varprop._src.core.example_norms import layer_norm
from varprop._src.core.normalizers import batch_norm, batch_stats, normalize
from varprop._src.errors import InputError
from varprop._src.initializers import Initializer
from varprop._src.laws import activations as A
from varprop._src.laws import symbols as S
from varprop._src.laws.normalization import NormKind, norm_kind

Array = jax.Array
ActFn = Callable[[Array], Array]


# -- activations ----------------------------------------------------------------------------


@functools.cache
def _lambdified(act: A.Activation) -> ActFn:
    f = sp.lambdify(S.x, act.expr, modules="jax")

    def fn(z: Array) -> Array:
        return jnp.asarray(f(z), z.dtype)

    return fn


@functools.cache
def _declared(spec: A.JaxFunction, act: A.Activation) -> ActFn:
    """The function ``spec`` names, imported, with ``act``'s keyword arguments bound."""
    module, _, attr = spec.path.rpartition(".")
    fn = getattr(importlib.import_module(module), attr)
    kwargs = spec.keywords(act)
    return functools.partial(fn, **kwargs) if kwargs else fn


def jax_activation(act: str | A.Activation) -> ActFn:
    """The JAX function of a registered activation (name, spec string or object).

    A built-in's record names its JAX function (``Activation.jax_function``, e.g.
    ``jax.nn.leaky_relu`` with ``negative_slope`` as a keyword), imported here when first
    asked for; an activation a user registered with a SymPy expression is lambdified to JAX
    once, when first asked for.

    Example:
        >>> import jax.numpy as jnp
        >>> jax_activation("leaky_relu:negative_slope=0.1")(jnp.array([-1.0, 2.0]))
        Array([-0.1,  2. ], dtype=float32)
    """
    a = A.get_activation(act) if isinstance(act, str) else act
    if a.jax_function is not None:
        return _declared(a.jax_function, a)
    return _lambdified(a)


# -- the network record ---------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Network:
    """An MLP: widths, one activation, an initializer per layer.

    Attributes:
        widths: ``(n_0, n_1, ..., n_L)``: input width, hidden widths, output width.
        activation: a registered activation (name or spec string).
        kernel_inits: one initializer per dense layer (L of them).
        bias_inits: one per layer, or ``None`` for no bias.
        norm: ``None``, ``"batchnorm"`` or ``"layernorm"``: a normalization (at its
            initial state, scale 1 and bias 0, training mode) between every hidden layer's
            z and its activation.
        output_activation: the output layer applies the activation too (a "square stack"
            whose loss sees phi(z_L)); by default it is linear.
        norm_epsilon: the normalization's epsilon (default :data:`NORM_EPSILON`).
    """

    widths: tuple[int, ...]
    activation: str
    kernel_inits: tuple[Initializer, ...]
    bias_inits: tuple[Initializer | None, ...]
    norm: str | None = None
    output_activation: bool = False
    norm_epsilon: float | None = None

    @property
    def depth(self) -> int:
        return len(self.widths) - 1

    @property
    def norm_kind(self) -> NormKind | None:
        """The normalization's record (None without one)."""
        return norm_kind(self.norm)

    @property
    def epsilon(self) -> float:
        """The epsilon of the normalization (0 without one)."""
        kind = self.norm_kind
        if kind is None:
            return 0.0
        return kind.epsilon if self.norm_epsilon is None else self.norm_epsilon

    def is_linear(self, layer: int) -> bool:
        """Whether layer ``layer`` (0-based) has no activation (the linear output layer)."""
        return layer == self.depth - 1 and not self.output_activation

    def segments(self) -> list[tuple[int, int]]:
        """Runs ``(start, stop)`` of consecutive layers with the same shape, init and role.

        A run of two or more layers is computed with ``lax.scan`` so that compile time does
        not grow with depth.
        """
        keys = [
            (
                self.widths[i],
                self.widths[i + 1],
                i == self.depth - 1,
                _init_key(self.kernel_inits[i]),
                _init_key(self.bias_inits[i]),
            )
            for i in range(self.depth)
        ]
        runs, start = [], 0
        for i in range(1, self.depth + 1):
            if i == self.depth or keys[i] != keys[start]:
                runs.append((start, i))
                start = i
        return runs


def _init_key(init: Initializer | None) -> str | None:
    """What makes two layers' initializers the same for scanning: their spec (equal specs
    draw alike), not their identity (a SPEC string makes a new object per layer)."""
    return None if init is None else repr(init)


def check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    """``widths`` as a tuple, or ``InputError`` (``param="widths"``): at least an input and
    an output width, each a whole number in [1, 2**31 - 1]."""
    ws = tuple(widths)
    if len(ws) < 2:
        raise InputError(
            f"widths needs at least an input and an output width, got {list(ws)}", param="widths"
        )
    for w in ws:
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or not 1 <= w < 2**31:
            raise InputError(
                f"widths must be whole numbers in [1, {2**31 - 1}], got {w!r} in {list(ws)}",
                param="widths",
            )
    return tuple(int(w) for w in ws)


def make_network(
    widths: Sequence[int],
    activation: str,
    kernel_init: Initializer | Sequence[Initializer],
    bias_init: Initializer | Sequence[Initializer | None] | None = None,
    norm: str | None = None,
    *,
    output_activation: bool = False,
    norm_epsilon: float | None = None,
) -> Network:
    """Validate and build a :class:`Network`: the one place where an MLP's description is
    checked (the checker, the CLI and the Flax modules all build their network here).

    Raises:
        InputError: (a ``ValueError``) fewer than two widths, a width < 1, a list of
            initializers of the wrong length, an unknown activation or norm.
    """
    widths = check_widths(widths)
    depth = len(widths) - 1
    try:
        A.get_activation(activation)
    except InputError:
        raise
    except (ValueError, TypeError) as e:
        raise InputError(f"activation {activation!r}: {e}", param="activation") from None

    def per_layer(x, what):
        if isinstance(x, Initializer) or x is None:
            return (x,) * depth
        xs = tuple(x)
        if len(xs) != depth:
            raise InputError(
                f"{what}: expected {depth} initializers (one per layer), got {len(xs)}",
                param=what,
            )
        return xs

    norm_kind(norm)  # raises for an unknown norm
    if norm is not None and output_activation:
        raise InputError(
            "output_activation with a norm is not supported: the norm stands before the "
            "hidden activations only; use a linear output layer (output_activation=False)",
            param="output_activation",
        )
    kinits = per_layer(kernel_init, "kernel_init")
    if any(k is None for k in kinits):
        raise InputError("kernel_init may not be None", param="kernel_init")
    return Network(
        widths,
        activation,
        kinits,  # type: ignore[arg-type]
        per_layer(bias_init, "bias_init"),
        norm,
        bool(output_activation),
        norm_epsilon,
    )


# -- weights --------------------------------------------------------------------------------


def init_segment(net: Network, seg: int, key: Array, dtype: Any = jnp.float32) -> dict[str, Array]:
    """Weights of one segment: ``{"W": (k, n_in, n_out), "b": (k, n_out)}``."""
    a, b = net.segments()[seg]
    k = b - a
    n_in, n_out = net.widths[a], net.widths[a + 1]
    wkeys = jax.random.split(jax.random.fold_in(key, 0), k)
    bkeys = jax.random.split(jax.random.fold_in(key, 1), k)
    kinit, binit = net.kernel_inits[a], net.bias_inits[a]
    W = jax.vmap(lambda kw: kinit(kw, (n_in, n_out), dtype))(wkeys)
    if binit is None:
        bias = jnp.zeros((k, n_out), dtype)
    else:
        bias = jax.vmap(lambda kb: binit(kb, (n_out,), dtype))(bkeys)
    return {"W": W, "b": bias}


def init_params(net: Network, key: Array, dtype: Any = jnp.float32) -> list[dict[str, Array]]:
    """Weights for each segment (see :func:`init_segment`)."""
    return [
        init_segment(net, i, jax.random.fold_in(key, i), dtype) for i in range(len(net.segments()))
    ]


def scale_kernels(net: Network, params, weight_scales: Array) -> list[dict[str, Array]]:
    """``params`` with layer l's kernel multiplied by ``weight_scales[l]`` (shape ``(L,)``,
    traced): Var(w_l) becomes ``weight_scales[l]**2`` times the initializer's, the same
    draws for every scale (common random numbers)."""
    out = []
    for (a, b), p in zip(net.segments(), params, strict=True):
        s = weight_scales[a:b].astype(p["W"].dtype)
        out.append({**p, "W": p["W"] * s[:, None, None]})
    return out


# -- the forward pass ------------------------------------------------------------------------


def dense(x: Array, W: Array, b: Array) -> Array:
    """z = x W + b in the input's dtype."""
    return x @ W.astype(x.dtype) + b.astype(x.dtype)[None, :]


def normalize_at_init(net: Network, z: Array) -> Array:
    """Training-mode batch or layer normalization at init (scale 1, bias 0); the identity
    without a norm."""
    kind = net.norm_kind
    if kind is None:
        return z
    axis = 0 if kind.over_batch else 1
    st = batch_stats(z, axis)
    return normalize(
        z,
        st.mean,
        st.var,
        epsilon=net.epsilon,
        reduction_axes=axis,
        feature_axes=1 - axis,
    ).astype(z.dtype)


def forward(net: Network, params, x: Array) -> Array:
    """The plain forward pass at init: ``lax.scan`` over each segment's stacked layers
    (normalizations in training mode with scale 1 and bias 0)."""
    act = jax_activation(net.activation)
    h = x
    for (a, b), p in zip(net.segments(), params, strict=True):
        linear = net.is_linear(b - 1)

        def body(hh, wb, linear=linear):
            z = dense(hh, wb[0], wb[1])
            return (z if linear else act(normalize_at_init(net, z))), None

        if b - a == 1:
            h, _ = body(h, (p["W"][0], p["b"][0]))
        else:
            h, _ = jax.lax.scan(body, h, (p["W"], p["b"]))
    return h


def hidden_shapes(net: Network) -> list[tuple[int, int]]:
    """``(k, n_out)`` of every hidden segment (all segments but the last, the output layer,
    which is always a segment of its own)."""
    return [(b - a, net.widths[a + 1]) for a, b in net.segments()[:-1]]


def norm_forward(
    net: Network,
    params: Sequence[Mapping[str, Array]],
    norms: Sequence[Mapping[str, Array]],
    x: Array,
    *,
    train: bool,
    momentum: float,
    epsilon: float,
    allow_single_example: bool = False,
) -> tuple[Array, list[dict[str, Array]]]:
    """The forward pass with a learned normalization between every hidden z and its
    activation (the Flax MLPs' state: scale, bias, running statistics).

    Args:
        net: the network; ``net.norm`` is ``"batchnorm"`` or ``"layernorm"``.
        params: per segment ``{"W": (k, n_in, n_out), "b": (k, n_out)}``.
        norms: per *hidden* segment (all but the last) ``{"scale", "bias"}`` of shape
            ``(k, n_out)``, and for batchnorm the running ``{"mean", "var"}`` too.
        x: the input batch ``(batch, n_0)``.
        train: batchnorm uses (and updates) the batch statistics if True, the running
            ones if False; layernorm ignores it.
        momentum: batchnorm's keep ratio, ``r <- m*r + (1-m)*batch``.
        epsilon: added to the variance.
        allow_single_example: accept a batch of one in batchnorm training (its batch
            variance is 0, the output the bias); otherwise that raises ``ValueError``.

    Returns:
        ``(y, new_stats)``: the output, and per hidden segment the new running
        ``{"mean", "var"}`` (batchnorm; equal to the old ones when ``train`` is False) or
        ``{}`` (layernorm).
    """
    act = jax_activation(net.activation)
    segs = net.segments()
    if len(norms) != len(segs) - 1:
        raise ValueError(
            f"expected {len(segs) - 1} norm entries (hidden segments), got {len(norms)}"
        )

    def hidden(h, xs):
        z = dense(h, xs["W"], xs["b"])
        if net.norm_kind is not None and net.norm_kind.running_statistics:
            out = batch_norm(
                z,
                xs["scale"],
                xs["bias"],
                xs["mean"],
                xs["var"],
                train=train,
                momentum=momentum,
                epsilon=epsilon,
                axis=-1,
                allow_single_example=allow_single_example,
                dtype=z.dtype,
            )
            return act(out.y), {"mean": out.running_mean, "var": out.running_var}
        y = layer_norm(z, xs["scale"], xs["bias"], epsilon=epsilon, dtype=z.dtype)
        return act(y), {}

    h = x
    new_stats = []
    for (a, b), p, nrm in zip(segs[:-1], params[:-1], norms, strict=True):
        xs = {"W": p["W"], "b": p["b"], **nrm}
        if b - a == 1:
            h, st = hidden(h, jax.tree.map(lambda v: v[0], xs))
            st = jax.tree.map(lambda v: v[None], st)
        else:
            h, st = jax.lax.scan(hidden, h, xs)
        new_stats.append(st)
    last = params[-1]
    y = dense(h, last["W"][0], last["b"][0])
    if net.output_activation:
        y = act(y)
    return y, new_stats
