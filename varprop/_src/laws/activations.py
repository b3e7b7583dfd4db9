r"""Activation functions as SymPy expressions, and their moments for a Gaussian input.

For a pre-activation :math:`z \sim \mathcal N(0, q)` the variance laws need three numbers:

.. math::

    m_1(q) = E[\phi(z)], \qquad m_2(q) = E[\phi(z)^2], \qquad
    g_2(q) = E[\phi'(z)^2].

:math:`m_2` carries the forward pass (the next layer sees
:math:`E[z_{l+1}^2] = n_{in} \mathrm{Var}(w)\, m_2(q_l) + \mathrm{Var}(b)`), :math:`g_2` the
backward pass (:math:`E[(\partial L/\partial z)^2] = g_2(q)\, E[(\partial L/\partial h)^2]`,
under the gradient-independence assumption), and :math:`m_1` says how far
:math:`m_2` is from the variance :math:`m_2 - m_1^2`.

Every activation is one SymPy expression :math:`\phi(x)` in :data:`symbols.x`, possibly a
``Piecewise``; :math:`\phi'` is ``sympy.diff`` of it. Two ways to the moments:

* **Closed form, derived by SymPy** (:func:`moment_expressions`): each moment is split into
  the pieces of :math:`\phi` and the terms of the expanded integrand,
  :math:`c\, x^n e^{-a x^2 + d x} \prod_i \operatorname{erf}(b_i x)`. Terms with at most one
  ``erf`` are integrated by ``sympy.integrate`` against the density (once per shape, with
  symbolic coefficients, then substituted). Products of two or more ``erf`` factors, where
  ``sympy.integrate`` stalls, go through three exact identities: a Gaussian factor changes
  the variance, :math:`E_q[e^{-a x^2} f] = E_{q/(1+2aq)}[f]/\sqrt{1+2aq}`; Stein's lemma
  removes powers of x, :math:`E_q[x f] = q\, E_q[f']`; and the heat equation
  :math:`\partial_q E_q[f] = \tfrac12 E_q[f'']`, :math:`E_0[f] = f(0)`, turns
  :math:`E[\operatorname{erf}(a x)\operatorname{erf}(b x)]` into an integral over the
  variance, which a substitution :math:`u = \sqrt{\alpha s + \beta}` makes rational. The
  result is checked against quadrature in the tests, not assumed.
* **Quadrature** (:func:`quadrature_moments`): Gauss–Hermite nodes
  (``numpy.polynomial.hermite_e.hermegauss``) scaled by :math:`\sqrt q` for smooth
  :math:`\phi` and :math:`q \le 1.5`, accepted only when a 150- and a 200-node rule agree;
  otherwise (larger q, where nodes scaled by :math:`\sqrt q` step over phi's unit-scale
  features, and always for :math:`\phi` with kinks) ``scipy.integrate.quad`` split at the
  kinks, at 0 and at phi's feature points :math:`z = \pm 1, \pm 8, \pm 40`.

  Extreme q. For large q the features of :math:`\phi` (width ~1 in z) occupy
  :math:`|t| < 40/\sqrt q` in the integration variable :math:`t = z/\sqrt q`; without the
  feature points an adaptive rule on :math:`(0, \infty)` stepped over them and returned
  :math:`E[\tanh'(z)^2] = 0` from q = 1e8 on. With them the moments follow the asymptotics
  :math:`E[h(z)] = (2\pi q)^{-1/2}[\int h - \tfrac{1}{2q}\int z^2 h + \dots]` for integrable
  h, e.g. :math:`E[\tanh'(z)^2] \approx \tfrac43 (2\pi q)^{-1/2}` and
  :math:`E[\tanh(z)^2] \approx 1 - \sqrt{2/(\pi q)}`, up to q = 1.8e308 (the integrand is
  scaled before squaring so that :math:`\phi^2` does not overflow). For small q
  (:math:`\le 10^{-6}`) a kink-free :math:`\phi` uses the Taylor series
  :math:`E[h(z)] = \sum_k h^{(2k)}(0) (2k-1)!!\, q^k / (2k)!` (coefficients by
  ``mpmath.taylor``, accepted when the last term is below 1e-17 of the largest): quadrature
  sums terms of size :math:`\sqrt q` that cancel to leave SiLU's O(q) mean (1.4% off at
  q = 1e-30 before). q = 0 is the limit q -> 0+.

References:
    He, Zhang, Ren & Sun, "Delving Deep into Rectifiers: Surpassing Human-Level Performance
    on ImageNet Classification", ICCV 2015 (the ReLU gain :math:`\sqrt2`).
    Glorot & Bengio, "Understanding the difficulty of training deep feedforward neural
    networks", AISTATS 2010 (variance preservation, forward and backward, for the linear
    regime).
    Klambauer, Unterthiner, Mayr & Hochreiter, "Self-Normalizing Neural Networks",
    NeurIPS 2017 (SELU and its constants).
    Hendrycks & Gimpel, "Gaussian Error Linear Units (GELUs)", arXiv:1606.08415, 2016.
    Clevert, Unterthiner & Hochreiter, "Fast and Accurate Deep Network Learning by
    Exponential Linear Units (ELUs)", ICLR 2016.
    Williams, "Computing with infinite networks", NeurIPS 1996 (the erf kernel).

Nothing here imports JAX.
"""

# SymPy's inline annotations are narrower than its API (subs() with a dict, Eq() returning
# Eq, Expr vs Basic results): these checks give false positives on SymPy code.
# pyright: reportArgumentType=false, reportCallIssue=false, reportReturnType=false
# pyright: reportAssignmentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

