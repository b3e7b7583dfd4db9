r"""The mean-field map at small q and at finite width (smooth activations).

The mean-field map :math:`q_{l+1} = \sigma_w^2 f(q_l)`, :math:`f(q) = E[\phi(\sqrt q z)^2]`,
:math:`z \sim N(0, 1)` (:func:`varprop.laws.propagate`) is exact as the width n -> oo. Two
refinements of it:

- **Small q.** :math:`f(q) = \sum_k c_k (2k-1)!!\, q^k` from the Taylor series
  :math:`\phi(x)^2 = \sum_j c_j x^j` and the Gaussian moments :math:`E[z^{2k}] = (2k-1)!!`
  (odd moments vanish). For tanh, :math:`f(q) = q - 2q^2 + O(q^3)`: at g = 1 the map creeps
  to 0 like :math:`1/(2l)`.
- **Finite width.** :math:`Q_l = \|\phi(z_l)\|^2/n` is random: given :math:`Q_{l-1}` the n
  units of :math:`z_l` are i.i.d. :math:`N(0, a)`, :math:`a = \sigma_w^2 Q_{l-1}`, so
  :math:`E[Q_l \mid Q_{l-1}] = f(a)` and :math:`\mathrm{Var}[Q_l \mid Q_{l-1}] =
  (f_4(a) - f(a)^2)/n` with :math:`f_4(q) = E[\phi(\sqrt q z)^4]`. The second-order
  (delta-method) recursion of the mean M and variance V of Q,

  .. math:: M_l = f(a) + \tfrac12 \sigma_w^4 f''(a) V_{l-1}, \quad
            V_l = \sigma_w^4 f'(a)^2 V_{l-1} + (f_4(a) - f(a)^2)/n, \quad a = \sigma_w^2 M_{l-1},

  from :math:`M_0 = 1, V_0 = 0` (inputs with :math:`\|x\|^2 = n`), gives
  :math:`E[z_l^2] = \sigma_w^2 M_{l-1}` up to :math:`O(1/n^2)`. A saturating activation
  (f'' < 0) keeps a finite net's E[z^2] *below* the infinite-width law. f' and f'' come from
  the heat equation :math:`\frac{d}{dq} E[F(\sqrt q z)] = \tfrac12 E[F''(\sqrt q z)]`, with
  Gauss-Hermite quadrature.

References: Poole et al., NeurIPS 2016; Schoenholz et al., ICLR 2017; the finite-width
correction as in Hanin & Rolnick, NeurIPS 2018.
"""

# SymPy's inline annotations are narrower than its API.
# pyright: reportArgumentType=false, reportCallIssue=false, reportAttributeAccessIssue=false
# pyright: reportReturnType=false

from __future__ import annotations

import math

import numpy as np
import sympy as sp

from varprop._src.laws import activations as A
from varprop._src.laws import symbols as S


def _smooth(activation: str | A.Activation) -> A.Activation:
    act = A.get_activation(activation) if isinstance(activation, str) else activation
    if act.expr.has(sp.Piecewise, sp.Heaviside, sp.Max, sp.Min, sp.Abs):
        raise ValueError(f"{act.name} is not smooth at 0: these expansions need a smooth phi")
    return act


def second_moment_series(activation: str | A.Activation, order: int = 3) -> sp.Expr:
    r""":math:`E[\phi(\sqrt q z)^2]` as a power series in q up to :math:`q^{order}`.

    Example:
        >>> second_moment_series("tanh", 2)
        -2*q**2 + q
    """
    act = _smooth(activation)
    series = sp.series(act.expr**2, S.x, 0, 2 * order + 1).removeO()
    poly = sp.Poly(sp.expand(series), S.x)
    terms = [
        c * sp.factorial2(k - 1) * S.q ** sp.Rational(k, 2)
        for (k,), c in poly.terms()
        if k % 2 == 0  # odd Gaussian moments vanish
    ]
    return sp.expand(sp.Add(*terms))


def finite_width_recursion() -> tuple[sp.Eq, sp.Eq]:
    """The O(1/n) recursion of the mean and the variance of Q_l (the module docstring)."""
    f, f4 = sp.Function("f"), sp.Function("f_4")
    a, g, n, v_prev = sp.Symbol("a"), S.gain, S.fan_in, sp.Symbol("V_{l-1}")
    mean = sp.Eq(sp.Symbol("M_l"), f(a) + g**4 * sp.Derivative(f(a), (a, 2)) * v_prev / 2)
    var = sp.Eq(
        sp.Symbol("V_l"), g**4 * sp.Derivative(f(a), a) ** 2 * v_prev + (f4(a) - f(a) ** 2) / n
    )
    return mean, var


def finite_width_mean_field(
    activation: str | A.Activation, weight_scale: float, depth: int, width: int
) -> np.ndarray:
    r"""E[z_l^2] (l = 1..depth) of a width-n stack with :math:`n\,\mathrm{Var}(w) =`
    ``weight_scale``, to O(1/n), from inputs with :math:`\|x\|^2 = n` (the module docstring).

    Example:
        >>> from varprop.laws import propagate, scheme_from_spec
        >>> q = finite_width_mean_field("tanh", 1.0, 30, 128)
        >>> inf = propagate([128] * 31, "tanh", scheme_from_spec("lecun_normal")).forward
        >>> round(float(q[-1] / inf[-1] - 1), 3), bool(q[0] == 1.0)   # 6.3% below
        (-0.063, True)
    """
    act = _smooth(activation)
    f2 = act.expr**2
    fns = [sp.lambdify(S.x, e, "numpy") for e in (f2, f2**2, f2.diff(S.x, 2), f2.diff(S.x, 4))]
    nodes, weights = np.polynomial.hermite_e.hermegauss(200)
    weights = weights / math.sqrt(2 * math.pi)
    g2 = float(weight_scale)
    m, v, out = 1.0, 0.0, []
    for _ in range(depth):
        a = g2 * m
        out.append(a)
        vals = (np.broadcast_to(fn(math.sqrt(a) * nodes), nodes.shape) for fn in fns)
        f, f4, d2, d4 = (float(np.sum(weights * val)) for val in vals)
        # d2 = 2 f', d4 = 4 f'' (heat equation)
        m, v = f + 0.5 * g2 * g2 * (d4 / 4) * v, g2 * g2 * (d2 / 2) ** 2 * v + (f4 - f * f) / width
    return np.asarray(out)
