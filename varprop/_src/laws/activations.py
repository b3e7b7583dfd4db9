r"""Activation functions as records: the SymPy law and the JAX function, declared once.

An :class:`Activation` holds :math:`\phi(x)` as one SymPy expression in :data:`symbols.x`
(possibly a ``Piecewise``; :math:`\phi'` is ``sympy.diff`` of it), the points where it is not
smooth, whether its Gaussian moments have a closed form, and, for the built-ins, the JAX
function that computes it (a :class:`JaxFunction`: a dotted path such as ``"jax.nn.relu"``,
resolved by :func:`varprop._src.core.network.jax_activation`; nothing here imports JAX). The
registry maps names (and ``NAME:key=value`` specs) to records: :func:`get_activation`,
:func:`register_activation`, :func:`activation_names`.

What is computed from the record lives beside it: the closed-form Gaussian integrals in
:mod:`varprop._src.laws.gaussian_integrals`, the moments :math:`E[\phi(z)]`,
:math:`E[\phi(z)^2]`, :math:`E[\phi'(z)^2]` for :math:`z \sim \mathcal N(0, q)` in
:mod:`varprop._src.laws.activation_moments`, and the gains in
:mod:`varprop._src.laws.activation_gains`.

References:
    He, Zhang, Ren & Sun, "Delving Deep into Rectifiers: Surpassing Human-Level Performance
    on ImageNet Classification", ICCV 2015 (ReLU).
    Klambauer, Unterthiner, Mayr & Hochreiter, "Self-Normalizing Neural Networks",
    NeurIPS 2017 (SELU and its constants).
    Hendrycks & Gimpel, "Gaussian Error Linear Units (GELUs)", arXiv:1606.08415, 2016.
    Clevert, Unterthiner & Hochreiter, "Fast and Accurate Deep Network Learning by
    Exponential Linear Units (ELUs)", ICLR 2016.

Nothing here imports JAX.
"""

# SymPy's inline annotations are narrower than its API (subs() with a dict, Eq() returning
# Eq, Expr vs Basic results): these checks give false positives on SymPy code.
# pyright: reportArgumentType=false, reportCallIssue=false, reportReturnType=false
# pyright: reportAssignmentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

import functools
import math
import numbers
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

import mpmath
import numpy as np
import sympy as sp

from varprop._src.errors import InputError
from varprop._src.laws import symbols as S
from varprop._src.laws.gaussian_integrals import NoClosedForm, split_pieces
from varprop._src.spec import parse_spec

__all__ = [
    "BUILTIN_NAMES",
    "SELU_ALPHA",
    "SELU_LAMBDA",
    "Activation",
    "JaxFunction",
    "activation_names",
    "get_activation",
    "register_activation",
]

_x = S.x

#: SELU constants :math:`\lambda_{01}` and :math:`\alpha_{01}` as printed (to 32 digits) in
#: Klambauer et al. 2017, Sec. "Stable and Attracting Fixed Point (0, 1) for SELU": the
#: values that make (mean 0, variance 1) a fixed point of the SELU map.
SELU_LAMBDA = sp.Float("1.0507009873554804934193349852946", 32)
SELU_ALPHA = sp.Float("1.6732632423543772848170429916717", 32)

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# -- the Activation record ---------------------------------------------------------------


@dataclass(frozen=True)
class JaxFunction:
    """The JAX function that computes an activation, named, not imported (no JAX here).

    :func:`varprop._src.core.network.jax_activation` imports ``path`` and calls it with
    the keyword arguments ``options`` and, for each name in ``params``, the activation's
    parameter of that name.

    Attributes:
        path: dotted path of the function, e.g. ``"jax.nn.leaky_relu"``: a module path,
            then the attribute.
        params: names of the activation's parameters passed as keywords of the same name,
            e.g. ``("negative_slope",)``.
        options: fixed keyword arguments, e.g. ``(("approximate", False),)`` for the exact
            GELU.

    Example:
        >>> get_activation("leaky_relu").jax_function
        JaxFunction(path='jax.nn.leaky_relu', params=('negative_slope',), options=())
    """

    path: str
    params: tuple[str, ...] = ()
    options: tuple[tuple[str, bool | int | float | str], ...] = ()

    def keywords(self, act: Activation) -> dict[str, object]:
        """The keyword arguments for ``act``: ``options`` and the named parameters."""
        values = dict(act.params)
        return {**dict(self.options), **{k: values[k] for k in self.params}}


