r"""Equations with bodies: calls followed as if inlined, and ``lax.scan`` followed per
iteration; and the tapped evaluation that runs them.

Calls (``jit``, ``remat``, custom-derivative calls: :data:`_INLINE`) are followed as if
their body were inlined. Layers inside ``lax.scan`` are found once in the body and tested
at every iteration.

``nnx.scan``, ``flax.linen.scan`` and a hand-written ``jax.lax.scan`` over stacked block
weights all trace to one ``scan`` equation whose body holds one block. The walk of
:mod:`varprop._src.model.trace` follows the body as it follows a nested ``jit``:

* a **scanned-over** operand (``xs``) that is a slice of a stacked parameter leaf stays
  that parameter: a layer whose weight is a slice of ``blocks/conv1/kernel`` (shape
  ``(L, 3, 3, C, C)``) is a layer with the slice's shape, so its fans are the slice's;
* a **loop-invariant** parameter (a const of the scan, or a carry the body passes on
  unchanged) is a layer too, marked ``tied``: every iteration multiplies by the same
  weights, so from the second iteration on the input may depend on them;
* the **carry** is followed to a fixed point: the body is walked with what is known of the
  initial carry, then again with that joined with what the body makes of it, until it no
  longer changes (dependency sets only grow: a few passes). A dependency on a layer of the
  body through the carry is on that layer *at an earlier iteration*, recorded as
  :func:`earlier` ``(i)`` (a negative id below :data:`~varprop._src.model.trace.INPUT`), so
  that a residual ``h + f(h)`` in the body is still a merge (the branch depends on this
  iteration's layers, the skip on earlier ones') and the layer before a block's first
  layer is known to be the previous iteration's last.

Each layer, merge, normalization and dropout inside a body is one *site* with one set of
statistics per iteration. :func:`eval_scan` runs the scan again with the taps inside:
``lax.scan`` of a body that is the interpreted body (calling the probe's hooks), with each
tapped layer's perturbations (zeros of shape ``(L, ...)``) passed as extra scanned inputs,
so that the VJP gives per-iteration cotangents, and every hook's statistics returned as
stacked outputs: leading axes ``(L,)`` (``(L1, L2)`` for a scan in a scan). Iteration ``i``
is the one that reads slice ``i`` of the stacked parameters (so with ``reverse=True`` it
runs ``L - 1 - i``-th).

``while`` and ``cond`` are still not followed (their layers are listed in
:attr:`~varprop._src.model.trace.Found.skipped`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import jax
from jax.extend import core as jcore

if TYPE_CHECKING:
    from varprop._src.model.trace import Found, LayerSite, MergeSite

#: Equations whose body is a jaxpr evaluated once with the equation's operands.
_INLINE = {
    "pjit": "jaxpr",
    "jit": "jaxpr",
    "closed_call": "call_jaxpr",
    "checkpoint": "jaxpr",
    "remat": "jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
}


def _subjaxpr(eqn) -> tuple[Any, tuple] | None:
    """The body of an equation to follow, and its consts."""
    key = _INLINE.get(eqn.primitive.name)
    if key is None or key not in eqn.params:
        return None
    body = eqn.params[key]
    if isinstance(body, jcore.ClosedJaxpr):
        return body.jaxpr, tuple(body.consts)
    return body, ()


def start_env(jaxpr, consts, args) -> tuple[dict[Any, Any], Callable[[Any], Any]]:
    """The environment of a jaxpr's evaluation (consts and arguments bound) and its
    ``read`` (a literal's value, else the variable's)."""
    env: dict[Any, Any] = dict(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    return env, read


#: How many times a body is walked at most while its carry reaches its fixed point.
MAX_PASSES = 32


@dataclass(frozen=True)
class Loop:
    """A ``scan`` whose body the walk followed: its equation, length and direction."""

    eqn: tuple[int, ...]
    length: int
    reverse: bool

    def step(self, i: int) -> int:
        """When the iteration that reads slice ``i`` runs (0 first)."""
        return self.length - 1 - i if self.reverse else i

    def slice_at(self, step: int) -> int:
        """The slice read by the ``step``-th iteration to run."""
        return self.length - 1 - step if self.reverse else step

    @property
    def last(self) -> int:
        """The slice read by the last iteration to run."""
        return self.slice_at(self.length - 1)


def suffix(ix: Sequence[int]) -> str:
    """``"[3]"`` for iteration 3 (``"[3][1]"`` inside a scan in a scan)."""
    return "".join(f"[{i}]" for i in ix)


_ITER = re.compile(r"\[\d+\]")


def group_key(path: str) -> str:
    """The path of a row with its iterations replaced by ``[*]``: the rows of one site."""
    return _ITER.sub("[*]", path)


def base_path(path: str) -> str:
    """The path without a trailing iteration suffix."""
    return re.sub(r"(\[\d+\])+$", "", path)


def ranges(indices: Sequence[int]) -> str:
    """``"0-3, 5, 7-9"``: sorted indices, runs compacted."""
    out: list[str] = []
    xs = sorted(set(indices))
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ", ".join(out)


# ----------------------------------------------------------------------------------------
# The walk.
# ----------------------------------------------------------------------------------------


def earlier(layer: int) -> int:
    """The dependency id of ``layer`` at an earlier iteration of its loop (``-2 - layer``;
    its own inverse)."""
    return -2 - layer


def _earlier(x, start: int):
    """A carry after one iteration as the next one sees it: the body's layers (index from
    ``start`` on) are the previous iteration's."""
    deps = frozenset(earlier(d) if d >= start else d for d in x.deps)
    return x if deps == x.deps else replace(x, deps=deps)


