r"""The backward half of :mod:`varprop._src.model.propagate`: E[(∂L/∂v)²] of every value.

The forward interpretation left a tape; this walks it in reverse with, per variable, the
second moment of its gradient (an array broadcastable to its shape), starting from
E[(∂L/∂out)²] = 1 on every float output (the Gaussian cotangent of
:func:`varprop.check_model`). Gradients reaching a value along different paths add in
second moment (gradient independence), and:

* a **layer** passes E[g_x²] = (σ² + μ_w²)·opᵀ(E[g_y²], 1) to its input, times the exact
  factor 1 − 2/n (BatchNorm) or 1 − 1/n (LayerNorm) when its output is normalized in train
  mode (:func:`varprop.laws.model_ops.normalized_backward_factor`) — ``exact`` given
  E[g_y²];
* a **function of one value** f(s) passes E[f'(s)²]·E[g²] to s (Gauss–Hermite, f' by
  central differences) — ``mean-field``;
* a **train-mode normalization** passes its backward law
  (:func:`varprop.laws.model_ops.norm_train_backward`) to its input;
* **linear ops** (reshapes, broadcasts, slices, sums, pads, gathers) pass opᵀ(E[g²]), which
  is exact for ops that copy or select and sums the terms of a reduction as if independent;
* two **different values meeting** (a product, attention) pass E[g²] times the other's
  second moment — ``approximation``;
* anything else stops the gradient's prediction (``unknown``).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from varprop._src.model import propagate as P
from varprop._src.model.numpy_ops import dot_transpose, linear_transpose
from varprop._src.model.softmax import softmax_backward
from varprop._src.model.taps import layer_sums_transpose

_LINEAR = frozenset(
    {
        *P._STRUCT,
        "reduce_sum",
        "reduce_window_sum",
        "pad",
        "concatenate",
        "cumsum",
        "dynamic_update_slice",
    }
)
_UNKNOWN = object()


def _vjp(eqn, ins: list[Any], which: list[int], g: np.ndarray) -> list[np.ndarray]:
    """The VJP of the linear op ``eqn`` w.r.t. the operands ``which`` (the others fixed at
    ``ins``), applied to ``g``."""
    params = eqn.primitive.get_bind_params(eqn.params)
    avals = [v.aval for v in eqn.invars]

    def f(*xs):
        ops = list(ins)
        for i, x in zip(which, xs, strict=True):
            ops[i] = x
        out = eqn.primitive.bind(*ops, **params)
        return out[0] if eqn.primitive.multiple_results else out

    zeros = [jnp.zeros(avals[i].shape, jnp.float32) for i in which]
    out_shape = tuple(eqn.outvars[0].aval.shape)
    _, pull = jax.vjp(f, *zeros)
    cot = jnp.asarray(np.broadcast_to(g, out_shape), jnp.float32)
    return [np.asarray(a, np.float64) for a in pull(cot)]


def _derivative_m2(m: P.Moments) -> np.ndarray:
    """E[f'(s)²] of a value f(s) (s Gaussian at its own moments), f' by central
    differences at the quadrature nodes."""
    assert m.src_m is not None and m.fn is not None
    mu_s, sd_s, _ = m.src_m
    z = P._NODES.reshape((-1,) + (1,) * mu_s.ndim)
    t = mu_s[None] + sd_s[None] * z
    h = 1e-4 * (np.abs(t) + sd_s[None] + 1e-30)
    with np.errstate(all="ignore"):
        d = (np.asarray(m.fn(t + h), np.float64) - np.asarray(m.fn(t - h), np.float64)) / (2 * h)
    d = np.where(np.isfinite(d), d, 0.0)
    w = P._WEIGHTS.reshape((-1,) + (1,) * (d.ndim - 1))
    return np.sum(w * d * d, axis=0)


class Backward:
    """Runs the reverse walk over ``interp.tape`` (after the forward run)."""

    def __init__(self, interp: P._Interpreter):
        self.it = interp
        self.G: dict[Any, Any] = {}
        #: E[(∂L/∂x)²] through each layer (its backward row), and how.
        self.layer_back: dict[tuple[int, tuple[int, ...]], tuple[np.ndarray | None, str]] = {}
        self.ix: tuple[int, ...] = ()
        self.norm_at = {n.out: n for n in interp.found.norms}
        #: The worst ``how`` of the values after the current point of the reverse walk:
        #: what the gradient reaching a layer went through.
        self.after = "exact"
        #: ``{layer index: E[(dL/dx)^2]}``: solve those layers' variance for it.
        self.backward_target: dict[int, float] | None = None

    def add(self, k, g) -> None:
        if k is None:
            return
        if g is _UNKNOWN or self.G.get(k) is _UNKNOWN:
            self.G[k] = _UNKNOWN
            return
        g = _fit(np.asarray(g, np.float64), tuple(k[1].aval.shape))
        self.G[k] = g if k not in self.G else self.G[k] + g

    def run(self, out_values: list[Any]) -> None:
        for k, v in zip(self.it.out_keys, out_values, strict=True):
            if isinstance(v, P.Moments):
                self.add(k, np.ones((1,) * len(v.shape)))
        for entry in reversed(self.it.tape):
            if entry[0] == "alias":
                _, to, frm = entry
                if to in self.G:
                    self.add(frm, self.G[to])
                continue
            _, here, eqn, in_keys, out_keys, ins, outs, ix = entry
            self.ix = ix
            hows = [o.how for o in outs if isinstance(o, P.Moments)]
            self.after = P._worst(self.after, *hows)
            gs = [self.G.get(k) for k in out_keys]
            if all(g is None for g in gs):
                continue
            if any(g is _UNKNOWN for g in gs):
                for k, x in zip(in_keys, ins, strict=True):
                    if P._is_abstract(x):
                        self.add(k, _UNKNOWN)
                continue
            try:
                self.step(here, eqn, in_keys, ins, outs, gs[0])
            except Exception:  # no backward rule for this op: unknown from here on
                for k, x in zip(in_keys, ins, strict=True):
                    if P._is_abstract(x):
                        self.add(k, _UNKNOWN)

    def step(self, here, eqn, in_keys, ins, outs, g) -> None:
        name = eqn.primitive.name
        abstract = [i for i, x in enumerate(ins) if isinstance(x, P.Moments)]
        site = self.it.layers.get(here)
        if site is not None:
            self.layer(site, in_keys, ins, g)
            return
        n = self.norm_at.get(here)
        if n is not None and n.mode == "train":
            self.norm(n, g)
            return
        out = outs[0]
        if name == "stop_gradient" or not abstract:
            return
        if here in self.it.softmax and isinstance(out, P.Moments):
            self.softmax(ins[0], out, g, self.it.softmax[here])
            return
        same = all(ins[i].src == getattr(out, "src", None) for i in abstract)
        if isinstance(out, P.Moments) and out.fn is not None and name in P._OPS and same:
            # A function of one value: straight to that value (the ops inside the function
            # are not walked: the composed derivative covers them).
            d = _derivative_m2(out) * g
            self.add(self.it.src_key.get(out.src), d)
            for k in out.through:
                self.add(k, d)
            return
        if name in _LINEAR:
            shapes = [tuple(v.aval.shape) for v in eqn.invars]
            for i in abstract:  # NumPy where it has the rule, else JAX's VJP
                gi = linear_transpose(eqn, i, g, shapes)
                if gi is None:
                    (gi,) = _vjp(eqn, [_zeros_like(x) for x in ins], [i], g)
                self.add(in_keys[i], gi)
            return
        if name == "dot_general":
            # y = a·b: g_a = opᵀ(g, b) with E[g_a²] = opᵀ(E[g²], E[b²]), in NumPy.
            shapes = [tuple(v.aval.shape) for v in eqn.invars]
            dims = eqn.params["dimension_numbers"]
            for i in abstract:
                other = _m2_stored(ins[1 - i])
                self.add(in_keys[i], dot_transpose(dims, i, g, other, shapes))
            return
        if name == "conv_general_dilated":  # a conv of two values (not a layer): JAX's VJP
            fixed = [jnp.asarray(_m2(x), jnp.float32) for x in ins]
            for i in abstract:
                (gi,) = _vjp(eqn, fixed, [i], g)
                self.add(in_keys[i], gi)
            return
        a = [_m2(x) for x in ins]
        if name in ("add", "sub"):
            for i in abstract:
                self.add(in_keys[i], g)
            if isinstance(out, P.Moments) and out.through:
                return  # x + 0 (the zero branch is in out.through): already given
        elif name == "mul" and len(ins) == 2:
            for i in abstract:
                self.add(in_keys[i], g * a[1 - i])
        elif name == "div" and len(ins) == 2:
            den = np.where(a[1] > 0, a[1], np.inf)
            if 0 in abstract:
                self.add(in_keys[0], g / den)
            if 1 in abstract:
                self.add(in_keys[1], g * a[0] / (den * den))
        elif name in ("max", "min") and len(ins) == 2:
            for i in abstract:
                self.add(in_keys[i], g / 2)
        elif name == "select_n" and len(ins) == 3:
            q = np.asarray(ins[0].mu if isinstance(ins[0], P.Moments) else ins[0], np.float64)
            for i, p in ((1, 1 - q), (2, q)):
                if i in abstract:
                    self.add(in_keys[i], g * p)
        elif name in ("reduce_max", "reduce_min"):
            return  # a shift (a softmax's max): its gradient sums to ~0 over the row
        else:
            raise NotImplementedError(name)

    def softmax(self, e, p: P.Moments, g, axes: tuple[int, ...]) -> None:
        """p = softmax(t) over ``axes``, e = f(t): E[(∂L/∂t)²] from the softmax's Jacobian
        (:func:`~varprop._src.model.softmax.softmax_backward`), straight to t, not through
        the numerator and the sum as two independent paths (which would add what the
        softmax's centring cancels)."""
        if not isinstance(e, P.Moments) or e.fn is None or e.src_m is None:
            raise NotImplementedError("a softmax of a value that is not a function of one")
        self.add(self.it.src_key.get(e.src), softmax_backward(e.fn, e.src_m, p.shape, axes, g))

    def layer(self, site, in_keys, ins, g) -> None:
        law = self.it.laws[site.index]
        k = in_keys[site.activation]
        if law is None or site.kind == "embed":
            self.layer_back[(site.index, self.ix)] = (None, "no law" if law is None else "exact")
            return
        t = layer_sums_transpose(site, g)  # opᵀ(E[g_y²], 1), float64 NumPy
        # No factor 1 - 2/n for a normalized output here: E[g_y^2] above is the mean-field
        # value, which leaves out the matching n/(n - 2) (E[1/v] over units of a fan-in n
        # layer, Jensen); the two cancel in E[g_x^2].
        target = (self.backward_target or {}).get(site.index)
        if target is not None:
            taps = float(np.mean(np.asarray(t, np.float64)))
            if taps > 0:  # no gradient reaches it: its scale stays
                law = self.it.laws[site.index] = replace(law, variance=target / taps, mean=0.0)
        gx = (law.variance + law.mean**2) * np.asarray(t, np.float64)
        x = ins[site.activation]
        how = P._worst(self.after, x.how if isinstance(x, P.Moments) else "exact")
        self.layer_back[(site.index, self.ix)] = (gx, how)
        if isinstance(x, P.Moments):
            self.add(k, gx)

    def norm(self, n, g) -> None:
        """Train mode: E[g_u²] from the normalization's backward law."""
        from varprop._src.laws.model_ops import norm_train_backward

        entry = self.it.seen.get(n.center) if n.center else None
        key = self.it.in_keys_at.get(n.center, [None])[0] if n.center else None
        if entry is None or key is None or not isinstance(entry[0][0], P.Moments):
            return
        u = entry[0][0]
        gamma = P._np(self.it.seen[n.scale[0]][0][n.scale[1]]) if n.scale else np.ones(())
        group = max(1, math.prod(n.shape) // max(1, math.prod(n.stat_shape)))
        g_rms = float(np.sqrt(np.mean(gamma * gamma)))
        shared = u.c if n.kind == "batchnorm" else u.mu * u.mu  # as the forward rule
        v = float(np.mean(np.maximum(u.m2 - shared, 0.0)))
        law = float(norm_train_backward(g_rms, v, n.eps, group))
        self.add(key, law * g)


def _fit(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``g`` summed down to broadcast to ``shape`` (the transpose of a broadcast)."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    axes = tuple(d for d in range(g.ndim) if shape[d] == 1 and g.shape[d] > 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def _m2_stored(x) -> np.ndarray:
    """E[x²] as small as it is stored (broadcastable to the value's shape)."""
    if isinstance(x, P.Moments):
        return np.asarray(x.m2, np.float64)
    a = np.asarray(x, np.float64)
    return a * a


def _m2(x) -> np.ndarray:
    """E[x²] at the value's full shape."""
    m2 = _m2_stored(x)
    return np.broadcast_to(m2, x.shape) if isinstance(x, P.Moments) else m2


def _zeros_like(x):
    if isinstance(x, P.Moments):
        return jnp.zeros(x.shape, jnp.float32)
    return x
