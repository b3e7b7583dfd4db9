r"""Layer laws: how E[z^2] and E[(dL/dz)^2] move through one dense layer, and over depth.

Notation: layer l maps x (width n_in) to z = W x + b (width n_out), h = phi(z). Weights
are i.i.d. with zero mean and independent of x.

.. math::

    E[z^2] = n_{in}\,\mathrm{Var}(w)\,E[x^2] + \mathrm{Var}(b)
    \qquad(\text{if } E[x] = 0:\ \mathrm{Var}(z) = n_{in}\,\mathrm{Var}(w)\,\mathrm{Var}(x))

    E[(\partial L/\partial x)^2] = n_{out}\,\mathrm{Var}(w)\,E[(\partial L/\partial z)^2],
    \qquad E[(\partial L/\partial z)^2] = E[\phi'(z)^2]\,E[(\partial L/\partial h)^2]

The second moment, not the variance, is the quantity that propagates: after ReLU, GELU,
SiLU or sigmoid E[x] != 0.

**Weights with a mean.** When E[w] = mu != 0 (``ones``, ``constant``, an asymmetric
``truncated_normal``), the zero-mean law above is wrong. For z_j = sum_i x_i w_ij + b_j with
i.i.d. weights of mean mu and variance s^2, independent of x, given one input x:

.. math::

    E_W[z_j \mid x] = \mu S_1(x), \quad \mathrm{Var}_W(z_j \mid x) = s^2 S_2(x) + \mathrm{Var}(b)
    \;\Rightarrow\;
    E_W[z_j^2 \mid x] = s^2 S_2(x) + \mu^2 S_1(x)^2 + \mathrm{Var}(b),

with :math:`S_2(x) = \sum_i x_i^2`, :math:`S_1(x) = \sum_i x_i` (bias of mean 0). The same
algebra on :math:`\partial L/\partial x_i = \sum_j w_{ij} g_j`, g = dL/dz treated as
independent of W (gradient independence):
:math:`E_W[(\partial L/\partial x_i)^2 \mid g] = s^2 \sum_j g_j^2 + \mu^2 (\sum_j g_j)^2`
(:func:`forward_law_given_input`, :func:`backward_law_given_gradient`,
:func:`conditional_second_moment`). Averaged over inputs whose n_in units are i.i.d. with
mean E[x] and second moment E[x^2],
:math:`E[S_1^2] = n_{in} E[x^2] + n_{in}(n_{in}-1) E[x]^2`, so

.. math::

    E[z^2] = n_{in} (s^2 + \mu^2) E[x^2] + n_{in}(n_{in} - 1)\,\mu^2 E[x]^2 + \mathrm{Var}(b)

(:func:`forward_law_with_mean`): after ReLU the mean term grows like n_in^2 and dominates.
With s^2 = 0 every unit of a layer is identical (:meth:`Scheme.degenerate_reason`).

Nothing here imports JAX.
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

from varprop._src.laws import activation_moments as AM
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
E_z2_given_x = sp.Symbol("E[z^2|x]", nonnegative=True)
E_dx2_given_g = sp.Symbol("E[(dL/dx)^2|g]", nonnegative=True)


def weight_variance(scheme: Scheme | None) -> sp.Expr:
    """``Var(w)`` of ``scheme`` in the fans (the symbol ``Var(w)`` when ``scheme`` is None).

    Orthogonal schemes are written in their matrix's rows and columns; for a dense layer
    those are the fans. Constant schemes raise: the i.i.d. law does not apply to them.
    """
    if scheme is None:
        return S.weight_variance
    if scheme.distribution.is_constant:
        raise ValueError(
            f"scheme {scheme.name!r} is degenerate (constant weights, Var(w) = 0): the i.i.d. "
            "layer law does not apply (every unit of a layer computes the same value; the "
            "'constant' and 'zeros' experiments in varprop.experiments show what happens)"
        )
    if scheme.distribution.is_orthogonal:
        # For a square layer both fans equal rows = cols; the law uses the per-entry E[w^2].
        return sp.simplify(scheme.law.subs({S.n_rows: S.fan_in, S.n_cols: S.fan_out}))
    return scheme.law


def weight_mean(scheme: Scheme | None) -> sp.Expr:
    """``E[w]`` of ``scheme`` (the symbol ``E[w]`` when ``scheme`` is None; 0 for most schemes).

    Example:
        >>> from varprop import initializers
        >>> weight_mean(initializers.constant(0.5).scheme)
        1/2
    """
    if scheme is None:
        return S.weight_mean
    return scheme.mean_law


def _variance_any(scheme: Scheme | None) -> sp.Expr:
    """Var(w) like :func:`weight_variance`, but 0 for constant schemes instead of raising."""
    if scheme is not None and scheme.distribution.is_constant:
        return sp.Integer(0)
    return weight_variance(scheme)


def forward_law_given_input(scheme: Scheme | None = None) -> sp.Eq:
    r"""The forward law of one unit given the layer's input x, with the weights' mean.

    .. math:: E_W[z_j^2 \mid x] = s^2 \textstyle\sum_i x_i^2
              + \mu^2 \left(\sum_i x_i\right)^2 + \mathrm{Var}(b)

    for i.i.d. weights with E[w] = mu, Var(w) = s^2, independent of x (see the module
    docstring for the derivation). Constant schemes are allowed (s^2 = 0).

    Example:
        >>> from varprop import initializers
        >>> forward_law_given_input(initializers.ones.scheme)
        Eq(E[z^2|x], S_1(x)**2 + Var(b))
        >>> forward_law_given_input()
        Eq(E[z^2|x], E[w]**2*S_1(x)**2 + S_2(x)*Var(w) + Var(b))
    """
    vw, mu = _variance_any(scheme), weight_mean(scheme)
    rhs = vw * S.input_sum_squares + mu**2 * S.input_sum**2 + S.bias_variance
    return sp.Eq(E_z2_given_x, rhs)


def backward_law_given_gradient(scheme: Scheme | None = None) -> sp.Eq:
    r"""The backward law of one input unit given the gradient g = dL/dz at the layer's output.

    .. math:: E_W[(\partial L/\partial x_i)^2 \mid g] = s^2 \textstyle\sum_j g_j^2
              + \mu^2 \left(\sum_j g_j\right)^2

    (g treated as independent of W: the gradient-independence assumption).

    Example:
        >>> from varprop import initializers
        >>> backward_law_given_gradient(initializers.he_normal().scheme)
        Eq(E[(dL/dx)^2|g], 2*S_2(g)/n_in)
    """
    vw, mu = _variance_any(scheme), weight_mean(scheme)
    return sp.Eq(E_dx2_given_g, vw * S.grad_sum_squares + mu**2 * S.grad_sum**2)


def conditional_second_moment(weight_var, weight_mean, sum_squares, total):
    r"""``s^2 * sum_squares + mu^2 * total^2``: the numeric form of both conditional laws.

    Forward: ``sum_squares = sum_i x_i^2`` and ``total = sum_i x_i`` of one example gives
    :math:`E_W[z_j^2 \mid x]` (add Var(b)); backward: the same sums of the output gradient
    give :math:`E_W[(\partial L/\partial x_i)^2 \mid g]`. Works on floats and on arrays
    (NumPy or JAX: plain arithmetic, nothing is imported).

    Example:
        >>> conditional_second_moment(0.0, 1.0, 3.0, 2.0)   # ones: z = sum_i x_i, squared
        4.0
    """
    return weight_var * sum_squares + weight_mean**2 * total**2


def forward_law_with_mean(scheme: Scheme | None = None) -> sp.Eq:
    r"""The forward law averaged over inputs whose units are i.i.d., with the weights' mean.

    .. math:: E[z^2] = n_{in}\,(s^2 + \mu^2)\,E[x^2] + n_{in}(n_{in}-1)\,\mu^2 E[x]^2
              + \mathrm{Var}(b)

    Reduces to :func:`forward_law` when mu = 0.

    Example:
        >>> from varprop import initializers
        >>> forward_law_with_mean(initializers.ones.scheme)
        Eq(E[z^2], E[x]**2*n_in*(n_in - 1) + E[x^2]*n_in + Var(b))
    """
    vw, mu = _variance_any(scheme), weight_mean(scheme)
    rhs = (
        S.fan_in * (vw + mu**2) * S.input_second_moment
        + S.fan_in * (S.fan_in - 1) * mu**2 * S.input_mean_value**2
        + S.bias_variance
    )
    return sp.Eq(E_z2, rhs)


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
            AM.moment_expressions(act)[2]
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


def _moment_exprs(act: A.Activation, q: float) -> tuple[sp.Expr, sp.Expr, sp.Expr]:
    """E[phi^2]/q, E[phi'^2] and E[phi]^2/q at q: exact where a closed form exists."""
    if act.closed_form:
        m1, m2, g2 = AM.moment_expressions(act)
        if act.homogeneous:
            return sp.simplify(m2 / S.q), sp.simplify(g2), sp.simplify(m1**2 / S.q)
        qq = sp.nsimplify(q)
        return (
            sp.simplify((m2 / S.q).subs(S.q, qq)),
            sp.simplify(g2.subs(S.q, qq)),
            sp.simplify((m1**2 / S.q).subs(S.q, qq)),
        )
    m = AM.activation_moments(act, q)
    return (
        sp.Float(m.second_moment / q, 15),
        sp.Float(m.grad_second_moment, 15),
        sp.Float(m.mean**2 / q, 15),
    )


def layer_factors(
    scheme: Scheme, activation: str | A.Activation = "linear", q: float = 1.0
) -> LayerFactors:
    r"""Per-layer forward and backward factors for ``scheme`` followed by ``activation``.

    .. math:: \chi_f = \frac{n_{in} (s^2 + \mu^2) E[\phi(z)^2]
              + n_{in}(n_{in}-1) \mu^2 E[\phi(z)]^2}{q}, \qquad
              \chi_b = n_{out} (s^2 + \mu^2) E[\phi'(z)^2]

    for z ~ N(0, q) (mu = E[w] is 0 for every zero-mean scheme, and then
    :math:`\chi_f = n_{in} s^2 E[\phi^2]/q`). With mu != 0 this is the first layer's
    factor: the next layer's pre-activations share the mean mu S_1(x) and are no longer
    centred, so iterating it is an approximation.

    Example:
        >>> from varprop import laws, initializers
        >>> f = laws.layer_factors(initializers.he_normal().scheme, "relu")
        >>> f.forward, f.backward_square
        (1, 1)
    """
    act = A.get_activation(activation) if isinstance(activation, str) else activation
    vw = weight_variance(scheme)
    mu = weight_mean(scheme)
    c_f, c_b, c_m = _moment_exprs(act, q)
    # With E[w] = mu: E[z^2] = n_in (s^2 + mu^2) E[phi^2] + n_in (n_in - 1) mu^2 E[phi]^2
    # (forward_law_with_mean); backward, E[dL/dh] = 0 leaves n_out (s^2 + mu^2) E[phi'^2].
    fwd = sp.simplify(S.fan_in * (vw + mu**2) * c_f + S.fan_in * (S.fan_in - 1) * mu**2 * c_m)
    bwd = sp.simplify(S.fan_out * (vw + mu**2) * c_b)
    sq = {S.fan_out: S.fan_in}
    return LayerFactors(
        forward=fwd,
        backward=bwd,
        forward_square=sp.simplify(fwd.subs(sq)),
        backward_square=sp.simplify(bwd.subs(sq)),
        q=None if act.homogeneous else q,
    )


def classify_factor(factor: float, tol: float = 1e-9, *, steps: int | None = None) -> str:
    """The health of a per-layer factor f on a second moment: the one classifier of varprop.

    ``undetermined`` for NaN, ``exploding`` for inf, ``vanishing`` for 0; ``preserved`` when
    |f - 1| <= ``tol``, or, given the number of ``steps`` the factor compounds over (a
    network's hidden stack), when f^steps stays within a factor 2 (|ln f| steps <= ln 2);
    else ``vanishing`` (f < 1) or ``exploding`` (f > 1).

    >>> classify_factor(0.99), classify_factor(0.99, steps=10), classify_factor(0.99, 0.02)
    ('vanishing', 'preserved', 'preserved')
    """
    if math.isnan(factor):
        return "undetermined"
    if math.isinf(factor):
        return "exploding"
    if factor == 0:
        return "vanishing"
    if abs(factor - 1.0) <= tol:
        return "preserved"
    if steps is not None and abs(math.log(factor)) * max(steps, 1) <= math.log(2):
        return "preserved"
    return "vanishing" if factor < 1.0 else "exploding"


#: Half the smallest positive float32 subnormal (2^-150): a result below it rounds to 0
#: where subnormals are kept (NumPy). XLA on CPU flushes results below FLOAT32_TINY to 0.
FLOAT32_SUBNORMAL_FLOOR = 2.0**-150


def _ln(v: float | sp.Expr, what: str) -> float:
    """Natural log of a positive float or exact SymPy number (no underflow, no overflow)."""
    if isinstance(v, sp.Basic):
        e = sp.sympify(v)
        if not (e.is_number and e.is_positive and e.is_finite):
            raise ValueError(f"{what} must be finite and > 0, got {e}")
        return float(sp.log(e).evalf(30))
    x = float(v)
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"{what} must be finite and > 0, got {v}")
    return math.log(x)


