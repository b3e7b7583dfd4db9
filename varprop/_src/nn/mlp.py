"""Flax MLPs built from varprop initializers, and Probe points for users' own models.

Both the NNX and the Linen MLP are thin wrappers over the pure functions of
:mod:`varprop._src.probe` (:func:`init_segment`, :func:`forward`): consecutive layers of
the same shape are stored stacked and run with ``lax.scan``, so compile time does not grow
with depth.

A :class:`Probe` (NNX) or :class:`LinenProbe` placed anywhere in a model records the
summary statistics of the value passing through it (``sow``) and exposes the gradient with
respect to it (``perturb``); :func:`probe_statistics` runs one forward+backward pass and
returns both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as linen
import jax
import jax.numpy as jnp
from flax import nnx

from varprop._src.initializers import Initializer, he_normal, zeros
from varprop._src.probe import Network, _summary, forward, init_segment, make_network

Array = jax.Array


class MLP(nnx.Module):
    """An NNX MLP: ``widths = (n_0, ..., n_L)``, ``activation`` after every hidden layer,
    a linear output layer.

    Example:
        >>> from flax import nnx
        >>> import jax.numpy as jnp, varprop
        >>> m = varprop.nn.MLP([784, 256, 256, 10], "relu", rngs=nnx.Rngs(0))
        >>> m(jnp.ones((2, 784))).shape
        (2, 10)
    """

    def __init__(
        self,
        widths: Sequence[int],
        activation: str = "relu",
        *,
        kernel_init: Initializer | Sequence[Initializer] | None = None,
        bias_init: Initializer | Sequence[Initializer | None] | None = zeros,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.network = make_network(widths, activation, kernel_init or he_normal(), bias_init)
        key = rngs.params()
        segs = [
            init_segment(self.network, i, jax.random.fold_in(key, i), param_dtype)
            for i in range(len(self.network.segments()))
        ]
        self.kernels = nnx.List([nnx.Param(p["W"]) for p in segs])
        self.biases = nnx.List([nnx.Param(p["b"]) for p in segs])

    def params_list(self) -> list[dict[str, Array]]:
        return [{"W": w[...], "b": b[...]} for w, b in zip(self.kernels, self.biases, strict=True)]

    def __call__(self, x: Array) -> Array:
        return forward(self.network, self.params_list(), x)


class LinenMLP(linen.Module):
    """The Linen twin of :class:`MLP` (parameters ``W{i}``/``b{i}`` per segment)."""

    widths: Sequence[int]
    activation: str = "relu"
    kernel_init: Initializer | Sequence[Initializer] | None = None
    bias_init: Initializer | Sequence[Initializer | None] | None = zeros
    param_dtype: Any = jnp.float32

    @linen.compact
    def __call__(self, x: Array) -> Array:
        net: Network = make_network(
            tuple(self.widths), self.activation, self.kernel_init or he_normal(), self.bias_init
        )
        params = []
        for i in range(len(net.segments())):

            def init(key, i=i):
                return init_segment(net, i, key, self.param_dtype)

            seg = self.param(f"segment{i}", init)
            params.append(seg)
        return forward(net, params, x)


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
        ``[log E[v^2], relative unit variance, all finite, mean]``.
    """
    if loss_fn is None:
        y0 = jax.eval_shape(lambda: nnx.clone(model)(x))
        v = jax.random.normal(jax.random.key(0), y0.shape, jnp.float32)

        def loss_fn(y):
            return jnp.sum(y.astype(jnp.float32) * v)

    def run(m, xx):
        return m(xx)

    _, perturbations = nnx.capture(run, nnx.Perturbation)(model, x)

    def loss(perts, m):
        y, inter = nnx.capture(run, nnx.Intermediate, init=perts)(m, x)
        return loss_fn(y), inter

    grads, inter = nnx.grad(loss, has_aux=True)(perturbations, model)
    fwd = _named_summaries(nnx.to_pure_dict(inter), _STATS)
    bwd = {
        k: _summary(g.reshape(-1, g.shape[-1]))
        for k, g in _named_summaries(nnx.to_pure_dict(grads), _GRAD).items()
    }
    return {k: {"forward": fwd[k], "backward": bwd[k]} for k in fwd if k in bwd}