import functools
import itertools
import math
import numbers
import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import mpmath
import numpy as np
import scipy.integrate
import sympy as sp
from numpy.polynomial.hermite_e import hermegauss

from varprop._src.errors import InputError
from varprop._src.laws import symbols as S
from varprop._src.spec import parse_spec

__all__ = [
    "BUILTIN_NAMES",
    "CONVENTIONAL_GAINS",
    "SELU_ALPHA",
    "SELU_LAMBDA",
    "Activation",
    "ActivationMoments",
    "activation_moments",
    "activation_names",
    "conventional_gain",
    "gain",
    "gain_comparison",
    "gain_expr",
    "get_activation",
    "moment_expressions",
    "quadrature_moments",
    "register_activation",
]

_x = S.x
_q = S.q

#: SELU constants :math:`\lambda_{01}` and :math:`\alpha_{01}` as printed (to 32 digits) in
#: Klambauer et al. 2017, Sec. "Stable and Attracting Fixed Point (0, 1) for SELU": the
#: values that make (mean 0, variance 1) a fixed point of the SELU map.
SELU_LAMBDA = sp.Float("1.0507009873554804934193349852946", 32)
SELU_ALPHA = sp.Float("1.6732632423543772848170429916717", 32)

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# -- the Activation record ---------------------------------------------------------------


@dataclass(frozen=True)
class Activation:
    r"""An activation :math:`\phi` as a SymPy expression in :data:`symbols.x`.

    Attributes:
        name: canonical registry name, e.g. ``"leaky_relu"``.
        params: parameter values, e.g. ``(("negative_slope", 0.2),)``.
        expr: :math:`\phi(x)`, possibly a ``Piecewise``.
        kinks: points where :math:`\phi` or :math:`\phi'` is not smooth (quadrature splits
            there; Gauss–Hermite converges slowly across a kink).
        closed_form: whether :func:`moment_expressions` derives the moments symbolically.
        homogeneous: positively homogeneous of degree 1, :math:`\phi(cx) = c\,\phi(x)` for
            :math:`c > 0`, so :math:`E[\phi(\sqrt q z)^2] = q\,E[\phi(z)^2]`.
        description: one line for humans.
    """

    name: str
    params: tuple[tuple[str, float], ...]
    expr: sp.Expr
    kinks: tuple[float, ...]
    closed_form: bool
    homogeneous: bool
    description: str

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


def _exact(v: float) -> sp.Rational:
    """The decimal a user typed, as an exact rational (0.01 -> 1/100)."""
    return sp.Rational(repr(float(v)))


def _relu() -> Activation:
    return Activation(
        "relu",
        (),
        sp.Piecewise((_x, _x > 0), (0, True)),
        (0.0,),
        True,
        True,
        "max(0, x) (He et al. 2015)",
    )


def _leaky_relu(negative_slope: float) -> Activation:
    a = _exact(negative_slope)
    return Activation(
        "leaky_relu",
        (("negative_slope", float(negative_slope)),),
        sp.Piecewise((_x, _x > 0), (a * _x, True)),
        (0.0,),
        True,
        True,
        f"x for x > 0, {negative_slope!r} x otherwise",
    )


def _elu(alpha: float) -> Activation:
    a = _exact(alpha)
    return Activation(
        "elu",
        (("alpha", float(alpha)),),
        sp.Piecewise((_x, _x > 0), (a * (sp.exp(_x) - 1), True)),
        (0.0,),
        True,
        False,
        f"x for x > 0, {alpha!r} (exp(x) - 1) otherwise (Clevert et al. 2016)",
    )


def _smooth(name: str, expr: sp.Expr, closed: bool, description: str) -> Callable[[], Activation]:
    return lambda: Activation(name, (), expr, (), closed, False, description)


_sig = 1 / (1 + sp.exp(-_x))

_BUILTINS: dict[str, _Entry] = {
    e.name: e
    for e in (
        _Entry(
            "linear",
            {},
            lambda: Activation("linear", (), _x, (), True, True, "identity, phi(x) = x"),
        ),
        _Entry("relu", {}, _relu),
        _Entry("leaky_relu", {"negative_slope": _Param(0.01, _bounded(_any_finite))}, _leaky_relu),
        _Entry(
            "abs",
            {},
            lambda: Activation(
                "abs", (), sp.Piecewise((_x, _x > 0), (-_x, True)), (0.0,), True, True, "|x|"
            ),
        ),
        _Entry("tanh", {}, _smooth("tanh", sp.tanh(_x), False, "hyperbolic tangent")),
        _Entry("sigmoid", {}, _smooth("sigmoid", _sig, False, "logistic 1 / (1 + exp(-x))")),
        _Entry("erf", {}, _smooth("erf", sp.erf(_x), True, "error function erf(x)")),
        _Entry(
            "gelu",
            {},
            _smooth(
                "gelu",
                _x * (1 + sp.erf(_x / sp.sqrt(2))) / 2,
                True,
                "exact GELU x Phi(x) (Hendrycks & Gimpel 2016)",
            ),
        ),
        _Entry("silu", {}, _smooth("silu", _x * _sig, False, "x sigmoid(x) (SiLU, swish)")),
        _Entry(
            "selu",
            {},
            lambda: Activation(
                "selu",
                (),
                SELU_LAMBDA * sp.Piecewise((_x, _x > 0), (SELU_ALPHA * (sp.exp(_x) - 1), True)),
                (0.0,),
                True,
                False,
                "lambda * (x for x > 0, alpha (exp(x) - 1) otherwise), lambda = 1.0507..., "
                "alpha = 1.6733... (Klambauer et al. 2017)",
            ),
        ),
        _Entry("elu", {"alpha": _Param(1.0, _bounded(_nonnegative))}, _elu),
        _Entry(
            "softplus",
            {},
            _smooth("softplus", sp.log(1 + sp.exp(_x)), False, "log(1 + exp(x))"),
        ),
    )
}

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
            :func:`moment_expressions`); the default is quadrature. Terms outside the
            shapes handled exactly (polynomial x Gaussian x erf factors, exponentials on a
            half-line) go to ``sympy.integrate``, which may be slow or give up; with
            ``method="auto"`` a failed derivation falls back to quadrature.
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
        pieces = _pieces(expr)
    except (_NoClosedForm, NotImplementedError, ValueError, TypeError):
        return []
    out = set()
    for _, lo, hi in pieces:
        for p in (lo, hi):
            if p.is_finite:
                out.add(float(p))
    return sorted(out)


