r"""One jitted call per round of seeds: every layer's statistics, forward and backward.

Per seed: the parameters (redrawn by their own initializers, or as given), a batch of
inputs, the model run through :func:`varprop._src.model.trace.evaluate` with a zero
perturbation on each layer's input and output, and a Gaussian cotangent on the outputs
(E[(dL/d out)^2] = 1; or the gradient of the user's loss). The cotangents of the
perturbations are each layer's dL/dy and the part of dL/dx that flows through it. All
statistics are reduced on the device; nothing returns to the host inside the call.

Per layer (float32, per seed; logs are natural logs, -inf for 0):

* forward: ``x_lm2`` log mean x^2; ``s_lm2`` log of the mean over the outputs of
  op(mean_batch x^2, 1), the sum of E[x^2] over the taps each output reads (module
  :mod:`~varprop._src.model.trace`); ``s_lrs2`` log mean op(x, 1)^2 (for a law with a mean);
  ``y_lm2`` log mean y^2 and ``y_rv`` the relative variance (ddof 1) across the output
  units of their mean squares; ``x_finite``, ``y_finite``.
* backward: the same with v = dL/dy, y = dL/dx through this layer, op^T for op.
* merges: mean a^2, b^2, ab and (a + b)^2; products (attention): mean a^2, b^2,
  op(a^2, b^2) and y^2.
* normalizations: mean z^2 and the mean of its law given the op's own γ, β, statistics
  and input (:mod:`~varprop._src.model.tails`); dropout: mean z^2, u^2 and u^4.

Inside a ``lax.scan`` every statistic has one value per iteration: after the seed axis,
the axes :meth:`~varprop._src.model.trace.Found.iterations` (the perturbations are scanned
over with the data and the statistics come back as the scan's stacked outputs:
:mod:`~varprop._src.model.loops`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from varprop._src.model.adapter import ModelFunction
from varprop._src.model.tails import DropoutSite, NormSite
from varprop._src.model.trace import Found, LayerSite, MergeSite, evaluate
from varprop._src.stats import NARROW_UNITS

F32 = jnp.float32


def _log(x):
    return jnp.log(x)


def _unit_stats(y2: jax.Array, unit_axes: tuple[int, ...], group_pred=None):
    """log mean y^2, and the relative variance across units of their mean squares, each
    divided by its group's predicted value when the groups differ (grouped convs: each
    group of units reads its own input channels)."""
    axes = tuple(d for d in range(y2.ndim) if d not in unit_axes)
    um = jnp.mean(y2, axis=axes).reshape(-1)
    m = jnp.mean(um)
    n = um.shape[0]
    q = um
    if group_pred is not None and group_pred.shape[0] > 1:
        q = um / jnp.repeat(group_pred, n // group_pred.shape[0])
    var = jnp.var(q, ddof=1) if n > 1 else jnp.zeros((), F32)
    qm = jnp.mean(q)
    return _log(m), var / (qm * qm)


def _group_means(t: jax.Array, axis: int) -> jax.Array:
    """Mean of ``t`` over every axis but ``axis``: one value per group."""
    return jnp.mean(t, axis=tuple(d for d in range(t.ndim) if d != axis))


def _rows(v: jax.Array, unit_axes: tuple[int, ...]) -> jax.Array:
    """``v`` as a (rows, units) matrix, the unit axes last."""
    rest = [d for d in range(v.ndim) if d not in unit_axes]
    v = jnp.transpose(v, (*rest, *unit_axes))
    return v.reshape(-1, math.prod(v.shape[len(rest) :]))


def gram_stats(v: jax.Array, prefix: str = "") -> dict[str, jax.Array]:
    r"""The scale-free statistics of a (rows, n) input V that the exact small-sample law of
    a narrow product V W needs (:func:`varprop._src.probe.law_summary`): with s = V 1,
    gram = ||V^T V||^2 / ||V||^4, diag = sum_i (sum_b v_bi^2)^2 / ||V||^4,
    sumfrac = ||V^T s||^2 / (||V||^2 ||s||^2)."""
    u = v / jnp.sqrt(jnp.mean(v * v) + jnp.finfo(F32).tiny)
    b, n = u.shape
    g = u @ u.T if b <= n else u.T @ u
    total = jnp.sum(u * u)
    safe = jnp.where(total > 0, total, 1.0)
    rows = jnp.sum(u, axis=1)
    rs2 = jnp.sum(rows * rows)
    proj = rows @ u
    return {
        prefix + "gram": jnp.sum(g * g) / (safe * safe),
        prefix + "diag": jnp.sum(jnp.square(jnp.sum(u * u, axis=0))) / (safe * safe),
        prefix + "sumfrac": jnp.where(
            rs2 > 0, jnp.sum(proj * proj) / (safe * jnp.where(rs2 > 0, rs2, 1.0)), 0.0
        ),
    }


def is_narrow(site: LayerSite, direction: str) -> bool:
    """Whether a dense layer's row is tested with the exact small-sample law (few units or
    a small fan: the spread across units would estimate its variance poorly)."""
    if site.kind != "dense":
        return False
    fan, units = (
        (site.fan_in, site.units_out) if direction == "forward" else (site.fan_out, site.units_in)
    )
    return min(fan, units) < NARROW_UNITS


def forward_stats(site: LayerSite, x, y, with_mean: bool) -> dict[str, jax.Array]:
    x = jax.lax.stop_gradient(x)
    y32 = jax.lax.stop_gradient(y).astype(F32)
    out: dict[str, jax.Array] = {"y_finite": jnp.all(jnp.isfinite(y32))}
    if site.kind == "embed":
        out["y_lm2"], out["y_rv"] = _unit_stats(y32 * y32, site.y_unit_axes)
        out["x_lm2"] = jnp.zeros((), F32)
        out["s_lm2"] = jnp.zeros((), F32)  # one row of the table: the "fan" is 1
        out["s_lrs2"] = jnp.zeros((), F32)
        out["x_finite"] = jnp.array(True)
        return out
    x32 = x.astype(F32)
    x2 = x32 * x32
    out["x_lm2"] = _log(jnp.mean(x2))
    out["x_finite"] = jnp.all(jnp.isfinite(x32))
    x2b = jnp.mean(x2, axis=site.x_batch_axes, keepdims=True)
    taps = site.tap_sums(x2b)
    out["s_lm2"] = _log(jnp.mean(taps))
    groups = _group_means(taps, site.x_unit_axes[0]) if site.kind == "conv" else None
    out["y_lm2"], out["y_rv"] = _unit_stats(y32 * y32, site.y_unit_axes, groups)
    if with_mean:
        out["s_lrs2"] = _log(jnp.mean(site.tap_sums(x32) ** 2))
    else:
        out["s_lrs2"] = jnp.full((), -jnp.inf, F32)
    # The same of the batch-centered x and y (centered over the batch axes the op acts on
    # row by row, so y_c = op(x_c, W) exactly; the bias and the batch's common direction
    # drop out, and the spread across units is that of the weights alone).
    xc = x32 - jnp.mean(x32, axis=site.x_batch_axes, keepdims=True)
    yc = y32 - jnp.mean(y32, axis=site.y_batch_axes, keepdims=True)
    xc2b = jnp.mean(xc * xc, axis=site.x_batch_axes, keepdims=True)
    ctaps = site.tap_sums(xc2b)
    out["c_s_lm2"] = _log(jnp.mean(ctaps))
    cgroups = _group_means(ctaps, site.x_unit_axes[0]) if site.kind == "conv" else None
    out["c_y_lm2"], out["c_y_rv"] = _unit_stats(yc * yc, site.y_unit_axes, cgroups)
    if with_mean:
        out["c_s_lrs2"] = _log(jnp.mean(site.tap_sums(xc) ** 2))
    else:
        out["c_s_lrs2"] = jnp.full((), -jnp.inf, F32)
    if is_narrow(site, "forward"):
        out |= gram_stats(_rows(x32, site.x_unit_axes))
        out |= gram_stats(_rows(xc, site.x_unit_axes), "c_")
    return out


def backward_stats(site: LayerSite, gx, gy) -> dict[str, jax.Array]:
    gx32 = gx.astype(F32)
    gy32 = gy.astype(F32)
    g2 = gy32 * gy32
    out: dict[str, jax.Array] = {"v_lm2_raw": _log(jnp.mean(g2))}
    g2b = jnp.mean(g2, axis=site.y_batch_axes, keepdims=True)
    taps = site.tap_sums_transposed(g2b)
    out["s_lm2"] = _log(jnp.mean(taps))
    groups = _group_means(taps, site.x_unit_axes[0]) if site.kind == "conv" else None
    y_lm2, y_rv = _unit_stats(gx32 * gx32, site.x_unit_axes, groups)
    out["y_lm2"], out["y_rv"] = y_lm2, y_rv
    out["x_finite"] = jnp.all(jnp.isfinite(gy32))
    out["y_finite"] = jnp.all(jnp.isfinite(gx32))
    if is_narrow(site, "backward"):
        out |= gram_stats(_rows(gy32, site.y_unit_axes))
    return out


def merge_stats(site: MergeSite, a, b) -> dict[str, jax.Array]:
    """A residual add: mean a^2, b^2, ab and (a + b)^2. A product y = op(a, b): mean a^2,
    b^2, y^2 and op(a^2, b^2) (the law of uncorrelated terms)."""
    a = jax.lax.stop_gradient(a)
    b = jax.lax.stop_gradient(b)
    a32, b32 = a.astype(F32), b.astype(F32)
    out = {"a_m2": jnp.mean(a32 * a32), "b_m2": jnp.mean(b32 * b32)}
    if site.kind == "residual":
        out["ab"] = jnp.mean(a32 * b32)
        out["sum_m2"] = jnp.mean((a32 + b32) ** 2)
    else:
        y = site.primitive.bind(a, b, **site.params).astype(F32)
        out["ab"] = jnp.mean(site.product_of_squares(a, b))
        out["sum_m2"] = jnp.mean(y * y)
    return out


@functools.cache
def _norm_laws() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The normalization's train and eval forward laws (:mod:`varprop.laws.model_ops`,
    :mod:`varprop.laws.normalization`) as JAX functions, lambdified once."""
    import sympy as sp

    from varprop._src.laws.model_ops import norm_train_forward
    from varprop._src.laws.normalization import eval_mode_output_moments

    g, b, v, e, mu, var, rm, rv = sp.symbols("gamma beta v epsilon mu var rm rv")
    train = sp.lambdify((g, b, v, e), norm_train_forward(g, b, v, e), modules="jax")
    moments = eval_mode_output_moments(mu, var, rm, rv, e, g, b)
    evalm = sp.lambdify((mu, var, rm, rv, e, g, b), moments.second_moment, modules="jax")
    return train, evalm