@dataclass(frozen=True)
class Activation:
    r"""An activation :math:`\phi` as a SymPy expression in :data:`symbols.x`.

    Attributes:
        name: canonical registry name, e.g. ``"leaky_relu"``.
        params: parameter values, e.g. ``(("negative_slope", 0.2),)``.
        expr: :math:`\phi(x)`, possibly a ``Piecewise``.
        kinks: points where :math:`\phi` or :math:`\phi'` is not smooth (quadrature splits
            there; Gauss–Hermite converges slowly across a kink).
        closed_form: whether the moments are derived symbolically (see
            :func:`varprop._src.laws.activation_moments.moment_expressions`).
        homogeneous: positively homogeneous of degree 1, :math:`\phi(cx) = c\,\phi(x)` for
            :math:`c > 0`, so :math:`E[\phi(\sqrt q z)^2] = q\,E[\phi(z)^2]`.
        description: one line for humans.
        jax_function: the JAX function computing :math:`\phi` (the built-ins), or None:
            then :func:`varprop._src.core.network.jax_activation` lambdifies ``expr``.
    """

    name: str
    params: tuple[tuple[str, float], ...]
    expr: sp.Expr
    kinks: tuple[float, ...]
    closed_form: bool
    homogeneous: bool
    description: str
    jax_function: JaxFunction | None = None

    @property
    def grad_expr(self) -> sp.Expr:
        r""":math:`\phi'(x)` by ``sympy.diff`` (a ``Piecewise`` is differentiated piece by piece)."""
        return _grad(self.expr)

    def numpy_fn(self) -> Callable[[np.ndarray], np.ndarray]:
        r""":math:`\phi` lambdified to NumPy/SciPy (float64; see :func:`_numeric`)."""
        return _numeric(self.expr)

    def numpy_grad(self) -> Callable[[np.ndarray], np.ndarray]:
        r""":math:`\phi'` lambdified to NumPy/SciPy (float64)."""
        return _numeric(self.grad_expr)

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v!r}" for k, v in self.params)


@functools.cache
def _grad(expr: sp.Expr) -> sp.Expr:
    return sp.diff(expr, _x)


@functools.cache
def _numeric(expr: sp.Expr) -> Callable[[np.ndarray], np.ndarray]:
    """Lambdify ``expr`` (in x) to a float64 NumPy function.

    Numerical choices: evaluated under ``np.errstate(all="ignore")`` because a ``Piecewise``
    is lowered to ``numpy.select``, which evaluates every branch (ELU's ``exp`` overflows
    on the branch it then discards). Any non-finite value at a finite input (for example
    ``log(1 + exp(x))`` past x = 709) is recomputed with mpmath at 30 digits, so the
    function is right wherever its value fits in a float64.
    """
    f = sp.lambdify(_x, expr, modules=["scipy", "numpy"])
    slow: list[Callable] = []

    def fn(z):
        z = np.asarray(z, dtype=np.float64)
        with np.errstate(all="ignore"):
            out = np.asarray(f(z))
        if out.dtype.kind == "c":
            out = np.where(np.abs(out.imag) <= 1e-12 * np.abs(out.real), out.real, np.nan)
        out = np.array(np.broadcast_to(out, z.shape), dtype=np.float64)
        bad = np.atleast_1d(~np.isfinite(out) & np.isfinite(z))
        if bad.any():
            flat_out, flat_z = out.reshape(-1), z.reshape(-1)
            if not slow:
                slow.append(sp.lambdify(_x, expr, modules="mpmath"))
            with mpmath.workdps(30):
                for i in np.flatnonzero(bad):
                    try:
                        v = complex(slow[0](mpmath.mpf(float(flat_z[i]))))
                        flat_out[i] = v.real if abs(v.imag) <= 1e-12 * abs(v.real) else np.nan
                    except (ValueError, TypeError, ZeroDivisionError, OverflowError):
                        flat_out[i] = np.nan
        return out if out.ndim else out[()]

    fn.__doc__ = f"float64 NumPy function of x: {expr}"
    return fn


