r"""The API of the propagation: :func:`propagate_model` and its records, built on the
forward interpreter (:mod:`varprop._src.model.propagate`) and its backward pass
(:mod:`varprop._src.model.propagate_backward`); ``docs/model_propagation.md``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from varprop._src.model.propagate import Moments, _Interpreter
from varprop._src.model.propagate_backward import Backward


@dataclass(frozen=True)
class PredictedRow:
    """One prediction: ``path`` and ``direction`` as in :func:`varprop.check_model`'s rows,
    ``predicted`` E[y²] (mean over the value's elements; ``None`` when unknown) and ``how``
    it was obtained (:data:`HOWS`)."""

    path: str
    kind: str
    direction: str
    predicted: float | None
    how: str


@dataclass(frozen=True)
class ModelPropagation:
    """What :func:`propagate_model` predicts, row by row in the order of the computation."""

    rows: tuple[PredictedRow, ...]
    notes: tuple[str, ...] = ()

    def get(self, path: str, direction: str = "forward") -> PredictedRow:
        for r in self.rows:
            if r.path == path and r.direction == direction:
                return r
        raise KeyError(f"no row {path!r} ({direction}); rows: {[r.path for r in self.rows]}")

    def first_nonfinite(self, direction: str = "forward") -> PredictedRow | None:
        """The first layer (in the order of the computation; backward: from the outputs)
        whose predicted root mean square passes float32's largest value, where its values
        overflow to inf (the largest of them can do so up to a layer earlier); ``None``
        when every prediction stays finite."""
        big = float(np.finfo(np.float32).max)
        rows = [r for r in self.rows if r.direction == direction and r.kind != "embed"]
        if direction == "backward":
            rows = rows[::-1]
        for r in rows:
            if r.predicted is not None and (
                not math.isfinite(r.predicted) or math.sqrt(r.predicted) > big
            ):
                return r
        return None

    def table(self) -> str:
        lines = [f"{'path':<36} {'kind':>10} {'dir':>8} {'predicted':>11}  how"]
        for r in self.rows:
            p = "-" if r.predicted is None else f"{r.predicted:.4g}"
            lines.append(f"{r.path:<36} {r.kind:>10} {r.direction:>8} {p:>11}  {r.how}")
        return "\n".join(lines)


def _mean(v) -> tuple[float | None, str]:
    if isinstance(v, Moments):
        return float(np.mean(v.m2)), v.how
    return None, "unknown"


def _input_value(interp: _Interpreter, x) -> Any:
    """Data as the interpreter sees it: floats as their moments over the batch (axis 0)
    (a ``ShapeDtypeStruct``: standard normal), integers as they are."""
    if isinstance(x, jax.ShapeDtypeStruct):
        if jnp.issubdtype(x.dtype, np.floating):
            one = np.ones((1,) * len(x.shape))
            return interp.moments(one, 0 * one, x.shape, "exact")
        return np.ones(x.shape, x.dtype)
    a = np.asarray(x)
    if np.issubdtype(a.dtype, np.floating) and a.ndim > 0:
        a64 = a.astype(np.float64)
        # Per feature (the last axis), over every example and position: the mean, and c,
        # E[x_i x_j] of two distinct elements, by the unbiased pair statistic
        # (S² − Σx²)/(N(N − 1)); the squared sample mean over the batch would count its
        # noise, E[x²]/B, as a part the elements share. E[x²] stays per element.
        rest = tuple(range(a.ndim - 1))
        n = math.prod(a.shape[:-1])
        s, q = np.sum(a64, axis=rest, keepdims=True), np.sum(a64 * a64, axis=rest, keepdims=True)
        c = (s * s - q) / (n * (n - 1)) if n > 1 else np.zeros_like(s)
        m2 = np.mean(a64 * a64, axis=0, keepdims=True)
        return interp.moments(m2, s / n, a.shape, "exact", c=c)
    return a


def trace_for_propagation(model, inputs, variables, call_kwargs, mode, rngs):
    """The model as a pure function, its traced layers, and the flat inputs (arrays or
    ``ShapeDtypeStruct``\\ s)."""
    from varprop._src.model.expected import trace_model

    args = inputs if isinstance(inputs, tuple) else (inputs,)
    leaves, tree = jax.tree_util.tree_flatten(args)
    args0 = jax.tree_util.tree_unflatten(
        tree,
        [
            np.ones(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else np.asarray(x)
            for x in leaves
        ],
    )
    mf, found = trace_model(
        model,
        args0,
        variables=variables,
        mode=mode,
        call_kwargs=call_kwargs,
        rngs=rngs,
        abstract=True,  # nothing is run: the init is traced, only non-layer weights computed
    )
    return mf, found, leaves


def run_both_ways(traced, laws, *, forward_target=None, backward_target=None):
    """One forward interpretation and its backward pass, with each layer's law from
    ``laws``; with a ``forward_target`` (``{layer index: E[y^2]}``) each of those layers'
    variance is solved to give it instead, and with a ``backward_target`` likewise for
    E[(dL/dx)^2] (the solved variances replace ``laws`` in place)."""
    mf, found, leaves = traced
    interp = _Interpreter(found, laws)
    interp.forward_target = forward_target
    flat = [
        *mf.params,
        *mf.state,
        *(_input_value(interp, x) for x in leaves),
        jax.random.key(0),
    ]
    closed = found.jaxpr
    outs = interp.run(closed.jaxpr, closed.consts, flat)
    back = Backward(interp)
    back.backward_target = backward_target
    back.run(outs)
    return interp, back


def propagate_model(
    model: Any,
    inputs: Any,
    *,
    variables: Any = None,
    call_kwargs: dict[str, Any] | None = None,
    expect: dict[str, Any] | None = None,
    mode: str | None = "train",
    rngs: Any = None,
) -> ModelPropagation:
    """Predict E[y²] and E[(∂L/∂x)²] of every layer of a Flax model at init, from its
    structure alone.

    The model is traced as :func:`varprop.check_model` traces it, and its jaxpr is
    interpreted with values that carry second moments (module docstring; the backward pass:
    :mod:`varprop._src.model.propagate_backward`): no program of the model is compiled or
    run. Each row says how its prediction was obtained (``docs/model_propagation.md``).

    Example: He-normal layers on standard normal data keep E[y²] = 2 forward and backward
    (the relu halves both ways):

        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> from varprop.laws import propagate_model
        >>> he = jax.nn.initializers.he_normal()
        >>> def mlp(rngs):
        ...     return nnx.Sequential(
        ...         nnx.Linear(64, 64, kernel_init=he, rngs=rngs),
        ...         jax.nn.relu,
        ...         nnx.Linear(64, 64, kernel_init=he, rngs=rngs),
        ...     )
        >>> p = propagate_model(mlp, jax.ShapeDtypeStruct((16, 64), jnp.float32))
        >>> for r in p.rows:
        ...     print(r.path, r.direction, round(r.predicted, 3), r.how)
        layers/0 forward 2.0 exact
        layers/0 backward 2.0 mean-field
        layers/2 forward 2.0 mean-field
        layers/2 backward 2.0 mean-field

    Args:
        model, variables, call_kwargs, expect, mode, rngs: as :func:`varprop.check_model`.
        inputs: an array or a tuple of arrays (float data enters as its moments over the
            batch axis 0; integer token ids as they are), or ``jax.ShapeDtypeStruct``\\ s
            (float data then standard normal; token ids all 1).
    """
    from varprop._src.model.expected import layer_laws, row_paths

    traced = trace_for_propagation(model, inputs, variables, call_kwargs, mode, rngs)
    mf, found, _ = traced
    paths = row_paths(found)
    laws = layer_laws(found, mf, paths, expect)
    interp, back = run_both_ways(traced, laws)
    from varprop._src.model.loops import suffix
    from varprop._src.model.rows import layer_path

    rows: list[tuple[tuple[Any, ...], PredictedRow]] = []

    def order(eqn, ix):  # the computation's order: a scan's iterations as they ran
        loops = found.loops_of(eqn)
        steps = tuple(lp.step(i) for lp, i in zip(loops, ix, strict=True))
        return (eqn[: len(loops[0].eqn)] if loops else eqn, steps, eqn)

    for site, path in zip(found.layers, paths, strict=True):
        for ix in np.ndindex(*found.iterations(site.eqn)):
            p, how = _mean(interp.at.get((site.eqn, ix)))
            if laws[site.index] is None:
                how = "no law"
            name = path + suffix(ix)
            rows.append((order(site.eqn, ix), PredictedRow(name, site.kind, "forward", p, how)))
            if site.kind != "embed":
                gx, bhow = back.layer_back.get((site.index, ix), (None, "unknown"))
                if gx is None:
                    bp, bhow = None, "unknown" if laws[site.index] is not None else "no law"
                else:
                    bp = float(np.mean(np.broadcast_to(gx, site.x_shape)))
                row = PredictedRow(name, site.kind, "backward", bp, bhow)
                rows.append((order(site.eqn, ix), row))
    for n in found.norms:
        name = layer_path(mf.paths[n.param]) if n.param is not None else f"norm {n.index}"
        for ix in np.ndindex(*found.iterations(n.out)):
            p, how = _mean(interp.at.get((n.out, ix)))
            row = PredictedRow(name + suffix(ix), n.kind, "forward", p, how)
            rows.append((order(n.out, ix), row))
    rows.sort(key=lambda t: t[0])
    notes = (
        [f"inside {', '.join(sorted(set(found.skipped)))}: not predicted"] if found.skipped else []
    )
    if found.loops:
        notes.append(
            "scans are unrolled: each iteration is predicted on its own; gradients reach "
            "the carry, not the scanned-over inputs"
        )
    return ModelPropagation(tuple(r for _, r in rows), tuple(notes))