Seen = dict[tuple[int, ...], tuple[list[Any], list[Any]]]


def norm_stats(site: NormSite, seen: Seen) -> dict[str, jax.Array]:
    """Mean z^2 of a normalization's output and the mean of its law given the op's own
    statistic r = (s + eps)^(-1/2), γ, β and (eval mode) the moments of its input u over the
    axes its statistics are shared across."""
    sg = jax.lax.stop_gradient
    z = sg(seen[site.out][1][0]).astype(F32)
    r = sg(seen[site.rsqrt][1][0]).astype(F32)
    r = 1.0 / r if site.root else r
    gamma = sg(seen[site.scale[0]][0][site.scale[1]]).astype(F32) if site.scale else 1.0
    beta = sg(seen[site.shift[0]][0][site.shift[1]]).astype(F32) if site.shift else 0.0
    stat = 1.0 / (r * r) - site.eps  # the op's own s: the group's variance, or running var
    train, evalm = _norm_laws()
    if site.mode == "train":
        law = train(gamma, beta, stat, site.eps)
    else:
        assert site.center is not None
        u, c = (sg(a).astype(F32) for a in seen[site.center][0])
        shared = tuple(d for d in range(u.ndim) if r.ndim == u.ndim and r.shape[d] == 1)
        mu = jnp.mean(u, axis=shared, keepdims=True)
        var = jnp.mean(jnp.square(u - mu), axis=shared, keepdims=True)
        law = evalm(mu, var, c, stat, site.eps, gamma, beta)
    return {
        "z_m2": jnp.mean(z * z),
        "law_m2": jnp.mean(jnp.broadcast_to(law, z.shape)),
        "finite": jnp.all(jnp.isfinite(z)),
    }