# -- symbolic derivation -----------------------------------------------------------------


class _NoClosedForm(Exception):
    """SymPy could not produce a closed form for one term."""


_t = sp.Dummy("t", real=True)
_C = sp.Dummy("C", positive=True)
_B = sp.Dummy("B", positive=True)
_D = sp.Dummy("D", real=True)
_V = sp.Dummy("V", positive=True)
_oo = sp.oo


def _pieces(expr: sp.Expr) -> list[tuple[sp.Expr, sp.Expr, sp.Expr]]:
    """``expr`` as ``[(piece, lo, hi), ...]``: equal to ``piece`` on the interval (lo, hi)."""
    e = (
        sp.piecewise_fold(expr.rewrite(sp.Piecewise))
        if expr.has(sp.Abs, sp.Max, sp.Min, sp.Heaviside, sp.sign, sp.Piecewise)
        else expr
    )
    if not e.has(sp.Piecewise):
        return [(e, -_oo, _oo)]
    if not isinstance(e, sp.Piecewise):
        raise _NoClosedForm(f"cannot split {expr} into pieces")
    out = []
    for piece, where in e.as_expr_set_pairs(sp.Reals):
        if piece.has(sp.Piecewise):
            raise _NoClosedForm(f"nested Piecewise in {expr}")
        sets = where.args if isinstance(where, sp.Union) else (where,)
        for st in sets:
            if isinstance(st, sp.Interval) and st.measure > 0:
                out.append((piece, st.start, st.end))
            elif not (isinstance(st, sp.FiniteSet) or st.is_empty):
                raise _NoClosedForm(f"cannot read the set {st} of a piece of {expr}")
    return sorted(out, key=lambda p: float(p[1]) if p[1].is_finite else -math.inf)


@dataclass(frozen=True)
class _Term:
    """``coeff * x**n * exp(-c x**2 + d x) * prod(erf(b x) for b in erfs)``, b > 0, c >= 0."""

    coeff: sp.Expr
    n: int
    c: sp.Expr
    d: sp.Expr
    erfs: tuple[sp.Expr, ...]


def _parse(term: sp.Expr) -> _Term | None:
    coeff, n, c, d, erfs = sp.Integer(1), 0, sp.Integer(0), sp.Integer(0), []
    for f in sp.Mul.make_args(term):
        if not f.has(_x):
            coeff *= f
            continue
        base, e = f.as_base_exp()
        if base == _x and e.is_Integer and e >= 0:
            n += int(e)
        elif isinstance(f, sp.exp):
            poly = sp.Poly(f.args[0], _x) if f.args[0].is_polynomial(_x) else None
            if poly is None or poly.degree() > 2:
                return None
            c -= poly.coeff_monomial(_x**2)
            d += poly.coeff_monomial(_x)
            coeff *= sp.exp(poly.coeff_monomial(1))
        elif isinstance(base, sp.erf) and e.is_Integer and e > 0:
            b = sp.simplify(base.args[0] / _x)
            if b.has(_x) or b == 0:
                return None
            if b.is_negative:
                coeff *= (-1) ** int(e)
                b = -b
            elif not b.is_positive:
                return None
            erfs += [b] * int(e)
        else:
            return None
    if not (c.is_nonnegative and d.is_real):
        return None
    return _Term(coeff, n, c, d, tuple(sorted(erfs, key=sp.default_sort_key)))


@functools.cache
def _gauss_primitive(n: int, m: int) -> sp.Expr:
    r""":math:`\int_{\mathbb R} t^n e^{-C t^2} \operatorname{erf}(B t)^m dt`, m in {0, 1}."""
    if (n + m) % 2:
        return sp.Integer(0)
    r = sp.integrate(_t**n * sp.exp(-_C * _t**2) * sp.erf(_B * _t) ** m, (_t, -_oo, _oo))
    if r.has(sp.Integral):
        raise _NoClosedForm(f"t^{n} exp(-C t^2) erf(B t)^{m}")
    return sp.simplify(r)


@functools.cache
def _half_primitive(n: int, zero_d: bool) -> sp.Expr:
    r""":math:`\int_0^\infty t^n e^{D t - t^2/2} dt / \sqrt{2\pi}` (D = 0 if ``zero_d``)."""
    d = 0 if zero_d else _D
    r = sp.integrate(_t**n * sp.exp(d * _t - _t**2 / 2), (_t, 0, _oo)) / sp.sqrt(2 * sp.pi)
    if r.has(sp.Integral):
        raise _NoClosedForm(f"t^{n} exp(D t - t^2/2) on (0, oo)")
    return sp.simplify(sp.expand(r))


def _absorb(term: _Term, v: sp.Expr) -> tuple[_Term, sp.Expr]:
    """Fold exp(-c x^2) into the variance: E_v[e^{-c x^2} f] = E_{v'}[f] / sqrt(1 + 2 c v)."""
    if term.c == 0:
        return term, v
    k = 1 + 2 * term.c * v
    return _Term(term.coeff / sp.sqrt(k), term.n, sp.Integer(0), term.d, term.erfs), v / k


