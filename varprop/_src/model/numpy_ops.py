r"""JAX primitives evaluated in NumPy, for the propagation's interpreter.

:mod:`varprop._src.model.propagate` interprets a model's jaxpr without compiling it. Its
values are NumPy arrays: concrete ones (parameters, masks, running statistics) and the
per-element moments of the others. Binding a JAX primitive eagerly compiles one XLA program
per primitive and shape (tens of milliseconds each, hundreds in a ResNet), so the common
primitives are evaluated here instead:

* :data:`ELEMENTWISE`: elementwise functions (also applied at the quadrature nodes);
* :func:`concrete`: any primitive of the tables on concrete operands, with the result cast
  to the jaxpr's dtype; ``None`` for the rest (the caller binds those);
* :func:`structural`: a moment array through a shape-only primitive (reshape, broadcast,
  transpose, slice, ...) *without* broadcasting it to its full shape: an axis of size 1
  (constant along it) stays size 1 where the primitive allows.

Example:
    >>> import numpy as np
    >>> from varprop._src.model.numpy_ops import structural
    >>> structural("broadcast_in_dim", dict(shape=(8, 4, 3), broadcast_dimensions=(0, 2)),
    ...            np.ones((1, 3)), (8, 3)).shape
    (1, 1, 3)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from varprop._src.model.taps import _dot_letters, _einsum_uniform, dilate, pad_crop


def _elementwise() -> dict[str, Callable[..., Any] | None]:
    from scipy import special

    def select_n(pred, *cases):
        pred = np.asarray(pred)
        if len(cases) == 2:
            return np.where(pred.astype(bool), cases[1], cases[0])
        return np.choose(pred.astype(int), np.broadcast_arrays(*cases))

    return {
        "neg": np.negative,
        "exp": np.exp,
        "exp2": np.exp2,
        "log": np.log,
        "log1p": np.log1p,
        "expm1": np.expm1,
        "tanh": np.tanh,
        "logistic": special.expit,
        "erf": special.erf,
        "erfc": special.erfc,
        "erf_inv": special.erfinv,
        "sqrt": np.sqrt,
        "rsqrt": lambda x: 1.0 / np.sqrt(x),
        "cbrt": np.cbrt,
        "abs": np.abs,
        "sign": np.sign,
        "square": np.square,
        "sin": np.sin,
        "cos": np.cos,
        "floor": np.floor,
        "ceil": np.ceil,
        "is_finite": np.isfinite,
        "not": np.logical_not,
        "stop_gradient": lambda x: x,
        "copy": lambda x: x,
        "copy_p": lambda x: x,
        "reduce_precision": lambda x: x,
        "convert_element_type": lambda x: np.asarray(x, np.float64),
        "add": np.add,
        "sub": np.subtract,
        "mul": np.multiply,
        "div": np.divide,
        "max": np.maximum,
        "min": np.minimum,
        "pow": np.power,
        "atan2": np.arctan2,
        "rem": np.fmod,
        "gt": np.greater,
        "ge": np.greater_equal,
        "lt": np.less,
        "le": np.less_equal,
        "eq": np.equal,
        "ne": np.not_equal,
        "and": np.logical_and,
        "or": np.logical_or,
        "select_n": select_n,
        "clamp": lambda lo, x, hi: np.clip(x, lo, hi),
        "integer_pow": None,  # its exponent is a parameter: applied in the composition
    }


#: Elementwise primitives as NumPy functions (``integer_pow``: ``None``, its exponent is a
#: parameter).
ELEMENTWISE = _elementwise()

# Integer semantics NumPy does not share (lax's div truncates, rem keeps the dividend's
# sign as fmod does but pow of integers overflows differently): bound by JAX instead.
_FLOAT_ONLY = frozenset({"div", "pow", "rem", "exp", "log", "sqrt", "rsqrt"})


def _broadcast_in_dim(x, p):
    shape = [1] * len(p["shape"])
    for i, d in enumerate(p["broadcast_dimensions"]):
        shape[d] = x.shape[i]
    return x.reshape(shape)


def _slice(x, p):
    strides = p.get("strides") or (1,) * x.ndim
    idx = tuple(
        slice(0, 1) if n == 1 else slice(lo, hi, st)
        for n, lo, hi, st in zip(
            x.shape, p["start_indices"], p["limit_indices"], strides, strict=True
        )
    )
    return x[idx]


def _rev(x, p):
    return np.flip(x, axis=tuple(d for d in p["dimensions"] if x.shape[d] > 1))


#: Shape-only primitives on arrays broadcastable to their operand: (operand, params) ->
#: an array broadcastable to the result (full-size operands give the exact result).
_STRUCTURAL: dict[str, Callable[[np.ndarray, dict[str, Any]], np.ndarray]] = {
    "broadcast_in_dim": _broadcast_in_dim,
    "transpose": lambda x, p: np.transpose(x, p["permutation"]),
    "squeeze": lambda x, p: np.squeeze(x, axis=tuple(p["dimensions"])),
    "slice": _slice,
    "rev": _rev,
    "copy": lambda x, p: x,
    "copy_p": lambda x, p: x,
    "convert_element_type": lambda x, p: x,
}


def structural(name: str, params: dict[str, Any], a: np.ndarray, operand_shape) -> Any:
    """A moment array ``a`` (broadcastable to ``operand_shape``) through the shape-only
    primitive ``name``; ``None`` when it has no NumPy rule here."""
    a = np.asarray(a, np.float64)
    a = a.reshape((1,) * (len(operand_shape) - a.ndim) + a.shape)
    if name == "reshape":
        if params.get("dimensions") is not None:
            return None
        if a.size == 1:
            return a.reshape((1,) * len(params["new_sizes"]))
        return np.broadcast_to(a, operand_shape).reshape(params["new_sizes"])
    fn = _STRUCTURAL.get(name)
    return None if fn is None else fn(a, params)


def _reduce(fn):
    return lambda x, p: fn(x, axis=tuple(p["axes"]))


def _pad(x, value, p):
    cfg = p["padding_config"]
    if any(interior for _, _, interior in cfg):
        return None
    return pad_crop(x, [(lo, hi) for lo, hi, _ in cfg], value)


def _iota(p):
    shape, dim = tuple(p["shape"]), p["dimension"]
    r = np.arange(shape[dim]).reshape([-1 if d == dim else 1 for d in range(len(shape))])
    return np.broadcast_to(r, shape)


def _is_array(x) -> bool:
    return isinstance(x, (bool, int, float, np.ndarray, np.generic)) or hasattr(x, "__array__")


def concrete(eqn, ins: list[Any]) -> list[Any] | None:
    """``eqn`` on concrete operands in NumPy, results in the jaxpr's dtypes; ``None`` when
    it has no rule here (a key, an integer division, a gather: bind it instead)."""
    name = eqn.primitive.name
    p = eqn.params
    outs = eqn.outvars
    if len(outs) != 1 or not all(_is_array(x) for x in ins):
        return None
    dtype = outs[0].aval.dtype
    if getattr(dtype, "name", "").startswith("key"):
        return None
    xs = [np.asarray(x) for x in ins]
    if any(x.dtype.kind not in "fbiu" for x in xs):
        return None
    if name in _FLOAT_ONLY and any(x.dtype.kind in "iu" for x in xs):
        return None
    if name == "iota":
        r = _iota(p)
    elif name == "reshape" and p.get("dimensions") is None:
        r = xs[0].reshape(p["new_sizes"])
    elif name == "broadcast_in_dim":
        r = np.broadcast_to(_broadcast_in_dim(xs[0], p), p["shape"])
    elif name in _STRUCTURAL and name != "convert_element_type":
        r = _STRUCTURAL[name](xs[0], p)
    elif name == "convert_element_type":
        r = xs[0]
    elif name in ("reduce_sum", "reduce_max", "reduce_min"):
        r = {"reduce_sum": np.sum, "reduce_max": np.max, "reduce_min": np.min}[name](
            xs[0], axis=tuple(p["axes"])
        )
    elif name == "concatenate":
        r = np.concatenate(xs, axis=p["dimension"])
    elif name == "pad":
        r = _pad(xs[0], xs[1], p)
    elif name in _WINDOW:
        r = reduce_window(name, p, xs[0], xs[0].shape)
        if r is not None and name != "reduce_window_sum" and xs[0].dtype.kind in "iu":
            return None  # integer max/min pools: JAX's own identity values
    elif name == "integer_pow":
        r = xs[0] ** p["y"]
    elif (fn := ELEMENTWISE.get(name)) is not None:
        with np.errstate(all="ignore"):
            r = fn(*xs)
    else:
        return None
    if r is None:
        return None
    return [np.asarray(r).astype(dtype, copy=False)]


def evaluate(closed: Any, args: list[Any], used: list[bool]) -> list[Any]:
    """The outputs of the closed jaxpr ``closed`` marked ``used`` (the others ``None``):
    only the equations they depend on run (a parameter's initializer that is not needed,
    a random draw, is skipped), each in NumPy when :func:`concrete` has a rule, else bound
    by JAX."""
    from jax.extend import core as jcore

    jaxpr = closed.jaxpr
    needed = {v for v, u in zip(jaxpr.outvars, used, strict=True) if u and not _literal(v)}
    keep = []
    for eqn in reversed(jaxpr.eqns):
        if any(v in needed for v in eqn.outvars):
            keep.append(eqn)
            needed.update(v for v in eqn.invars if not isinstance(v, jcore.Literal))
    env: dict[Any, Any] = dict(zip(jaxpr.constvars, closed.consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for eqn in reversed(keep):
        ins = [read(v) for v in eqn.invars]
        outs = concrete(eqn, ins)
        if outs is None:
            out = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(eqn.params))
            outs = out if eqn.primitive.multiple_results else [out]
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) if u else None for v, u in zip(jaxpr.outvars, used, strict=True)]


def _literal(v) -> bool:
    from jax.extend import core as jcore

    return isinstance(v, jcore.Literal)


def _sum_to(g: np.ndarray, shape: tuple[int, ...], out_shape: tuple[int, ...]) -> np.ndarray:
    """``g`` (broadcastable to ``out_shape``) summed over the axes where ``shape`` has size 1
    and the output does not (a size-1 axis of ``g`` there counts the output's length)."""
    factor = 1.0
    for d, (n, m) in enumerate(zip(shape, out_shape, strict=True)):
        if n == 1 and m > 1:
            if g.shape[d] == 1:
                factor *= m
            else:
                g = np.sum(g, axis=d, keepdims=True)
    return g * factor if factor != 1.0 else g


def linear_transpose(eqn, which: int, g, shapes: list[tuple[int, ...]]) -> np.ndarray | None:
    """The transpose of the linear shape-only primitive ``eqn`` for its operand ``which``
    (of shape ``shapes[which]``), applied to ``g`` (broadcastable to the output): an array
    broadcastable to the operand; ``None`` when there is no NumPy rule here (JAX's VJP
    then)."""
    name, p = eqn.primitive.name, eqn.params
    out_shape = tuple(eqn.outvars[0].aval.shape)
    shape = shapes[which]
    g = np.asarray(g, np.float64)
    g = g.reshape((1,) * (len(out_shape) - g.ndim) + g.shape)
    if name in ("convert_element_type", "copy", "copy_p", "reduce_precision"):
        return g
    if name == "transpose":
        return np.transpose(g, np.argsort(p["permutation"]))
    if name == "squeeze":
        return np.expand_dims(g, tuple(p["dimensions"]))
    if name == "reshape" and p.get("dimensions") is None:
        if g.size == 1:
            return g.reshape((1,) * len(shape))
        return np.broadcast_to(g, out_shape).reshape(shape)
    if name == "reduce_sum":
        return np.expand_dims(g, tuple(p["axes"]))
    if name == "broadcast_in_dim":
        bdims = tuple(p["broadcast_dimensions"])
        lifted = [1] * len(out_shape)
        for i, d in enumerate(bdims):
            lifted[d] = shape[i]
        g = _sum_to(g, tuple(lifted), out_shape)
        return g.reshape([g.shape[d] for d in bdims])
    if name == "concatenate" and p["dimension"] is not None:
        d = p["dimension"]
        start = sum(s[d] for s in shapes[:which])
        g = np.broadcast_to(g, out_shape)
        idx = [slice(None)] * len(out_shape)
        idx[d] = slice(start, start + shape[d])
        return g[tuple(idx)]
    if name == "pad" and which == 0 and not any(i for _, _, i in p["padding_config"]):
        g = np.broadcast_to(g, out_shape)
        return pad_crop(g, [(-lo, -hi) for lo, hi, _ in p["padding_config"]])
    return None


def dot_transpose(dims, which: int, g, other, shapes: list[tuple[int, ...]]) -> np.ndarray:
    """For y = dot_general(a, b): the transpose for operand ``which`` with the other operand
    fixed at ``other`` (both broadcastable to their shapes): g_a = Σ g·b over what a lacks."""
    sa, sb, out = _dot_letters(len(shapes[0]), len(shapes[1]), dims)
    specs = (sa, sb)
    sizes = {
        c: n for s, shp in zip(specs, shapes, strict=True) for c, n in zip(s, shp, strict=True)
    }
    g = np.asarray(g, np.float64)
    g = g.reshape((1,) * (len(out) - g.ndim) + g.shape)
    ops = [(g, out), (np.asarray(other, np.float64), specs[1 - which])]
    return _einsum_uniform(ops, specs[which], sizes)


_WINDOW = {
    "reduce_window_sum": (np.add, 0.0),
    "reduce_window_max": (np.maximum, -np.inf),
    "reduce_window_min": (np.minimum, np.inf),
}


def reduce_window(name: str, p: dict[str, Any], a, operand_shape) -> np.ndarray | None:
    """``reduce_window_{sum,max,min}`` of ``a`` (broadcastable to ``operand_shape``): the
    operand dilated and padded with the reduction's identity, then the window's offsets
    combined at the strides; an axis of ``a`` of size 1 under a window of 1 stays size 1."""
    if name not in _WINDOW:
        return None
    op, init = _WINDOW[name]
    a = np.asarray(a, np.float64)
    a = a.reshape((1,) * (len(operand_shape) - a.ndim) + a.shape)
    win, strides = p["window_dimensions"], p["window_strides"]
    pads, base, wdil = p["padding"], p["base_dilation"], p["window_dilation"]
    for d, n in enumerate(operand_shape):
        trivial = win[d] == 1 and strides[d] == 1 and tuple(pads[d]) == (0, 0) and base[d] == 1
        if a.shape[d] == 1 and n > 1 and not trivial:
            a = np.broadcast_to(a, (*a.shape[:d], n, *a.shape[d + 1 :]))
    for d in range(a.ndim):
        a = dilate(a, d, a.shape[d], base[d], init)
    a = pad_crop(a, pads, init)
    out = [
        max(0, (a.shape[d] - ((win[d] - 1) * wdil[d] + 1)) // strides[d] + 1) for d in range(a.ndim)
    ]
    res = None
    for offs in np.ndindex(*win):
        idx = tuple(
            slice(o * wdil[d], o * wdil[d] + (out[d] - 1) * strides[d] + 1, strides[d])
            for d, o in enumerate(offs)
        )
        res = a[idx] if res is None else op(res, a[idx])
    return np.asarray(res, np.float64)
