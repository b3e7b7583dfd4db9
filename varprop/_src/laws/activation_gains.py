r"""Gains: the weight scale that keeps :math:`E[z^2]` from one layer to the next, derived.

With :math:`\mathrm{Var}(w) = g^2 / n_{in}` and :math:`z \sim \mathcal N(0, q)`, the forward
map is :math:`q \mapsto g^2 E[\phi(\sqrt q\, z)^2]`; the derived gain :func:`gain` makes
q = 1 its fixed point, :math:`g = 1/\sqrt{E[\phi(z)^2]}` at :math:`z \sim \mathcal N(0, 1)`
(He et al. 2015's argument, with the second moment, not the variance, of :math:`\phi(z)`).
:func:`gain_expr` gives it exactly where the moments have a closed form,
:data:`CONVENTIONAL_GAINS` holds the gains of ``torch.nn.init.calculate_gain``, and
:func:`gain_comparison` explains in words where the two differ.

References:
    He, Zhang, Ren & Sun, "Delving Deep into Rectifiers: Surpassing Human-Level Performance
    on ImageNet Classification", ICCV 2015 (the ReLU gain :math:`\sqrt2`).
    Glorot & Bengio, "Understanding the difficulty of training deep feedforward neural
    networks", AISTATS 2010 (variance preservation, forward and backward, for the linear
    regime).
    Klambauer, Unterthiner, Mayr & Hochreiter, "Self-Normalizing Neural Networks",
    NeurIPS 2017 (SELU and its gain 1).

Nothing here imports JAX.
"""

# SymPy's inline annotations are narrower than its API (subs() with a dict, Eq() returning
# Eq, Expr vs Basic results): these checks give false positives on SymPy code.
# pyright: reportArgumentType=false, reportCallIssue=false, reportReturnType=false
# pyright: reportAssignmentType=false, reportAttributeAccessIssue=false

from __future__ import annotations

import functools
import math

import sympy as sp

from varprop._src.laws import symbols as S
from varprop._src.laws.activation_moments import activation_moments, moment_expressions
from varprop._src.laws.activations import Activation, exact_decimal, get_activation
from varprop._src.laws.layers import mean_field_fixed_point

__all__ = [
    "CONVENTIONAL_GAINS",
    "conventional_gain",
    "gain",
    "gain_comparison",
    "gain_expr",
]

_q = S.q

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
        return g(exact_decimal(dict(act.params)["negative_slope"]))
    return g


def conventional_gain(act: str | Activation) -> float | None:
    """The gain ``torch.nn.init.calculate_gain`` gives this activation, or None if none."""
    g = _conventional(get_activation(act))
    return None if g is None else float(g)


def _fixed_point(act: Activation, g: float) -> float | None:
    """q* of q -> g^2 E[phi(sqrt q z)^2] from q = 1 (:func:`mean_field_fixed_point`; None
    if it ends outside (1e-8, 1e8))."""
    q = mean_field_fixed_point(act, g * g, max_iter=2000).q_star
    return q if 1e-8 < q < 1e8 else None


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