def _full_line(term: _Term, v: sp.Expr) -> sp.Expr:
    """E over x ~ N(0, v) of one parsed term."""
    m = len(term.erfs)
    if term.d != 0:
        raise _NoClosedForm("linear exponent on the whole line")
    if (term.n + m) % 2:
        return sp.Integer(0)  # odd integrand
    if m <= 1:
        prim = _gauss_primitive(term.n, m)
        sub = {_C: term.c * v + sp.Rational(1, 2)}
        if m:
            sub[_B] = term.erfs[0] * sp.sqrt(v)
        return term.coeff * v ** sp.Rational(term.n, 2) * prim.subs(sub) / sp.sqrt(2 * sp.pi)
    term, v = _absorb(term, v)
    if term.n == 0:
        return term.coeff * _erf_product(term.erfs).subs(_V, v)
    # Stein's lemma: E_v[x^n g] = v ((n-1) E_v[x^(n-2) g] + E_v[x^(n-1) g']).
    out = sp.Integer(0)
    if term.n >= 2:
        out += (term.n - 1) * _full_line(_Term(term.coeff, term.n - 2, 0, 0, term.erfs), v)
    for i, b in enumerate(term.erfs):
        rest = term.erfs[:i] + term.erfs[i + 1 :]
        lower = _Term(term.coeff * 2 * b / sp.sqrt(sp.pi), term.n - 1, b**2, sp.Integer(0), rest)
        out += _full_line(lower, v)
    return v * out


@functools.cache
def _erf_product(bs: tuple[sp.Expr, ...]) -> sp.Expr:
    r""":math:`E_V[\prod_i \operatorname{erf}(b_i x)]` by the heat equation, in ``_V``."""
    s = sp.Dummy("s", positive=True)
    f = sp.Mul(*(sp.erf(b * _x) for b in bs))
    rate = _expect(sp.diff(f, _x, 2), s, -_oo, _oo) / 2
    return f.subs(_x, 0) + _integrate_from_zero(rate, s, _V)


def _integrate_from_zero(h: sp.Expr, s: sp.Symbol, upper: sp.Expr) -> sp.Expr:
    r""":math:`\int_0^{upper} h(s)\,ds`, rationalized by :math:`u = \sqrt{\alpha s + \beta}`.

    The rates the heat equation produces are rational in s and in square roots of
    proportional linear forms; the substitution makes them rational in u, which
    ``sympy.integrate`` handles at once (instead of tens of seconds).
    """
    h = sp.together(sp.powsimp(sp.expand(h), force=True))
    roots = {
        p
        for p in h.atoms(sp.Pow)
        if p.exp.is_Rational and p.exp.q == 2 and p.base.has(s) and p.base.is_polynomial(s)
    }
    linear = [sp.Poly(p.base, s) for p in roots]
    if linear and all(pl.degree() == 1 for pl in linear):
        k0, c0 = linear[0].all_coeffs()
        if all(
            sp.simplify(pl.all_coeffs()[1] * k0 - pl.all_coeffs()[0] * c0) == 0 for pl in linear
        ):
            u = sp.Dummy("u", positive=True)
            s_of_u = (u**2 - c0) / k0
            hu = h.xreplace({p: sp.expand(p.base.subs(s, s_of_u)) ** p.exp for p in roots})
            hu = sp.cancel(sp.together(hu.subs(s, s_of_u) * sp.diff(s_of_u, u)))
            if hu.is_rational_function(u):
                r = sp.integrate(hu, (u, sp.sqrt(c0), sp.sqrt(k0 * upper + c0)))
                if not r.has(sp.Integral):
                    return r
    r = sp.integrate(h, (s, 0, upper))
    if r.has(sp.Integral):
        raise _NoClosedForm(f"integral over the variance of {h}")
    return r


def _half_line(term: _Term, v: sp.Expr, side: int) -> sp.Expr:
    """E over x ~ N(0, v) of one parsed term times 1{side * x > 0}."""
    if term.erfs:
        raise _NoClosedForm("erf on a half line")
    term, v = _absorb(term, v)
    zero_d = term.d == 0
    prim = _half_primitive(term.n, zero_d)
    if not zero_d:
        prim = prim.subs(_D, side * term.d * sp.sqrt(v))
    return term.coeff * side**term.n * v ** sp.Rational(term.n, 2) * prim


def _direct(term: sp.Expr, v: sp.Expr, lo: sp.Expr, hi: sp.Expr) -> sp.Expr:
    """Fallback: ``sympy.integrate`` of the term against the density, in t = x / sqrt(v)."""
    rv = sp.sqrt(v)
    g = term.subs(_x, rv * _t) * sp.exp(-(_t**2) / 2) / sp.sqrt(2 * sp.pi)
    r = sp.integrate(g, (_t, lo / rv, hi / rv))
    if r.has(sp.Integral) or r.has(sp.nan):
        raise _NoClosedForm(f"E[{term}] over ({lo}, {hi})")
    return r


def _expect(f: sp.Expr, v: sp.Expr, lo: sp.Expr, hi: sp.Expr) -> sp.Expr:
    """E over x ~ N(0, v) of ``f * 1{lo < x < hi}``, term by term."""
    f = sp.expand(f.replace(sp.erfc, lambda u: 1 - sp.erf(u)))
    total = sp.Integer(0)
    for term in sp.Add.make_args(f):
        if term == 0:
            continue
        parsed = _parse(term)
        try:
            if parsed is None:
                raise _NoClosedForm(str(term))
            if lo == -_oo and hi == _oo:
                total += _full_line(parsed, v)
            elif lo == 0 and hi == _oo:
                total += _half_line(parsed, v, 1)
            elif lo == -_oo and hi == 0:
                total += _half_line(parsed, v, -1)
            else:
                raise _NoClosedForm("interval with a finite non-zero end")
        except _NoClosedForm:
            total += _direct(term, v, lo, hi)
    return total


