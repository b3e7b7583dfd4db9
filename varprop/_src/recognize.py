"""The varprop equivalent of a ``jax.nn`` / Flax initializer, read from its closure.

``jax.nn.initializers``, ``flax.linen.initializers`` and ``flax.nnx.initializers`` are the
same JAX functions: factories (``normal(stddev)``, ``variance_scaling(scale, mode,
distribution, in_axis, out_axis, batch_axis)``, ...) that return a closure holding their
arguments, plus the plain functions ``zeros`` and ``ones``. :func:`recognize` tells which
factory built a closure by its code object (one per factory, shared by every closure it
returns), reads the arguments from the closure cells and returns the varprop
:class:`~varprop.initializers.Initializer` drawing from the same law:

=============================================  ==================================================
JAX / Flax                                     varprop law
=============================================  ==================================================
``normal(s)``                                  N(0, s^2): Var = s^2
``truncated_normal(s, lower=a, upper=b)``      s z, z ~ N(0, 1) on [a, b] (no variance correction)
``uniform(s)``                                 U[0, s): E = s/2, Var = s^2/12
``constant(c)``, ``zeros``, ``ones``           Var = 0, E = c
``variance_scaling(scale, mode, dist, ...)``   Var = scale / n(mode) (truncated normal corrected)
``orthogonal(g, column_axis)``                 g Q: Var = g^2 min(r, c)/(r c)
``delta_orthogonal(g)``                        g Q at the kernel's centre tap
``flax.linen.linear.default_embed_init``       Var = 1/features (:func:`embed_normal`)
=============================================  ==================================================

Wrappers are followed to the function they wrap: ``functools.partial`` binding only
``dtype`` / ``out_sharding``, any ``__wrapped__`` attribute (``functools.wraps``, which
Flax's ``with_partitioning``, ``with_logical_partitioning`` and ``nnx.with_metadata`` use),
and, should a Flax wrapper lack it, the wrapped function in its closure.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import CodeType
from typing import Any

import jax

from varprop._src import initializers as vi
from varprop._src.laws.schemes import DISTRIBUTIONS, MODES, AxisSpec, Scheme, compute_fans

#: How many wrappers deep :func:`recognize` follows before giving up (a cycle guard).
MAX_WRAPPER_DEPTH = 32

#: Keywords a ``functools.partial`` may bind without changing the law.
_NEUTRAL_KEYWORDS = frozenset({"dtype", "out_sharding"})

#: Shapes of 2 to 5 dims with distinct prime sizes, on which a variance-scaling layout's
#: fans are compared with JAX's formula (distinct primes: no two fan formulas agree by
#: accident).
_LAYOUT_PROBES = ((3, 5), (3, 5, 7), (2, 3, 5, 7), (2, 3, 5, 7, 11), (13, 2, 3, 5, 7))

#: Flax's default embedding init, ``variance_scaling(1.0, "fan_in", "normal", out_axis=0)``.
_FLAX_EMBED = {
    "scale": 1.0,
    "mode": "fan_in",
    "distribution": "normal",
    "in_axis": -2,
    "out_axis": 0,
    "batch_axis": (),
}


@dataclass(frozen=True)
class _Factory:
    """A JAX initializer factory: a sample closure (for its code object) and the varprop
    initializer built from a closure's cell values (``None`` when varprop has no law)."""

    sample: Callable[[], Callable[..., Any]]
    build: Callable[[Mapping[str, Any]], vi.Initializer | None]


def _number(v: Any) -> float | None:
    """A Python float from a number or a 0-d array, ``None`` for anything else (or NaN/inf)."""
    if isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _axis(v: Any) -> AxisSpec | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, Sequence) and all(isinstance(a, int) and not isinstance(a, bool) for a in v):
        return tuple(v)
    return None


def _jax_fans(
    shape: tuple[int, ...], in_axis: AxisSpec, out_axis: AxisSpec, batch_axis: AxisSpec
) -> tuple[float, float]:
    """JAX's fan formula (``jax.nn.initializers.variance_scaling``), restated.

    .. math:: rf = \\frac{\\prod \\text{shape}}{|in|\\,|out|\\,|batch|}, \\quad
              n_{in} = |in|\\,rf, \\quad n_{out} = |out|\\,rf

    Unlike :func:`~varprop.laws.compute_fans`, axes may overlap (``rf`` is then a
    fraction): Flax's embedding init names axis 0 as both ``in`` and ``out`` on a 2-D table.
    """

    def size(axes: AxisSpec) -> int:
        return shape[axes] if isinstance(axes, int) else math.prod(shape[a] for a in axes)

    n_in, n_out, n_batch = size(in_axis), size(out_axis), size(batch_axis)
    rf = math.prod(shape) / n_in / n_out / n_batch
    return n_in * rf, n_out * rf