def log_largest_value(log_q: float, count: int | None = None) -> float:
    r"""Natural log of the largest of ``count`` Gaussian values of second moment q:
    :math:`\tfrac12(\ln q + \ln c^2)` with :math:`c^2 = \max(2\ln \text{count}, 1)` (the
    extreme-value factor; 1 without ``count``). Used for overflow: the first non-finite value
    is the largest one.

    >>> round(math.exp(log_largest_value(0.0, 128 * 512)), 3)   # about 4.7 standard deviations
    4.71
    """
    return 0.5 * (log_q + (math.log(max(2.0 * math.log(count), 1.0)) if count else 0.0))


def log_largest_product(log_q_in: float, log_weight_variance: float, count: int) -> float:
    r"""Natural log of the largest of ``count`` products :math:`x_i w_{ij}` of two independent
    Gaussians (second moments q_in and Var(w)): :math:`\ln(M\sigma_x\sigma_w)` with
    :math:`M = \max(\ln \text{count}, 1)` (their tail is exponential; measured 14.7 for
    count = 128 x 256 x 256, where M = 15.9). Used for underflow: a matmul rounds each
    product before summing, so its output is all zero once the largest product is below
    the floor.

    >>> round(math.exp(log_largest_product(0.0, 0.0, 128 * 256 * 256)), 1)
    15.9
    """
    return math.log(max(math.log(count), 1.0)) + 0.5 * (log_q_in + log_weight_variance)