def _moment(pieces: list[tuple[sp.Expr, sp.Expr, sp.Expr]], power: int) -> sp.Expr:
    return sp.Add(*(_expect(p**power, _q, lo, hi) for p, lo, hi in pieces))


def _tidy(e: sp.Expr) -> sp.Expr:
    """Light, bounded simplification (a global ``simplify`` on big forms costs minutes)."""
    e = sp.expand(e)
    if sp.count_ops(e) <= 150:
        e = sp.simplify(e)
    return e


def _derive(act: Activation) -> tuple[sp.Expr, sp.Expr, sp.Expr]:
    pieces = _pieces(act.expr)
    grad_pieces = [(sp.diff(p, _x), lo, hi) for p, lo, hi in pieces]
    mean = _tidy(_moment(pieces, 1))
    second = _tidy(_moment(pieces, 2))
    grad2 = _tidy(_moment(grad_pieces, 2))
    return mean, second, grad2


@functools.cache
def _moment_expressions(act: Activation) -> tuple[sp.Expr, sp.Expr, sp.Expr]:
    return _derive(act)


def moment_expressions(act: str | Activation) -> tuple[sp.Expr, sp.Expr, sp.Expr]:
    r"""Closed forms of :math:`(E[\phi(z)], E[\phi(z)^2], E[\phi'(z)^2])` for z ~ N(0, q).

    Derived by SymPy (see the module docstring) as expressions in :data:`symbols.q`,
    cached per activation. Only for activations with ``closed_form=True``.

    Raises:
        ValueError: the activation has no closed form, or SymPy could not derive one.

    Example:
        >>> moment_expressions("relu")[1]
        q/2
    """
    act = get_activation(act)
    if not act.closed_form:
        raise ValueError(
            f"activation {act.name!r} has no closed form here (closed_form=False); "
            "use quadrature_moments or activation_moments(..., method='quadrature')"
        )
    try:
        return _moment_expressions(act)
    except (_NoClosedForm, NotImplementedError, sp.PolynomialError) as e:
        raise ValueError(f"SymPy could not derive the moments of {act.name!r}: {e}") from None


# -- numbers -----------------------------------------------------------------------------


def _check_q(q: object) -> float:
    if isinstance(q, bool) or not isinstance(q, numbers.Real):
        raise ValueError(f"q must be a real number, got {q!r}")
    v = float(q)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"q (the variance of z) must be finite and >= 0, got {q!r}")
    return v


def _limit_at_zero(act: Activation) -> tuple[float, float, float]:
    r"""The moments' limits as q -> 0+: :math:`\phi(0)`, :math:`\phi(0)^2` and
    :math:`(\phi'(0^-)^2 + \phi'(0^+)^2)/2` (z ~ N(0, q) puts half its mass on each side,
    so a kink at 0 contributes the mean of the two one-sided slopes squared; ReLU gives 1/2).
    One-sided values are evaluated 1e-200 away from 0, where a smooth phi' equals phi'(0) to
    float64 precision.
    """
    f, g = act.numpy_fn(), act.numpy_grad()
    m1 = float(f(0.0))
    left, right = float(g(-1e-200)), float(g(1e-200))
    return m1, m1 * m1, (left * left + right * right) / 2


@functools.cache
def _mp_fns(act: Activation) -> tuple[Callable, ...]:
    return tuple(sp.lambdify(_q, e, modules="mpmath") for e in moment_expressions(act))


def _closed_values(act: Activation, q: float) -> tuple[float, float, float]:
    """Evaluate the closed forms with mpmath.

    The forms subtract O(1) terms to leave O(q) ones when q is small (SELU, GELU), and
    multiply exp(2q) by erfc(sqrt(2q)) when q is large, so float64 is not enough:
    precision grows with |log10 q| and mpmath has no overflow.
    """
    dps = 30 + int(abs(math.log10(q)))
    out = []
    with mpmath.workdps(dps):
        for f in _mp_fns(act):
            v = f(mpmath.mpf(q))
            if isinstance(v, mpmath.mpc):
                v = v.real
            out.append(float(v))
    return out[0], out[1], out[2]


_GH_RULES = (150, 200)
#: Largest q for Gauss–Hermite: at q = 1.5 the 200-node rule is within ~1e-12 of the
#: integral for tanh, sigmoid, SiLU, softplus, erf and GELU, but at q = 4 it is off by
#: ~1e-7 and at q = 100 by ~1e-2 (the nodes, scaled by sqrt(q), no longer resolve phi's
#: unit-scale features); two agreeing rules can both miss them, so q decides first.
_GH_MAX_Q = 1.5


@functools.cache
def _gh(n: int) -> tuple[np.ndarray, np.ndarray]:
    t, w = hermegauss(n)
    return t, w / math.sqrt(2.0 * math.pi)


def _integrands(act: Activation) -> tuple[tuple[Callable, int], ...]:
    """(function, power) of the three moments: phi^1, phi^2, phi'^2."""
    f, g = act.numpy_fn(), act.numpy_grad()
    return (f, 1), (f, 2), (g, 2)