def _denominator(mode: str, fan_in: float, fan_out: float) -> float:
    return {
        "fan_in": fan_in,
        "fan_out": fan_out,
        "fan_avg": (fan_in + fan_out) / 2,
        "fan_geo_avg": math.sqrt(fan_in * fan_out),
    }[mode]


def _layout_for(
    mode: str, in_axis: AxisSpec, out_axis: AxisSpec, batch_axis: AxisSpec
) -> tuple[AxisSpec, AxisSpec, AxisSpec] | None:
    """A varprop layout whose fans give JAX's ``n(mode)`` on every probe shape, or ``None``.

    JAX's own layout first. When its axes overlap on some shape (which varprop refuses),
    the fan the mode does not use is free: :math:`n_{in}` depends only on ``out`` and
    ``batch`` (it is :math:`\\prod \\text{shape} / (|out|\\,|batch|)`), so for ``fan_in``
    another ``in`` axis is tried, and symmetrically for ``fan_out``. A candidate must agree
    with JAX on every probe shape where JAX's formula applies.
    """
    candidates = [(in_axis, out_axis, batch_axis)]
    others = (-1, -2, 0, 1, -3, 2)
    if mode == "fan_in":
        candidates += [(a, out_axis, batch_axis) for a in others]
    elif mode == "fan_out":
        candidates += [(in_axis, a, batch_axis) for a in others]
    for cand in candidates:
        if _layout_agrees(mode, (in_axis, out_axis, batch_axis), cand):
            return cand
    return None


def _batch_overlaps(shape: tuple[int, ...], layout: tuple[AxisSpec, AxisSpec, AxisSpec]) -> bool:
    """Whether the batch axes of ``layout`` fall on an ``in`` or ``out`` axis of ``shape``
    (``batch_axis=0`` of a stacked kernel probed on a 2-D shape)."""

    def norm(axes: AxisSpec) -> set[int]:
        axes = (axes,) if isinstance(axes, int) else tuple(axes)
        return {a % len(shape) for a in axes}

    in_axes, out_axes, batch = (norm(a) for a in layout)
    return bool(batch & (in_axes | out_axes))


def _layout_agrees(
    mode: str,
    jax_layout: tuple[AxisSpec, AxisSpec, AxisSpec],
    layout: tuple[AxisSpec, AxisSpec, AxisSpec],
) -> bool:
    tested = 0
    for shape in _LAYOUT_PROBES:
        try:
            want = _denominator(mode, *_jax_fans(shape, *jax_layout))
        except (IndexError, ZeroDivisionError):
            continue  # JAX itself cannot draw this shape
        if _batch_overlaps(shape, jax_layout):
            continue  # a stacked layout's batch axis on a shape too small for it
        tested += 1
        try:
            got = _denominator(mode, *compute_fans(shape, *layout))
        except (ValueError, TypeError):
            return False
        if not math.isclose(got, want, rel_tol=1e-12):
            return False
    return tested > 0


def _variance_scaling(c: Mapping[str, Any]) -> vi.Initializer | None:
    scale = _number(c.get("scale"))
    mode, dist = c.get("mode"), c.get("distribution")
    axes = [_axis(c.get(k)) for k in ("in_axis", "out_axis", "batch_axis")]
    if scale is None or scale <= 0 or mode not in MODES or dist not in DISTRIBUTIONS:
        return None
    if any(a is None for a in axes):
        return None
    in_axis, out_axis, batch_axis = axes
    assert in_axis is not None and out_axis is not None and batch_axis is not None
    given = {
        "scale": scale,
        "mode": mode,
        "distribution": dist,
        "in_axis": in_axis,
        "out_axis": out_axis,
        "batch_axis": batch_axis,
    }
    if given == _FLAX_EMBED:
        return vi.embed_normal()
    return _variance_scaling_of(scale, mode, dist, in_axis, out_axis, batch_axis)


@functools.lru_cache(maxsize=256)
def _variance_scaling_of(scale, mode, dist, in_axis, out_axis, batch_axis):
    """The varprop initializer of one variance-scaling configuration, built once (its
    SymPy law is costly to build, and every layer of a model shares a few of them)."""
    layout = _layout_for(mode, in_axis, out_axis, batch_axis)
    if layout is None:
        return None
    return vi.variance_scaling(scale, mode, dist, *layout)


def _normal(c: Mapping[str, Any]) -> vi.Initializer | None:
    sd = _number(c.get("stddev"))
    if sd is None:
        return None
    return vi.normal(abs(sd)) if sd != 0 else vi.zeros  # N(0, s^2) is symmetric in s


