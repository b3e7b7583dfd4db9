"""Flax MLPs built from varprop initializers, and Probe points for users' own models.

Both the NNX and the Linen MLP are thin wrappers over the pure functions of
:mod:`varprop._src.core.network` (:func:`init_segment`, :func:`forward`,
:func:`norm_forward`): consecutive layers of
the same shape are stored stacked and run with ``lax.scan``, so compile time does not grow
with depth.

Both have a slot for a normalization layer between every hidden layer's pre-activation z
and its activation (``norm="batchnorm"`` or ``"layernorm"``), computed with the pure core
of :mod:`varprop._src.core.normalizers` (``batch_norm``, ``layer_norm``); its scale, bias and running statistics are stacked per
segment like the weights, and scanned with them.

A :class:`Probe` (NNX) or :class:`LinenProbe` placed anywhere in a model records the
summary statistics of the value passing through it (``sow``) and exposes the gradient with
respect to it (``perturb``); :func:`probe_statistics` (NNX) and
:func:`linen_probe_statistics` (Linen) run one forward+backward pass and return both.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as linen
import jax
import jax.numpy as jnp
from flax import nnx

from varprop._src.core.network import (
    Network,
    forward,
    hidden_shapes,
    init_segment,
    make_network,
    norm_forward,
)
from varprop._src.initializers import Initializer, he_normal, zeros
from varprop._src.laws.normalization import NORM_EPSILON, NORMS
from varprop._src.probe import _summary

Array = jax.Array


# -- the normalization slot ----------------------------------------------------------------


def _check_norm_options(norm: object, momentum: object, epsilon: object) -> float | None:
    """Validate the slot's options; return the epsilon to use (``NORM_EPSILON[norm]`` when
    ``epsilon`` is None; ``None`` without a norm)."""
    if norm not in NORMS:
        allowed = ", ".join(repr(n) for n in NORMS)
        raise ValueError(
            f"unknown norm {norm!r}; allowed: {allowed} (a normalization before every hidden "
            f"activation, or None for none)"
        )
    if (
        not isinstance(momentum, numbers.Real)
        or isinstance(momentum, bool)
        or not 0.0 <= float(momentum) < 1.0
    ):
        raise ValueError(
            f"momentum must be a number in [0, 1) (Flax convention: the fraction of the "
            f"running statistic kept at each training step, running <- m*running + "
            f"(1-m)*batch; 1 would never update it); got momentum={momentum!r}"
        )
    if epsilon is not None and (
        not isinstance(epsilon, numbers.Real)
        or isinstance(epsilon, bool)
        or not (math.isfinite(epsilon) and float(epsilon) > 0)
    ):
        raise ValueError(
            f"epsilon must be a finite number > 0 (it is added to the variance before the "
            f"square root) or None for the default {NORM_EPSILON}; got epsilon={epsilon!r}"
        )
    if norm is None:
        return None
    return float(NORM_EPSILON[norm] if epsilon is None else epsilon)  # type: ignore[arg-type]


_SLOT_DOC = r"""
    **The normalization slot.** With ``norm="batchnorm"`` or ``"layernorm"`` every hidden
    layer computes ``h = phi(gamma * (z - mu) / sqrt(sigma^2 + eps) + beta)`` with
    ``z = x W + b``; the output layer stays linear. BatchNorm (Ioffe & Szegedy 2015) takes
    mu and sigma^2 per feature over the batch (training) or from its running statistics
    (evaluation); LayerNorm (Ba, Kiros & Hinton 2016) per example over the features. gamma
    (scale, init 1) and beta (bias, init 0) are learned per feature; BatchNorm's running
    mean and variance (init 0 and 1) move in training by Flax's rule
    ``r <- momentum * r + (1 - momentum) * batch`` (biased batch variance).

    The law it enforces at init: in training mode the BatchNorm output of every hidden
    feature has batch mean 0 and second moment ``sigma_B^2 / (sigma_B^2 + eps)``, i.e. 1 up
    to eps, exactly for every batch and whatever the scale of the kernel initializer (see
    :mod:`varprop._src.laws.normalization`); LayerNorm gives the same per example over the
    features. The activation therefore always sees a standardized input. In evaluation
    mode with never-updated running statistics (0, 1) the layer is ``z / sqrt(1 + eps)``:
    it does not normalize at all.

    Parameters and state are stacked per segment like the weights, shape ``(k, n_out)``,
    and run in the same ``lax.scan``: compile time does not grow with depth.