#: Points (in z, at phi's own unit scale) where quad splits the line when q is large: with
#: z = sqrt(q) t the features of phi sit in |t| < 40 / sqrt(q), a sliver that an adaptive
#: rule on (0, inf) steps over (E[tanh'(z)^2] came out 0 at q = 1e8 before these existed).
_FEATURE_POINTS = (1.0, 8.0, 40.0)


def _gauss_hermite(h: Callable, q: float) -> float | None:
    """Gauss–Hermite, accepted when the 150- and 200-node rules agree to 1e-11."""
    vals = []
    for n in _GH_RULES:
        t, w = _gh(n)
        y = h(math.sqrt(q) * t)
        if not np.all(np.isfinite(y[w > 0])):
            return None
        with np.errstate(all="ignore"):
            vals.append((float(np.sum(np.where(w > 0, w * y, 0.0))), float(np.sum(w * np.abs(y)))))
    (a, _), (b, scale) = vals
    return b if abs(a - b) <= 1e-11 * max(scale, 1e-300) else None


def _quad(fn: Callable, power: int, q: float, kinks: tuple[float, ...]) -> float:
    """E[fn(z)^power], z ~ N(0, q): scipy.integrate.quad in t = z / sqrt(q).

    Split at the kinks, at 0 and, for large q, at the feature points +-c/sqrt(q) (see
    :data:`_FEATURE_POINTS`). The integrand is divided by a scale s (the size of fn at
    8 sqrt(q)) before the power is taken, and the result multiplied back, so that phi(z)^2
    does not overflow for q up to the largest float64 when E[phi^2] itself is finite.
    """
    rq = math.sqrt(q)
    cuts = {k / rq for k in (*kinks, 0.0)}
    cuts |= {s * c / rq for c in _FEATURE_POINTS for s in (-1, 1) if c / rq < 40.0}
    edges = [-math.inf, *sorted(cuts), math.inf]
    scale = max(1.0, *(abs(float(fn(s * 8.0 * rq))) for s in (-1.0, 1.0)))
    if not math.isfinite(scale):
        scale = 1.0

    def integrand(t: float) -> float:
        w = math.exp(-0.5 * t * t)
        return 0.0 if w == 0.0 else (float(fn(rq * t)) / scale) ** power * w

    total = 0.0
    for a, b in itertools.pairwise(edges):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.integrate.IntegrationWarning)
            r, _ = scipy.integrate.quad(integrand, a, b, epsabs=0.0, epsrel=1e-12, limit=200)
        total += r
    out = total / math.sqrt(2.0 * math.pi)
    for _ in range(power):
        out *= scale
    return out


#: Below this q, a kink-free phi's moments come from their Taylor series in q (see
#: :func:`_small_q_series`): quadrature of phi(sqrt(q) t) sums terms of size sqrt(q) that
#: cancel to leave an O(q) mean (SiLU's q/4 was 1.4% off at q = 1e-30, 100% at 1e-300).
_SERIES_MAX_Q = 1e-6
_SERIES_ORDER = 4


@functools.cache
def _series_coefficients(act: Activation) -> tuple[tuple[float, ...], ...] | None:
    r"""Coefficients :math:`c_k = h^{(2k)}(0)\,(2k-1)!!/(2k)!`, k = 0..4, of the three moments.

    For z ~ N(0, q), :math:`E[z^{2k}] = (2k-1)!!\,q^k` and odd moments vanish, so for h
    analytic at 0, :math:`E[h(z)] = \sum_k c_k q^k`. None when SymPy cannot give finite
    numbers (phi not analytic at 0).
    """
    f = sp.lambdify(_x, act.expr, modules="mpmath")
    g = sp.lambdify(_x, act.grad_expr, modules="mpmath")
    out = []
    with mpmath.workdps(40):
        for h in (f, lambda t: f(t) ** 2, lambda t: g(t) ** 2):
            # mpmath.taylor: Taylor coefficients h^(n)(0)/n! by high-precision differences
            # (SymPy's symbolic derivatives of order 8 took minutes for SiLU).
            taylor = mpmath.taylor(h, mpmath.mpf(0), 2 * _SERIES_ORDER)
            coeffs = []
            for k in range(_SERIES_ORDER + 1):
                v = mpmath.mpmathify(taylor[2 * k])
                if not isinstance(v, mpmath.mpf) or not mpmath.isfinite(v):
                    return None
                # E[z^2k] = (2k-1)!! q^k: c_k = h^(2k)(0)/(2k)! * (2k-1)!!
                coeffs.append(float(v) * math.prod(range(1, 2 * k, 2)))
            out.append(tuple(coeffs))
    return tuple(out)


def _small_q_series(act: Activation, q: float) -> tuple[float, float, float] | None:
    """The three moments from their Taylor series in q, or None if it is not accurate.

    Accepted when the last term kept is below 1e-17 of the sum's largest term (the
    series of a phi with features at scale >> sqrt(q) converges like q^k).
    """
    if act.kinks:
        return None
    try:
        coeffs = _series_coefficients(act)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    if coeffs is None:
        return None
    out = []
    for cs in coeffs:
        terms = [c * q**k for k, c in enumerate(cs)]
        big = max(abs(t) for t in terms)
        if abs(terms[-1]) > 1e-17 * big:
            return None
        out.append(math.fsum(terms))
    return out[0], out[1], out[2]


def _quadrature(act: Activation, q: float) -> tuple[float, float, float]:
    if q == 0.0:
        return _limit_at_zero(act)
    if q <= _SERIES_MAX_Q:
        series = _small_q_series(act, q)
        if series is not None:
            return series
    out = []
    for fn, power in _integrands(act):
        v = None
        if not act.kinks and q <= _GH_MAX_Q:
            v = _gauss_hermite(lambda z, fn=fn, power=power: fn(z) ** power, q)
        out.append(_quad(fn, power, q, act.kinks) if v is None else v)
    return out[0], out[1], out[2]