def _truncated_normal(c: Mapping[str, Any]) -> vi.Initializer | None:
    sd, lo, hi = (_number(c.get(k)) for k in ("stddev", "lower", "upper"))
    if sd is None or lo is None or hi is None:
        return None
    if sd == 0:
        return vi.zeros
    if sd < 0:  # s z with z on [a, b] is |s| z' with z' = -z on [-b, -a]
        sd, lo, hi = -sd, -hi, -lo
    try:
        return vi.truncated_normal(sd, lo, hi)
    except ValueError:  # InputError: bounds varprop cannot draw from
        return None


def _uniform(c: Mapping[str, Any]) -> vi.Initializer | None:
    s = _number(c.get("scale"))
    if s is None:
        return None
    if s == 0:
        return vi.zeros
    return vi.uniform_interval(min(0.0, s), max(0.0, s))  # s U[0, 1)


def _constant(c: Mapping[str, Any]) -> vi.Initializer | None:
    v = _number(c.get("value"))
    return None if v is None else vi.constant(v)


def _orthogonal(c: Mapping[str, Any]) -> vi.Initializer | None:
    g, col = _number(c.get("scale")), c.get("column_axis")
    if g is None or not isinstance(col, int) or isinstance(col, bool):
        return None
    # -Q is as Haar-distributed as Q, so the law is that of |g|.
    return vi.orthogonal(abs(g), col) if g != 0 else vi.zeros


def _delta_orthogonal(c: Mapping[str, Any]) -> vi.Initializer | None:
    # JAX's column_axis picks rows or columns of the (in, out) centre matrix; with
    # in <= out (which both require) orthonormal rows are the only choice, so the law
    # does not depend on it.
    g = _number(c.get("scale"))
    if g is None:
        return None
    return vi.delta_orthogonal(abs(g)) if g != 0 else vi.zeros


_INITS = jax.nn.initializers

_FACTORIES = (
    _Factory(lambda: _INITS.variance_scaling(1.0, "fan_in", "normal"), _variance_scaling),
    _Factory(lambda: _INITS.normal(), _normal),
    _Factory(lambda: _INITS.truncated_normal(), _truncated_normal),
    _Factory(lambda: _INITS.uniform(), _uniform),
    _Factory(lambda: _INITS.constant(1.0), _constant),
    _Factory(lambda: _INITS.orthogonal(), _orthogonal),
    _Factory(lambda: _INITS.delta_orthogonal(), _delta_orthogonal),
)


@functools.cache
def _by_code() -> dict[CodeType, _Factory]:
    """The factories by the code object of the closures they return."""
    return {f.sample().__code__: f for f in _FACTORIES}


def _plain_functions() -> dict[Callable[..., Any], vi.Initializer]:
    return {_INITS.zeros: vi.zeros, _INITS.ones: vi.ones}


@functools.cache
def _flax_wrapper_codes() -> dict[CodeType, str]:
    """Code objects of Flax's initializer wrappers, with the closure cell holding the
    wrapped function (followed only if a wrapper lacks ``__wrapped__``)."""
    out: dict[CodeType, str] = {}
    try:
        import flax.linen as nn
        from flax import nnx
    except ImportError:  # pragma: no cover - flax is a dependency
        return out
    z = _INITS.zeros
    samples = (
        lambda: nn.with_partitioning(z, (None,)),
        lambda: nn.with_logical_partitioning(z, (None,)),
        lambda: nnx.with_partitioning(z, (None,)),
        lambda: nnx.with_metadata(z),
    )
    for make in samples:
        try:
            fn = make()
        except Exception:
            continue
        code = getattr(fn, "__code__", None)
        if code is None:
            continue
        for cell_name in ("fn", "initializer"):
            if cell_name in code.co_freevars:
                out[code] = cell_name
                break
    return out


def _closure(fn: Any) -> dict[str, Any] | None:
    code, cells = getattr(fn, "__code__", None), getattr(fn, "__closure__", None)
    if code is None:
        return None
    values: dict[str, Any] = {}
    for name, cell in zip(code.co_freevars, cells or (), strict=False):
        try:
            values[name] = cell.cell_contents
        except ValueError:  # an empty cell
            continue
    return values


def _unwrap(init: Any) -> Any | None:
    """The function ``init`` wraps without changing its law, or ``None`` if it is not a
    known wrapper."""
    if isinstance(init, functools.partial):
        if init.args or not set(init.keywords) <= _NEUTRAL_KEYWORDS:
            return None  # a bound key or shape would change what is drawn
        return init.func
    inner = getattr(init, "__wrapped__", None)
    if inner is not None:
        return inner
    code = getattr(init, "__code__", None)
    cell = _flax_wrapper_codes().get(code) if code is not None else None
    if cell is not None:
        return (_closure(init) or {}).get(cell)
    return None


