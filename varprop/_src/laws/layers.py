r"""Layer laws: how E[z^2] and E[(dL/dz)^2] move through one dense layer, and over depth.

Notation: layer l maps x (width n_in) to z = W x + b (width n_out), h = phi(z). Weights
are i.i.d. with zero mean and independent of x.

.. math::

    E[z^2] = n_{in}\,\mathrm{Var}(w)\,E[x^2] + \mathrm{Var}(b)
    \qquad(\text{if } E[x] = 0:\ \mathrm{Var}(z) = n_{in}\,\mathrm{Var}(w)\,\mathrm{Var}(x))

    E[(\partial L/\partial x)^2] = n_{out}\,\mathrm{Var}(w)\,E[(\partial L/\partial z)^2],
    \qquad E[(\partial L/\partial z)^2] = E[\phi'(z)^2]\,E[(\partial L/\partial h)^2]

The second moment, not the variance, is the quantity that propagates: after ReLU, GELU,
SiLU or sigmoid E[x] != 0. Nothing here imports JAX.
"""

# SymPy's inline annotations are narrower than its API (subs() with a dict, Eq() returning
# Eq, Expr vs Basic results): these checks give false positives on SymPy code.
# pyright: reportArgumentType=false, reportCallIssue=false, reportReturnType=false
# pyright: reportAssignmentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import sympy as sp

from varprop._src.laws import activations as A
from varprop._src.laws import symbols as S
from varprop._src.laws.schemes import Scheme

#: Largest finite float32, and the smallest positive normal one.
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)

E_z2 = sp.Symbol("E[z^2]", positive=True)
Var_y = sp.Symbol("Var(y)", positive=True)
Var_x = sp.Symbol("Var(x)", positive=True)
E_dx2 = sp.Symbol("E[(dL/dx)^2]", positive=True)
E_dz2 = sp.Symbol("E[(dL/dz)^2]", positive=True)


def weight_variance(scheme: Scheme | None) -> sp.Expr:
    """``Var(w)`` of ``scheme`` in the fans (the symbol ``Var(w)`` when ``scheme`` is None).

    Orthogonal schemes are written in their matrix's rows and columns; for a dense layer
    those are the fans. Constant schemes raise: the i.i.d. law does not apply to them.
    """
    if scheme is None:
        return S.weight_variance
    if scheme.distribution == "constant":
        raise ValueError(
            f"scheme {scheme.name!r} is degenerate (constant weights, Var(w) = 0): the i.i.d. "
            "layer law does not apply (every unit of a layer computes the same value; the "
            "'constant' and 'zeros' experiments in varprop.experiments show what happens)"
        )
    if scheme.distribution in ("orthogonal", "delta_orthogonal"):
        # For a square layer both fans equal rows = cols; the law uses the per-entry E[w^2].
        return sp.simplify(scheme.law.subs({S.n_rows: S.fan_in, S.n_cols: S.fan_out}))
    return scheme.law


def forward_law(scheme: Scheme | None = None, *, zero_mean: bool = False) -> sp.Eq:
    r"""The forward law of one layer as a SymPy equation.

    ``E[z^2] = n_in Var(w) E[x^2] + Var(b)``, with Var(w) taken from ``scheme`` (or left as
    the symbol ``Var(w)``). With ``zero_mean=True``: ``Var(y) = n_in Var(w) Var(x)`` (bias 0,
    E[x] = 0), the form of the design card.

    Example:
        >>> from varprop import laws, initializers
        >>> laws.forward_law(initializers.he_normal().scheme)
        Eq(E[z^2], 2*E[x^2] + Var(b))
    """
    vw = weight_variance(scheme)
    if zero_mean:
        return sp.Eq(Var_y, S.fan_in * vw * Var_x)
    return sp.Eq(E_z2, S.fan_in * vw * S.input_second_moment + S.bias_variance)


def backward_law(
    scheme: Scheme | None = None, activation: str | A.Activation | None = None
) -> sp.Eq:
    r"""The backward law of one layer as a SymPy equation.

    ``E[(dL/dx)^2] = n_out Var(w) E[phi'(z)^2] E[(dL/dh)^2]``: the gradient reaching the
    layer's input, from the gradient at its activation's output. With an ``activation``
    whose E[phi'(z)^2] has a closed form in q, that form is substituted.
    """
    vw = weight_variance(scheme)
    if activation is None:
        dphi2 = sp.Symbol("E[phi'(z)^2]", positive=True)
    else:
        act = A.get_activation(activation) if isinstance(activation, str) else activation
        dphi2 = (
            A.moment_expressions(act)[2]
            if act.closed_form
            else sp.Symbol(f"E[{act.name}'(z)^2]", positive=True)
        )
    return sp.Eq(E_dx2, S.fan_out * vw * dphi2 * S.grad_second_moment)


@dataclass(frozen=True)
class LayerFactors:
    """Per-layer multiplicative factors of a stack of identical layers.

    Attributes:
        forward: SymPy ``q_{l+1} / q_l = n_in Var(w) E[phi(z)^2] / q`` (free of q for a
            positively homogeneous phi; otherwise evaluated at ``q``).
        backward: SymPy ``g_{l-1} / g_l = n_out Var(w) E[phi'(z)^2]``.
        forward_square, backward_square: the same with ``n_out = n_in`` (a constant-width
            stack), simplified: exactly 1 for He + ReLU.
        q: the E[z^2] the factors were evaluated at (non-homogeneous phi only).
    """

    forward: sp.Expr
    backward: sp.Expr
    forward_square: sp.Expr
    backward_square: sp.Expr
    q: float | None