def quadrature_moments(act: str | Activation, q: float) -> tuple[float, float, float]:
    r""":math:`(E[\phi(z)], E[\phi(z)^2], E[\phi'(z)^2])` for z ~ N(0, q), numerically.

    Smooth phi: Gauss–Hermite (probabilists' nodes, 150 and 200 of them, scaled by
    :math:`\sqrt q`), kept when the two rules agree to 1e-11 of :math:`E|h|`; otherwise
    (phi with features much narrower than :math:`\sqrt q`, e.g. tanh at q = 100, where no
    practical number of nodes converges) ``scipy.integrate.quad`` on the two half-lines.
    phi with kinks: ``scipy.integrate.quad`` on the intervals between kinks.
    """
    act = get_activation(act)
    return _quadrature(act, _check_q(q))


# -- activation_moments ------------------------------------------------------------------


@dataclass(frozen=True)
class ActivationMoments:
    """Moments of one activation at one variance q of its Gaussian input.

    Attributes:
        activation: the activation's name.
        q: E[z^2] of the input z ~ N(0, q).
        mean, second_moment, grad_second_moment: E[phi(z)], E[phi(z)^2], E[phi'(z)^2].
        method: ``"closed_form"`` or ``"quadrature"``.
        mean_expr, second_moment_expr, grad_second_moment_expr: the SymPy forms in
            :data:`symbols.q` (closed form only, else None).
    """

    activation: str
    q: float
    mean: float
    second_moment: float
    grad_second_moment: float
    method: str
    mean_expr: sp.Expr | None = field(default=None, repr=False)
    second_moment_expr: sp.Expr | None = field(default=None, repr=False)
    grad_second_moment_expr: sp.Expr | None = field(default=None, repr=False)

    @property
    def variance(self) -> float:
        """Var(phi(z)) = E[phi(z)^2] - E[phi(z)]^2."""
        return self.second_moment - self.mean**2


_METHODS = ("auto", "closed_form", "quadrature")


@functools.lru_cache(maxsize=4096)
def _moments(act: Activation, q: float, method: str) -> ActivationMoments:
    if method == "closed_form" or (method == "auto" and act.closed_form):
        try:
            exprs = moment_expressions(act)
        except ValueError:
            if method == "closed_form":
                raise
        else:
            m1, m2, g2 = _limit_at_zero(act) if q == 0.0 else _closed_values(act, q)
            return ActivationMoments(act.name, q, m1, m2, g2, "closed_form", *exprs)
    m1, m2, g2 = _quadrature(act, q)
    return ActivationMoments(act.name, q, m1, m2, g2, "quadrature")