def recognize(init: Any) -> vi.Initializer | None:
    """The varprop :class:`~varprop.initializers.Initializer` that draws as ``init`` does.

    The returned initializer's scheme has the same variance, mean, distribution, layout
    (``in_axis``, ``out_axis``, ``batch_axis``, ``column_axis``) and truncation as ``init``
    for every shape. ``init`` may be a varprop initializer (returned as is), a
    ``jax.nn.initializers`` / ``flax.linen.initializers`` / ``flax.nnx.initializers``
    function, or one of those wrapped (see the module docstring for the table of laws):

    * ``variance_scaling(scale, mode, d, ...)`` and glorot/xavier, he/kaiming, lecun:
      :math:`\\mathrm{Var}(w) = \\text{scale}/n(\\text{mode})`; JAX's ``truncated_normal``
      here is rescaled by 1/0.8796 so that the variance is exactly scale/n.
    * ``truncated_normal(s, lower=a, upper=b)``: :math:`w = s z`, z ~ N(0, 1) on [a, b],
      :math:`\\mathrm{Var}(w) = s^2 \\mathrm{Var}(z)` (0.7737 s^2 for +-2: no correction).
    * ``uniform(s)``: U[0, s), :math:`E[w] = s/2`, :math:`\\mathrm{Var}(w) = s^2/12`.

    Returns ``None`` for anything else: a user's own function, a ``partial`` binding
    arguments other than ``dtype``/``out_sharding``, arguments that are not numbers (a
    traced or non-scalar array), a non-positive variance-scaling ``scale``, or a
    variance-scaling layout whose overlapping axes give fractional fans that no varprop
    layout reproduces. Complex dtypes (JAX draws from a disk there) are not covered: the
    law returned is the real one.

    Example:
        >>> import functools, jax, flax.linen as nn
        >>> recognize(jax.nn.initializers.he_normal()).scheme.law
        2/n_in
        >>> recognize(jax.nn.initializers.he_normal()).scheme.distribution
        'truncated_normal'
        >>> init = nn.with_logical_partitioning(jax.nn.initializers.uniform(0.2), ("a", "b"))
        >>> recognize(init).scheme.mean_law, recognize(init).scheme.law
        (1/10, 1/300)
        >>> recognize(lambda key, shape, dtype=None: 0.0) is None
        True
    """
    seen = 0
    while seen <= MAX_WRAPPER_DEPTH:
        seen += 1
        if isinstance(init, vi.Initializer):
            return init
        try:
            plain = _plain_functions().get(init)
        except TypeError:  # unhashable
            plain = None
        if plain is not None:
            return plain
        code = getattr(init, "__code__", None)
        factory = _by_code().get(code) if code is not None else None
        if factory is not None:
            cells = _closure(init)
            return None if cells is None else factory.build(cells)
        inner = _unwrap(init)
        if inner is None:
            return None
        init = inner
    return None


def scheme_of(init: Any) -> Scheme:
    """The :class:`~varprop.laws.Scheme` (variance law) behind an initializer.

    ``init`` is a varprop :class:`Initializer`, or a ``jax.nn.initializers`` /
    ``flax.linen.initializers`` / ``flax.nnx.initializers`` function, possibly wrapped
    (``functools.partial``, ``__wrapped__``, Flax's ``with_partitioning``,
    ``with_logical_partitioning``, ``with_metadata``), whose law is read from its closure by
    :func:`varprop.initializers.recognize`.

    Example:
        >>> import jax, varprop
        >>> varprop.scheme_of(varprop.initializers.he_normal()).law
        2/n_in
        >>> varprop.scheme_of(jax.nn.initializers.he_uniform()).law
        2/n_in

    Raises:
        TypeError: ``init`` is neither a varprop initializer nor a recognized JAX/Flax one
            (the message names it and what is allowed).
    """
    if isinstance(init, vi.Initializer):
        return init.scheme
    found = recognize(init)
    if found is not None:
        return found.scheme
    raise TypeError(
        f"{init!r} is not a varprop initializer nor a recognized JAX/Flax one, so varprop "
        "knows no variance law for it; allowed: a varprop "
        "initializer (varprop.initializers, e.g. variance_scaling(scale, mode, distribution)) "
        "or a jax.nn / flax initializer (variance_scaling and the glorot/he/lecun/xavier/"
        "kaiming builders on it, normal, truncated_normal, uniform, zeros, ones, constant, "
        "orthogonal, delta_orthogonal), possibly wrapped by functools.partial, __wrapped__ "
        "or Flax's with_partitioning / with_logical_partitioning / with_metadata"
    )