def _plain(x, start: int):
    """An output of the loop as the code after it sees it: every iteration is earlier."""
    deps = frozenset(earlier(d) if d <= -2 and earlier(d) >= start else d for d in x.deps)
    return x if deps == x.deps else replace(x, deps=deps)


def _tie(x):
    """A parameter entering a body as a const or carry: shared by every iteration."""
    return replace(x, tied=True) if x.param is not None else x


def _join(a, b):
    """What is known of a carry that is ``a`` at one iteration and ``b`` at another."""
    if a == b:
        return a
    same = a.param is not None and a.param == b.param and a.tied == b.tied
    return replace(
        a,
        param=a.param if same else None,
        tied=a.tied if same else False,
        deps=a.deps | b.deps,
        chain=a.chain | b.chain,
        stat=tuple(sorted(set(a.stat) | set(b.stat))),
        since=a.since | b.since,
        tail=a.tail if a.tail == b.tail else type(a.tail)(),
    )


class WalkState:
    """What a walk has appended so far, to walk a body again from the same point."""

    def __init__(self, walker):
        self.n_layers = len(walker.layers)
        self.n_merges = len(walker.merges)
        self.n_skipped = len(walker.skipped)
        self.n_loops = len(walker.loops)
        self.normalized = dict(walker.normalized)
        self.tails = copy.deepcopy(walker.tails)

    def restore(self, walker) -> None:
        del walker.layers[self.n_layers :]
        del walker.merges[self.n_merges :]
        del walker.skipped[self.n_skipped :]
        del walker.loops[self.n_loops :]
        walker.normalized = dict(self.normalized)
        walker.tails = copy.deepcopy(self.tails)


def walk_scan(walker, eqn, ins: list[Any], here: tuple[int, ...]) -> list[Any]:
    """Walk a ``scan``'s body (module docstring); what is known of its outputs."""
    p = eqn.params
    nc, ncar = p["num_consts"], p["num_carry"]
    body = p["jaxpr"].jaxpr
    consts = [_tie(x) for x in ins[:nc]]
    init = [_tie(x) for x in ins[nc : nc + ncar]]
    xs = list(ins[nc + ncar :])
    carry = init
    walker.loops.append(Loop(here, int(p["length"]), bool(p["reverse"])))
    start = len(walker.layers)
    outs: list[Any] = []
    for _ in range(MAX_PASSES):
        state = WalkState(walker)
        outs = walker.walk(body, [*consts, *carry, *xs], here)
        joined = [_join(a, _earlier(b, start)) for a, b in zip(carry, outs[:ncar], strict=True)]
        if joined == carry:
            break
        state.restore(walker)
        carry = joined
    # Outside the loop a parameter passed on unchanged is as it was; a stacked output is an
    # activation (its statistics are not a layer's own).
    final = [
        _plain(o, start) if o.param is None else replace(o, tied=x.tied)
        for o, x in zip(carry, ins[nc : nc + ncar], strict=True)
    ]
    ys = [
        replace(_plain(o, start), param=None, tied=False, chain=frozenset(), stat=())
        for o in outs[ncar:]
    ]
    return [*final, *ys]


# ----------------------------------------------------------------------------------------
# The evaluation.
# ----------------------------------------------------------------------------------------

Eqn = tuple[int, ...]
Seen = dict[Eqn, tuple[list[Any], list[Any]]]
Records = dict[tuple[str, int], Any]
#: ``on_layer(site, x, w, apply, tap) -> (y, record)``.
LayerHook = Callable[["LayerSite", jax.Array, jax.Array, Callable, Any], tuple[jax.Array, Any]]
#: ``on_merge(site, a, b) -> record``.
MergeHook = Callable[["MergeSite", jax.Array, jax.Array], Any]
#: ``on_scope(seen) -> {(kind, index): record}``.
ScopeHook = Callable[[Seen], Records]


