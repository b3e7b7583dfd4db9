r"""The moments of an activation for a Gaussian input: closed form or numeric.

For a pre-activation :math:`z \sim \mathcal N(0, q)` the variance laws need three numbers:

.. math::

    m_1(q) = E[\phi(z)], \qquad m_2(q) = E[\phi(z)^2], \qquad
    g_2(q) = E[\phi'(z)^2].

:math:`m_2` carries the forward pass (the next layer sees
:math:`E[z_{l+1}^2] = n_{in} \mathrm{Var}(w)\, m_2(q_l) + \mathrm{Var}(b)`), :math:`g_2` the
backward pass (:math:`E[(\partial L/\partial z)^2] = g_2(q)\, E[(\partial L/\partial h)^2]`,
under the gradient-independence assumption), and :math:`m_1` says how far
:math:`m_2` is from the variance :math:`m_2 - m_1^2`.

The activation :math:`\phi` is a record of :mod:`varprop._src.laws.activations` (a SymPy
expression, possibly a ``Piecewise``). Two ways to the moments:

* **Closed form, derived by SymPy** (:func:`moment_expressions`), by the exact Gaussian
  integrals of :mod:`varprop._src.laws.gaussian_integrals`, evaluated with mpmath.
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

:func:`activation_moments` picks between the two (closed form where the activation has
one) and returns an :class:`ActivationMoments` record.

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
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import mpmath
import numpy as np
import scipy.integrate
import sympy as sp
from numpy.polynomial.hermite_e import hermegauss

from varprop._src.laws import symbols as S
from varprop._src.laws.activations import Activation, get_activation
from varprop._src.laws.gaussian_integrals import NoClosedForm, moment_forms

__all__ = [
    "ActivationMoments",
    "activation_moments",
    "moment_expressions",
    "quadrature_moments",
]

_x = S.x
_q = S.q


def moment_expressions(act: str | Activation) -> tuple[sp.Expr, sp.Expr, sp.Expr]:
    r"""Closed forms of :math:`(E[\phi(z)], E[\phi(z)^2], E[\phi'(z)^2])` for z ~ N(0, q).

    Derived by SymPy (:func:`varprop._src.laws.gaussian_integrals.moment_forms`) as
    expressions in :data:`symbols.q`, cached per expression. Only for activations with
    ``closed_form=True``.

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
        return moment_forms(act.expr)
    except (NoClosedForm, NotImplementedError, sp.PolynomialError) as e:
        raise ValueError(f"SymPy could not derive the moments of {act.name!r}: {e}") from None


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