def dropout_stats(site: DropoutSite, seen: Seen) -> dict[str, jax.Array]:
    """Mean z^2 of the dropout's output and mean u^2, u^4 of its input."""
    u = jax.lax.stop_gradient(seen[site.scale][0][site.operand]).astype(F32)
    z = jax.lax.stop_gradient(seen[site.out][1][0]).astype(F32)
    u2 = u * u
    return {"z_m2": jnp.mean(z * z), "u_m2": jnp.mean(u2), "u_m4": jnp.mean(u2 * u2)}


def gaussian_cotangents(key: jax.Array, outs: list[Any], float_out: list[bool]) -> list[Any]:
    """A standard normal cotangent on every float output (E[(dL/d out)^2] = 1); a float0
    zero on the others."""
    ks = jax.random.split(key, len(outs))
    return [
        jax.random.normal(k, o.shape, o.dtype) if f else np.zeros(o.shape, jax.dtypes.float0)
        for k, o, f in zip(ks, outs, float_out, strict=True)
    ]


def measure(
    found: Found,
    args: list[Any],
    cotangents: Callable[[list[Any]], list[Any]],
    with_mean: frozenset[int] = frozenset(),
) -> dict[str, dict[int, Any]]:
    """Every statistic of one run of the traced model on its flat arguments ``args``
    (parameters, state, inputs, the RNG key, in :func:`find_layers`' order), traceable:
    the model is evaluated with a zero perturbation on each layer's input and output, and
    the VJP of ``cotangents(outputs)`` (the flat outputs' cotangents) gives each layer's
    dL/dy and dL/dx. Returns ``{"forward", "backward", "merge", "norm", "dropout"}``,
    each by site index (the module docstring)."""
    tapped = [s for s in found.layers if s.kind != "embed"]
    # One zero perturbation per iteration for a layer inside a scan.
    eps = {
        s.index: tuple(
            jnp.zeros((*found.iterations(s.eqn), *shape), F32) for shape in (s.x_shape, s.y_shape)
        )
        for s in tapped
    }

    def on_layer(site, x, w, apply, tap):
        del w
        if tap is None:
            y = apply(x)
        else:
            ex, ey = tap
            y = apply(x + ex.astype(x.dtype))
            y = y + ey.astype(y.dtype)
        return y, forward_stats(site, x, y, site.index in with_mean)

    def on_scope(seen: Seen):
        # The normalizations and dropouts of this scope (the model, or a scan's body).
        out: dict[tuple[str, int], Any] = {}
        for n in found.norms:
            if n.out in seen:
                out["norm", n.index] = norm_stats(n, seen)
        for d in found.dropouts:
            if d.out in seen:
                out["dropout", d.index] = dropout_stats(d, seen)
        return out

    def run(eps):
        return evaluate(found, args, on_layer, merge_stats, on_scope, taps=eps)

    outs, pull, records = jax.vjp(run, eps, has_aux=True)
    by_kind: dict[str, dict[int, Any]] = {"layer": {}, "merge": {}, "norm": {}, "dropout": {}}
    for (kind, index), rec in records.items():
        by_kind[kind][index] = rec
    (g_eps,) = pull(cotangents(outs))
    bwd = {}
    for s in tapped:
        stats = functools.partial(backward_stats, s)
        for _ in found.iterations(s.eqn):  # one per iteration
            stats = jax.vmap(stats)
        bwd[s.index] = stats(*g_eps[s.index])
    return {
        "forward": by_kind["layer"],
        "backward": bwd,
        "merge": by_kind["merge"],
        "norm": by_kind["norm"],
        "dropout": by_kind["dropout"],
    }