@dataclass
class _Scope:
    taps: dict[int, Any]
    records: Records = field(default_factory=dict)
    seen: Seen = field(default_factory=dict)


class Run:
    """One evaluation: the sites by eqn and the hooks."""

    def __init__(self, found: Found, on_layer, on_merge, on_scope):
        self.layers = {s.eqn: s for s in found.layers}
        self.layer_eqn = {s.index: s.eqn for s in found.layers}
        self.merges = {m.eqn: m for m in found.merges}
        self.on_layer, self.on_merge, self.on_scope = on_layer, on_merge, on_scope
        self.watched = found.watched() if on_scope is not None else frozenset()
        keys = (*self.layers, *self.merges, *self.watched)
        #: Every eqn with something to tap inside it.
        self.around = frozenset(k[:n] for k in keys for n in range(1, len(k)))

    def inside(self, layer: int, eqn: Eqn) -> bool:
        """Whether a layer is inside the body of ``eqn``."""
        e = self.layer_eqn[layer]
        return e[: len(eqn)] == eqn != e

    def scope(self, jaxpr, consts, args, where, taps) -> tuple[list[Any], Records]:
        sc = _Scope(taps)
        outs = self.eval(jaxpr, consts, args, where, sc)
        if self.on_scope is not None and sc.seen:
            sc.records.update(self.on_scope(sc.seen))
        return outs, sc.records

    def eval(self, jaxpr, consts, args, where, sc: _Scope) -> list[Any]:
        env, read = start_env(jaxpr, consts, args)
        for i, eqn in enumerate(jaxpr.eqns):
            here = (*where, i)
            ins = [read(v) for v in eqn.invars]
            site = self.layers.get(here)
            sub = _subjaxpr(eqn)
            if site is not None:
                a, w = ins[site.activation], ins[1 - site.activation]
                params = eqn.primitive.get_bind_params(eqn.params)

                def apply(x, site=site, params=params, ins=ins):
                    ops = list(ins)
                    ops[site.activation] = x
                    return site.primitive.bind(*ops, **params)

                y, rec = self.on_layer(site, a, w, apply, sc.taps.get(site.index))
                sc.records[("layer", site.index)] = rec
                outs = [y]
            elif sub is not None and (
                eqn.primitive.name
                not in ("custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr")
                or here in self.around
            ):
                outs = self.eval(sub[0], sub[1], ins, here, sc)
            elif eqn.primitive.name == "scan" and here in self.around:
                outs, recs = eval_scan(eqn, ins, here, self, sc.taps)
                sc.records.update(recs)
            else:
                if here in self.merges:
                    sc.records[("merge", self.merges[here].index)] = self.on_merge(
                        self.merges[here], ins[0], ins[1]
                    )
                params = eqn.primitive.get_bind_params(eqn.params)
                out = eqn.primitive.bind(*ins, **params)
                outs = out if eqn.primitive.multiple_results else [out]
                if here in self.watched:
                    sc.seen[here] = (ins, list(outs))
            for v, o in zip(eqn.outvars, outs, strict=True):
                env[v] = o
        return [read(v) for v in jaxpr.outvars]


def eval_scan(eqn, ins: list[Any], here: tuple[int, ...], run, taps: dict[int, Any]):
    """Run a ``scan`` with the taps inside its body: ``run.scope`` evaluates one iteration
    of the body as a scope of its own (its hooks' records are returned, not kept), the
    taps of the layers inside are scanned over with the data, and the records come back
    stacked (leading axis: the iteration). Returns the scan's outputs and the records."""
    p = eqn.params
    nc, ncar = p["num_consts"], p["num_carry"]
    closed = p["jaxpr"]
    consts, init, xs = ins[:nc], ins[nc : nc + ncar], ins[nc + ncar :]
    inner = {i: t for i, t in taps.items() if run.inside(i, here)}

    def step(carry, x):
        xs_i, taps_i = x
        outs, records = run.scope(
            closed.jaxpr, closed.consts, [*consts, *carry, *xs_i], here, taps_i
        )
        return list(outs[:ncar]), (list(outs[ncar:]), records)

    carry, (ys, records) = jax.lax.scan(
        step,
        list(init),
        (list(xs), inner),
        length=p["length"],
        reverse=p["reverse"],
        unroll=p.get("unroll", 1),
    )
    return [*carry, *ys], records