def float32_limit_layer(
    factor: float | sp.Expr,
    q0: float | sp.Expr = 1.0,
    *,
    count: int | None = None,
    floor: float = FLOAT32_TINY,
    ceiling: float = FLOAT32_MAX,
) -> tuple[str, int | None]:
    r"""For a constant per-layer factor f on E[z^2], the first layer whose values leave float32.

    The second moment after L layers is :math:`q_L = q_0 f^L`. Its values reach out to
    :math:`c\sqrt{q_L}` with

    .. math:: c^2 = 2 \ln(\text{count}) \quad(\text{count} = B \cdot n
              \text{ values in the layer; } c^2 = 1 \text{ when count is None}),

    the leading-order expected maximum of count Gaussians of variance q_L (the
    extreme-value factor: about 4.7 for B n = 128 x 512). So

    .. math::

        \text{overflow (first inf)}: \ L > \frac{2\ln(\text{ceiling}) - \ln q_0 - \ln c^2}
        {\ln f}\ (f > 1), \qquad
        \text{underflow (all 0)}: \ L > \frac{2\ln(\text{floor}) - \ln q_0 - \ln c^2}
        {\ln f}\ (f < 1),

    the first integer L above the bound. Overflow comes when the *largest* value passes
    3.4e38, so the factor makes it earlier; every value is 0 only when the largest is below
    the floor, so it makes underflow later. ``floor`` is the smallest value that survives:
    FLOAT32_TINY = 1.2e-38 where results below the smallest normal are flushed to zero (XLA
    on CPU) or FLOAT32_SUBNORMAL_FLOOR = 2^-150 = 7.0e-46 with gradual underflow (NumPy).
    Without ``count`` the rule is the one for the typical value :math:`\sqrt{q_L}`.

    ``factor`` and ``q0`` may be exact SymPy numbers (1e-600 or 1e600 are fine: only their
    logarithms are used).

    Limits of the underflow rule (measured). It is a statement about the values z. A
    matmul rounds each product x_i w_ij before summing, so a layer's output is already all
    zero when every *product* is below the floor, which comes earlier when the per-layer
    factor is close to 1 (see :func:`float32_underflow_layer`): a 256-wide linear net with
    factor 0.5 from q0 = 1e-70, batch 128, gave all-zero outputs at layers 67-68 in NumPy
    float32 (6 seeds) where this rule says 72 (floor 2^-150); for fast decay (64-wide,
    N(0, 1e-12) weights, factor 6.4e-11) both say 8 and XLA measured 8.

    Returns:
        ``("overflow", L)``, ``("underflow", L)`` or ``("none", None)`` when factor is 1.

    Example:
        >>> float32_limit_layer(512.0)                     # N(0, 1) weights, width 512
        ('overflow', 29)
        >>> float32_limit_layer(512.0, count=128 * 512)    # the largest of 128 x 512 values
        ('overflow', 28)
        >>> float32_limit_layer(64 * 1e-12, count=128 * 64)  # N(0, 1e-12), width 64
        ('underflow', 8)
    """
    ln_f = _ln(factor, "factor")
    ln_q0 = _ln(q0, "q0")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"count must be an int >= 1 (batch x width), got {count!r}")
    if ln_f == 0.0:
        return "none", None
    if ln_f > 0:
        target, kind = math.log(ceiling), "overflow"
    else:
        target, kind = math.log(floor), "underflow"
    # log_largest_value(ln q0 + L ln f, count) = target, solved for L.
    bound = 2 * (target - log_largest_value(ln_q0, count)) / ln_f
    return kind, max(1, math.floor(bound) + 1)