"""


class MLP(nnx.Module):
    """An NNX MLP: ``widths = (n_0, ..., n_L)``, ``activation`` after every hidden layer,
    a linear output layer, and optionally a normalization before every hidden activation.
    {slot}
    Args:
        widths: ``(n_0, n_1, ..., n_L)``.
        activation: a registered activation (name or spec string).
        kernel_init, bias_init: varprop initializers (one, or one per layer).
        norm: ``None`` (default), ``"batchnorm"`` or ``"layernorm"``.
        momentum: BatchNorm's keep ratio, in [0, 1) (Flax convention; PyTorch's 0.1 is
            0.9 here).
        epsilon: added to the variance, > 0; default 1e-5 for batchnorm, 1e-6 for
            layernorm (as Flax and the probe, ``varprop._src.probe.NORM_EPSILON``).
        use_running_average: BatchNorm in evaluation mode if True. ``model.train()``,
            ``model.eval()``, ``set_attributes`` and ``nnx.view(model,
            use_running_average=...)`` set it; a call may override it.
        param_dtype: dtype of the weights and of the norm's scale and bias (the running
            statistics are float32).
        rngs: random streams (``rngs.params()`` draws the weights).

    Attributes:
        kernels, biases: per segment ``nnx.Param`` of shape ``(k, n_in, n_out)``,
            ``(k, n_out)``.
        norm_scales, norm_biases: per hidden segment ``nnx.Param`` ``(k, n_out)`` (only
            with a norm).
        norm_means, norm_vars: per hidden segment ``nnx.BatchStat`` ``(k, n_out)`` (only
            with ``norm="batchnorm"``).

    Example:
        >>> from flax import nnx
        >>> import jax, jax.numpy as jnp, varprop
        >>> m = varprop.nn.MLP([784, 256, 256, 10], "relu", rngs=nnx.Rngs(0))
        >>> m(jnp.ones((2, 784))).shape
        (2, 10)
        >>> bn = varprop.nn.MLP([16, 32, 32, 4], "relu", norm="batchnorm", rngs=nnx.Rngs(0))
        >>> x = 3.0 + 2.0 * jax.random.normal(jax.random.key(1), (64, 16))
        >>> bn(x).shape                 # training mode: batch statistics, stats updated
        (64, 4)
        >>> [v[...].shape for v in bn.norm_means]   # two hidden layers, one segment
        [(1, 32), (1, 32)]
        >>> bn.eval()                   # running statistics from now on
        >>> bn.use_running_average
        True
    """

    def __init__(
        self,
        widths: Sequence[int],
        activation: str = "relu",
        *,
        kernel_init: Initializer | Sequence[Initializer] | None = None,
        bias_init: Initializer | Sequence[Initializer | None] | None = zeros,
        norm: str | None = None,
        momentum: float = 0.99,
        epsilon: float | None = None,
        use_running_average: bool = False,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.epsilon = _check_norm_options(norm, momentum, epsilon)
        self.network = make_network(
            widths, activation, kernel_init or he_normal(), bias_init, norm=norm
        )
        self.norm = norm
        self.momentum = float(momentum)
        self.use_running_average = use_running_average
        key = rngs.params()
        segs = [
            init_segment(self.network, i, jax.random.fold_in(key, i), param_dtype)
            for i in range(len(self.network.segments()))
        ]
        self.kernels = nnx.List([nnx.Param(p["W"]) for p in segs])
        self.biases = nnx.List([nnx.Param(p["b"]) for p in segs])
        if norm is not None:
            shapes = hidden_shapes(self.network)
            self.norm_scales = nnx.List([nnx.Param(jnp.ones(s, param_dtype)) for s in shapes])
            self.norm_biases = nnx.List([nnx.Param(jnp.zeros(s, param_dtype)) for s in shapes])
        if self.network.norm_kind is not None and self.network.norm_kind.running_statistics:
            shapes = hidden_shapes(self.network)
            self.norm_means = nnx.List([nnx.BatchStat(jnp.zeros(s, jnp.float32)) for s in shapes])
            self.norm_vars = nnx.List([nnx.BatchStat(jnp.ones(s, jnp.float32)) for s in shapes])

    def params_list(self) -> list[dict[str, Array]]:
        return [{"W": w[...], "b": b[...]} for w, b in zip(self.kernels, self.biases, strict=True)]

    def norms_list(self) -> list[dict[str, Array]]:
        """Per hidden segment ``{"scale", "bias"[, "mean", "var"]}`` (empty without a norm)."""
        if self.norm is None:
            return []
        out = [
            {"scale": s[...], "bias": b[...]}
            for s, b in zip(self.norm_scales, self.norm_biases, strict=True)
        ]
        if self.network.norm_kind is not None and self.network.norm_kind.running_statistics:
            for d, m, v in zip(out, self.norm_means, self.norm_vars, strict=True):
                d["mean"], d["var"] = m[...], v[...]
        return out

    def __call__(self, x: Array, *, use_running_average: bool | None = None) -> Array:
        """Run the MLP; with ``norm="batchnorm"`` in training mode, also update the running
        statistics in place. ``use_running_average`` overrides the attribute for this call."""
        if self.norm is None:
            return forward(self.network, self.params_list(), x)
        ura = self.use_running_average if use_running_average is None else use_running_average
        kind = self.network.norm_kind
        train = kind is not None and kind.running_statistics and not ura
        y, stats = norm_forward(
            self.network,
            self.params_list(),
            self.norms_list(),
            x,
            train=train,
            momentum=self.momentum,
            epsilon=self.epsilon,  # type: ignore[arg-type]
        )
        if train:
            for m, v, st in zip(self.norm_means, self.norm_vars, stats, strict=True):
                m[...] = st["mean"]
                v[...] = st["var"]
        return y

    def set_view(self, use_running_average: bool | None = None) -> None:
        """Hook for ``nnx.view(model, use_running_average=...)``."""
        if use_running_average is not None:
            self.use_running_average = use_running_average


class LinenMLP(linen.Module):
    """The Linen twin of :class:`MLP` (parameters ``segment{{i}}`` = ``{{"W", "b"}}`` per
    segment; with a norm also ``norm{{i}}`` = ``{{"scale", "bias"}}`` per hidden segment and,
    for batchnorm, ``batch_stats/norm{{i}}`` = ``{{"mean", "var"}}``).
    {slot}
    Fields are those of :class:`MLP`. In training mode (``use_running_average`` False, the
    default, or given per call) apply with ``mutable=["batch_stats"]``; ``init`` accepts any
    batch (even of one example) and does not update the statistics.

    Example:
        >>> import jax, jax.numpy as jnp, varprop
        >>> model = varprop.nn.LinenMLP([16, 32, 32, 32, 4], "relu", norm="batchnorm")
        >>> v = model.init(jax.random.key(0), jnp.ones((1, 16)))
        >>> x = 3.0 + 2.0 * jax.random.normal(jax.random.key(1), (64, 16))
        >>> y, upd = model.apply(v, x, mutable=["batch_stats"])
        >>> [upd["batch_stats"][f"norm{{i}}"]["mean"].shape for i in range(2)]
        [(1, 32), (2, 32)]
        >>> y_eval = model.apply({{**v, **upd}}, x, use_running_average=True)
    """

    widths: Sequence[int]
    activation: str = "relu"
    kernel_init: Initializer | Sequence[Initializer] | None = None
    bias_init: Initializer | Sequence[Initializer | None] | None = zeros
    norm: str | None = None
    momentum: float = 0.99
    epsilon: float | None = None
    use_running_average: bool = False
    param_dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        _check_norm_options(self.norm, self.momentum, self.epsilon)
        super().__post_init__()

    @linen.compact
    def __call__(self, x: Array, *, use_running_average: bool | None = None) -> Array:
        net: Network = make_network(
            tuple(self.widths),
            self.activation,
            self.kernel_init or he_normal(),
            self.bias_init,
            norm=self.norm,
        )
        params = []
        for i in range(len(net.segments())):

            def init(key, i=i):
                return init_segment(net, i, key, self.param_dtype)

            seg = self.param(f"segment{i}", init)
            params.append(seg)
        if self.norm is None:
            return forward(net, params, x)
        epsilon = _check_norm_options(self.norm, self.momentum, self.epsilon)
        dtype = self.param_dtype
        norms, stat_vars = [], []
        for i, shape in enumerate(hidden_shapes(net)):
            nrm = dict(
                self.param(
                    f"norm{i}",
                    lambda _, s=shape: {"scale": jnp.ones(s, dtype), "bias": jnp.zeros(s, dtype)},
                )
            )
            if net.norm_kind is not None and net.norm_kind.running_statistics:
                var = self.variable(
                    "batch_stats",
                    f"norm{i}",
                    lambda s=shape: {
                        "mean": jnp.zeros(s, jnp.float32),
                        "var": jnp.ones(s, jnp.float32),
                    },
                )
                nrm.update(var.value)
                stat_vars.append(var)
            norms.append(nrm)
        ura = self.use_running_average if use_running_average is None else use_running_average
        initializing = self.is_initializing()
        train = net.norm_kind is not None and net.norm_kind.running_statistics and not ura
        y, stats = norm_forward(
            net,
            params,
            norms,
            x,
            train=train,
            momentum=self.momentum,
            epsilon=epsilon,  # type: ignore[arg-type]
            # While initializing, any batch is accepted (even one example, whose batch
            # variance is 0): only the shapes matter, and nothing is updated.
            allow_single_example=initializing,
        )
        if train and not initializing:
            for var, st in zip(stat_vars, stats, strict=True):
                var.value = st
        return y


MLP.__doc__ = (MLP.__doc__ or "").format(slot=_SLOT_DOC)
LinenMLP.__doc__ = (LinenMLP.__doc__ or "").format(slot=_SLOT_DOC)


# -- probe points --------------------------------------------------------------------------

_STATS = "varprop_stats"
_GRAD = "varprop_grad"


class Probe(nnx.Module):
    """An identity layer that records statistics of what passes through it (NNX).

    Forward: ``[log E[v^2], relative unit variance, all finite, mean]`` is sown as an
    ``nnx.Intermediate`` named ``varprop_stats``. Backward: the value is perturbed
    (``nnx.Perturbation`` ``varprop_grad``), so the gradient of a loss with respect to it is
    available; :func:`probe_statistics` summarises it the same way.
    """

    def __call__(self, x: Array) -> Array:
        self.sow(nnx.Intermediate, _STATS, _summary(x.reshape(-1, x.shape[-1])))
        return self.perturb(_GRAD, x)


class LinenProbe(linen.Module):
    """The Linen twin of :class:`Probe` (``intermediates`` and ``perturbations``)."""

    @linen.compact
    def __call__(self, x: Array) -> Array:
        self.sow("intermediates", _STATS, _summary(x.reshape(-1, x.shape[-1])))
        return self.perturb(_GRAD, x)


def _named_summaries(tree, leaf_name: str) -> dict[str, Array]:
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        keys = [str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path]
        if leaf_name in keys:
            where = "/".join(k for k in keys if k not in (leaf_name, "value", "0"))
            out[where or "probe"] = leaf
    return out


def _default_loss(shape: tuple[int, ...]) -> Callable[[Array], Array]:
    """``y -> sum(y * v)``, v a fixed standard Gaussian (key 0): dL/dy has unit second moment."""
    v = jax.random.normal(jax.random.key(0), shape, jnp.float32)

    def loss(y: Array) -> Array:
        return jnp.sum(y.astype(jnp.float32) * v)

    return loss


def probe_statistics(
    model: nnx.Module, x: Array, loss_fn: Callable[[Array], Array] | None = None
) -> dict[str, dict[str, Array]]:
    """One forward+backward pass through an NNX model with :class:`Probe` points.

    Args:
        model: an NNX module containing ``Probe`` layers.
        x: the input batch.
        loss_fn: maps the model output to a scalar (default ``sum(y * v)``, v a fixed
            standard Gaussian of the output's shape, so dL/dy has unit second moment).

    Returns:
        ``{probe path: {"forward": summary, "backward": summary}}`` where a summary is
        ``[log E[v^2], relative unit variance, all finite, mean]``. The model is not
        mutated (a BatchNorm in training mode uses its batch statistics; its running
        statistics stay as they were).
    """

    def run(m, xx):
        return m(xx)

    # Every pass runs on a fresh copy of the model (same graph, same state), so that
    # what a pass mutates (BatchNorm's running statistics in training mode) never reaches
    # the user's model: like the Linen version, the updates are discarded.
    graphdef, state = nnx.split(model)

    def fresh() -> nnx.Module:
        return nnx.merge(graphdef, state, copy=True)

    # (Also gives the output's shape; a call outside nnx.capture would make the probes'
    # sow warn, deprecated in Flax 0.12.)
    y0, perturbations = nnx.capture(run, nnx.Perturbation)(fresh(), x)
    if loss_fn is None:
        loss_fn = _default_loss(y0.shape)

    def loss(perts, m):
        y, inter = nnx.capture(run, nnx.Intermediate, init=perts)(m, x)
        return loss_fn(y), inter

    grads, inter = nnx.grad(loss, has_aux=True)(perturbations, fresh())
    fwd = _named_summaries(nnx.to_pure_dict(inter), _STATS)
    bwd = {
        k: _summary(g.reshape(-1, g.shape[-1]))
        for k, g in _named_summaries(nnx.to_pure_dict(grads), _GRAD).items()
    }
    return {k: {"forward": fwd[k], "backward": bwd[k]} for k in fwd if k in bwd}


def linen_probe_statistics(
    module: linen.Module,
    variables: Mapping[str, Any],
    x: Array,
    loss_fn: Callable[[Array], Array] | None = None,
) -> dict[str, dict[str, Array]]:
    """One forward+backward pass through a Linen model with :class:`LinenProbe` points: the
    Linen twin of :func:`probe_statistics`.

    The model is applied with ``mutable=["intermediates", ...]`` (plus every collection of
    ``variables`` other than ``params``, so e.g. a BatchNorm in training mode runs; the
    updates are discarded) and the ``perturbations`` collection (zeros, created by an extra
    ``apply`` when ``variables`` lacks it); ``jax.grad`` with respect to the perturbations
    gives dL/d(value) at every probe.

    Args:
        module: a Linen module containing ``LinenProbe`` layers.
        variables: its variables (as returned by ``module.init``).
        x: the input batch (passed as ``module.apply(variables, x)``).
        loss_fn: maps the model output to a scalar (default ``sum(y * v)``, v a fixed
            standard Gaussian of the output's shape, so dL/dy has unit second moment).

    Returns:
        ``{probe path: {"forward": summary, "backward": summary}}`` where a summary is
        ``[log E[v^2], relative unit variance, all finite, mean]`` and the path joins the
        module names with ``/`` (e.g. ``"Block_0/LinenProbe_0"``).

    Example:
        >>> import flax.linen as nn, jax, jax.numpy as jnp, varprop
        >>> class Net(nn.Module):
        ...     @nn.compact
        ...     def __call__(self, x):
        ...         h = varprop.nn.LinenProbe(name="p")(nn.Dense(8)(x))
        ...         return nn.Dense(2)(nn.relu(h))
        >>> x = jnp.ones((4, 3))
        >>> v = Net().init(jax.random.key(0), x)
        >>> r = varprop.nn.linen_probe_statistics(Net(), v, x)
        >>> sorted(r), r["p"]["forward"].shape
        (['p'], (4,))
    """
    base = {k: v for k, v in variables.items() if k not in ("intermediates", "perturbations")}
    mutable = ["intermediates", *(k for k in base if k != "params")]
    perturbations = variables.get("perturbations")
    if perturbations is None:
        _, state = module.apply(base, x, mutable=["perturbations", *mutable])
        perturbations = state.get("perturbations", {})
    if loss_fn is None:
        y0 = jax.eval_shape(lambda: module.apply(base, x, mutable=mutable)[0])
        loss_fn = _default_loss(y0.shape)

    def loss(perts):
        y, state = module.apply({**base, "perturbations": perts}, x, mutable=mutable)
        return loss_fn(y), state.get("intermediates", {})

    grads, inter = jax.grad(loss, has_aux=True)(perturbations)
    fwd = _named_summaries(inter, _STATS)
    bwd = {
        k: _summary(g.reshape(-1, g.shape[-1])) for k, g in _named_summaries(grads, _GRAD).items()
    }
    return {k: {"forward": fwd[k], "backward": bwd[k]} for k in fwd if k in bwd}
