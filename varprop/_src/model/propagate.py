r"""Predict a model's second moments from its structure: abstract interpretation of its jaxpr.

Every value of the traced model is either **concrete** (computed from parameters, state,
literals and integer inputs only: a bias, a causal mask, running statistics) or a
:class:`Moments` record: per element, E[x²] and E[x] over the draw of the weights and the
data, as arrays broadcastable to the value's shape (size 1 along the axes where they do
not vary: the batch, usually the units). The rules, each marked in the result by *how* it
was obtained (``docs/model_propagation.md``):

* **layers** (dense, conv, embedding: :mod:`~varprop._src.model.trace`): the law of the
  layer's initializer given the input's moments, E[y²] = σ² op(E[x²], 1) + μ_w² op(E[x],
  1)², over the exact taps of the op (borders, strides, dilations, groups) — ``exact``;
* **elementwise functions of one value** (a bias and an activation, GELU's
  ``x·Φ(x)``, a mask): E[f(s)²] and E[f(s)] by Gauss–Hermite quadrature, s Gaussian with
  the moments of the value they are a function of (the pre-activation, Gaussian over the
  weights by the central limit theorem) — ``mean-field``;
* **normalizations** (train mode, found by :mod:`~varprop._src.model.tails`): their law
  γ²v/(v+ε) + β² with v = E[u²] − E[u]² per element — ``exact`` given the input moments;
  dropout: E[u²]/(1 − p);
* **everything else** (two different values meeting: a residual add, attention's products,
  a softmax's normalizer; reductions, pooling): as if the terms were independent —
  ``approximation``. A residual add of a branch that ends in a zero-mean layer is exact.

An op without a rule makes its output ``unknown``, and everything after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from varprop._src.model.numpy_ops import ELEMENTWISE, concrete, reduce_window, structural
from varprop._src.model.softmax import softmax_moments
from varprop._src.model.taps import _dot_letters, layer_sums
from varprop._src.model.trace import Found, LayerSite, _subjaxpr, start_env
from varprop._src.verdicts import ExpectedLaw

_FRESH = -1  # numbers of sources made outside the interpreter (slices, stacks): negative

#: How a value was obtained, from the most to the least exact.
HOWS = ("exact", "mean-field", "approximation", "unknown")
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(48)
_WEIGHTS = _WEIGHTS / math.sqrt(2 * math.pi)


def _worst(*hows: str) -> str:
    return HOWS[max((HOWS.index(h) for h in hows), default=0)]


@dataclass(frozen=True)
class Moments:
    """E[x²] (``m2``) and E[x] (``mu``) per element, broadcastable to ``shape``.

    ``src``/``fn``: the value is ``fn(s)`` elementwise, with ``s`` the value numbered
    ``src`` (Gaussian with its own moments ``src_m``): how functions of one value compose
    (GELU's ``x * Φ(x)`` is one function of x, not a product of two values)."""

    m2: np.ndarray
    mu: np.ndarray
    shape: tuple[int, ...]
    how: str
    src: int = -1
    fn: Callable[[np.ndarray], np.ndarray] | None = None
    src_m: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    #: E[x_i x_j] of two distinct elements of the same unit (two examples, two positions):
    #: what a batch statistic, a pooling or attention's average keeps of the value.
    c: np.ndarray = field(default_factory=lambda: np.zeros(()))
    #: Zero branches this value passed through unchanged (``x + 0``: a zero-scale block),
    #: by key: the backward pass gives them the gradient that reaches ``x``.
    through: tuple[Any, ...] = ()

    @property
    def var(self) -> np.ndarray:
        return np.maximum(self.m2 - self.mu * self.mu, 0.0)

    def fresh(self) -> Moments:
        """The same moments as a source of their own (a new number, their Gaussian)."""
        global _FRESH
        _FRESH -= 1
        var = self.var
        with np.errstate(all="ignore"):
            rho = np.where(var > 0, np.clip((self.c - self.mu**2) / var, -1.0, 1.0), 0.0)
        gauss = (self.mu, np.sqrt(var), rho)
        return replace(self, src=_FRESH, fn=None, src_m=gauss, through=())


class Unknown:
    """A value no rule could predict."""

    def __init__(self, shape):
        self.shape = tuple(shape)


def compress(a: np.ndarray, dtype: Any = np.float64) -> np.ndarray:
    """``a`` with every axis along which it is constant reduced to size 1 (as ``dtype``;
    ``None``: its own)."""
    a = np.asarray(a)
    # The axes a broadcast view repeats (stride 0) are constant without looking.
    a = a[tuple(slice(0, 1) if st == 0 else slice(None) for st in a.strides)]
    a = np.asarray(a, dtype)
    for d in range(a.ndim):
        if a.shape[d] > 1:
            first = np.take(a, [0], axis=d)
            if np.array_equal(a, np.broadcast_to(first, a.shape)):
                a = first
    return a


# ----------------------------------------------------------------------------------------
# Elementwise functions in NumPy (for quadrature nodes).
# ----------------------------------------------------------------------------------------


_OPS = ELEMENTWISE
_STRUCT = frozenset(
    {
        "reshape",
        "broadcast_in_dim",
        "transpose",
        "squeeze",
        "expand_dims",
        "slice",
        "dynamic_slice",
        "rev",
        "gather",
        "copy",
        "convert_element_type",
    }
)


def _is_abstract(x) -> bool:
    return isinstance(x, (Moments, Unknown))


def _np(x) -> np.ndarray:
    return np.asarray(x, np.float64)


def _bind(eqn, *ops):
    out = eqn.primitive.bind(*ops, **eqn.primitive.get_bind_params(eqn.params))
    return out if eqn.primitive.multiple_results else [out]


class _Interpreter:
    def __init__(self, found: Found, laws: list[Any]):
        self.found = found
        self.layers = {s.eqn: s for s in found.layers}
        self.laws = laws
        self.norm_out = {n.out: n for n in found.norms}
        self.drop_out = {d.out: d for d in found.dropouts}
        self.watched = found.watched()
        self.seen: dict[tuple[int, ...], tuple[list[Any], list[Any]]] = {}
        #: What each layer and norm gave, by (eqn, the iteration of each enclosing scan).
        self.at: dict[tuple[tuple[int, ...], tuple[int, ...]], Any] = {}
        self.layer_in: dict[int, Any] = {}
        self._src = 0
        #: The forward pass as the backward pass reads it: ``("eqn", here, eqn, in_keys,
        #: out_keys, ins, outs)`` and ``("alias", to_key, from_key)`` (a nested jaxpr's
        #: variable is its caller's); keys are ``(frame, var)``, ``None`` for literals.
        self.tape: list[tuple] = []
        #: ``{layer index: E[y^2]}``: solve those layers' variance for it (solve_init).
        self.forward_target: dict[int, float] | None = None
        #: Where each source value (numbered by :class:`Moments`.src) lives.
        self.src_key: dict[int, Any] = {}
        self.in_keys_at: dict[tuple[int, ...], list[Any]] = {}
        self._frames = 0
        #: The slice indices of the scans being unrolled (``()`` outside loops).
        self.ix: tuple[int, ...] = ()
        #: The softmaxes (``e / sum(e)`` over an axis) by the place of their division:
        #: the backward pass gives them the softmax's Jacobian, not two independent paths.
        self.softmax: dict[tuple[int, ...], tuple[int, ...]] = {}

    # -- values --------------------------------------------------------------------------

    def moments(self, m2, mu, shape, how, fn=None, src=None, src_m=None, c=None) -> Moments:
        """A value's record; ``c`` defaults to E[x_i]E[x_j] (distinct elements independent)."""
        m2c, muc = compress(m2), compress(mu)
        # |E[x_i x_j]| <= max E[x^2] (Cauchy-Schwarz; the pair's own E[x^2] may differ).
        top = float(np.max(m2c)) if m2c.size else 0.0
        cc = compress(muc * muc if c is None else np.minimum(c, max(top, 0.0)))
        if fn is None:
            self._src += 1
            var = np.maximum(m2c - muc * muc, 0.0)
            sd = np.sqrt(var)
            with np.errstate(all="ignore"):
                rho = np.where(var > 0, np.clip((cc - muc * muc) / var, -1.0, 1.0), 0.0)
            return Moments(m2c, muc, tuple(shape), how, self._src, None, (muc, sd, rho), cc)
        assert src is not None
        return Moments(m2c, muc, tuple(shape), how, src, fn, src_m, cc)

    def of_concrete(self, x, shape=None) -> Moments:
        a = _np(x)
        return self.moments(a * a, a, a.shape if shape is None else shape, "exact", c=a * a)

    # -- the walk ------------------------------------------------------------------------

    def run(self, jaxpr, consts, args, where=(), arg_keys=None) -> list[Any]:
        env, read = start_env(jaxpr, consts, args)
        self._frames += 1
        frame = self._frames

        def key(v):
            return None if isinstance(v, jcore.Literal) else (frame, v)

        for v, x in zip(jaxpr.invars, args, strict=True):
            self._note_source(key(v), x)
        if arg_keys is not None:
            for v, k in zip(jaxpr.invars, arg_keys, strict=True):
                if k is not None:
                    self.tape.append(("alias", key(v), k))
        made_by: dict[Any, Any] = {}  # each variable's equation, in this jaxpr
        for i, eqn in enumerate(jaxpr.eqns):
            here = (*where, i)
            ins = [read(v) for v in eqn.invars]
            shapes = [tuple(v.aval.shape) for v in eqn.outvars]
            if eqn.primitive.name == "div" and (axes := _softmax_axes(eqn, made_by)):
                self.softmax[here] = axes
            site = self.layers.get(here)
            sub = _subjaxpr(eqn)
            if site is not None:
                outs = [self.layer(site, ins)]
                self.at[(here, self.ix)] = outs[0]
            elif eqn.primitive.name == "scan" and any(_is_abstract(x) for x in ins):
                outs = self.scan(eqn, ins, here, [key(v) for v in eqn.invars], key)
            elif sub is not None:
                inner = self._frames + 1
                outs = self.run(sub[0], sub[1], ins, here, [key(v) for v in eqn.invars])
                for v, w in zip(eqn.outvars, sub[0].outvars, strict=True):
                    if not isinstance(w, jcore.Literal):
                        self.tape.append(("alias", key(v), (inner, w)))
            elif not any(_is_abstract(x) for x in ins):
                outs = concrete(eqn, ins) or _bind(eqn, *ins)
            elif any(isinstance(x, Unknown) for x in ins):
                outs = [Unknown(s) for s in shapes]
            else:
                try:
                    outs = self.abstract(eqn, ins, shapes)
                except Exception:  # an op without a rule: unknown from here on
                    outs = [Unknown(s) for s in shapes]
            if here in self.watched:
                self.seen[here] = (ins, outs)
                self.in_keys_at[here] = [key(v) for v in eqn.invars]
            if here in self.norm_out:
                outs = [self.norm(self.norm_out[here], outs[0])]
                self.at[(here, self.ix)] = outs[0]
            if here in self.softmax and isinstance(p := outs[0], Moments):
                outs = [self.softmax_out(ins[0], p, self.softmax[here])]
            if here in self.drop_out:
                outs = [self.dropout(self.drop_out[here], outs[0])]
                self.at[(here, self.ix)] = outs[0]
            if eqn.primitive.name in ("add", "sub") and len(ins) == 2:
                for i in (0, 1):  # x + 0 returned x itself: remember the zero branch
                    if outs[0] is ins[i] and isinstance(ins[i], Moments):
                        zero = key(eqn.invars[1 - i])
                        outs = [replace(ins[i], through=(*ins[i].through, zero))]
            for v, o in zip(eqn.outvars, outs, strict=True):
                env[v] = o
                made_by[v] = eqn
                self._note_source(key(v), o)
            if sub is None and eqn.primitive.name != "scan":
                ks = [key(v) for v in eqn.invars]
                out_keys = [key(v) for v in eqn.outvars]
                self.tape.append(("eqn", here, eqn, ks, out_keys, ins, outs, self.ix))
        self.out_keys = [key(v) for v in jaxpr.outvars]
        return [read(v) for v in jaxpr.outvars]

    def scan(self, eqn, ins, here, in_keys, key) -> list[Any]:
        """A ``lax.scan`` unrolled: its body interpreted once per iteration, slice by slice
        (the carry passed on, the ys stacked). Gradients flow back through the carry; the
        xs and ys of the interpretation get none (stacked weights are concrete anyway)."""
        p = eqn.params
        body, n_c, n_k, length = p["jaxpr"], p["num_consts"], p["num_carry"], p["length"]
        consts, carry, xs = ins[:n_c], ins[n_c : n_c + n_k], ins[n_c + n_k :]
        carry_keys = in_keys[n_c : n_c + n_k]
        ys_all: list[list[Any]] = []
        outer_ix = self.ix
        for step in range(length):
            i = length - 1 - step if p["reverse"] else step
            self.ix = (*outer_ix, i)
            xs_i = [_slice(x, i) for x in xs]
            inner = self._frames + 1
            arg_keys = [*in_keys[:n_c], *carry_keys, *([None] * len(xs))]
            outs = self.run(body.jaxpr, body.consts, [*consts, *carry, *xs_i], here, arg_keys)
            carry = outs[:n_k]
            carry_keys = [
                None if isinstance(w, jcore.Literal) else (inner, w)
                for w in body.jaxpr.outvars[:n_k]
            ]
            ys_all.append(outs[n_k:])
        self.ix = outer_ix
        for v, k in zip(eqn.outvars[:n_k], carry_keys, strict=True):
            if k is not None:
                self.tape.append(("alias", key(v), k))
        ys = [_stack([y[j] for y in ys_all], p["reverse"]) for j in range(len(eqn.outvars) - n_k)]
        return [*carry, *ys]

    def _note_source(self, k, x) -> None:
        if k is not None and isinstance(x, Moments) and x.fn is None:
            self.src_key.setdefault(x.src, k)

    # -- rules ---------------------------------------------------------------------------

    def layer(self, site: LayerSite, ins: list[Any]) -> Moments | Unknown:
        x = ins[site.activation]
        law = self.laws[site.index]
        self.layer_in[site.index] = x
        target = (self.forward_target or {}).get(site.index)
        if target is not None and site.kind == "embed":
            law = self.laws[site.index] = ExpectedLaw(float(target), 0.0, 3.0)
        if law is None and target is not None:
            law = ExpectedLaw(1.0, 0.0, 3.0)  # solved below
        if law is None or isinstance(x, Unknown):
            return Unknown(site.y_shape)
        w2, wmu = law.variance + law.mean**2, law.mean
        if site.kind == "embed":
            ones = np.ones((1,) * len(site.y_shape))
            return self.moments(ones * w2, ones * wmu, site.y_shape, "exact", c=ones * wmu**2)
        if not isinstance(x, Moments):
            x = self.of_concrete(x)
        # op(E[x^2], 1) over the op's exact taps (any layout, padding, stride, dilation,
        # groups), in float64 NumPy (no XLA program per shape; moments beyond float32's
        # range, a net about to overflow, stay exact): the batch axes of a conv are
        # reduced to one example.
        shape = list(site.x_shape)
        if site.kind == "conv":
            b = site.params["dimension_numbers"].lhs_spec[0]
            shape[b] = 1
        m2, mu, c = (_mean_to(v, shape) for v in (x.m2, x.mu, x.c))

        def op(a):
            return layer_sums(site, a)

        if target is not None and site.kind != "embed":
            # Solve: the zero-mean variance that gives the layer E[y^2] = target.
            taps = float(np.mean(np.broadcast_to(op(m2), site.y_shape)))
            var = float(target) / taps if taps > 0 else 0.0
            law = self.laws[site.index] = ExpectedLaw(var, 0.0, 3.0)
            wmu = 0.0
        y_m2 = (law.variance * op(m2)) + (wmu * op(mu)) ** 2
        y_mu = wmu * op(mu)
        # Two examples (positions) of one unit share its weights: E[y_a y_b] = σ² Σ E[x_a x_b].
        y_c = (law.variance * op(c)) + (wmu * op(mu)) ** 2
        how = _worst(x.how, "exact")
        return self.moments(y_m2, y_mu, site.y_shape, how, c=y_c)

    def norm(self, n, z) -> Any:
        """Train mode: the law of the normalization from its input's moments."""
        if n.mode != "train":
            return z  # eval mode: an elementwise function of u with concrete statistics
        ins, _ = self.seen.get(n.center, (None, None)) if n.center else (None, None)
        u = ins[0] if ins else None
        if not isinstance(u, Moments):
            return Unknown(n.shape)
        # γ and β reduced to where they vary (equal entries: one number; γ = 1 at init).
        g = compress(self.seen[n.scale[0]][0][n.scale[1]]) if n.scale else np.ones(())
        b = compress(self.seen[n.shift[0]][0][n.shift[1]]) if n.shift else np.zeros(())
        # The group's variance: over a batch (BatchNorm), what the examples share (c) is
        # not variance; over a row's units (LayerNorm), the units are independent.
        v = np.maximum(u.m2 - (u.c if n.kind == "batchnorm" else u.mu * u.mu), 0.0)
        frac = np.where(v > 0, v / (v + n.eps), 0.0)
        m2 = np.broadcast_to(g * g * frac + b * b, n.shape)
        if n.kind == "batchnorm":  # centred over the batch: distinct examples share only β
            c = np.broadcast_to(b * b, n.shape)
        else:  # a row scaled to unit variance keeps its correlation with the other rows
            with np.errstate(all="ignore"):
                rho = np.where(v > 0, (u.c - u.mu * u.mu) / np.where(v > 0, v, 1.0), 0.0)
            c = np.broadcast_to(g * g * frac * np.clip(rho, -1, 1) + b * b, n.shape)
        mu = np.broadcast_to(b, n.shape)
        return self.moments(m2, mu, n.shape, _worst(u.how, "exact"), c=c)

    def softmax_out(self, e, p: Moments, axes) -> Moments:
        """A softmax of e = f(t): its moments by Monte Carlo over t (:mod:`.softmax`)."""
        if not isinstance(e, Moments) or e.fn is None or e.src_m is None:
            return p
        m2, mu, c = softmax_moments(e.fn, e.src_m, p.shape, axes)
        return self.moments(m2, mu, p.shape, _worst(e.how, "mean-field"), c=c)

    def dropout(self, d, z) -> Any:
        ins, _ = self.seen[d.scale]
        u = ins[d.operand]
        if not isinstance(u, Moments):
            return z
        return self.moments(u.m2 / d.keep, u.mu, d.shape, u.how, c=u.c)

    def abstract(self, eqn, ins: list[Any], shapes) -> list[Any]:
        name = eqn.primitive.name
        shape = shapes[0]
        moms = [x for x in ins if isinstance(x, Moments)]
        how = _worst(*(m.how for m in moms))
        if name in _OPS and len(shapes) == 1:
            if len({m.src for m in moms}) == 1:
                return [self.same_source(name, eqn, ins, moms[0], shape, how)]
            return [self.independent(name, ins, shape, how)]
        if name in _STRUCT:

            def moved(field_name):
                x0 = ins[0]
                if len(ins) == 1 and isinstance(x0, Moments):  # NumPy, on the small array
                    r = structural(name, eqn.params, getattr(x0, field_name), x0.shape)
                    if r is not None:
                        return r
                ops = [
                    _f32(getattr(x, field_name), x.shape) if isinstance(x, Moments) else x
                    for x in ins
                ]
                return _np(_bind(eqn, *ops)[0])

            return [self.moments(moved("m2"), moved("mu"), shape, how, c=moved("c"))]
        a = [
            x if isinstance(x, Moments) else self.of_concrete(x, np.shape(x))
            for x in ins
            if not _is_key(x)
        ]
        approx = _worst(how, "approximation")
        if name == "reduce_sum":
            x, axes = a[0], tuple(eqn.params["axes"])
            n = math.prod(x.shape[d] for d in axes)
            f = lambda v: np.sum(np.broadcast_to(v, x.shape), axis=axes)  # noqa: E731
            mu = f(x.mu)
            if len(x.shape) - 1 in axes:  # over the units: independent terms
                m2 = f(x.var) + mu * mu
                c = np.broadcast_to(mu * mu, np.shape(m2))
            else:  # over examples or positions: each of the n(n - 1) pairs shares c
                m2 = f(x.m2) + (n - 1) * f(x.c)
                c = n * f(x.c)
            return [self.moments(m2, mu, shape, approx, c=c)]
        if name in ("reduce_max", "reduce_min"):
            # A shift (a softmax's max): its mean, as if it did not fluctuate.
            x, axes = a[0], tuple(eqn.params["axes"])
            pick = np.max if name == "reduce_max" else np.min
            mu = pick(np.broadcast_to(x.mu, x.shape), axis=axes)
            return [self.moments(mu * mu, mu, shape, approx)]
        if name == "reduce_window_sum":  # pooling over positions: they share c
            x = a[0]
            w = lambda v: _window(eqn, v, x.shape)  # noqa: E731
            k = np.maximum(w(np.ones(())), 1.0)  # the window's taps (fewer at a border)
            mu = w(x.mu)
            m2 = w(x.m2) + (k - 1) * w(x.c)  # each of the k(k - 1) pairs shares c
            return [self.moments(m2, mu, shape, approx, c=k * w(x.c))]
        if name in ("reduce_window_max", "reduce_window_min"):
            x = a[0]
            mu = _window(eqn, x.mu, x.shape)
            m2 = _window(eqn, x.m2, x.shape)
            return [self.moments(np.maximum(m2, mu * mu), mu, shape, approx)]
        if name == "dot_general" and len(a) == 2:
            x, y = a
            dims = eqn.params["dimension_numbers"]

            def d(p, q):
                return _dot_general(np.broadcast_to(p, x.shape), np.broadcast_to(q, y.shape), dims)

            mu = d(x.mu, y.mu)
            m2 = d(x.m2, y.m2) + mu * mu - d(x.mu**2, y.mu**2)
            (ca, cb), _ = dims
            units = all(i == len(x.shape) - 1 for i in ca) and all(
                j == len(y.shape) - 1 for j in cb
            )
            if not units:
                # Over positions (attention's weights times the values): distinct terms
                # share their covariance, E[a_j a_k] E[b_j b_k] ~ mu_aj mu_ak cov_b +
                # cov_a mu_bj mu_bk (the product of the two covariances left out).
                cov_a = max(float(np.mean(x.c - x.mu * x.mu)), 0.0)
                cov_b = max(float(np.mean(y.c - y.mu * y.mu)), 0.0)
                one_a, one_b = np.ones(()), np.ones(())
                m2 = m2 + cov_b * (d(x.mu, one_b) ** 2 - d(x.mu**2, one_b))
                m2 = m2 + cov_a * (d(one_a, y.mu) ** 2 - d(one_a, y.mu**2))
            return [self.moments(np.maximum(m2, 0.0), mu, shape, approx)]
        if name in ("concatenate", "pad", "dynamic_update_slice"):
            m2 = _np(_bind(eqn, *(_f32(x.m2, x.shape) for x in a))[0])
            mu = _np(_bind(eqn, *(_f32(x.mu, x.shape) for x in a))[0])
            c = _np(_bind(eqn, *(_f32(x.c, x.shape) for x in a))[0])
            return [self.moments(m2, mu, shape, how, c=c)]
        return [Unknown(s) for s in shapes]

    def same_source(self, name, eqn, ins, m: Moments, shape, how) -> Moments:
        """A function of one value: compose it and integrate over that value's Gaussian."""
        op = _OPS[name]
        params = eqn.params
        parts: list[Any] = []
        for x in ins:
            if isinstance(x, Moments):
                parts.append(x.fn or (lambda t: t))
            else:
                # A concrete operand reduced to where it varies (a bias of equal entries
                # is one number): the quadrature runs on the smallest shape.
                parts.append(compress(x, None) if not _is_key(x) else x)

        def fn(t):
            args = [p(t) if callable(p) else p for p in parts]
            if op is None:  # integer_pow
                return args[0] ** params["y"]
            return op(*args)

        assert m.src_m is not None
        mu_s, sd_s, rho = m.src_m
        t = mu_s[None] + sd_s[None] * _NODES.reshape((-1,) + (1,) * mu_s.ndim)
        with np.errstate(all="ignore"):
            vals = np.asarray(fn(t), np.float64)
        w = _WEIGHTS.reshape((-1,) + (1,) * (vals.ndim - 1))
        m2 = np.sum(w * vals * vals, axis=0)
        mu = np.sum(w * vals, axis=0)
        if not np.any(np.abs(rho) > 1e-9):  # independent examples: E[f]E[f]
            c = mu * mu
        elif np.all(rho > 1 - 1e-9):  # one value shared by all: E[f^2]
            c = m2
        else:
            c = _pair_moment(fn, mu_s, sd_s, rho)
        out = self.moments(m2, mu, shape, _worst(how, "mean-field"), fn, m.src, m.src_m, c=c)
        through = tuple(k for x in ins if isinstance(x, Moments) for k in x.through)
        return replace(out, through=through) if through else out

    def independent(self, name, ins, shape, how) -> Moments | Unknown:
        """Two different values meeting elementwise, as if independent."""
        a = [x if isinstance(x, Moments) else self.of_concrete(x, np.shape(x)) for x in ins]
        approx = _worst(how, "approximation")
        if name in ("add", "sub") and len(a) == 2:
            x, y = a
            for keep, zero in ((ins[0], y), (ins[1], x)):
                # A branch that is exactly 0 (a zero-scale block at init): the other value.
                if isinstance(keep, Moments) and not np.any(zero.m2) and keep.shape == shape:
                    return keep
            sign = 1.0 if name == "add" else -1.0
            mu = x.mu + sign * y.mu
            m2 = x.m2 + y.m2 + 2 * sign * x.mu * y.mu
            c = x.c + y.c + 2 * sign * x.mu * y.mu
            exact = np.all(x.mu * y.mu == 0)  # a zero-mean branch: E[ab] = 0
            how2 = _worst(how, "mean-field") if exact else approx
            return self.moments(m2, mu, shape, how2, c=c)
        if name == "mul" and len(a) == 2:
            x, y = a
            return self.moments(x.m2 * y.m2, x.mu * y.mu, shape, approx, c=x.c * y.c)
        if name == "div" and len(a) == 2:
            x, y = a
            den = np.where(y.m2 > 0, y.m2, np.inf)
            mu = x.mu / np.where(y.mu != 0, y.mu, np.inf)
            return self.moments(x.m2 / den, mu, shape, approx, c=x.c / den)
        if name in ("max", "min") and len(a) == 2:
            x, y = a
            pick = np.maximum if name == "max" else np.minimum
            return self.moments(pick(x.m2, y.m2), pick(x.mu, y.mu), shape, approx, c=pick(x.c, y.c))
        if name == "select_n" and len(a) == 3:
            p, x, y = a  # P(case 1) from the predicate's mean
            q = p.mu
            mix = lambda u, v: (1 - q) * u + q * v  # noqa: E731
            return self.moments(mix(x.m2, y.m2), mix(x.mu, y.mu), shape, approx, c=mix(x.c, y.c))
        return Unknown(shape)


def _softmax_axes(div, made_by) -> tuple[int, ...]:
    """The axes of a softmax ``div`` (e / sum(e) with the sum over axes of e itself,
    broadcast back through reshapes, broadcasts and conversions; any axis, masked or not);
    ``()`` for any other division."""
    num, den = div.invars

    def made(v):
        return None if isinstance(v, jcore.Literal) else made_by.get(v)

    eqn = made(den)
    while eqn is not None and eqn.primitive.name in _PASS_THROUGH:
        eqn = made(eqn.invars[0])
    if eqn is not None and eqn.primitive.name == "reduce_sum" and eqn.invars[0] is num:
        return tuple(eqn.params["axes"])
    return ()


_PASS_THROUGH = frozenset({"broadcast_in_dim", "reshape", "convert_element_type", "copy"})


def _dot_general(a: np.ndarray, b: np.ndarray, dims) -> np.ndarray:
    """``lax.dot_general`` in NumPy (float64): batch axes, then a's free, then b's."""
    sa, sb, out = _dot_letters(np.ndim(a), np.ndim(b), dims)
    return np.einsum(f"{sa},{sb}->{out}", np.asarray(a, np.float64), np.asarray(b, np.float64))


_N2, _W2 = np.polynomial.hermite_e.hermegauss(16)
_W2 = _W2 / math.sqrt(2 * math.pi)


def _pair_moment(fn, mu_s, sd_s, rho) -> np.ndarray:
    """E[f(s_a) f(s_b)] for s_a, s_b Gaussian at (mu_s, sd_s) with correlation ``rho``: two
    examples (positions) of a value that is a function of one value (2-D Gauss-Hermite)."""
    mu_s, sd_s, rho = np.broadcast_arrays(np.asarray(mu_s), np.asarray(sd_s), np.asarray(rho))
    shape = (-1, 1) + (1,) * np.ndim(mu_s)
    z1 = _N2.reshape(shape)
    z2 = _N2.reshape((1, -1) + (1,) * np.ndim(mu_s))
    r = np.asarray(rho)[None, None]
    sa = mu_s[None, None] + sd_s[None, None] * z1
    sb = mu_s[None, None] + sd_s[None, None] * (r * z1 + np.sqrt(np.maximum(1 - r * r, 0)) * z2)
    sa = np.broadcast_to(sa, sb.shape)
    with np.errstate(all="ignore"):
        fa = np.asarray(fn(sa.reshape((-1, *sa.shape[2:]))), np.float64)
        fb = np.asarray(fn(sb.reshape((-1, *sb.shape[2:]))), np.float64)
    w = (_W2[:, None] * _W2[None, :]).reshape((-1,) + (1,) * (fa.ndim - 1))
    return np.sum(w * fa * fb, axis=0)


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _f32(a, shape) -> np.ndarray:
    return np.broadcast_to(np.asarray(a, np.float32), shape)


def _slice(x, i: int):
    """Slice ``i`` of a scanned-over value (its leading axis)."""
    if isinstance(x, Moments):
        pick = lambda a: a[i] if np.shape(a)[0] > 1 else a[0]  # noqa: E731
        return Moments(
            pick(x.m2), pick(x.mu), x.shape[1:], x.how, -1, None, None, pick(x.c)
        ).fresh()
    if isinstance(x, Unknown):
        return Unknown(x.shape[1:])
    return x[i]


def _stack(vals: list[Any], reverse: bool) -> Any:
    """The ys of a scan: per-iteration values stacked in slice order."""
    if reverse:
        vals = vals[::-1]
    if any(isinstance(v, Unknown) for v in vals):
        return Unknown((len(vals), *tuple(getattr(vals[0], "shape", np.shape(vals[0])))))
    if not any(isinstance(v, Moments) for v in vals):
        return np.stack([np.asarray(v) for v in vals])
    if not all(isinstance(v, Moments) for v in vals):
        return Unknown((len(vals), *np.shape(vals[0])))
    ms = [v for v in vals if isinstance(v, Moments)]
    full = lambda f: np.stack([np.broadcast_to(getattr(m, f), m.shape) for m in ms])  # noqa: E731
    how = _worst(*(m.how for m in ms))
    return Moments(
        full("m2"), full("mu"), (len(vals), *ms[0].shape), how, -1, None, None, full("c")
    ).fresh()


def _window(eqn, a, shape) -> np.ndarray:
    """A reduce_window of a moment array: NumPy where it can, else the primitive."""
    r = reduce_window(eqn.primitive.name, eqn.params, a, shape)
    return r if r is not None else _np(_bind(eqn, _f32(a, shape))[0])


def _mean_to(a: np.ndarray, shape) -> np.ndarray:
    """``a`` averaged over the axes where ``shape`` has size 1 and ``a`` does not."""
    a = np.asarray(a, np.float64)
    axes = tuple(d for d in range(a.ndim) if shape[d] == 1 and a.shape[d] > 1)
    return np.mean(a, axis=axes, keepdims=True) if axes else a
