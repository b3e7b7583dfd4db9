r"""Find the layers of any JAX function where the computation is, and tap them.

A *layer* is an equation of the function's jaxpr that multiplies an activation by a
parameter: a ``dot_general`` (Dense, DenseGeneral, einsum with a weight, attention
projections), a ``conv_general_dilated`` (Conv N-D, grouped and depthwise convs,
ConvTranspose) or a ``gather`` from a parameter table (Embed). "A parameter" means a leaf of
the parameter pytree, possibly reshaped, transposed, broadcast or cast on its way. Nested
``jit``/``pjit``, ``remat`` and custom-derivative calls are followed, so a layer is found
wherever it is, including inside ``jnp.einsum`` or ``jnp.take``; so is the body of a
``lax.scan`` (``nnx.scan``, ``linen.scan`` over stacked block weights: a slice of a stacked
parameter is that parameter; :mod:`varprop._src.model.loops`), where each layer has one set
of statistics per iteration. A *merge* is an ``add`` of two activations that depend on
different layers: a residual connection, or token plus position embeddings.

:func:`find_layers` lists them from the traced jaxpr (static; no computation), and
:func:`evaluate` re-runs the jaxpr equation by equation with each layer's input and output
passed through a zero perturbation, so that the cotangent of the perturbations is each
layer's own backward signal (dL/dy, and the part of dL/dx that flows through this layer),
while it computes each layer's forward statistics (:mod:`varprop._src.model.tap_stats`).

For a layer y = op(x, W) that is linear in W with i.i.d. entries (variance sigma^2, mean 0),
given x, every output is a sum of distinct weights times inputs, so

.. math::

    E_W[y^2] = \sigma^2\, \mathrm{op}(x^2, \mathbf 1), \qquad
    E_W[(\partial L/\partial x)^2] = \sigma^2\, \mathrm{op}^\top\big((\partial L/\partial y)^2,
    \mathbf 1\big),

the same op with every weight 1 applied to the squared input (its transpose to the squared
cotangent): the sum of E[x^2] over exactly the taps each output reads, with the padding
borders, strides, dilations and groups of the real op (``docs/model_laws.md``).

Example:
    >>> import jax, jax.numpy as jnp
    >>> def f(params, x):
    ...     h = jax.nn.relu(x @ params["w1"])
    ...     return h + h @ params["w2"]
    >>> params = {"w1": jnp.ones((4, 8)), "w2": jnp.ones((8, 8))}
    >>> found = find_layers(f, params, jnp.ones((2, 4)))
    >>> [(s.path, s.kind, s.fan_in, s.fan_out) for s in found.layers]
    [("['w1']", 'dense', 4.0, 8.0), ("['w2']", 'dense', 8.0, 8.0)]
    >>> len(found.merges)
    1
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from varprop._src.laws.model_ops import OpFans, conv_fans, dense_fans
from varprop._src.model.loops import (  # noqa: F401 (_INLINE, _subjaxpr, start_env: shared)
    _INLINE,
    LayerHook,
    Loop,
    MergeHook,
    Records,
    Run,
    ScopeHook,
    _subjaxpr,
    start_env,
    walk_scan,
)
from varprop._src.model.tails import ELEMENTWISE as _ELEMENTWISE
from varprop._src.model.tails import DropoutSite, NormSite, TailInfo, Tails

_NO_TAIL = TailInfo()

#: Equations that pass a parameter on unchanged in law (its entries keep their variance).
_STRUCTURAL = frozenset(
    {
        "convert_element_type",
        "reshape",
        "transpose",
        "squeeze",
        "expand_dims",
        "broadcast_in_dim",
        "copy",
        "copy_p",
        "reduce_precision",
        "sharding_constraint",
        "device_put",
        "optimization_barrier",
    }
)
#: Equations with bodies the walk does not follow: layers inside them are not tapped
#: (reported as skipped). ``scan`` is followed (:mod:`varprop._src.model.loops`).
_LOOPS = frozenset({"while", "cond"})

KINDS = ("dense", "conv", "embed")
#: The dependency index of the function's data arguments (layers count from 0).
INPUT = -1


@dataclass(frozen=True)
class LayerSite:
    """One layer found in the jaxpr.

    Attributes:
        index: position in :attr:`Found.layers`.
        path: the parameter's path in the parameter pytree (``jax.tree_util.keystr``).
        param: the index of the parameter leaf.
        kind: ``"dense"`` (dot_general), ``"conv"`` (conv_general_dilated) or ``"embed"``.
        eqn: where the equation is: indices through nested jaxprs.
        activation: which operand is the activation (0 or 1).
        x_shape, w_shape, y_shape: the operand and result shapes.
        x_unit_axes: the axes of x whose entries are the backward units (contracted axes of
            a dense layer; the input-feature axis of a conv).
        y_unit_axes: the axes of y whose entries are the forward units.
        x_batch_axes, y_batch_axes: axes averaged before the all-ones op (the examples of a
            conv; every non-contracted axis of x for a dense layer).
        fan_in, fan_out: the nominal fans away from borders: weights each output reads;
            (output position, channel) pairs that read each input (a strided conv's
            kh kw c_out / (groups s_h s_w)).
        primitive, params: the op and its parameters (padding, strides, groups, ...).
    """

    index: int
    path: str
    param: int
    kind: str
    eqn: tuple[int, ...]
    activation: int
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    x_unit_axes: tuple[int, ...]
    y_unit_axes: tuple[int, ...]
    x_batch_axes: tuple[int, ...]
    y_batch_axes: tuple[int, ...]
    fan_in: float
    fan_out: float
    primitive: Any = field(repr=False, compare=False)
    params: dict[str, Any] = field(repr=False, compare=False)
    #: ``"batchnorm"`` / ``"layernorm"`` when the output is normalized by statistics of
    #: itself (training mode) per unit over the other axes / per row over the units.
    normalized: str | None = None
    #: The layers (and :data:`INPUT`) the activation operand depends on; inside a scan,
    #: ``loops.earlier(i)`` for layer ``i`` of the same body at an earlier iteration.
    x_deps: frozenset[int] = frozenset()
    #: What lies between the previous layer and this one (:func:`between`).
    between: tuple[str, ...] = ()
    #: Inside a scan, the weight is the same at every iteration (a const or carry of the
    #: loop, not a slice of a stacked parameter): the input may depend on it.
    tied: bool = False

    @property
    def units_out(self) -> int:
        return math.prod(self.y_shape[a] for a in self.y_unit_axes)

    @property
    def units_in(self) -> int:
        return math.prod(self.x_shape[a] for a in self.x_unit_axes)

    def tap_sums(self, x: jax.Array) -> jax.Array:
        """op(x, 1): each output's sum of ``x`` over the inputs it reads (float32).

        Dense: the sum over the contracted axes. Conv: the sum over each group's channels,
        then a windowed sum with the conv's own window, padding, strides and dilations (no
        all-ones kernel is multiplied: XLA's CPU backend miscompiles a dot or conv with a
        constant all-ones operand under ``jit(vmap(...))``). Returns one value per output
        position and group (dense: per output row), enough for any mean over the outputs.
        """
        x = x.astype(jnp.float32)
        if self.kind == "dense":
            return jnp.sum(x, axis=self.x_unit_axes, keepdims=True)
        lhs, window, strides, padding, base, wdil = self._window()
        c = lhs[1]
        shape = list(x.shape)
        groups = self.params.get("feature_group_count", 1)
        split = [*shape[:c], groups, shape[c] // groups, *shape[c + 1 :]]
        xg = jnp.sum(x.reshape(split), axis=c + 1)
        return jax.lax.reduce_window(xg, 0.0, jax.lax.add, window, strides, padding, base, wdil)

    def tap_sums_transposed(self, g: jax.Array) -> jax.Array:
        """op^T(g, 1): each input's sum of ``g`` over the outputs that read it, per input
        position and group (dense: per input row); ``g`` has the output's layout with
        any batch axes of size 1."""
        g = g.astype(jnp.float32)
        if self.kind == "dense":
            return jnp.sum(g, axis=self.y_unit_axes, keepdims=True)
        lhs, window, strides, padding, base, wdil = self._window()
        out = self.params["dimension_numbers"].out_spec
        groups = self.params.get("feature_group_count", 1)
        c = out[1]
        shape = list(g.shape)
        split = [*shape[:c], groups, shape[c] // groups, *shape[c + 1 :]]
        gg = jnp.sum(g.reshape(split), axis=c + 1)
        perm = [0] * gg.ndim
        for j in range(gg.ndim):
            perm[lhs[j]] = out[j]
        gg = jnp.transpose(gg, perm)
        x_shape = [1 if d in self.x_batch_axes else n for d, n in enumerate(self.x_shape)]
        x_shape[lhs[1]] = groups

        def window_sum(z):
            return jax.lax.reduce_window(z, 0.0, jax.lax.add, window, strides, padding, base, wdil)

        _, pull = jax.vjp(window_sum, jnp.zeros(x_shape, jnp.float32))
        return pull(gg)[0]

    def _window(self):
        p = self.params
        dn = p["dimension_numbers"]
        lhs, rhs = dn.lhs_spec, dn.rhs_spec
        nd = len(self.x_shape)
        window, strides, base, wdil = [1] * nd, [1] * nd, [1] * nd, [1] * nd
        padding = [(0, 0)] * nd
        spatial = len(lhs) - 2
        for j in range(spatial):
            a = lhs[2 + j]
            window[a] = self.w_shape[rhs[2 + j]]
            strides[a] = (p.get("window_strides") or (1,) * spatial)[j]
            base[a] = (p.get("lhs_dilation") or (1,) * spatial)[j]
            wdil[a] = (p.get("rhs_dilation") or (1,) * spatial)[j]
            padding[a] = tuple(p["padding"][j])
        return lhs, tuple(window), tuple(strides), tuple(padding), tuple(base), tuple(wdil)


@dataclass(frozen=True)
class MergeSite:
    """Where two activations meet: an ``add`` of two activations that depend on different
    layers (``kind="residual"``), or a ``dot_general`` of two activations (``"product"``:
    attention's logits q k^T and its mixing of the values by the softmax weights).

    ``left``/``right`` are the layer indices each operand depends on (:data:`INPUT` for
    the data); ``primitive``/``params`` re-run a product on the operands' squares."""

    index: int
    eqn: tuple[int, ...]
    shape: tuple[int, ...]
    left: frozenset[int]
    right: frozenset[int]
    kind: str = "residual"
    primitive: Any = field(default=None, repr=False, compare=False)
    params: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def product_of_squares(self, a: jax.Array, b: jax.Array) -> jax.Array:
        """The product op on a^2 and b^2 (float32): each output's sum of a_c^2 b_c^2, the
        law of E[y^2] when the terms a_c b_c are uncorrelated with mean zero."""
        params = dict(self.params)
        if "preferred_element_type" in params:
            params["preferred_element_type"] = None
        a = a.astype(jnp.float32)
        b = b.astype(jnp.float32)
        return self.primitive.bind(a * a, b * b, **params)


@dataclass(frozen=True)
class Found:
    """What :func:`find_layers` found: the closed jaxpr, its layers and merges, the
    parameterized ops it could not tap (inside ``while``/``cond``) by primitive name, and
    the scans whose bodies it followed."""

    jaxpr: Any
    layers: tuple[LayerSite, ...]
    merges: tuple[MergeSite, ...]
    skipped: tuple[str, ...]
    n_params: int
    norms: tuple[NormSite, ...] = ()
    dropouts: tuple[DropoutSite, ...] = ()
    loops: tuple[Loop, ...] = ()

    def loops_of(self, eqn: tuple[int, ...]) -> tuple[Loop, ...]:
        """The scans an equation is inside, outermost first."""
        return tuple(lp for lp in self.loops if eqn[: len(lp.eqn)] == lp.eqn != eqn)

    def iterations(self, eqn: tuple[int, ...]) -> tuple[int, ...]:
        """The lengths of the scans an equation is inside: the shape of its statistics
        after the seed axis (``()`` outside loops)."""
        return tuple(lp.length for lp in self.loops_of(eqn))

    def watched(self) -> frozenset[tuple[int, ...]]:
        """The eqns whose operands and outputs the norm and dropout rows read."""
        out = set()
        for n in self.norms:
            out |= {n.rsqrt, n.out, *(e for e in (n.center,) if e is not None)}
            out |= {op[0] for op in (n.scale, n.shift) if op is not None}
        for d in self.dropouts:
            out |= {d.scale, d.out}
        return frozenset(out)


def _fans(f: OpFans) -> dict[str, float]:
    return {"fan_in": f.fan_in, "fan_out": f.fan_out}


def _dense_site(eqn, a: int, x_shape, w_shape, y_shape) -> dict[str, Any] | None:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    xc, wc = (lc, rc) if a == 0 else (rc, lc)
    xb, wb = (lb, rb) if a == 0 else (rb, lb)
    if wb:  # a weight with batch dimensions shared with x (an ensemble): not a layer law
        return None
    wfree = [d for d in range(len(w_shape)) if d not in wc]
    xfree = [d for d in range(len(x_shape)) if d not in xc and d not in xb]
    nb = len(xb)
    if a == 0:
        y_units = tuple(range(nb + len(xfree), len(y_shape)))
    else:
        y_units = tuple(range(nb, nb + len(wfree)))
    return dict(
        kind="dense",
        x_unit_axes=tuple(xc),
        y_unit_axes=y_units,
        x_batch_axes=tuple(sorted([*xb, *xfree])),
        y_batch_axes=tuple(d for d in range(len(y_shape)) if d not in y_units),
        **_fans(dense_fans([w_shape[d] for d in wc], [w_shape[d] for d in wfree])),
    )


def _conv_site(eqn, x_shape, w_shape, y_shape) -> dict[str, Any] | None:
    p = eqn.params
    if p.get("batch_group_count", 1) != 1:
        return None
    dn = p["dimension_numbers"]
    lhs, rhs, out = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    groups = p.get("feature_group_count", 1)
    fans = conv_fans(
        [w_shape[d] for d in rhs[2:]],
        w_shape[rhs[1]] * groups,
        w_shape[rhs[0]],
        groups,
        p.get("window_strides"),
        p.get("lhs_dilation"),
    )
    return dict(
        kind="conv",
        x_unit_axes=(lhs[1],),
        y_unit_axes=(out[1],),
        x_batch_axes=(lhs[0],),
        y_batch_axes=(out[0],),
        **_fans(fans),
    )


def _embed_site(eqn, w_shape, y_shape) -> dict[str, Any] | None:
    p = eqn.params
    dn = p["dimension_numbers"]
    sizes = tuple(p["slice_sizes"])
    if tuple(dn.collapsed_slice_dims) != (0,) or sizes[0] != 1 or sizes[1:] != w_shape[1:]:
        return None
    offset = tuple(dn.offset_dims)
    return dict(
        kind="embed",
        x_unit_axes=(),
        y_unit_axes=offset,
        x_batch_axes=(),
        y_batch_axes=tuple(d for d in range(len(y_shape)) if d not in offset),
        fan_in=float(w_shape[0]),
        fan_out=float(math.prod(w_shape[1:])),
    )


@dataclass(frozen=True)
class _Info:
    """What the walk knows of one variable: the parameter leaf it is (through structural
    ops), the layers it depends on, the layers whose output it is through elementwise ops
    only (``chain``), and the layers it is a statistic of (reduced over which axes)."""

    param: int | None = None
    deps: frozenset[int] = frozenset()
    chain: frozenset[int] = frozenset()
    stat: tuple[tuple[int, tuple[int, ...]], ...] = ()
    #: The primitives applied since the last layer's output (what lies between layers).
    since: frozenset[str] = frozenset()
    #: What :class:`~varprop._src.model.tails.Tails` knows of it (normalizations, dropout).
    tail: TailInfo = _NO_TAIL
    #: A parameter shared by the iterations of an enclosing scan (``param`` only).
    tied: bool = False


_EMPTY = _Info()


#: Primitive names -> what they are part of, to describe what lies between two layers.
_BETWEEN = (
    ("normalization", frozenset({"rsqrt"})),
    ("dropout", frozenset({"random_bits", "threefry2x32", "rng_bit_generator", "random_wrap"})),
    ("pooling", frozenset({"reduce_window_sum", "reduce_window_max", "reduce_window"})),
    ("mean over axes", frozenset({"reduce_sum"})),
    (
        "activation",
        frozenset({"max", "tanh", "logistic", "erf", "exp", "custom_jvp_call", "select_n"}),
    ),
)


def between(names: frozenset[str]) -> tuple[str, ...]:
    """What a set of primitives applied between two layers amounts to, roughly:
    ``("normalization", "activation")`` for a BatchNorm and a relu. For reports only."""
    out = tuple(what for what, prims in _BETWEEN if names & prims)
    if "normalization" in out:  # its statistics are means over axes
        out = tuple(w for w in out if w != "mean over axes")
    return out


class _Walker:
    def __init__(self, paths: Sequence[str]):
        self.paths = paths
        self.layers: list[LayerSite] = []
        self.merges: list[MergeSite] = []
        self.skipped: list[str] = []
        self.normalized: dict[int, str] = {}
        self.tails = Tails()
        self.loops: list[Loop] = []

    def walk(self, jaxpr, infos: list[_Info], where=()) -> list[_Info]:
        """Walk ``jaxpr`` given what is known of each invar; returns the same for the
        outvars."""
        env: dict[Any, _Info] = dict(zip(jaxpr.invars, infos, strict=True))

        def info(v) -> _Info:
            return _EMPTY if isinstance(v, jcore.Literal) else env.get(v, _EMPTY)

        for i, eqn in enumerate(jaxpr.eqns):
            name = eqn.primitive.name
            ins = [info(v) for v in eqn.invars]
            union = frozenset().union(*(x.deps for x in ins))
            stats = tuple(sorted({st for x in ins for st in x.stat}))
            here = (*where, i)
            sub = _subjaxpr(eqn)
            if sub is not None:
                for v, x in zip(eqn.outvars, self.walk(sub[0], ins, here), strict=True):
                    env[v] = x
                continue
            if name == "scan":
                for v, x in zip(eqn.outvars, walk_scan(self, eqn, ins, here), strict=True):
                    env[v] = x
                continue
            if name in _STRUCTURAL and ins and ins[0].param is not None:
                env[eqn.outvars[0]] = _Info(param=ins[0].param, tied=ins[0].tied)
                continue
            site = self._site(eqn, [x.param for x in ins], here)
            if site is not None:
                x_info = ins[site.activation]
                site = replace(
                    site,
                    x_deps=x_info.deps,
                    between=between(x_info.since),
                    tied=ins[1 - site.activation].tied,
                )
                self.layers.append(site)
                env[eqn.outvars[0]] = _Info(
                    deps=union | {site.index}, chain=frozenset({site.index})
                )
                continue
            if name in _LOOPS and any(x.param is not None for x in ins):
                self.skipped.append(name)
            is_merge = (
                name == "add"
                and all(x.param is None for x in ins)
                and ins[0].deps
                and ins[1].deps
                and ins[0].deps != ins[1].deps
                and eqn.invars[0].aval.shape == eqn.invars[1].aval.shape
            )
            is_product = (
                name == "dot_general"
                and all(x.param is None for x in ins)
                and ins[0].deps
                and ins[1].deps
            )
            if is_merge or is_product:
                site = MergeSite(
                    len(self.merges),
                    here,
                    tuple(eqn.outvars[0].aval.shape),
                    ins[0].deps,
                    ins[1].deps,
                )
                if is_product:
                    params = dict(eqn.primitive.get_bind_params(eqn.params))
                    site = replace(site, kind="product", primitive=eqn.primitive, params=params)
                self.merges.append(site)
            chain: frozenset[int] = frozenset()
            out_shape = tuple(eqn.outvars[0].aval.shape) if eqn.outvars else ()
            if name in _ELEMENTWISE and not is_merge:
                chain = frozenset().union(
                    *(
                        x.chain
                        for x, v in zip(ins, eqn.invars, strict=True)
                        if tuple(v.aval.shape) == out_shape
                    )
                )
            if name == "reduce_sum" and ins and ins[0].chain:
                axes = tuple(sorted(eqn.params["axes"]))
                stats = tuple(sorted({*stats, *((s, axes) for s in ins[0].chain)}))
            if name in ("rsqrt", "sqrt"):
                for s, axes in stats:
                    self.normalized.setdefault(s, self._norm_kind(s, axes))
            tail = self.tails.visit(eqn, here, ins, union)
            for v in eqn.outvars:
                env[v] = _Info(
                    deps=union,
                    chain=chain,
                    stat=stats,
                    since=frozenset().union(*(x.since for x in ins)) | {name},
                    tail=tail,
                )
        return [info(v) for v in jaxpr.outvars]

    def _norm_kind(self, s: int, axes: tuple[int, ...]) -> str:
        units = set(self.layers[s].y_unit_axes)
        if units <= set(axes):
            return "layernorm"
        if not units & set(axes):
            return "batchnorm"
        return "groupnorm"

    def _site(self, eqn, ins_p: list[int | None], here: tuple[int, ...]) -> LayerSite | None:
        name = eqn.primitive.name
        if name not in ("dot_general", "conv_general_dilated", "gather") or len(ins_p) < 2:
            return None
        shapes = [tuple(v.aval.shape) for v in eqn.invars]
        y_shape = tuple(eqn.outvars[0].aval.shape)
        if name == "gather":
            if ins_p[0] is None or ins_p[1] is not None:
                return None
            a, info = 1, _embed_site(eqn, shapes[0], y_shape)
            w = 0
        else:
            if (ins_p[0] is None) == (ins_p[1] is None):
                return None
            w = 0 if ins_p[0] is not None else 1
            a = 1 - w
            if name == "dot_general":
                info = _dense_site(eqn, a, shapes[a], shapes[w], y_shape)
            else:
                info = None if w == 0 else _conv_site(eqn, shapes[a], shapes[w], y_shape)
        if info is None:
            return None
        param = ins_p[w]
        assert param is not None
        return LayerSite(
            index=len(self.layers),
            path=self.paths[param],
            param=param,
            eqn=here,
            activation=a,
            x_shape=shapes[a],
            w_shape=shapes[w],
            y_shape=y_shape,
            primitive=eqn.primitive,
            params=dict(eqn.primitive.get_bind_params(eqn.params)),
            **info,
        )


def residual_branches(found: Found) -> tuple[set[int], dict[int, int]]:
    """The last layer of every residual branch (by layer index), and each other layer of a
    branch with its branch's number of layers: the layers one operand of a residual add
    depends on and the other does not."""
    last: set[int] = set()
    inner: dict[int, int] = {}
    for m in found.merges:
        if m.kind != "residual":
            continue
        a, b = m.left, m.right
        big, small = (a, b) if len(a) >= len(b) else (b, a)
        own = sorted(d for d in big - small if d >= 0)
        if not own:
            continue
        last.add(own[-1])
        for d in own[:-1]:
            inner[d] = max(inner.get(d, 0), len(own))
    return last, inner


def find_layers(
    fn: Callable[..., Any],
    params: Any,
    *args: Any,
    paths: Sequence[str] | None = None,
    data: Sequence[bool] | None = None,
) -> Found:
    """Trace ``fn(params, *args)`` and list its layers and merges (module docstring).

    ``params`` is the pytree of parameters; ``data[i]`` says whether ``args[i]`` is data
    (default: all are; state such as running statistics is not). Paths are ``paths`` (one
    per parameter leaf) or the ``jax.tree_util.keystr`` of each leaf.
    """
    with_paths, _ = jax.tree_util.tree_flatten_with_path(params)
    if paths is None:
        paths = [jax.tree_util.keystr(p) for p, _ in with_paths]
    elif len(paths) != len(with_paths):
        raise ValueError(f"{len(paths)} paths for {len(with_paths)} parameter leaves")
    closed = jax.make_jaxpr(fn)(params, *args)
    n_params = len(paths)
    n_in = len(closed.jaxpr.invars)
    # Data (every other argument) counts as a dependency of its own, INPUT, so that
    # ``x + f(x)`` on the raw input is a merge while ``x + c x^3`` is not.
    flags = [True] * len(args) if data is None else list(data)
    infos = [_Info(param=i) for i in range(n_params)]
    for a, is_data in zip(args, flags, strict=True):
        n = len(jax.tree_util.tree_leaves(a))
        infos += [_Info(deps=frozenset({INPUT})) if is_data else _EMPTY] * n
    if len(infos) != n_in:
        raise ValueError(f"{len(infos)} leaves for {n_in} jaxpr inputs")
    w = _Walker(paths)
    w.walk(closed.jaxpr, infos)
    layers = tuple(
        replace(s, normalized=w.normalized.get(s.index)) if s.index in w.normalized else s
        for s in w.layers
    )
    found = Found(closed, layers, tuple(w.merges), tuple(w.skipped), n_params, loops=tuple(w.loops))
    # A normalization or dropout is measured where it is: all its equations in one scope
    # (the same scan body, or none). One split across a loop boundary gets no row.
    norms = [
        n
        for n in w.tails.norms()
        if _one_scope(
            found, [n.rsqrt, n.out, n.center, n.scale and n.scale[0], n.shift and n.shift[0]]
        )
    ]
    drops = [d for d in w.tails.dropouts if _one_scope(found, [d.scale, d.out])]
    return replace(
        found,
        norms=tuple(replace(n, index=i) for i, n in enumerate(norms)),
        dropouts=tuple(replace(d, index=i) for i, d in enumerate(drops)),
    )


def _one_scope(found: Found, eqns: list[Any]) -> bool:
    return len({found.loops_of(e) for e in eqns if e is not None}) <= 1


# ----------------------------------------------------------------------------------------
# Evaluation with taps.
# ----------------------------------------------------------------------------------------


def evaluate(
    found: Found,
    flat_args: Sequence[Any],
    on_layer: LayerHook,
    on_merge: MergeHook,
    on_scope: ScopeHook | None = None,
    taps: dict[int, Any] | None = None,
) -> tuple[list[Any], Records]:
    """Evaluate the traced function on ``flat_args`` (its flattened arguments).

    At each layer, ``on_layer(site, x, w, apply, tap)`` is called instead of the op, where
    ``apply(x)`` runs the op on a (possibly perturbed) ``x`` and ``tap`` is ``taps[index]``
    (``None`` when absent); it returns the layer's output and a record. At each merge,
    ``on_merge(site, a, b)`` sees the two operands (the add still runs) and returns a
    record. At the end of each scope (the function; one iteration of a scan's body),
    ``on_scope(seen)`` gets the operands and outputs of the eqns of :meth:`Found.watched`
    evaluated in it and returns records by ``(kind, index)``.

    Returns the outputs and every record by ``(kind, index)`` (kinds ``"layer"``,
    ``"merge"`` and ``on_scope``'s). Inside a scan a tap has leading axes
    :meth:`Found.iterations` (one slice per iteration) and so do the records it returns
    (:mod:`varprop._src.model.loops`).
    """
    run = Run(found, on_layer, on_merge, on_scope)
    closed = found.jaxpr
    return run.scope(closed.jaxpr, closed.consts, list(flat_args), (), dict(taps or {}))