# -- the registry ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Param:
    default: float
    check: Callable[[float], str | None]  # None if fine, else what is wrong


def _any_finite(v: float) -> str | None:
    return None


def _nonnegative(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"


#: Largest |slope| (leaky_relu) or alpha (elu) accepted: the moments grow like its square
#: (E[leaky_relu(z)^2] = q (1 + a^2) / 2), which must stay a float64 at every q the laws use.
MAX_PARAMETER = 1e150


def _bounded(check: Callable[[float], str | None]) -> Callable[[float], str | None]:
    def inner(v: float) -> str | None:
        if abs(v) > MAX_PARAMETER:
            return (
                f"is outside [-{MAX_PARAMETER:g}, {MAX_PARAMETER:g}] (the moments grow like its "
                "square and would overflow float64)"
            )
        return check(v)

    return inner


@dataclass(frozen=True)
class _Entry:
    name: str
    params: dict[str, _Param]
    make: Callable[..., Activation]


def exact_decimal(v: float) -> sp.Rational:
    """The decimal a user typed, as an exact rational (0.01 -> 1/100)."""
    return sp.Rational(repr(float(v)))


def _leaky_relu(negative_slope: float) -> Activation:
    return Activation(
        "leaky_relu",
        (("negative_slope", float(negative_slope)),),
        sp.Piecewise((_x, _x > 0), (exact_decimal(negative_slope) * _x, True)),
        (0.0,),
        True,
        True,
        f"x for x > 0, {negative_slope!r} x otherwise",
        JaxFunction("jax.nn.leaky_relu", params=("negative_slope",)),
    )


def _elu(alpha: float) -> Activation:
    return Activation(
        "elu",
        (("alpha", float(alpha)),),
        sp.Piecewise((_x, _x > 0), (exact_decimal(alpha) * (sp.exp(_x) - 1), True)),
        (0.0,),
        True,
        False,
        f"x for x > 0, {alpha!r} (exp(x) - 1) otherwise (Clevert et al. 2016)",
        JaxFunction("jax.nn.elu", params=("alpha",)),
    )


def _fixed(
    name: str,
    expr: sp.Expr,
    jax: JaxFunction,
    description: str,
    kinks: tuple[float, ...] = (),
    closed: bool = False,
    homogeneous: bool = False,
) -> _Entry:
    """The registry entry of a built-in without parameters."""
    act = Activation(name, (), expr, kinks, closed, homogeneous, description, jax)
    return _Entry(name, {}, lambda: act)


_J = JaxFunction
_sig = 1 / (1 + sp.exp(-_x))
_relu = sp.Piecewise((_x, _x > 0), (0, True))
_abs = sp.Piecewise((_x, _x > 0), (-_x, True))
_gelu = _x * (1 + sp.erf(_x / sp.sqrt(2))) / 2
_selu = SELU_LAMBDA * sp.Piecewise((_x, _x > 0), (SELU_ALPHA * (sp.exp(_x) - 1), True))
_SELU_TEXT = (
    "lambda * (x for x > 0, alpha (exp(x) - 1) otherwise), lambda = 1.0507..., "
    "alpha = 1.6733... (Klambauer et al. 2017)"
)

#: Every built-in, declared once: its law (the SymPy expression) and its JAX function.
_BUILTINS: dict[str, _Entry] = {
    e.name: e
    for e in (
        _fixed("linear", _x, _J("jax.nn.identity"), "identity, phi(x) = x",
               closed=True, homogeneous=True),
        _fixed("relu", _relu, _J("jax.nn.relu"), "max(0, x) (He et al. 2015)",
               kinks=(0.0,), closed=True, homogeneous=True),
        _Entry("leaky_relu", {"negative_slope": _Param(0.01, _bounded(_any_finite))}, _leaky_relu),
        _fixed("abs", _abs, _J("jax.numpy.abs"), "|x|",
               kinks=(0.0,), closed=True, homogeneous=True),
        _fixed("tanh", sp.tanh(_x), _J("jax.numpy.tanh"), "hyperbolic tangent"),
        _fixed("sigmoid", _sig, _J("jax.nn.sigmoid"), "logistic 1 / (1 + exp(-x))"),
        _fixed("erf", sp.erf(_x), _J("jax.scipy.special.erf"), "error function erf(x)",
               closed=True),
        _fixed("gelu", _gelu, _J("jax.nn.gelu", options=(("approximate", False),)),
               "exact GELU x Phi(x) (Hendrycks & Gimpel 2016)", closed=True),
        _fixed("silu", _x * _sig, _J("jax.nn.silu"), "x sigmoid(x) (SiLU, swish)"),
        _fixed("selu", _selu, _J("jax.nn.selu"), _SELU_TEXT, kinks=(0.0,), closed=True),
        _Entry("elu", {"alpha": _Param(1.0, _bounded(_nonnegative))}, _elu),
        _fixed("softplus", sp.log(1 + sp.exp(_x)), _J("jax.nn.softplus"), "log(1 + exp(x))"),
    )
}  # fmt: skip

#: Names of the built-in activations, in registry order.
BUILTIN_NAMES: tuple[str, ...] = tuple(_BUILTINS)

_ALIASES = {"identity": "linear", "swish": "silu"}

_registry: dict[str, _Entry] = dict(_BUILTINS)
_lock = threading.Lock()


def activation_names() -> tuple[str, ...]:
    """Registered activation names: the built-ins, then user registrations in order."""
    return tuple(_registry)


def _check_number(what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return v


@functools.cache
def _make(name: str, params: tuple[tuple[str, float], ...]) -> Activation:
    return _registry[name].make(**dict(params))


def get_activation(name: str | Activation, **params: float) -> Activation:
    """Look up a registered activation by name (or ``NAME:key=value,...`` spec).

    Args:
        name: a registered name (see :func:`activation_names`), an alias (``identity``,
            ``swish``), a spec such as ``"leaky_relu:negative_slope=0.2"``, or an
            :class:`Activation` (returned as it is).
        **params: parameter values, e.g. ``negative_slope=0.2`` for ``leaky_relu`` or
            ``alpha=0.5`` for ``elu``; omitted ones take their defaults.

    Raises:
        ValueError: unknown name (the message lists the valid ones), unknown parameter (it
            names the allowed ones), or a bad value (non-finite, negative ``alpha``).

    Example:
        >>> get_activation("leaky_relu:negative_slope=0.2").params
        (('negative_slope', 0.2),)
    """
    if isinstance(name, Activation):
        if params:
            raise ValueError(
                f"parameters {sorted(params)} given with an Activation object {name.name!r}; "
                "pass a name instead"
            )
        return name
    if not isinstance(name, str):
        raise TypeError(f"activation must be a name or an Activation, got {name!r}")
    key = name.strip()
    if ":" in key:
        key, spec_params = parse_spec(key)
        both = sorted(set(spec_params) & set(params))
        if both:
            raise ValueError(f"parameter(s) {both} given both in {name!r} and as keywords")
        params = {**spec_params, **params}  # type: ignore[dict-item]
    key = _ALIASES.get(key, key)
    entry = _registry.get(key)
    if entry is None:
        raise ValueError(
            f"unknown activation {name!r}; valid names: {', '.join(activation_names())}"
        )
    for k in params:
        if k not in entry.params:
            allowed = ", ".join(entry.params) if entry.params else "none (it takes no parameters)"
            raise ValueError(
                f"activation {entry.name!r} has no parameter {k!r}; allowed parameters: {allowed}"
            )
    values = []
    for k, spec in entry.params.items():
        v = _check_number(f"{entry.name} parameter {k}", params.get(k, spec.default))
        problem = spec.check(v)
        if problem:
            msg = f"{entry.name} parameter {k} {problem}, got {v!r}"
            if "overflow" in problem:
                raise InputError(msg, kind="numerics")
            raise ValueError(msg)
        values.append((k, v))
    return _make(entry.name, tuple(values))


def register_activation(
    name: str,
    fn: sp.Expr | Callable[[sp.Symbol], sp.Expr],
    *,
    kinks: tuple[float, ...] | list[float] = (),
    closed_form: bool = False,
    homogeneous: bool = False,
    description: str = "",
    overwrite: bool = False,
) -> Activation:
    """Register a user activation, given as a SymPy expression in :data:`symbols.x`.

    Args:
        name: a Python identifier, not already taken (unless ``overwrite=True``).
        fn: a SymPy expression in ``symbols.x`` (an expression in another symbol named
            ``x`` is accepted and rewritten), or a callable taking a SymPy symbol and
            returning an expression, e.g. ``lambda x: x * sympy.tanh(sympy.log(1 +
            sympy.exp(x)))`` (mish).
        kinks: points where phi or phi' is not smooth. Breakpoints of a ``Piecewise`` (or of
            ``Abs``, ``Max``, ``Min``, ``Heaviside``) are found and added automatically.
        closed_form: try to derive the moments symbolically (see
            :func:`~varprop._src.laws.activation_moments.moment_expressions`); the default is
            quadrature. Terms outside the shapes handled exactly (polynomial x Gaussian x
            erf factors, exponentials on a half-line) go to ``sympy.integrate``, which may
            be slow or give up; with ``method="auto"`` a failed derivation falls back to
            quadrature.
        homogeneous: declare phi positively homogeneous of degree 1 (checked numerically).
        description: one line for humans.
        overwrite: allow replacing an existing registration, built-ins included.

    Raises:
        ValueError: bad name, name taken, an expression with other free symbols, or a
            ``homogeneous=True`` claim that fails.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"bad activation name {name!r}: expected a Python identifier")
    taken = name in _registry or name in _ALIASES
    if taken and not overwrite:
        kind = "a built-in" if name in _BUILTINS or name in _ALIASES else "a registered"
        raise ValueError(
            f"{name!r} is already {kind} activation; pass overwrite=True to replace it"
        )
    expr = fn(_x) if callable(fn) and not isinstance(fn, sp.Basic) else fn
    try:
        if isinstance(expr, str):
            raise TypeError("strings are not parsed")
        expr = sp.sympify(expr, strict=True)
    except (sp.SympifyError, TypeError) as e:
        raise ValueError(
            f"activation {name!r}: expected a SymPy expression in symbols.x (or a callable "
            f"returning one), got {expr!r}"
        ) from e
    free = expr.free_symbols
    if free and free != {_x}:
        stray = [s for s in free if s != _x]
        if len(stray) == 1 and _x not in free and stray[0].name == _x.name:
            expr = expr.xreplace({stray[0]: _x})
        else:
            raise ValueError(
                f"activation {name!r} must be an expression in x only, got free symbols "
                f"{sorted(str(s) for s in free)}"
            )
    declared = {_check_number(f"kink of {name!r}", k) for k in kinks}
    all_kinks = tuple(sorted(declared | set(_breakpoints(expr))))
    act = Activation(
        name,
        (),
        expr,
        all_kinks,
        bool(closed_form),
        bool(homogeneous),
        description or f"user activation {expr}",
    )
    if homogeneous:
        f = act.numpy_fn()
        z = np.array([-2.3, -0.7, 0.4, 1.9])
        if not np.allclose(f(3.0 * z), 3.0 * f(z), rtol=1e-9, atol=1e-12):
            raise ValueError(
                f"activation {name!r} was declared homogeneous but phi(3x) != 3 phi(x)"
            )
    with _lock:
        _registry[name] = _Entry(name, {}, lambda: act)
        _make.cache_clear()
    return act


def _breakpoints(expr: sp.Expr) -> list[float]:
    """Finite endpoints of the pieces of ``expr`` (after rewriting Abs/Max/... as Piecewise)."""
    try:
        pieces = split_pieces(expr)
    except (NoClosedForm, NotImplementedError, ValueError, TypeError):
        return []
    out = set()
    for _, lo, hi in pieces:
        for p in (lo, hi):
            if p.is_finite:
                out.add(float(p))
    return sorted(out)
