r"""What the experiments share: the probe run on a network and the statistics of seeds.

Every experiment measures with the one instrument, :func:`varprop._src.probe.make_probe`,
on the one network, :mod:`varprop._src.core.network`; the weight scale is traced data, so
one compiled probe serves every scale of a sweep, on the same draws (common random numbers).
The laws come from :func:`varprop.laws.propagate`.

Example:
    >>> import numpy as np
    >>> from varprop._src.initializers import normal
    >>> net = stack(width=64, depth=3, activation="relu", kernel_init=normal(1.0))
    >>> st = probe_fields(net, ["z_lm2", "h_zero"], seeds=4, seed=0, batch=32,
    ...                   weight_scales=[0.5, 0.5, 0.5])
    >>> st["z_lm2"].shape                     # (seeds, layers), numpy float64
    (4, 3)
    >>> h0 = st["h_zero"]                      # ReLU zeroes about half; the output is linear
    >>> bool(np.all(h0[:, :2] > 0.3)), bool(np.all(h0[:, 2] == 0))
    (True, True)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import sympy as sp
from scipy import stats as sstats

from varprop import laws
from varprop._src.core.network import Network, init_params, make_network, scale_kernels
from varprop._src.data import Dataset, Split, load_classification, standardize_split
from varprop._src.experiments.base import Figure, Law, RunConfig, figure_png
from varprop._src.probe import (
    COMPILER_OPTIONS,
    BackwardStats,
    HistogramEdges,
    draw_batch,
    forward_stats,
    probe_params,
)

Array = jax.Array


def law(label: str, expr: Any) -> Law:
    """A :class:`Law` from a SymPy expression or equation (LaTeX rendered by SymPy)."""
    return Law(label, laws.latex(expr), sp.sstr(expr))


def stack(*, width: int | Sequence[int], depth: int | None = None, **network: Any) -> Network:
    """A network of ``depth`` layers of ``width`` units (input width too), or of the given
    ``width`` sequence ``(n_0, ..., n_L)`` when ``depth`` is None; ``network`` holds the
    other arguments of :func:`~varprop._src.core.network.make_network` by name
    (``activation``, ``kernel_init``, ``bias_init``, ``norm``, ...)."""
    widths = tuple(width) if depth is None else (int(width),) * (depth + 1)  # type: ignore[arg-type]
    return make_network(widths, **network)  # type: ignore[arg-type]


def keys_for(seed: int, tag: int, n: int) -> Array:
    """``n`` keys derived from an experiment's ``seed`` and a ``tag`` for the measurement."""
    return jax.random.split(jax.random.fold_in(jax.random.key(seed), tag), n)


def seed_mean(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds (axis 0) and its standard error (ddof 1)."""
    s = values.shape[0]
    return values.mean(0), values.std(0, ddof=1) / math.sqrt(s)


def t_crit(n_seeds: int, n_tests: int, alpha: float = 1e-3) -> float:
    """Two-sided Student-t critical value with ``n_seeds - 1`` degrees of freedom,
    Bonferroni over ``n_tests``."""
    return float(sstats.t.ppf(1 - alpha / (2 * n_tests), n_seeds - 1))


#: Fraction of the data held out for validation in every training experiment.
VALID_FRACTION = 0.2


def standardized(cfg: RunConfig) -> tuple[Dataset, Split]:
    """The classification data of ``cfg`` and its split, both parts standardized with the
    training part's mean and std (key ``cfg.seed``)."""
    ds = load_classification(cfg.data_dir)
    return ds, standardize_split(ds.x, ds.y, VALID_FRACTION, seed=cfg.seed)


def sgd(loss: Callable, lr: float, momentum: float = 0.9):
    """``(init, run)`` for SGD with momentum (optax): ``run((params, init(params)), batches)``
    takes one step per batch in a jitted ``lax.scan`` and returns the new ``(params, state)``
    and each step's record; ``loss(params, batch) -> (value, record)``.

    Example:
        >>> init, run = sgd(lambda p, b: (jnp.sum((p - b) ** 2), p), lr=0.25, momentum=0.0)
        >>> p0 = jnp.zeros(2)
        >>> (p, _), seen = run((p0, init(p0)), jnp.ones((3, 2)))   # halfway to 1 per step
        >>> p.tolist(), seen[:, 0].tolist()
        ([0.875, 0.875], [0.0, 0.5, 0.75])
    """
    opt = optax.sgd(lr, momentum=momentum)

    def step(carry, batch):
        p, s = carry
        (_, record), g = jax.value_and_grad(loss, has_aux=True)(p, batch)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), record

    return opt.init, jax.jit(lambda carry, batches: jax.lax.scan(step, carry, batches))


