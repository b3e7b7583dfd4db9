r"""Normalizations and dropout in a traced model, found by their arithmetic.

Whatever module wrote them (Flax's BatchNorm, LayerNorm, GroupNorm, RMSNorm, a user's
own), a normalization in a jaxpr is

.. math:: z = (u - c) \cdot r\,\gamma + \beta, \qquad r = (s + \epsilon)^{-1/2}

and inverted dropout is ``z = select(mask, u / keep, 0)`` with ``mask`` drawn from random
bits. :class:`Tails` follows the walk of :mod:`varprop._src.model.trace` and records where
each is, so that the probe can read ``u``, ``c``, ``r``, ``γ``, ``β`` and ``z`` and test
their own laws (:mod:`varprop.laws.model_ops`) given the actual input:

* **train mode**: ``s`` is a mean over the group (a ``reduce_sum`` divided by its count)
  of the data itself: ``E[z^2] = γ^2 v/(v + ε) + β^2`` over each group, with ``v = 1/r^2 -
  ε`` the op's own statistic (the variance, or the mean square for an RMSNorm);
* **eval mode**: ``s`` and ``c`` come from state, not from the data (running variance and
  mean): ``E[z^2] = γ^2 (Var u + (E u - c)^2)/(s + ε) + 2γβ (E u - c)/\sqrt{s+ε} + β^2``
  with the moments of ``u`` over the axes the statistics are shared across;
* **dropout**: ``E[z^2] = E[u^2]/keep``, a sum of independent terms whose variance given
  ``u`` is ``sum u^4 (1 - keep)/keep^3``.

A rsqrt of something else (an L2 normalization: a sum, not a mean; a constant) is not a
normalization here, and gets no row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from jax.extend import core as jcore

#: Primitives that draw random bits.
RANDOM = frozenset(
    {"random_bits", "threefry2x32", "rng_bit_generator", "random_wrap", "random_fold_in"}
)
#: Elementwise ops along which a value stays "itself" (a bias, a scale, the mean
#: subtracted): a normalization's statistics of a layer's output after them are its own.
ELEMENTWISE = frozenset(
    {"add", "sub", "mul", "div", "square", "integer_pow", "convert_element_type", "neg"}
    | {"copy", "copy_p"}
)
#: Ops a statistic stays a statistic through (broadcasting it back, clipping it at 0, ...).
_PASS = ELEMENTWISE | {
    "max",
    "min",
    "reshape",
    "broadcast_in_dim",
    "squeeze",
    "expand_dims",
    "transpose",
    "stop_gradient",
    "select_n",
}
_SHAPE = frozenset(
    {"reshape", "broadcast_in_dim", "squeeze", "expand_dims", "transpose", "convert_element_type"}
)

Eqn = tuple[int, ...]
Operand = tuple[Eqn, int]


@dataclass(frozen=True)
class TailInfo:
    """What the walk knows of a value for this module (all empty for most values)."""

    #: The count a ``reduce_sum`` summed over (its output only).
    summed: int = 0
    #: A mean over a group of data values, or something computed from one.
    mean_stat: bool = False
    #: ``x + eps`` with a literal eps: the eps.
    plus: float | None = None
    #: The normalizations whose ``r`` this value carries, and where γ multiplied it.
    inv: frozenset[int] = frozenset()
    scale_at: Operand | None = None
    #: ``u - c``: the sub's eqn, and whether ``c`` is a statistic of the data.
    center: Eqn | None = None
    #: The normalization this value is the output of (so far).
    normed: int | None = None
    #: Derived from random bits only: how many were drawn (a mask broadcast over some
    #: axes has fewer draws than values).
    random: int = 0
    #: ``u / keep`` or ``u * (1/keep)``: the eqn, u's operand index and keep.
    scaled: tuple[Eqn, int, float] | None = None


@dataclass(frozen=True)
class NormSite:
    """One normalization: where to read ``r`` (``rsqrt``), ``u`` and ``c`` (``center``:
    ``sub(u, c)``), γ and β (operands of ``scale``/``shift``) and ``z`` (``out``)."""

    index: int
    mode: str  # "train" | "eval"
    rsqrt: Eqn
    eps: float
    #: ``rsqrt`` is a ``sqrt`` that divides (``(u - c) / sqrt(s + eps)``): r = 1/its output.
    root: bool
    center: Eqn | None
    out: Eqn
    scale: Operand | None
    shift: Operand | None
    param: int | None
    deps: frozenset[int]
    shape: tuple[int, ...]
    #: The shape of r: which axes the statistics are shared across.
    stat_shape: tuple[int, ...]

    @property
    def kind(self) -> str:
        """``batchnorm`` (statistics per last-axis unit), ``layernorm`` (one per row of
        the last axis) or ``groupnorm`` (anything else), from the shape of r."""
        st = (1,) * (len(self.shape) - len(self.stat_shape)) + self.stat_shape
        if len(st) == len(self.shape) and all(d == 1 for d in st[:-1]):
            return "batchnorm"
        if math.prod(self.stat_shape) == math.prod(self.shape[:-1]):
            return "layernorm"
        return "groupnorm"


@dataclass(frozen=True)
class DropoutSite:
    """Inverted dropout: ``u`` is operand ``operand`` of the eqn ``scale``; ``z`` the output
    of ``out``."""

    index: int
    scale: Eqn
    operand: int
    out: Eqn
    keep: float
    deps: frozenset[int]
    shape: tuple[int, ...]
    #: Independent mask draws (fewer than values when the mask is broadcast).
    draws: int


@dataclass
class _Draft:
    mode: str
    rsqrt: Eqn
    eps: float
    stat_shape: tuple[int, ...]
    root: bool
    applied: bool = False
    fields: dict[str, Any] = field(default_factory=dict)


class Tails:
    """Follows a jaxpr walk (``visit`` per eqn) and collects :class:`NormSite` and
    :class:`DropoutSite` records."""

    def __init__(self) -> None:
        self._drafts: list[_Draft] = []
        self.dropouts: list[DropoutSite] = []

    def norms(self) -> tuple[NormSite, ...]:
        out = []
        for d in self._drafts:
            if d.applied and (d.mode == "train" or d.fields["center"] is not None):
                out.append(
                    NormSite(
                        len(out),
                        d.mode,
                        d.rsqrt,
                        d.eps,
                        d.root,
                        **d.fields,
                        stat_shape=d.stat_shape,
                    )
                )
        return tuple(out)

    def visit(self, eqn, here: Eqn, ins: list[Any], deps: frozenset[int]) -> TailInfo:
        """The :class:`TailInfo` of ``eqn``'s outputs. ``ins`` are the walk's infos of the
        operands (``.deps``, ``.param``, ``.tail``); ``deps`` the union of their deps."""
        name = eqn.primitive.name
        ts: list[TailInfo] = [x.tail for x in ins]
        lits = [_literal(v) for v in eqn.invars]
        has = [bool(x.deps) for x in ins]
        const = [not x.deps and x.param is None for x in ins]
        shape = tuple(eqn.outvars[0].aval.shape) if eqn.outvars else ()
        drawn = [t.random for t in ts if t.random]
        if name in RANDOM:
            out = TailInfo(random=math.prod(shape))
        else:
            out = TailInfo(random=min(drawn) if drawn and not deps else 0)
        if name == "reduce_sum" and has[0]:
            in_shape = eqn.invars[0].aval.shape
            return replace(out, summed=math.prod(in_shape[a] for a in eqn.params["axes"]))
        if name in _SHAPE and ts and ts[0].summed:  # keepdims: a broadcast of the sum
            out = replace(out, summed=ts[0].summed)
        if name in _PASS and any(t.mean_stat for t in ts):
            out = replace(out, mean_stat=True)
        if name in ("div", "mul") and ts[0].summed and lits[1] is not None:
            n = ts[0].summed
            if math.isclose(lits[1] if name == "div" else 1 / lits[1], n, rel_tol=1e-6):
                out = replace(out, mean_stat=True)
        elif name == "div" and ts[0].summed and const[1] and not eqn.invars[1].aval.shape:
            out = replace(out, mean_stat=True)  # n - ddof, computed (jnp.var)
        if name == "add" and len(ins) == 2:
            for i in (0, 1):
                if lits[1 - i] is not None and (ts[i].mean_stat or const[i]):
                    out = replace(out, plus=lits[1 - i])
        if name in _SHAPE and ts and ts[0].inv:
            return replace(out, inv=ts[0].inv, scale_at=ts[0].scale_at, plus=ts[0].plus)
        if name in ("rsqrt", "sqrt"):
            mode = "train" if ts[0].mean_stat else ("eval" if const[0] else None)
            if mode is not None:
                self._drafts.append(_Draft(mode, here, ts[0].plus or 0.0, shape, name == "sqrt"))
                return replace(out, inv=frozenset({len(self._drafts) - 1}))
            return out
        if name == "sub" and has[0] and (ts[1].mean_stat or const[1]):
            out = replace(out, center=here)
        if name in ("div", "mul") and has[0] and lits[1] is not None and lits[1] != 0:
            keep = lits[1] if name == "div" else 1 / lits[1]
            out = replace(out, scaled=(here, 0, keep))
        if name in ("mul", "div") and len(ins) == 2:
            shapes = [tuple(v.aval.shape) for v in eqn.invars]
            out = self._mul(name, here, ins, ts, has, shapes, shape, out)
        if name == "add" and len(ins) == 2:
            for i in (0, 1):
                d = ts[i].normed
                if d is not None and ins[1 - i].param is not None:
                    self._drafts[d].fields |= {"out": here, "shift": (here, 1 - i)}
                    self._drafts[d].fields["param"] = ins[1 - i].param
                    out = replace(out, normed=d)
        if name == "select_n" and len(ins) == 3 and ts[0].random and not has[0]:
            for i in (1, 2):
                s = ts[i].scaled
                if s is not None and const[3 - i] and has[i]:
                    self.dropouts.append(
                        DropoutSite(
                            len(self.dropouts), s[0], s[1], here, s[2], deps, shape, ts[0].random
                        )
                    )
        return out

    def _mul(self, name, here: Eqn, ins, ts: list[TailInfo], has, shapes, shape, out):
        """``mul``: r applied (``(u - c) * r``), γ folded into r or applied after.
        ``div``: a root applied (``(u - c) / sqrt(s + eps)``)."""
        for i in (0, 1) if name == "mul" else (1,):
            m, x = ts[i], ts[1 - i]
            if m.inv and not x.inv:
                d = min(m.inv)
                draft = self._drafts[d]
                if draft.root != (name == "div"):
                    return out
                if has[1 - i] and shapes[1 - i] == shape:
                    if not draft.applied:
                        draft.applied = True
                        draft.fields = {
                            "center": x.center,
                            "out": here,
                            "scale": m.scale_at,
                            "shift": None,
                            "param": None,
                            "deps": ins[1 - i].deps,
                            "shape": shape,
                        }
                        return replace(out, normed=d)
                elif ins[1 - i].param is not None and name == "mul":
                    return replace(out, inv=m.inv, scale_at=(here, 1 - i))
                elif not has[1 - i] and name == "mul":
                    return replace(out, inv=m.inv, scale_at=m.scale_at)
            d = m.normed
            if d is not None and ins[1 - i].param is not None and name == "mul":
                self._drafts[d].fields |= {"out": here, "scale": (here, 1 - i)}
                self._drafts[d].fields["param"] = ins[1 - i].param
                return replace(out, normed=d)
        return out


def _literal(v) -> float | None:
    """The value of a scalar literal operand, else None."""
    if not isinstance(v, jcore.Literal) or np.ndim(v.val) != 0:
        return None
    try:
        return float(v.val)
    except (TypeError, ValueError):
        return None