def float32_underflow_layer(
    factor: float | sp.Expr,
    q0: float | sp.Expr,
    *,
    batch: int,
    fan_in: int,
    fan_out: int,
    weight_variance: float,
    floor: float = FLOAT32_SUBNORMAL_FLOOR,
) -> int:
    r"""The first layer of a linear stack whose matmul output is exactly zero everywhere.

    Layer L computes :math:`z_{bj} = \sum_i x_{bi} w_{ij}` from inputs with second moment
    :math:`q_{L-1} = q_0 f^{L-1}`. Each product is rounded before it is summed, so z is all
    zero once every product is below the floor. The largest of the
    :math:`B\,n_{in} n_{out}` products of two independent Gaussians (whose tail is
    :math:`\sim e^{-t}`) is about :math:`M\sigma_x\sigma_w` with
    :math:`M = \ln(B\,n_{in}\,n_{out})` (measured 14.7 for B = 128, n = 256, where M = 15.9),
    so the output of layer L is zero for the first L with

    .. math:: M^2\,\mathrm{Var}(w)\; q_0 f^{L-1} < \text{floor}^2 .

    ``floor`` is 2^-150 (half the smallest subnormal) for gradual underflow (NumPy).
    Under XLA's flush-to-zero (CPU) use FLOAT32_TINY; partial sums below it are flushed
    too, so the output dies up to ~3 layers sooner at slow decay (measured 17-18 where this
    gives 20 for factor 0.5, width 256) and at the predicted layer for fast decay.

    Example:
        >>> float32_underflow_layer(0.5, 1e-70, batch=128, fan_in=256, fan_out=256,
        ...                         weight_variance=0.5 / 256)
        68
    """
    for nm, v in (("batch", batch), ("fan_in", fan_in), ("fan_out", fan_out)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{nm} must be an int >= 1, got {v!r}")
    if _ln(factor, "factor") >= 0:
        raise ValueError(f"factor must be < 1 for an underflow, got {factor}")
    start = log_largest_product(
        _ln(q0, "q0"), _ln(weight_variance, "weight_variance"), batch * fan_in * fan_out
    )
    # First k >= 0 with start + k ln(f) / 2 < ln floor; layer L = k + 1 reads q_k.
    bound = 2 * (math.log(floor) - start) / _ln(factor, "factor")
    return max(0, math.floor(bound) + 1) + 1


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
                0.0, weight_scale * AM.activation_moments(act, 1e-12).grad_second_moment, i
            )
        new = weight_scale * AM.activation_moments(act, q).second_moment + bias_variance
        if not math.isfinite(new) or new > 1e300:
            return FixedPoint(math.inf, math.inf, i)
        if abs(new - q) <= rtol * max(q, 1e-300):
            q = new
            break
        q = new
    chi = weight_scale * AM.activation_moments(act, max(q, 1e-12)).grad_second_moment
    return FixedPoint(q, chi, i)