def cross_entropy(logits: Array, y: Array) -> Array:
    """Mean softmax cross-entropy of integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def figure(name: str, caption: str, fig: Any) -> Figure:
    """A report :class:`Figure` of a matplotlib figure: a legend (font size 7) on each of its
    axes that has labelled artists, then the PNG (the figure is closed)."""
    for ax in fig.axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return Figure(name, caption, figure_png(fig))


_BACKWARD = set(BackwardStats._fields)


@functools.lru_cache(maxsize=16)
def _fields_program(net: Network, batch: int, inputs: Callable | None, fields: tuple[str, ...]):
    backward = bool(_BACKWARD & set(fields))

    def one(key, data, scales, edges):
        kw, kx, kv, _ = jax.random.split(key, 4)  # the probe's draws (make_probe)
        params = init_params(net, kw)
        x, v = draw_batch(net, kx, kv, batch, data=data, inputs=inputs)

        def stats(s, edges):
            p = scale_kernels(net, params, s)
            if not backward:
                st = forward_stats(net, p, x, lean=True)
                return {f: getattr(st, f) for f in fields}
            ps = probe_params(net, p, x, v, edges, lean=True)
            return {f: getattr(ps.backward if f in _BACKWARD else ps.forward, f) for f in fields}

        if scales.ndim == 1:
            return stats(scales, edges)
        axes = None if edges is None else type(edges)(*(0 if e.ndim == 2 else None for e in edges))
        return jax.vmap(stats, (0, axes))(scales, edges)

    return jax.jit(jax.vmap(one, (0, None, None, None)), compiler_options=COMPILER_OPTIONS)


def probe_fields(
    net: Network,
    fields: Sequence[str],
    *,
    seeds: int,
    seed: int,
    batch: int,
    weight_scales: Sequence[float] | np.ndarray,
    tag: int = 0,
    edges: tuple[np.ndarray, np.ndarray] | None = None,
    inputs: Callable[[Array], Array] | None = None,
    data: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The named fields of the probe's forward and backward statistics (those of the lean
    :func:`~varprop._src.probe.make_probe`: the same draws and numbers; float64 numpy arrays
    with a leading seed axis), from a program that
    computes only those: without the backward pass when all are forward statistics, and the
    rest left to XLA's dead-code elimination, so it compiles faster than the whole probe.
    ``weight_scales`` of shape ``(K, L)`` measures K scalings of each seed's draws in one call
    (the weights drawn once; statistics ``(seeds, K, L)``), each with its own bin edges where
    ``edges`` has that leading axis too.

    Example:
        >>> from varprop._src.initializers import normal
        >>> net = stack(width=64, depth=3, activation="relu", kernel_init=normal(1.0))
        >>> from varprop._src.probe import make_probe
        >>> scales = jnp.asarray([0.5, 0.5, 0.5])
        >>> st = make_probe(net, 32, redraws=0, lean=True)(keys_for(0, 0, 4), None, scales)
        >>> z2 = probe_fields(net, ["z_lm2", "gz_lm2"], seeds=4, seed=0, batch=32,
        ...                   weight_scales=scales)
        >>> [bool(np.allclose(z2[f], getattr(s, f))) for f, s in
        ...  (("z_lm2", st.forward), ("gz_lm2", st.backward))]
        [True, True]
    """
    prog = _fields_program(net, batch, inputs, tuple(fields))
    e = None
    if edges is not None:
        e = HistogramEdges(jnp.asarray(edges[0], jnp.float32), jnp.asarray(edges[1], jnp.float32))
    scales = jnp.asarray(weight_scales, jnp.float32)
    out = prog(keys_for(seed, tag, seeds), None if data is None else jnp.asarray(data), scales, e)
    return {k: np.asarray(a, np.float64) for k, a in out.items()}