def activation_moments(
    act: str | Activation, q: float = 1.0, *, method: str = "auto"
) -> ActivationMoments:
    r"""Moments of :math:`\phi(z)` for :math:`z \sim \mathcal N(0, q)`.

    .. math::

        E[\phi(z)],\quad E[\phi(z)^2],\quad E[\phi'(z)^2],\qquad z \sim \mathcal N(0, q).

    Args:
        act: a registered name, spec string (``"elu:alpha=0.5"``) or :class:`Activation`.
        q: the variance of z; finite and >= 0. q = 0 gives the limit q -> 0+:
            ``(phi(0), phi(0)^2, (phi'(0-)^2 + phi'(0+)^2)/2)`` (so ReLU's E[phi'^2] stays 1/2).
        method: ``"auto"`` (closed form where the activation has one, else quadrature),
            ``"closed_form"`` (ValueError if there is none) or ``"quadrature"``.

    Raises:
        ValueError: bad q (the message shows it), unknown method, no closed form.

    Example:
        >>> m = activation_moments("relu", q=2.0)
        >>> m.second_moment, m.grad_second_moment, m.method   # q/2 and 1/2 (He et al. 2015)
        (1.0, 0.5, 'closed_form')
        >>> m.second_moment_expr
        q/2
        >>> round(activation_moments("tanh", 1.0).second_moment, 6)
        0.394294
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    act = get_activation(act)
    q = _check_q(q)
    if method == "closed_form" and not act.closed_form:
        raise ValueError(
            f"activation {act.name!r} has no closed form (closed_form=False); "
            "use method='auto' or 'quadrature'"
        )
    return _moments(act, q, method)


# -- gains -------------------------------------------------------------------------------

_a = sp.Symbol("a", real=True)

#: The gains of ``torch.nn.init.calculate_gain`` for the activations it knows, as SymPy:
#: linear 1, sigmoid 1, tanh 5/3, relu sqrt(2), leaky_relu sqrt(2 / (1 + a^2)) as a
#: ``Lambda`` of the negative slope a (0.01 by default), selu 3/4.
CONVENTIONAL_GAINS: dict[str, sp.Expr] = {
    "linear": sp.Integer(1),
    "sigmoid": sp.Integer(1),
    "tanh": sp.Rational(5, 3),
    "relu": sp.sqrt(2),
    "leaky_relu": sp.Lambda(_a, sp.sqrt(2 / (1 + _a**2))),
    "selu": sp.Rational(3, 4),
}


def gain(act: str | Activation) -> float:
    r"""Derived gain :math:`1/\sqrt{E[\phi(z)^2]}` at :math:`z \sim \mathcal N(0, 1)`.

    The gain g with :math:`\mathrm{Var}(w) = g^2 / n_{in}` that keeps :math:`E[z^2] = 1`
    from one layer to the next when :math:`E[z^2] = 1` (He et al. 2015's argument, with
    the second moment, not the variance, of :math:`\phi(z)`).
    """
    return 1.0 / math.sqrt(activation_moments(act, 1.0).second_moment)


@functools.cache
def _gain_expr(act: Activation) -> sp.Expr | None:
    if not act.closed_form:
        return None
    try:
        m2 = moment_expressions(act)[1]
    except ValueError:
        return None
    return sp.simplify(1 / sp.sqrt(m2.subs(_q, 1)))


def gain_expr(act: str | Activation) -> sp.Expr | None:
    """The derived gain as an exact SymPy expression, where a closed form exists.

    Example:
        >>> gain_expr("relu")
        sqrt(2)
    """
    return _gain_expr(get_activation(act))


def _conventional(act: Activation) -> sp.Expr | None:
    g = CONVENTIONAL_GAINS.get(act.name)
    if g is None:
        return None
    if isinstance(g, sp.Lambda):
        return g(_exact(dict(act.params)["negative_slope"]))
    return g


def conventional_gain(act: str | Activation) -> float | None:
    """The gain ``torch.nn.init.calculate_gain`` gives this activation, or None if none."""
    g = _conventional(get_activation(act))
    return None if g is None else float(g)


def _fixed_point(act: Activation, g: float) -> float | None:
    """q* of q -> g^2 E[phi(sqrt q z)^2] from q = 1 (None if it leaves (1e-8, 1e8))."""
    q = 1.0
    for _ in range(2000):
        new = g * g * activation_moments(act, q).second_moment
        if not (1e-8 < new < 1e8):
            return None
        if abs(new - q) <= 1e-12 * q:
            return new
        q = new
    return q


def gain_comparison(act: str | Activation) -> str:
    """One paragraph: the derived gain next to the conventional one, and why they differ."""
    act = get_activation(act)
    m = activation_moments(act, 1.0)
    g = 1.0 / math.sqrt(m.second_moment)
    exact = gain_expr(act)
    derived = f"{g:.6g}" + (
        f" (exactly {exact})" if exact is not None and not exact.has(sp.Float) else ""
    )
    head = (
        f"Derived gain of {act}: 1/sqrt(E[phi(z)^2]) at z ~ N(0, 1) = 1/sqrt({m.second_moment:.6g}) "
        f"= {derived}."
    )
    conv = _conventional(act)
    if conv is None:
        tail = f" torch.nn.init.calculate_gain has no entry for {act.name}; " + (
            "since phi is positively homogeneous, this gain keeps E[z^2] constant at every scale."
            if act.homogeneous
            else "phi is not homogeneous, so this gain keeps E[z^2] = 1 only at q = 1; "
            "at other scales iterate q -> g^2 E[phi(sqrt(q) z)^2]."
        )
        if act.name in ("elu", "gelu", "silu", "softplus"):
            tail += (
                f" Its mean at q = 1 is {m.mean:.4g}, part of E[phi^2] = Var + mean^2 = "
                f"{m.variance:.4g} + {m.mean**2:.4g}."
            )
        return head + tail
    c = float(conv)
    conv_txt = f"{conv} = {c:.6g}" if not conv.is_Integer else f"{c:.6g}"
    if abs(c - g) <= 1e-9 * g:
        why_same = (
            f" {act.name} is positively homogeneous, E[phi(z)^2] = c q with c = "
            f"{m.second_moment:.6g}, so g = 1/sqrt(c) preserves E[z^2] exactly at every depth "
            "and scale (He et al. 2015; Glorot & Bengio 2010 for the linear case)."
            if act.homogeneous
            else ""
        )
        return (
            head
            + f" The conventional gain (torch.nn.init.calculate_gain) is {conv_txt}: the same."
            + why_same
        )
    qstar = _fixed_point(act, c)
    at = (
        f" With g = {c:.6g} the forward map q -> g^2 E[phi(sqrt(q) z)^2] settles at "
        f"q* = {qstar:.6g} instead of 1."
        if qstar is not None
        else f" With g = {c:.6g} the forward map q -> g^2 E[phi(sqrt(q) z)^2] leaves any "
        "bounded range."
    )
    why = {
        "tanh": (
            " 5/3 is a heuristic: it compensates for tanh's contraction (tanh(x)^2 < x^2) "
            "so that signals neither die out nor saturate in practice; it does not solve "
            "E[z^2] = 1. The derived gain makes q = 1 a fixed point of the forward map; "
            "because tanh is not homogeneous, no single gain fixes every q."
        ),
        "sigmoid": (
            " The conventional 1 does not account for the sigmoid's non-zero mean: "
            f"E[sigmoid(z)] = {m.mean:.4g}, so E[phi^2] = Var + mean^2 = {m.variance:.4g} + "
            f"{m.mean**2:.4g} is dominated by the mean, and the next layer's E[z^2] = "
            "n_in Var(w) E[phi^2] is set by it."
        ),
        "selu": (
            " 3/4 was found empirically, not derived: PyTorch's documentation says it "
            "sacrifices the normalization effect for more stable gradient flow in rectangular "
            "layers. SELU is designed (Klambauer et al. 2017) for Var(w) = 1/fan_in, i.e. "
            "gain 1 (PyTorch's docs say to pass 'linear' for self-normalizing networks): its "
            "constants make (mean 0, variance 1) the fixed point of the layer map, so the "
            f"derived gain at q = 1 is 1 ({g:.15f} here)."
        ),
        "leaky_relu": "",
        "relu": "",
        "linear": "",
    }.get(act.name, "")
    return (
        head
        + f" The conventional gain (torch.nn.init.calculate_gain) is {conv_txt}; they differ "
        + f"by a factor {c / g:.6g}."
        + why
        + at
    )