def _moment_exprs(act: A.Activation, q: float) -> tuple[sp.Expr, sp.Expr]:
    """E[phi^2]/q and E[phi'^2] at q: exact where a closed form exists."""
    if act.closed_form:
        _, m2, g2 = A.moment_expressions(act)
        if act.homogeneous:
            return sp.simplify(m2 / S.q), sp.simplify(g2)
        qq = sp.nsimplify(q)
        return sp.simplify((m2 / S.q).subs(S.q, qq)), sp.simplify(g2.subs(S.q, qq))
    m = A.activation_moments(act, q)
    return sp.Float(m.second_moment / q, 15), sp.Float(m.grad_second_moment, 15)


def layer_factors(
    scheme: Scheme, activation: str | A.Activation = "linear", q: float = 1.0
) -> LayerFactors:
    """Per-layer forward and backward factors for ``scheme`` followed by ``activation``.

    Example:
        >>> from varprop import laws, initializers
        >>> f = laws.layer_factors(initializers.he_normal().scheme, "relu")
        >>> f.forward, f.backward_square
        (1, 1)
    """
    act = A.get_activation(activation) if isinstance(activation, str) else activation
    vw = weight_variance(scheme)
    c_f, c_b = _moment_exprs(act, q)
    fwd = sp.simplify(S.fan_in * vw * c_f)
    bwd = sp.simplify(S.fan_out * vw * c_b)
    sq = {S.fan_out: S.fan_in}
    return LayerFactors(
        forward=fwd,
        backward=bwd,
        forward_square=sp.simplify(fwd.subs(sq)),
        backward_square=sp.simplify(bwd.subs(sq)),
        q=None if act.homogeneous else q,
    )


def classify_factor(factor: float, tol: float = 1e-9) -> str:
    """``preserved`` (factor = 1 within ``tol``), ``vanishing`` (< 1) or ``exploding`` (> 1)."""
    if not math.isfinite(factor):
        return "exploding"
    if abs(factor - 1.0) <= tol:
        return "preserved"
    return "vanishing" if factor < 1.0 else "exploding"


def float32_limit_layer(factor: float, q0: float = 1.0) -> tuple[str, int | None]:
    """For a constant per-layer factor on E[z^2], the first layer whose values leave float32.

    Values of typical size sqrt(q_L) = sqrt(q0 factor^L) overflow when they pass the largest
    float32 (3.4e38) and underflow when they fall below the smallest normal one (1.2e-38).

    Returns:
        ``("overflow", L)``, ``("underflow", L)`` or ``("none", None)`` when factor is 1.
    """
    if factor <= 0 or not math.isfinite(factor):
        raise ValueError(f"factor must be finite and > 0, got {factor}")
    if factor == 1.0:
        return "none", None
    if factor > 1.0:
        target = 2 * math.log(FLOAT32_MAX)
        kind = "overflow"
    else:
        target = 2 * math.log(FLOAT32_TINY)
        kind = "underflow"
    return kind, max(1, math.ceil((target - math.log(q0)) / math.log(factor)))


@dataclass(frozen=True)
class FixedPoint:
    """Mean-field fixed point of q -> sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2.

    Attributes:
        q_star: the fixed point reached from ``q0`` (0.0 if the map collapses to 0, inf if it
            diverges).
        chi: sigma_w^2 E[phi'(sqrt(q*) z)^2], the backward factor at the fixed point.
        iterations: steps taken.
    """

    q_star: float
    chi: float
    iterations: int


def mean_field_fixed_point(
    activation: str | A.Activation,
    weight_scale: float,
    bias_variance: float = 0.0,
    q0: float = 1.0,
    *,
    max_iter: int = 10_000,
    rtol: float = 1e-12,
) -> FixedPoint:
    r"""Iterate :math:`q \mapsto \sigma_w^2 E[\phi(\sqrt q z)^2] + \sigma_b^2` to its fixed point.

    ``weight_scale`` is sigma_w^2 = n_in Var(w). Poole et al., "Exponential expressivity in
    deep neural networks through transient chaos", NeurIPS 2016; Schoenholz et al., "Deep
    Information Propagation", ICLR 2017.
    """
    act = A.get_activation(activation) if isinstance(activation, str) else activation
    if weight_scale <= 0 or not math.isfinite(weight_scale):
        raise ValueError(f"weight_scale must be finite and > 0, got {weight_scale}")
    q = float(q0)
    for i in range(1, max_iter + 1):
        if q < 1e-300:
            return FixedPoint(
                0.0, weight_scale * A.activation_moments(act, 1e-12).grad_second_moment, i
            )
        new = weight_scale * A.activation_moments(act, q).second_moment + bias_variance
        if not math.isfinite(new) or new > 1e300:
            return FixedPoint(math.inf, math.inf, i)
        if abs(new - q) <= rtol * max(q, 1e-300):
            q = new
            break
        q = new
    chi = weight_scale * A.activation_moments(act, max(q, 1e-12)).grad_second_moment
    return FixedPoint(q, chi, i)