def make_model_probe(
    mf: ModelFunction,
    found: Found,
    inputs: Any,
    *,
    redraw: bool,
    with_mean: frozenset[int] = frozenset(),
    loss: Callable[[Any], jax.Array] | None = None,
) -> Callable[[jax.Array], dict[str, Any]]:
    """``probe(keys) -> stats``, jitted over ``keys`` (one per seed; vmapped on
    accelerators, mapped one seed after another on the CPU).

    ``inputs`` is a tuple of arrays (the same batch every seed) or a callable
    ``key -> tuple`` (a fresh batch per seed). ``with_mean``: layers whose law has a weight
    mean (the extra statistic ``s_lrs2``)."""
    out_tree = jax.eval_shape(
        lambda: mf.apply(
            mf.params, mf.state, model_args(inputs, jax.random.key(0)), jax.random.key(0)
        )
    )
    out_leaves = jax.tree_util.tree_leaves(out_tree)
    float_out = [jnp.issubdtype(o.dtype, jnp.floating) for o in out_leaves]

    def one_seed(key):
        k_init, k_data, k_cot, k_rng = jax.random.split(key, 4)
        params = mf.redraw(k_init) if redraw else list(mf.params)
        batch = model_args(inputs, k_data)

        def cotangents(outs):
            if loss is not None:
                tree = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_tree), outs)
                return jax.tree_util.tree_leaves(jax.grad(loss)(tree))
            return gaussian_cotangents(k_cot, outs, float_out)

        args = [*params, *mf.state, *jax.tree_util.tree_leaves(batch), k_rng]
        return measure(found, args, cotangents, with_mean)

    if jax.default_backend() == "cpu":
        # One seed after another inside the call: XLA's CPU compiler takes 2.5x longer on
        # a program vmapped over per-seed weights (convs become grouped convs) than on
        # one seed's program, and the CPU has few cores to run seeds side by side.
        return jax.jit(lambda keys: jax.lax.map(one_seed, keys))
    return jax.jit(jax.vmap(one_seed))


def model_args(inputs: Any, key: jax.Array) -> tuple[Any, ...]:
    """The model's positional arguments: ``inputs(key)`` when it is a callable (a fresh
    batch per seed), else ``inputs``; a single array or pytree is one argument."""
    if callable(inputs):
        inputs = inputs(key)
    return inputs if isinstance(inputs, tuple) else (inputs,)
